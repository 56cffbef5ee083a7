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

from backend.config import PrecomputeConfig
from backend.density import activation_bin_width, is_dense
from backend.density import density as density_of
from backend.engine import nonzero_loops
from backend.engine.topset import TopSet
from backend.store.schema import ExampleKind

_M32 = 0xFFFFFFFF


@dataclass(frozen=True)
class StatsSpec:
    """Sizes of what is kept per feature; fixed for a run so states from shards can merge. The
    run's options (n_top ... seed) have their defaults and help in config.PrecomputeConfig only:
    build one with `for_run`."""

    d_sae: int
    d_in: int
    seq_len: int
    n_top: int
    n_buckets: int
    per_bucket: int
    left: int
    right: int
    seed: int
    hist_lo: float = -4.0
    """log10 of the smallest activation the per-feature histogram resolves"""
    hist_hi: float = 4.0
    hist_bins: int = 64
    pos_buckets: int = 32
    """token positions are counted in this many equal ranges (the last may be shorter)"""

    @classmethod
    def for_run(cls, cfg: PrecomputeConfig, d_sae: int, d_in: int) -> StatsSpec:
        return cls(
            d_sae=d_sae,
            d_in=d_in,
            seq_len=cfg.context_len,
            n_top=cfg.n_top,
            n_buckets=cfg.n_buckets,
            per_bucket=cfg.per_bucket,
            left=cfg.left,
            right=cfg.right,
            seed=cfg.seed,
        )

    @property
    def window(self) -> int:
        return self.left + self.right + 1

    @property
    def n_reservoir(self) -> int:
        return self.n_buckets * self.per_bucket

    @property
    def pos_width(self) -> int:
        """positions per bucket of the position profile"""
        return -(-self.seq_len // self.pos_buckets)

    @property
    def n_pos(self) -> int:
        """buckets of the position profile that hold a position"""
        return -(-self.seq_len // self.pos_width)


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


class FeatureStats:
    """Running statistics of one SAE; see the module docstring for the merge contract.

    Candidates for the kept sets are filtered against thresholds that are refreshed only when
    pending candidates are folded in (every few batches): a stale threshold only lets extra
    candidates through, and the merge itself is exact, so results do not depend on it. Batching
    the merges pays each one's fixed cost once per several batches instead of every batch.
    """

    FLUSH_CANDIDATES = 32_768
    FLUSH_BATCHES = 8
    _SUMS = (
        "sum_act2",
        "sum_act_pos",
        "tok_pos_n",
        "hist",
        "sum_x2",
        "sse",
        "pos_sum_x",
        "pos_sse",
        "pos_x2",
        "pos_n",
        "pos_fire",
        "pos_act",
    )
    """tensors that merge by addition (and are saved as they are)"""

    def __init__(self, spec: StatsSpec, device: torch.device | str = "cpu"):
        self.spec = spec
        dev = torch.device(device)
        F = spec.d_sae
        # for each feature's correlation with token position: sums of a^2 and a * position per
        # feature, and the counted tokens at each position (every token, not only the firing ones)
        self.sum_act2 = torch.zeros(F, dtype=torch.float64, device=dev)
        self.sum_act_pos = torch.zeros(F, dtype=torch.float64, device=dev)
        self.tok_pos_n = torch.zeros(spec.seq_len, dtype=torch.int64, device=dev)
        self.hist = torch.zeros(F * (spec.hist_bins + 2), dtype=torch.int64, device=dev)
        # position profile: firings and activation sum per feature and position bucket, [F * n_pos]
        self.pos_fire = torch.zeros(F * spec.n_pos, dtype=torch.int64, device=dev)
        self.pos_act = torch.zeros(F * spec.n_pos, dtype=torch.float64, device=dev)
        self.top = TopSet(F, spec.n_top, spec.window, dev, center=spec.left)
        self.reservoir = TopSet(F, spec.n_reservoir, spec.window, dev, center=spec.left)
        self.n_tokens = 0
        # Reconstruction sums over the tokens update_recon saw: x is the SAE input, err = x - x_hat.
        self.n_recon = 0
        self.sum_x2 = torch.zeros((), dtype=torch.float64, device=dev)
        # per position, so explained variance can be told inside and beyond an SAE's training context
        self.pos_sum_x = torch.zeros((spec.seq_len, spec.d_in), dtype=torch.float64, device=dev)
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

    @property
    def sum_act(self) -> torch.Tensor:
        """Activation sum per feature, from the position profile (one bincount fewer per batch)."""
        return self.pos_act.view(self.spec.d_sae, -1).sum(1)

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
        floor: torch.Tensor | float | None = None,
    ) -> _Nonzeros:
        """Fold one batch of SAE codes in; returns the nonzeros it read (none in masked tokens'
        rows). codes: [B, T, d_sae]; seq_ids: [B] global sequence numbers; mask: [B, T] bool,
        False for tokens excluded from statistics. The rows of
        excluded tokens are zeroed in `codes` itself, which spares a masked copy of the batch.
        `chosen`, for TopK SAEs: the (indices, values) [B, T, k] that hold every nonzero code, so
        the dense codes need not be scanned for them. `floor`, for ReLU and JumpReLU SAEs
        (LoadedSAE.floor): `codes` are pre-activations, a code being the value where it exceeds
        the floor (a scalar, or per feature) and 0 elsewhere; excluded rows are set to -inf."""
        B, T, F = codes.shape
        flat = codes.reshape(B * T, F)
        valid = mask.reshape(-1)
        n_valid = int(valid.sum())
        self.n_tokens += n_valid
        if n_valid < B * T:
            flat.index_fill_(0, torch.nonzero(~valid).squeeze(1), 0 if floor is None else float("-inf"))
        if chosen is None:
            nz = _Nonzeros.scan(flat, 0.0 if floor is None else floor)
        else:
            nz = _Nonzeros.from_choice(chosen, valid, n_valid, B * T, small=B * T * F < 2**31)
        self.tok_pos_n[:T] += mask.reshape(B, T).sum(0).to(self.tok_pos_n.device)
        row_tok = seq_ids.to(codes.device)[:, None] * self.spec.seq_len + torch.arange(T, device=codes.device)
        row_tok = row_tok.reshape(-1)
        row_key = token_keys(row_tok, self.spec.seed)
        selected = self._add_sums(nz, T, row_key)
        self._offer_candidates(nz, row_tok, row_key, _Windows(flat, nz, T, self.spec, floor), selected)
        return nz

    def _add_sums(self, nz: _Nonzeros, T: int, row_key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Add a batch's nonzeros to the sums; on the CPU the same compiled pass also returns
        which of them are candidates for the top sets and the reservoirs (else None)."""
        spec, F = self.spec, self.spec.d_sae
        width = activation_bin_width(spec.hist_lo, spec.hist_hi, spec.hist_bins)
        b = torch.floor((torch.log10(nz.value) - spec.hist_lo) / width).long() + 1
        b = torch.clamp(b, 0, spec.hist_bins + 1)
        if nonzero_loops.usable(self.hist) and nz.value.dtype == torch.float32:
            sums = {k: getattr(self, k) for k in ("sum_act2", "sum_act_pos", "pos_fire", "pos_act", "hist")}
            offers = (self._top_min, row_key, self._res_max_key)
            return nonzero_loops.add_sums(nz, b, T, spec.n_pos, spec.pos_width, spec.hist_bins + 2, sums, offers)
        v = nz.value.double()
        self.sum_act2 += torch.bincount(nz.feature, weights=v * v, minlength=F)
        pos = nz.row % T
        self.sum_act_pos += torch.bincount(nz.feature, weights=v * pos.double(), minlength=F)
        where = nz.feature * spec.n_pos + torch.div(pos, spec.pos_width, rounding_mode="floor")
        self.pos_fire += torch.bincount(where, minlength=self.pos_fire.numel())
        self.pos_act += torch.bincount(where, weights=v, minlength=self.pos_act.numel())
        self.hist += torch.bincount(nz.feature * (spec.hist_bins + 2) + b, minlength=self.hist.numel())

    def _offer_candidates(self, nz: _Nonzeros, row_tok, row_key, windows: _Windows, selected=None) -> None:
        """Pend the nonzeros that can enter a top set or a reservoir. Only candidates that beat
        the current k-th best can enter, which makes the per-batch work shrink as sets fill.
        `selected`: those candidates' indices, where the sums' pass already found them."""
        if selected is None:
            top = torch.nonzero(nz.value > self._top_min[nz.feature]).squeeze(1)
            res = torch.nonzero(row_key[nz.row] < self._res_max_key[nz.feature]).squeeze(1)
        else:
            top, res = selected
        self._pend("top", nz, top, nz.value[top].double(), row_tok, windows)
        self._pend("reservoir", nz, res, -row_key[nz.row[res]].double(), row_tok, windows)
        self._pending_batches += 1
        if self._pending_n >= self.FLUSH_CANDIDATES or self._pending_batches >= self.FLUSH_BATCHES:
            self.flush()

    def _pend(self, name: str, nz: _Nonzeros, sel, score, row_tok, windows: _Windows) -> None:
        f, ids = nz.feature[sel], row_tok[nz.row[sel].long()]
        if sel.numel() > self.FLUSH_CANDIDATES:
            # While the sets fill up, most candidates lose within the batch itself: merge now
            # and gather windows only for the winners.
            getattr(self, name).offer(f, score, ids, None, lambda o: windows.gather(sel[o]))
            self._refresh_thresholds()
            return
        self._pending[name].append((f, score, ids, windows.gather(sel)))
        self._pending_n += sel.numel()

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
        self.pos_sum_x[:T] += (x * m[:, :, None]).sum(0, dtype=torch.float64)
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
            d[set_name] = getattr(self, set_name).state_dict()
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
            getattr(st, set_name).load_state_dict(d[set_name])
        st.n_tokens = d["n_tokens"]
        st.n_recon = d["n_recon"]
        st._refresh_thresholds()
        return st

    # ---- final figures ----
    def layer_metrics(self) -> LayerMetrics:
        nr = self.n_recon
        mean = self.pos_sum_x.sum(0) / max(nr, 1)
        # explained variance = 1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2, pooled over the
        # tokens whose reconstruction was measured (see recon_every)
        total_var = float(self.sum_x2 - nr * mean.pow(2).sum())
        count = self.count
        density = density_of(count.double(), self.n_tokens)
        return LayerMetrics(
            n_tokens=self.n_tokens,
            l0=float(count.sum()) / max(self.n_tokens, 1),
            mse=float(self.sse) / nr if nr else float("nan"),
            explained_variance=1.0 - float(self.sse) / total_var if total_var > 0 else float("nan"),
            n_dead=int((count == 0).sum()),
            n_dense=int(is_dense(density).sum()),
        )

    def context_metrics(self, train_context: int | None) -> ContextMetrics:
        """Explained variance and relative error on positions inside an SAE's training context
        (position < train_context, the BOS/CLS position counted as 0) and beyond it; None where the
        pass measured no token there (or the context is unknown)."""
        if not train_context:
            return ContextMetrics(None, None, None, None)
        c = min(int(train_context), self.spec.seq_len)
        inside = self._region(slice(0, c))
        beyond = self._region(slice(c, None)) if c < self.spec.seq_len else (None, None)
        return ContextMetrics(*inside, *beyond)

    def _region(self, where: slice) -> tuple[float | None, float | None]:
        n = int(self.pos_n[where].sum())
        if n == 0:
            return None, None
        sse, x2 = float(self.pos_sse[where].sum()), float(self.pos_x2[where].sum())
        total_var = x2 - float(self.pos_sum_x[where].sum(0).pow(2).sum()) / n
        ev = 1.0 - sse / total_var if total_var > 0 else None
        return ev, sse / x2 if x2 > 0 else None

    def position_correlation(self) -> np.ndarray:
        """Pearson correlation, over every counted token, of each feature's activation (0 where
        it does not fire) with the token's position; NaN for a feature that never fired."""
        n_t = self.tok_pos_n.double()
        pos = torch.arange(len(n_t), dtype=torch.float64, device=n_t.device)
        n = n_t.sum()
        sp, sp2 = (n_t * pos).sum(), (n_t * pos * pos).sum()
        sa, sa2, sap = self.sum_act, self.sum_act2, self.sum_act_pos
        cov = n * sap - sa * sp
        var = (n * sa2 - sa * sa).clamp(min=0) * (n * sp2 - sp * sp).clamp(min=0)
        corr = torch.where(var > 0, cov / var.sqrt(), torch.full_like(cov, float("nan")))
        return corr.cpu().numpy()

    def position_profile(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per feature and position bucket, firings [F, n_pos] and activation sums [F, n_pos];
        and the counted tokens per bucket [n_pos] they are rates of."""
        n = self.spec.n_pos
        per_pos = self.tok_pos_n.cpu().numpy()
        tokens = np.add.reduceat(per_pos, np.arange(0, len(per_pos), self.spec.pos_width))[:n]
        return self.pos_fire.view(-1, n).cpu().numpy(), self.pos_act.view(-1, n).cpu().numpy(), tokens

    def feature_table(self) -> dict[str, np.ndarray]:
        self.flush()
        count = self.count.cpu().numpy()
        sum_act = self.sum_act.cpu().numpy()
        top = self.top.score.max(1).values.cpu().numpy()
        return {
            "feature": np.arange(self.spec.d_sae, dtype=np.int32),
            "count": count,
            "density": density_of(count, self.n_tokens),
            "mean_act": np.where(count > 0, sum_act / np.maximum(count, 1), 0.0),
            "pos_corr": self.position_correlation(),
            "max_act": np.where(count > 0, top, 0.0),
            "hist": self.hist.view(self.spec.d_sae, -1).cpu().numpy(),
        }

    def examples(self) -> dict[str, np.ndarray]:
        """Top examples ranked by activation, then reservoir examples sorted by activation and cut
        into n_buckets equal-count activation-quantile buckets (`quantile` 0 = lowest)."""
        self.flush()
        spec = self.spec
        out = {k: [] for k in ("feature", "kind", "rank", "quantile", "token", "value", "win")}
        _, top_ids, top_val, top_win = self.top.ordered()
        top_ids, top_val, top_win = top_ids.cpu().numpy(), top_val.cpu().numpy(), top_win.float().cpu().numpy()
        f, j = np.nonzero(top_ids >= 0)
        out["feature"].append(f)
        out["kind"].append(np.full_like(f, ExampleKind.TOP))
        out["rank"].append(j)
        out["quantile"].append(np.full_like(f, -1))
        out["token"].append(top_ids[f, j])
        out["value"].append(top_val[f, j])
        out["win"].append(top_win[f, j])

        r_ids = self.reservoir.ids.cpu().numpy()
        r_win = self.reservoir.win.float().cpu().numpy()
        r_val = np.where(r_ids >= 0, self.reservoir.val.cpu().numpy(), -np.inf)
        # descending activation, ties by smaller token id as the top sets break them (topset.rank_order):
        # the reservoir's slots fill in arrival order, which differs between one pass and merged shards
        order = np.lexsort((r_ids, -r_val), axis=1)
        n_have = (r_ids >= 0).sum(1)
        ids_sorted = np.take_along_axis(r_ids, order, 1)
        val_sorted = np.take_along_axis(r_val, order, 1)
        win_sorted = np.take_along_axis(r_win, order[:, :, None], 1)
        f, j = np.nonzero(ids_sorted >= 0)
        # Position from the bottom of the feature's sample decides the quantile bucket.
        from_bottom = n_have[f] - 1 - j
        quantile = (from_bottom * spec.n_buckets) // np.maximum(n_have[f], 1)
        out["feature"].append(f)
        out["kind"].append(np.full_like(f, ExampleKind.QUANTILE))
        out["rank"].append(j)
        out["quantile"].append(quantile)
        out["token"].append(ids_sorted[f, j])
        out["value"].append(val_sorted[f, j])
        out["win"].append(win_sorted[f, j])
        res = {k: np.concatenate(v) for k, v in out.items()}
        res["win"][:, spec.left] = res["value"]  # the example's own token at full precision
        return res


@dataclass(frozen=True)
class LayerMetrics:
    """Per-SAE figures from the pass; each field is a column of the `saes` table."""

    n_tokens: int
    """tokens that entered the statistics (special tokens excluded)"""
    l0: float
    """mean number of active features per token"""
    mse: float
    """mean ||x - x_hat||^2 over the tokens whose reconstruction was measured"""
    explained_variance: float
    """1 - sum ||x - x_hat||^2 / sum ||x - mean x||^2 on those tokens"""
    n_dead: int
    """features that never fired"""
    n_dense: int
    """features with density > backend.density.DENSE"""


@dataclass(frozen=True)
class ContextMetrics:
    """Reconstruction inside and beyond an SAE's training context; columns of the `saes` table."""

    ev_inside: float | None
    """explained variance on positions < the SAE's training context"""
    rel_error_inside: float | None
    """sum ||x - x_hat||^2 / sum ||x||^2 on those positions"""
    ev_beyond: float | None
    """the same on positions at or past the training context (None: the run never went beyond)"""
    rel_error_beyond: float | None


@dataclass
class _Nonzeros:
    """The nonzero codes of one batch: token row in the batch, feature, value (all 1-D)."""

    row: torch.Tensor
    feature: torch.Tensor
    value: torch.Tensor

    @classmethod
    def scan(cls, flat: torch.Tensor, floor: torch.Tensor | float = 0.0) -> _Nonzeros:
        """Find them in the dense codes [N, F] (ReLU, JumpReLU and other dense-output SAEs), or
        in the pre-activations where they exceed `floor` (see FeatureStats.update)."""
        N, F = flat.shape
        small = N * F < 2**31  # int32 halves the cost of the index arithmetic
        if nonzero_loops.usable(flat):
            return cls(*nonzero_loops.scan(flat, floor, torch.int32 if small else torch.int64))
        flat1 = flat.reshape(-1)
        idx = torch.nonzero((flat > floor).reshape(-1)).squeeze(1)
        if small:
            idx = idx.to(torch.int32)
        row = idx // F
        return cls(row, (idx - row * F).long(), flat1[idx].float())

    @classmethod
    def from_choice(cls, chosen, valid: torch.Tensor, n_valid: int, n_rows: int, small: bool) -> _Nonzeros:
        """Read them from a TopK encoder's own (indices, values) choice: masked tokens drop out
        as whole rows, and chosen values that ReLU clipped to 0 are filtered out."""
        k = chosen[0].shape[-1]
        idx, val = chosen[0].reshape(n_rows, k), chosen[1].reshape(n_rows, k)
        rows = torch.arange(n_rows, device=idx.device)
        if n_valid < n_rows:  # whole rows are dropped, which is cheaper than filtering entries
            rows = torch.nonzero(valid).squeeze(1)
            idx, val = idx[rows], val[rows]
        row = (rows.to(torch.int32) if small else rows)[:, None].expand(-1, k).reshape(-1)
        feature, value = idx.reshape(-1), val.reshape(-1).float()
        keep = value > 0
        if not bool(keep.all()):  # a chosen pre-activation was negative, clipped to 0
            sel = torch.nonzero(keep).squeeze(1)
            row, feature, value = row[sel], feature[sel], value[sel]
        return cls(row, feature, value)


class _Windows:
    """Context windows of candidates: the feature's activation on each token from `left` before
    to `right` after the candidate's token (0 outside the sequence), for the page to shade."""

    def __init__(self, flat: torch.Tensor, nz: _Nonzeros, seq_len: int, spec: StatsSpec, floor=None):
        self.flat1, self.nz, self.T, self.floor = flat.reshape(-1), nz, seq_len, floor
        self.N, self.F = flat.shape
        self.offsets = torch.arange(-spec.left, spec.right + 1, device=flat.device, dtype=nz.row.dtype)

    def gather(self, sel: torch.Tensor) -> torch.Tensor:
        n, f = self.nz.row[sel], self.nz.feature[sel][:, None]
        tt = (n % self.T)[:, None] + self.offsets
        rows = (n[:, None] + self.offsets).clamp_(0, self.N - 1)
        inside = (tt >= 0) & (tt < self.T)
        v = torch.take(self.flat1, rows.long() * self.F + f)
        if self.floor is not None:  # pre-activations: the code is the value above the floor
            floor = self.floor[f] if isinstance(self.floor, torch.Tensor) else self.floor
            v = torch.where(v > floor, v, 0.0)
        return v.float() * inside
