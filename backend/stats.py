"""Mergeable per-SAE statistics gathered in one streaming pass.

Everything here is a sum, a histogram, or a "keep the best k per feature" set, so two states
built on disjoint token shards merge (`merge`) into exactly the state of one pass over both.
Memory is fixed by d_sae and the example budget, never by the number of tokens.

Example windows are recorded at the moment an example enters a top set: the feature's
activation on every token from `left` before to `right` after, so the page can shade them.
Quantile examples come from a uniform reservoir per feature (the r smallest hash keys of
(token, feature)), which is deterministic and therefore shard-independent; at the end the
reservoir is sorted by activation and cut into equal-count buckets.
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


def token_feature_keys(tok_ids: torch.Tensor, feats: torch.Tensor, seed: int) -> torch.Tensor:
    """A pseudo-random priority for each (global token, feature) pair; smaller is kept.

    murmur3's 32-bit finaliser in int64 arithmetic (products wrap, the mask keeps the low 32
    bits), with low bits of the token id below it so keys practically never tie; the whole key
    stays under 2**53 so it survives conversion to float64 exactly.
    """
    h = (tok_ids * 2654435761 + feats * 40503 + seed * 97) & _M32
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & _M32
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & _M32
    h = h ^ (h >> 16)
    return (h << 21) | (tok_ids & ((1 << 21) - 1))


class _TopSet:
    """Per feature, the `k` entries with the largest score, with ids and context windows."""

    def __init__(self, d_sae: int, k: int, window: int, device: torch.device):
        self.score = torch.full((d_sae, k), -torch.inf, dtype=torch.float64, device=device)
        self.ids = torch.full((d_sae, k), -1, dtype=torch.int64, device=device)
        self.win = torch.zeros((d_sae, k, window), dtype=torch.float32, device=device)

    def threshold(self) -> torch.Tensor:
        return self.score[:, -1]

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
        # Order candidates by feature, then by descending score; rank within feature.
        order = torch.argsort(score, descending=True, stable=True)
        order = order[torch.argsort(feats[order], stable=True)]
        f_sorted = feats[order]
        uniq, counts = torch.unique_consecutive(f_sorted, return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(f_sorted.numel(), device=feats.device) - torch.repeat_interleave(starts, counts)
        keep = rank < k
        order, f_sorted, rank = order[keep], f_sorted[keep], rank[keep]
        slot = torch.repeat_interleave(torch.arange(uniq.numel(), device=feats.device), torch.clamp(counts, max=k))
        n_u = uniq.numel()
        dev = feats.device
        c_score = torch.full((n_u, k), -torch.inf, dtype=torch.float64, device=dev)
        c_ids = torch.full((n_u, k), -1, dtype=torch.int64, device=dev)
        c_src = torch.full((n_u, k), -1, dtype=torch.int64, device=dev)  # which candidate
        c_score[slot, rank] = score[order].to(torch.float64)
        c_ids[slot, rank] = ids[order]
        c_src[slot, rank] = order
        all_score = torch.cat([self.score[uniq], c_score], 1)
        all_ids = torch.cat([self.ids[uniq], c_ids], 1)
        # Sort by score, ties by smaller id (repeated text gives exactly equal activations), so
        # the order in which shards merge never changes the result.
        tie = torch.argsort(all_ids, dim=1)
        best = torch.argsort(torch.gather(all_score, 1, tie), dim=1, descending=True, stable=True)
        best = torch.gather(tie, 1, best)[:, :k]
        # Windows: kept entries move within their row; only winning candidates are gathered.
        old = best < k
        win = torch.gather(self.win[uniq], 1, torch.where(old, best, 0)[:, :, None].expand(-1, -1, self.win.shape[2]))
        src = torch.gather(torch.cat([torch.full_like(c_src, -1), c_src], 1), 1, best)
        r, j = torch.nonzero(src >= 0, as_tuple=True)
        if r.numel():
            picked = src[r, j]
            win[r, j] = windows[picked] if windows is not None else window_fn(picked)
        self.score[uniq] = torch.gather(all_score, 1, best)
        self.ids[uniq] = torch.gather(all_ids, 1, best)
        self.win[uniq] = win

    def merge(self, other: _TopSet) -> None:
        f, j = torch.nonzero(other.ids >= 0, as_tuple=True)
        self.offer(f, other.score[f, j], other.ids[f, j], other.win[f, j])


class FeatureStats:
    """Running statistics of one SAE; see the module docstring for the merge contract."""

    def __init__(self, spec: StatsSpec, device: torch.device | str = "cpu"):
        self.spec = spec
        dev = torch.device(device)
        F = spec.d_sae
        self.count = torch.zeros(F, dtype=torch.int64, device=dev)
        self.sum_act = torch.zeros(F, dtype=torch.float64, device=dev)
        self.hist = torch.zeros(F * (spec.hist_bins + 2), dtype=torch.int64, device=dev)
        self.top = _TopSet(F, spec.n_top, spec.window, dev)
        self.reservoir = _TopSet(F, spec.n_reservoir, spec.window, dev)
        # Layer-level sums: x is the SAE input, err = x - x_hat.
        self.n_tokens = 0
        self.sum_x = torch.zeros(spec.d_in, dtype=torch.float64, device=dev)
        self.sum_x2 = torch.zeros((), dtype=torch.float64, device=dev)
        self.sse = torch.zeros((), dtype=torch.float64, device=dev)
        self.sum_l0 = torch.zeros((), dtype=torch.float64, device=dev)
        self.pos_sse = torch.zeros(spec.seq_len, dtype=torch.float64, device=dev)
        self.pos_x2 = torch.zeros(spec.seq_len, dtype=torch.float64, device=dev)
        self.pos_n = torch.zeros(spec.seq_len, dtype=torch.int64, device=dev)

    @property
    def device(self) -> torch.device:
        return self.count.device

    @torch.no_grad()
    def update(
        self, x: torch.Tensor, codes: torch.Tensor, x_hat: torch.Tensor, seq_ids: torch.Tensor, mask: torch.Tensor
    ) -> None:
        """Fold one batch in. x, x_hat: [B, T, d_in]; codes: [B, T, d_sae]; seq_ids: [B] global
        sequence numbers; mask: [B, T] bool, False for tokens excluded from statistics."""
        spec = self.spec
        B, T, F = codes.shape
        m = mask.to(x.dtype)
        err2 = (x - x_hat).pow(2).sum(-1).double() * m
        x2 = x.pow(2).sum(-1).double() * m
        self.n_tokens += int(mask.sum())
        self.sum_x += (x * m[:, :, None]).sum((0, 1), dtype=torch.float64)
        self.sum_x2 += x2.sum()
        self.sse += err2.sum()
        self.pos_sse[:T] += err2.sum(0)
        self.pos_x2[:T] += x2.sum(0)
        self.pos_n[:T] += mask.sum(0)

        # Everything per feature works on the nonzero entries only: codes are sparse.
        flat = codes.reshape(B * T, F)
        n_idx, f_idx = torch.nonzero(flat > 0, as_tuple=True)
        keep = mask.reshape(-1)[n_idx]
        n_idx, f_idx = n_idx[keep], f_idx[keep]
        vals = flat[n_idx, f_idx].float()
        self.count += torch.bincount(f_idx, minlength=F)
        self.sum_act += torch.bincount(f_idx, weights=vals.double(), minlength=F)
        self.sum_l0 += f_idx.numel()
        width = (spec.hist_hi - spec.hist_lo) / spec.hist_bins
        b = torch.clamp(torch.floor((torch.log10(vals) - spec.hist_lo) / width).long() + 1, 0, spec.hist_bins + 1)
        self.hist += torch.bincount(f_idx * (spec.hist_bins + 2) + b, minlength=self.hist.numel())

        tok_ids = seq_ids.to(codes.device)[n_idx // T] * spec.seq_len + (n_idx % T)
        offsets = torch.arange(-spec.left, spec.right + 1, device=codes.device)

        def windows(sel: torch.Tensor) -> torch.Tensor:
            """The feature's activation on each token of the candidates' context windows."""
            bb = (n_idx[sel] // T)[:, None]
            tt = (n_idx[sel] % T)[:, None] + offsets[None, :]
            inside = (tt >= 0) & (tt < T)
            tt = tt.clamp(0, T - 1)
            w = codes[bb, tt, f_idx[sel][:, None]].float()
            return w * (inside & mask[bb, tt])

        # Only candidates that beat the current k-th best can enter; this cut makes the
        # per-batch work shrink as the sets fill.
        sel = torch.nonzero(vals.double() > self.top.threshold()[f_idx], as_tuple=True)[0]
        self.top.offer(f_idx[sel], vals[sel], tok_ids[sel], None, lambda o: windows(sel[o]))

        keys = token_feature_keys(tok_ids, f_idx, spec.seed)
        score = -keys.double()
        sel2 = torch.nonzero(score > self.reservoir.threshold()[f_idx], as_tuple=True)[0]
        self.reservoir.offer(f_idx[sel2], score[sel2], tok_ids[sel2], None, lambda o: windows(sel2[o]))

    def merge(self, other: FeatureStats) -> FeatureStats:
        if asdict(self.spec) != asdict(other.spec):
            raise ValueError("cannot merge statistics gathered with different settings")
        for name in ("count", "sum_act", "hist", "sum_x", "sum_x2", "sse", "sum_l0", "pos_sse", "pos_x2", "pos_n"):
            getattr(self, name).add_(getattr(other, name).to(self.device))
        self.n_tokens += other.n_tokens
        self.top.merge(other.top)
        self.reservoir.merge(other.reservoir)
        return self

    # ---- persistence of partial state (shards, resume) ----
    def state_dict(self) -> dict:
        d = {
            name: getattr(self, name).cpu()
            for name in ("count", "sum_act", "hist", "sum_x", "sum_x2", "sse", "sum_l0", "pos_sse", "pos_x2", "pos_n")
        }
        for set_name in ("top", "reservoir"):
            s = getattr(self, set_name)
            d[set_name] = {"score": s.score.cpu(), "ids": s.ids.cpu(), "win": s.win.cpu()}
        d["n_tokens"] = self.n_tokens
        d["spec"] = asdict(self.spec)
        return d

    @classmethod
    def from_state_dict(cls, d: dict, device: torch.device | str = "cpu") -> FeatureStats:
        st = cls(StatsSpec(**d["spec"]), device)
        for name, val in d.items():
            if name in ("spec", "n_tokens", "top", "reservoir"):
                continue
            getattr(st, name).copy_(val)
        for set_name in ("top", "reservoir"):
            s = getattr(st, set_name)
            for k, v in d[set_name].items():
                getattr(s, k).copy_(v)
        st.n_tokens = d["n_tokens"]
        return st

    # ---- final figures ----
    def layer_metrics(self) -> dict:
        n = max(self.n_tokens, 1)
        mean = self.sum_x / n
        total_var = float(self.sum_x2 - n * mean.pow(2).sum())
        density = self.count.double() / n
        return {
            "n_tokens": self.n_tokens,
            "l0": float(self.sum_l0) / n,
            "mse": float(self.sse) / n,
            "explained_variance": 1.0 - float(self.sse) / total_var if total_var > 0 else float("nan"),
            "n_dead": int((self.count == 0).sum()),
            "n_dense": int((density > self.spec.dense_threshold).sum()),
        }

    def feature_table(self) -> dict[str, np.ndarray]:
        n = max(self.n_tokens, 1)
        count = self.count.cpu().numpy()
        sum_act = self.sum_act.cpu().numpy()
        top = self.top.score[:, 0].cpu().numpy()
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
        spec = self.spec
        out = {k: [] for k in ("feature", "kind", "rank", "bucket", "token", "value", "win")}
        top_ids = self.top.ids.cpu().numpy()
        top_win = self.top.win.cpu().numpy()
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
