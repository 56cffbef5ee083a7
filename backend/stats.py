"""Mergeable per-SAE statistics gathered in one streaming pass.

Everything here is a sum, a histogram, or a "keep the best k per feature" set, so two states
built on disjoint token shards merge (`merge`) into exactly the state of one pass over both.
Memory is fixed by d_sae and the example budget, never by the number of tokens.

Example windows are recorded at the moment an example enters a top set: the feature's
activation on every token from `left` before to `right` after, so the page can shade them.
Quantile examples come from a uniform reservoir per feature (the r tokens with the smallest hash
keys among those where it fires), which is deterministic and therefore shard-independent; at
the end the reservoir is sorted by activation and cut into equal-count buckets.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

_M32 = 0xFFFFFFFF


@dataclass(frozen=True)
class StatsSpec:
    """Sizes of what is kept per feature; fixed for a run so states from shards can merge."""

    d_sae: int
    d_in: int
    seq_len: int
    n_top: int = 20
    """top-activating examples kept per feature"""
    n_buckets: int = 5
    """activation-quantile buckets for sampled examples"""
    per_bucket: int = 5
    """sampled examples per quantile bucket"""
    left: int = 24
    """context tokens kept before the activating token"""
    right: int = 8
    """context tokens kept after the activating token"""
    hist_lo: float = -4.0
    """log10 of the smallest activation the per-feature histogram resolves"""
    hist_hi: float = 4.0
    hist_bins: int = 64
    dense_threshold: float = 0.1
    seed: int = 0

    @property
    def window(self) -> int:
        return self.left + self.right + 1

    @property
    def n_reservoir(self) -> int:
        return self.n_buckets * self.per_bucket

    def hist_edges(self) -> np.ndarray:
        """Edges of the inner bins; bin 0 is underflow and bin hist_bins+1 overflow."""
        return np.logspace(self.hist_lo, self.hist_hi, self.hist_bins + 1)


def token_keys(tok_ids: torch.Tensor, seed: int) -> torch.Tensor:
    """A pseudo-random priority for each global token; the reservoir keeps the smallest.

    One key per token serves every feature: the tokens where a feature fires are still a uniform
    sample for that feature, since the key does not depend on the activation. murmur3's 32-bit
    finaliser in int64 arithmetic (the mask keeps the low 32 bits), with the low bits of the
    token id below it so keys never tie; keys stay under 2**53, exact in float64.
    """
    h = (tok_ids * 2654435761 + seed * 97) & _M32
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & _M32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & _M32
    h = h ^ (h >> 16)
    return (h << 21) | (tok_ids & ((1 << 21) - 1))


def _sort_key(score: torch.Tensor) -> torch.Tensor:
    """int64 keys that sort like the float64 scores (IEEE bits with negatives flipped): integers
    sort by radix on CPU, four times faster than floats."""
    b = score.view(torch.int64)
    return torch.where(b < 0, b ^ 0x7FFF_FFFF_FFFF_FFFF, b)


def _rank_order(score: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Column order of each row by score descending, ties by smaller id (repeated text gives
    exactly equal activations), so the order in which shards merge never changes a result."""
    tie = torch.argsort(ids, dim=1)
    best = torch.argsort(torch.gather(score, 1, tie), dim=1, descending=True, stable=True)
    return torch.gather(tie, 1, best)


