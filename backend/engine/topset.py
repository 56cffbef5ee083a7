"""Per-feature "keep the best k" sets, mergeable across shards: the top examples and the
quantile reservoir of `FeatureStats` are both one of these."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def sort_key(score: torch.Tensor) -> torch.Tensor:
    """int64 keys that sort like the float64 scores (IEEE bits with negatives flipped): integers
    sort by radix on CPU, four times faster than floats."""
    b = score.view(torch.int64)
    return torch.where(b < 0, b ^ 0x7FFF_FFFF_FFFF_FFFF, b)


def rank_order(score: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Column order of each row by score descending, ties by smaller id (repeated text gives
    exactly equal activations), so the order in which shards merge never changes a result."""
    tie = torch.argsort(ids, dim=1)
    best = torch.argsort(torch.gather(score, 1, tie), dim=1, descending=True, stable=True)
    return torch.gather(tie, 1, best)


@dataclass
class _Candidates:
    """Candidates laid out like the kept sets: one row per distinct feature (`features`), at most
    k columns, best first; `source` is each cell's index into the offered candidates (-1: empty)."""

    features: torch.Tensor
    score: torch.Tensor
    ids: torch.Tensor
    source: torch.Tensor


WINDOW_DTYPE = torch.bfloat16
"""Context windows are kept in bfloat16: they only shade tokens on the page, and at 45 windows
of 33 tokens per feature they are most of a run's memory (1.7 GB in float32 for 12 SAEs of
24,576). The example's own activation is kept exactly beside them (`val`)."""


class TopSet:
    """Per feature, the `k` entries with the largest score, with ids, the activation at the
    entry's token (`val`, float32) and its context window (`win`, WINDOW_DTYPE).

    Rows are kept unordered: a winning candidate takes the slot of an entry it evicts, so the
    windows of entries that stay never move (they are the bulk of the memory). `ordered` sorts.
    """

    def __init__(self, d_sae: int, k: int, window: int, device: torch.device, center: int = 0):
        self.center = center
        """index of the entry's own token in its window"""
        self.score = torch.full((d_sae, k), -torch.inf, dtype=torch.float64, device=device)
        self.ids = torch.full((d_sae, k), -1, dtype=torch.int64, device=device)
        self.val = torch.zeros((d_sae, k), dtype=torch.float32, device=device)
        self.win = torch.zeros((d_sae, k, window), dtype=WINDOW_DTYPE, device=device)

    @property
    def k(self) -> int:
        return self.score.shape[1]

    def threshold(self) -> torch.Tensor:
        """The score a candidate must beat to enter, per feature (-inf while a row has room)."""
        return self.score.min(1).values

    def ordered(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """score, ids, val, win with each row's entries best first."""
        o = rank_order(self.score, self.ids)
        return (
            torch.gather(self.score, 1, o),
            torch.gather(self.ids, 1, o),
            torch.gather(self.val, 1, o),
            torch.gather(self.win, 1, o[:, :, None].expand(-1, -1, self.win.shape[2])),
        )

    def offer(
        self,
        feats: torch.Tensor,
        score: torch.Tensor,
        ids: torch.Tensor,
        windows: torch.Tensor | None,
        window_fn=None,
        values: torch.Tensor | None = None,
    ) -> None:
        """Merge candidates (any order, any number per feature) into the kept sets.

        `window_fn(index_tensor)` computes float32 windows lazily, only for the candidates that
        win a place, which keeps gathering cheap. `values`: the candidates' own activations,
        where the windows given are not float32 (a merge of kept sets); else read from the windows.
        """
        if feats.numel() == 0:
            return
        cand = self._best_k_per_feature(feats, score, ids)
        evicted_row, evicted_col, winner_row, winner_col = self._contest(cand)
        if evicted_row.numel() == 0:
            return
        # Pairing invariant: per feature row, the kept entries that lose and the candidates that
        # win are equal in number (k places either way), and nonzero lists both in row-major
        # order, so the i-th evicted slot and the i-th winner always belong to the same feature.
        rows = cand.features[evicted_row]
        picked = cand.source[winner_row, winner_col]
        self.score[rows, evicted_col] = cand.score[winner_row, winner_col]
        self.ids[rows, evicted_col] = cand.ids[winner_row, winner_col]
        win = windows[picked] if windows is not None else window_fn(picked)
        self.val[rows, evicted_col] = values[picked] if values is not None else win[:, self.center].float()
        self.win[rows, evicted_col] = win.to(self.win.dtype)

    def _best_k_per_feature(self, feats: torch.Tensor, score: torch.Tensor, ids: torch.Tensor) -> _Candidates:
        """Group candidates by feature and keep each feature's best k (by score descending)."""
        k, dev = self.k, feats.device
        order = torch.argsort(~sort_key(score.double()), stable=True)  # ~ reverses: descending
        order = order[torch.argsort(feats[order], stable=True)]
        uniq, counts = torch.unique_consecutive(feats[order], return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(order.numel(), device=dev) - torch.repeat_interleave(starts, counts)
        keep = rank < k
        order, rank = order[keep], rank[keep]
        row = torch.repeat_interleave(torch.arange(uniq.numel(), device=dev), torch.clamp(counts, max=k))
        shape = (uniq.numel(), k)
        cand = _Candidates(
            features=uniq,
            score=torch.full(shape, -torch.inf, dtype=torch.float64, device=dev),
            ids=torch.full(shape, -1, dtype=torch.int64, device=dev),
            source=torch.full(shape, -1, dtype=torch.int64, device=dev),
        )
        cand.score[row, rank] = score[order].to(torch.float64)
        cand.ids[row, rank] = ids[order]
        cand.source[row, rank] = order
        return cand

    def _contest(self, cand: _Candidates):
        """The best k of (kept + candidates) per feature: returns the (row, column) of the kept
        entries that lose their place and of the candidates that win one."""
        k = self.k
        all_score = torch.cat([self.score[cand.features], cand.score], 1)
        all_ids = torch.cat([self.ids[cand.features], cand.ids], 1)
        won = torch.zeros_like(all_ids, dtype=torch.bool)
        won.scatter_(1, rank_order(all_score, all_ids)[:, :k], True)
        evicted_row, evicted_col = torch.nonzero(~won[:, :k], as_tuple=True)
        winner_row, winner_col = torch.nonzero(won[:, k:], as_tuple=True)
        return evicted_row, evicted_col, winner_row, winner_col

    def merge(self, other: TopSet) -> None:
        f, j = torch.nonzero(other.ids >= 0, as_tuple=True)
        self.offer(f, other.score[f, j], other.ids[f, j], other.win[f, j], values=other.val[f, j])

    def state_dict(self) -> dict:
        return {"score": self.score.cpu(), "ids": self.ids.cpu(), "val": self.val.cpu(), "win": self.win.cpu()}

    def load_state_dict(self, d: dict) -> None:
        for name, value in d.items():
            getattr(self, name).copy_(value)