class _TopSet:
    """Per feature, the `k` entries with the largest score, with ids and context windows.

    Rows are kept unordered: a winning candidate takes the slot of an entry it evicts, so the
    windows of entries that stay never move (they are the bulk of the memory). `ordered` sorts.
    """

    def __init__(self, d_sae: int, k: int, window: int, device: torch.device):
        self.score = torch.full((d_sae, k), -torch.inf, dtype=torch.float64, device=device)
        self.ids = torch.full((d_sae, k), -1, dtype=torch.int64, device=device)
        self.win = torch.zeros((d_sae, k, window), dtype=torch.float32, device=device)

    def threshold(self) -> torch.Tensor:
        """The score a candidate must beat to enter, per feature (-inf while a row has room)."""
        return self.score.min(1).values

    def ordered(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        o = _rank_order(self.score, self.ids)
        return (
            torch.gather(self.score, 1, o),
            torch.gather(self.ids, 1, o),
            torch.gather(self.win, 1, o[:, :, None].expand(-1, -1, self.win.shape[2])),
        )

    def offer(
        self, feats: torch.Tensor, score: torch.Tensor, ids: torch.Tensor, windows: torch.Tensor | None, window_fn=None
    ) -> None:
        """Merge candidates (any order, any number per feature) into the kept sets.

        `window_fn(index_tensor)` computes windows lazily, only for the candidates that win a
        place, which keeps gathering cheap.
        """
        if feats.numel() == 0:
            return
        k = self.score.shape[1]
        dev = feats.device
        # Order candidates by feature, then by descending score; rank within feature.
        order = torch.argsort(~_sort_key(score.double()), stable=True)  # ~ reverses: descending
        order = order[torch.argsort(feats[order], stable=True)]
        f_sorted = feats[order]
        uniq, counts = torch.unique_consecutive(f_sorted, return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(f_sorted.numel(), device=dev) - torch.repeat_interleave(starts, counts)
        keep = rank < k
        order, rank = order[keep], rank[keep]
        slot = torch.repeat_interleave(torch.arange(uniq.numel(), device=dev), torch.clamp(counts, max=k))
        n_u = uniq.numel()
        c_score = torch.full((n_u, k), -torch.inf, dtype=torch.float64, device=dev)
        c_ids = torch.full((n_u, k), -1, dtype=torch.int64, device=dev)
        c_src = torch.full((n_u, k), -1, dtype=torch.int64, device=dev)  # which candidate
        c_score[slot, rank] = score[order].to(torch.float64)
        c_ids[slot, rank] = ids[order]
        c_src[slot, rank] = order
        all_score = torch.cat([self.score[uniq], c_score], 1)
        all_ids = torch.cat([self.ids[uniq], c_ids], 1)
        won = torch.zeros_like(all_ids, dtype=torch.bool)
        won.scatter_(1, _rank_order(all_score, all_ids)[:, :k], True)
        # Per row, the evicted slots and the winning candidates come out of nonzero in the same
        # row order and in equal numbers, so they pair up one to one.
        fr, fj = torch.nonzero(~won[:, :k], as_tuple=True)
        wr, wc = torch.nonzero(won[:, k:], as_tuple=True)
        if fr.numel() == 0:
            return
        rows = uniq[fr]
        picked = c_src[wr, wc]
        self.score[rows, fj] = c_score[wr, wc]
        self.ids[rows, fj] = c_ids[wr, wc]
        self.win[rows, fj] = windows[picked] if windows is not None else window_fn(picked)

    def merge(self, other: _TopSet) -> None:
        f, j = torch.nonzero(other.ids >= 0, as_tuple=True)
        self.offer(f, other.score[f, j], other.ids[f, j], other.win[f, j])


class FeatureStats:
    """Running statistics of one SAE; see the module docstring for the merge contract.

    Candidates for the kept sets are filtered against thresholds that are refreshed only when
    pending candidates are folded in (every few batches): a stale threshold only lets extra
    candidates through, and the merge itself is exact, so results do not depend on it. Batching
    the merges pays each one's fixed cost once per several batches instead of every batch.
    """

    FLUSH_CANDIDATES = 32_768
    FLUSH_BATCHES = 8
    _SUMS = ("sum_act", "hist", "sum_x", "sum_x2", "sse", "pos_sse", "pos_x2", "pos_n")
    """tensors that merge by addition (and are saved as they are)"""

    def __init__(self, spec: StatsSpec, device: torch.device | str = "cpu"):
        self.spec = spec
        dev = torch.device(device)
        F = spec.d_sae
        self.sum_act = torch.zeros(F, dtype=torch.float64, device=dev)
        self.hist = torch.zeros(F * (spec.hist_bins + 2), dtype=torch.int64, device=dev)
        self.top = _TopSet(F, spec.n_top, spec.window, dev)
        self.reservoir = _TopSet(F, spec.n_reservoir, spec.window, dev)
        self.n_tokens = 0
        # Reconstruction sums over the tokens update_recon saw: x is the SAE input, err = x - x_hat.
        self.n_recon = 0
        self.sum_x = torch.zeros(spec.d_in, dtype=torch.float64, device=dev)
        self.sum_x2 = torch.zeros((), dtype=torch.float64, device=dev)
        self.sse = torch.zeros((), dtype=torch.float64, device=dev)
        self.pos_sse = torch.zeros(spec.seq_len, dtype=torch.float64, device=dev)
        self.pos_x2 = torch.zeros(spec.seq_len, dtype=torch.float64, device=dev)
        self.pos_n = torch.zeros(spec.seq_len, dtype=torch.int64, device=dev)
        self._pending: dict[str, list[tuple]] = {"top": [], "reservoir": []}
        self._pending_n = self._pending_batches = 0
        self._refresh_thresholds()

    @property
    def device(self) -> torch.device:
        return self.hist.device

    @property
    def count(self) -> torch.Tensor:
        """Firing count per feature: every nonzero activation lands in exactly one histogram bin."""
        return self.hist.view(self.spec.d_sae, -1).sum(1)

    def _refresh_thresholds(self) -> None:
        self._top_min = self.top.threshold().float()  # scores are float32 values: exact
        self._res_max_key = (-self.reservoir.threshold()).clamp(max=2.0**62).long()  # scores are -key

    def flush(self) -> None:
        """Fold pending candidates into the kept sets."""
        for name, items in self._pending.items():
            if items:
                f, score, ids, win = (torch.cat(parts) for parts in zip(*items))
                getattr(self, name).offer(f, score, ids, win)
                items.clear()
        self._pending_n = self._pending_batches = 0
        self._refresh_thresholds()

    @torch.no_grad()
    def update(
        self,
        codes: torch.Tensor,
        seq_ids: torch.Tensor,
        mask: torch.Tensor,
        chosen: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        """Fold one batch of SAE codes in. codes: [B, T, d_sae]; seq_ids: [B] global sequence
        numbers; mask: [B, T] bool, False for tokens excluded from statistics. The rows of
        excluded tokens are zeroed in `codes` itself, which spares a masked copy of the batch.
        `chosen`, for TopK SAEs: the (indices, values) [B, T, k] that hold every nonzero code, so
        the dense codes need not be scanned for them."""
        spec = self.spec
        B, T, F = codes.shape
        dev = codes.device
        flat = codes.reshape(B * T, F)
        valid = mask.reshape(-1)
        n_valid = int(valid.sum())
        self.n_tokens += n_valid
        if n_valid < B * T:
            flat.index_fill_(0, torch.nonzero(~valid).squeeze(1), 0)
        flat1 = flat.reshape(-1)

        # Everything per feature works on the nonzero entries only: codes are sparse.
        small = B * T * F < 2**31  # int32 halves the cost of the index arithmetic below
        if chosen is None:
            idx = torch.nonzero(flat1 > 0).squeeze(1)
            if small:
                idx = idx.to(torch.int32)
            n_idx = idx // F
            f_idx = (idx - n_idx * F).long()
            vals = flat1[idx].float()
        else:
            k = chosen[0].shape[-1]
            c_idx, c_val = chosen[0].reshape(B * T, k), chosen[1].reshape(B * T, k)
            rows = torch.arange(B * T, device=dev)
            if n_valid < B * T:  # whole rows are dropped, which is cheaper than filtering entries
                rows = torch.nonzero(valid).squeeze(1)
                c_idx, c_val = c_idx[rows], c_val[rows]
            n_idx = (rows.to(torch.int32) if small else rows)[:, None].expand(-1, k).reshape(-1)
            f_idx, vals = c_idx.reshape(-1), c_val.reshape(-1).float()
            keep = vals > 0
            if not bool(keep.all()):  # a chosen pre-activation was negative, clipped to 0
                sel = torch.nonzero(keep).squeeze(1)
                n_idx, f_idx, vals = n_idx[sel], f_idx[sel], vals[sel]
        self.sum_act += torch.bincount(f_idx, weights=vals.double(), minlength=F)
        width = (spec.hist_hi - spec.hist_lo) / spec.hist_bins
        b = torch.clamp(torch.floor((torch.log10(vals) - spec.hist_lo) / width).long() + 1, 0, spec.hist_bins + 1)
        self.hist += torch.bincount(f_idx * (spec.hist_bins + 2) + b, minlength=self.hist.numel())

        row_tok = (seq_ids.to(dev)[:, None] * spec.seq_len + torch.arange(T, device=dev)).reshape(-1)
        offsets = torch.arange(-spec.left, spec.right + 1, device=dev, dtype=n_idx.dtype)

        def windows(sel: torch.Tensor) -> torch.Tensor:
            """The feature's activation on each token from `left` before to `right` after the
            candidates' tokens (0 outside the sequence), for the page to shade."""
            n = n_idx[sel]
            tt = (n % T)[:, None] + offsets
            rows = (n[:, None] + offsets).clamp_(0, B * T - 1)
            return torch.take(flat1, rows.long() * F + f_idx[sel][:, None]).float() * ((tt >= 0) & (tt < T))

        def pend(name: str, sel: torch.Tensor, score: torch.Tensor) -> None:
            f, ids = f_idx[sel], row_tok[n_idx[sel].long()]
            if sel.numel() > self.FLUSH_CANDIDATES:
                # While the sets fill up, most candidates lose within the batch itself: merge now
                # and gather windows only for the winners.
                getattr(self, name).offer(f, score, ids, None, lambda o: windows(sel[o]))
                self._refresh_thresholds()
                return
            self._pending[name].append((f, score, ids, windows(sel)))
            self._pending_n += sel.numel()

        # Only candidates that beat the current k-th best can enter, which makes the per-batch
        # work shrink as the sets fill.
        sel = torch.nonzero(vals > self._top_min[f_idx]).squeeze(1)
        pend("top", sel, vals[sel].double())
        keys = token_keys(row_tok, spec.seed)[n_idx]
        sel = torch.nonzero(keys < self._res_max_key[f_idx]).squeeze(1)
        pend("reservoir", sel, -keys[sel].double())
        self._pending_batches += 1
        if self._pending_n >= self.FLUSH_CANDIDATES or self._pending_batches >= self.FLUSH_BATCHES:
            self.flush()

    @torch.no_grad()
    def update_recon(self, x: torch.Tensor, x_hat: torch.Tensor, mask: torch.Tensor) -> None:
        """Fold in reconstruction error on some sequences. x, x_hat: [b, T, d_in]; mask: [b, T].

        Kept apart from `update` because the decoder pass costs as much as the encoder, so the
        harvest measures it on a deterministic subset of sequences (see `recon_every`)."""
        T = x.shape[1]
        m = mask.to(x.dtype)
        err2 = (x - x_hat).pow(2).sum(-1).double() * m
        x2 = x.pow(2).sum(-1).double() * m
        self.n_recon += int(mask.sum())
        self.sum_x += (x * m[:, :, None]).sum((0, 1), dtype=torch.float64)
        self.sum_x2 += x2.sum()
        self.sse += err2.sum()
        self.pos_sse[:T] += err2.sum(0)
        self.pos_x2[:T] += x2.sum(0)
        self.pos_n[:T] += mask.sum(0)

    def merge(self, other: FeatureStats) -> FeatureStats:
        if asdict(self.spec) != asdict(other.spec):
            raise ValueError("cannot merge statistics gathered with different settings")
        self.flush()
        other.flush()
        for name in self._SUMS:
            getattr(self, name).add_(getattr(other, name).to(self.device))
        self.n_tokens += other.n_tokens
        self.n_recon += other.n_recon
        self.top.merge(other.top)
        self.reservoir.merge(other.reservoir)
        return self

    # ---- persistence of partial state (shards, resume) ----
    def state_dict(self) -> dict:
        self.flush()
        d = {name: getattr(self, name).cpu() for name in self._SUMS}
        for set_name in ("top", "reservoir"):
            s = getattr(self, set_name)
            d[set_name] = {"score": s.score.cpu(), "ids": s.ids.cpu(), "win": s.win.cpu()}
        d["n_tokens"] = self.n_tokens
        d["n_recon"] = self.n_recon
        d["spec"] = asdict(self.spec)
        return d

    @classmethod
    def from_state_dict(cls, d: dict, device: torch.device | str = "cpu") -> FeatureStats:
        st = cls(StatsSpec(**d["spec"]), device)
        for name, val in d.items():
            if name in ("spec", "n_tokens", "n_recon", "top", "reservoir"):
                continue
            getattr(st, name).copy_(val)
        for set_name in ("top", "reservoir"):
            s = getattr(st, set_name)
            for k, v in d[set_name].items():
                getattr(s, k).copy_(v)
        st.n_tokens = d["n_tokens"]
        st.n_recon = d["n_recon"]
        st._refresh_thresholds()
        return st

    # ---- final figures ----
    def layer_metrics(self) -> dict:
        n = max(self.n_tokens, 1)
        nr = self.n_recon
        mean = self.sum_x / max(nr, 1)
        total_var = float(self.sum_x2 - nr * mean.pow(2).sum())
        count = self.count
        density = count.double() / n
        return {
            "n_tokens": self.n_tokens,
            "l0": float(count.sum()) / n,
            "mse": float(self.sse) / nr if nr else float("nan"),
            "explained_variance": 1.0 - float(self.sse) / total_var if total_var > 0 else float("nan"),
            "n_dead": int((count == 0).sum()),
            "n_dense": int((density > self.spec.dense_threshold).sum()),
        }

    def feature_table(self) -> dict[str, np.ndarray]:
        self.flush()
        n = max(self.n_tokens, 1)
        count = self.count.cpu().numpy()
        sum_act = self.sum_act.cpu().numpy()
        top = self.top.score.max(1).values.cpu().numpy()
        return {
            "feature": np.arange(self.spec.d_sae, dtype=np.int32),
            "count": count,
            "density": count / n,
            "mean_act": np.where(count > 0, sum_act / np.maximum(count, 1), 0.0),
            "max_act": np.where(count > 0, top, 0.0),
            "hist": self.hist.view(self.spec.d_sae, -1).cpu().numpy(),
        }

    def examples(self) -> dict[str, np.ndarray]:
        """Top examples (kind 0) ranked by activation, then reservoir examples (kind 1) sorted
        by activation and cut into n_buckets equal-count quantile buckets (0 = lowest)."""
        self.flush()
        spec = self.spec
        out = {k: [] for k in ("feature", "kind", "rank", "bucket", "token", "value", "win")}
        _, top_ids, top_win = (t.cpu().numpy() for t in self.top.ordered())
        f, j = np.nonzero(top_ids >= 0)
        out["feature"].append(f)
        out["kind"].append(np.zeros_like(f))
        out["rank"].append(j)
        out["bucket"].append(np.full_like(f, -1))
        out["token"].append(top_ids[f, j])
        out["value"].append(top_win[f, j, spec.left])
        out["win"].append(top_win[f, j])

        r_ids = self.reservoir.ids.cpu().numpy()
        r_win = self.reservoir.win.cpu().numpy()
        r_val = np.where(r_ids >= 0, r_win[:, :, spec.left], -np.inf)
        order = np.argsort(-r_val, axis=1, kind="stable")  # descending activation
        n_have = (r_ids >= 0).sum(1)
        ids_sorted = np.take_along_axis(r_ids, order, 1)
        win_sorted = np.take_along_axis(r_win, order[:, :, None], 1)
        f, j = np.nonzero(ids_sorted >= 0)
        # Position from the bottom of the feature's sample decides the quantile bucket.
        from_bottom = n_have[f] - 1 - j
        bucket = (from_bottom * spec.n_buckets) // np.maximum(n_have[f], 1)
        out["feature"].append(f)
        out["kind"].append(np.ones_like(f))
        out["rank"].append(j)
        out["bucket"].append(bucket)
        out["token"].append(ids_sorted[f, j])
        out["value"].append(win_sorted[f, j, spec.left])
        out["win"].append(win_sorted[f, j])
        return {k: np.concatenate(v) for k, v in out.items()}
