"""Steering every feature: how the model's own loss on the splice sample (engine.loss) changes
when a feature's decoder direction is added at its hook, on every position, at +1 and -1 times
the feature's max activation on the corpus (the unit of the Feature page's live steering).

Measuring that exactly for every feature would be one forward per feature and sign. Instead:
- a first-order estimate for every feature from one backward pass for all hooks: with g the
  gradient of the sample's loss with respect to a vector added at every position of the hook,
  the change at strength s is about s * max_act * (g . W_dec[f]) (so -1 is +1's negative);
- the exact change (a real steered forward) at both signs for the `extremes` features the
  estimate says lower the loss most at +1, the `extremes` it says raise it most, and a sample of
  live features drawn evenly from the quantiles of log10 density.

It runs once the pass is complete (the gradient of an encoder's contrastive loss couples every
sequence of the sample), in the process that writes the run, on the sample's tokens: one pass
and any set of shards measure the same thing.
"""

from __future__ import annotations

import enum
import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from backend.engine import loss
from backend.engine.models import ModelAdapter, constant_splice, hook_depth
from backend.engine.saes import LoadedSAE
from backend.loss_names import METRIC


class Pick(enum.IntEnum):
    """`steering.pick`: why a feature's exact change was measured."""

    NONE = 0
    """not measured: the estimate only"""
    HELP = 1
    """among those the estimate says lower the loss most at +1"""
    HURT = 2
    """among those the estimate says raise it most at +1"""
    SAMPLE = 3
    """drawn evenly across density quantiles (the shares of features that hurt or help come from these)"""


@dataclass(frozen=True)
class SteerSpec:
    extremes: int = 10
    sample: int = 32
    length: int | None = None
    """tokens per text of the sample (config.PrecomputeConfig.steer_len); None: all"""
    density_groups: int = 4
    seed: int = 0


def sample_tokens(kind: str, tokens: torch.Tensor, seqs: list[int], length: int | None) -> torch.Tensor:
    """The steering sample: the splice sample's texts cut to `length` tokens, encoder pairs the way
    the context breakdown cuts them (engine.loss.truncate), causal sequences to their first tokens.
    The live loss curve cuts the same way, so its values at +-1 are the stored ones."""
    if length is None or length >= tokens.shape[1]:
        return tokens
    return loss.truncate(tokens, seqs, length) if kind == "encoder" else tokens[:, :length]


def rows_per_forward(adapter: ModelAdapter, length: int) -> int:
    """Sequences one forward takes: a causal model's logits are [rows, T, vocab] floats (kept to
    256 MB); an encoder's activations are small, 16k tokens at a time."""
    if adapter.kind == "causal":
        return max(1, 2**26 // (length * max(len(adapter.tokenizer), 1)))
    return max(1, 2**14 // length)


@torch.no_grad()
def steered_losses(
    adapter: ModelAdapter, tokens: torch.Tensor, seqs: list[int], hook: str, clean: torch.Tensor, vectors: torch.Tensor
) -> np.ndarray:
    """The sample's loss with each row of `vectors` [K, d] added at `hook` on every position;
    `clean` [n, T, d] is the hook's clean activation on `tokens` [n, T]. Several vectors go
    through one forward (the sample repeated) where it fits."""
    n = len(tokens)
    rows = rows_per_forward(adapter, tokens.shape[1])
    out = np.empty(len(vectors))
    if n <= rows:
        g = max(1, rows // n)
        for k0 in range(0, len(vectors), g):
            v = vectors[k0 : k0 + g].to(clean.device, clean.dtype)
            x = (clean[None] + v[:, None, None, :]).flatten(0, 1)
            reps = len(v)
            o = adapter.spliced_forward(tokens.repeat(reps, 1), {hook: x}, {hook: constant_splice(x)}, [])[1]
            o = o.view(reps, n, *o.shape[1:])
            for j in range(reps):
                out[k0 + j] = float(loss.loss_of(adapter.kind, o[j], seqs))
        return out
    for k, v in enumerate(vectors):
        parts = []
        for r in range(0, n, rows):
            x = clean[r : r + rows] + v.to(clean.device, clean.dtype)
            parts.append(adapter.spliced_forward(tokens[r : r + rows], {hook: x}, {hook: constant_splice(x)}, [])[1])
        out[k] = float(loss.loss_of(adapter.kind, torch.cat(parts), seqs))
    return out


class Sweep:
    """The sample's clean activations, clean loss and the loss gradient at every hook, once;
    then `table(s, max_act, density)` per SAE."""

    def __init__(self, adapter: ModelAdapter, saes: list[LoadedSAE], sample: dict[int, torch.Tensor], spec: SteerSpec):
        self.adapter, self.spec = adapter, spec
        self.seqs = sorted(sample)
        self.hooks = sorted({s.hook for s in saes})
        full = torch.stack([sample[q] for q in self.seqs]).to(adapter.device)
        self.tokens = sample_tokens(adapter.kind, full, self.seqs, spec.length)
        rows = rows_per_forward(adapter, self.tokens.shape[1])
        chunks = [slice(r, r + rows) for r in range(0, len(self.tokens), rows)]
        acts = [adapter.activations(self.tokens[c], self.hooks) for c in chunks]
        self.clean = {h: torch.cat([a[h] for a in acts]) for h in self.hooks}
        with torch.no_grad():
            outs = torch.cat([adapter.spliced_forward(self.tokens[c], {}, {}, [])[1] for c in chunks])
        # d loss / d output for the whole sample, then one backward per chunk to every hook
        outs = outs.detach().double().requires_grad_(True)
        with torch.enable_grad():
            total = loss.loss_of(adapter.kind, outs, self.seqs)
            (d_out,) = torch.autograd.grad(total, outs)
        self.clean_loss = float(total.detach())
        self.grad = {h: torch.zeros(adapter.d_model, dtype=torch.float64, device=adapter.device) for h in self.hooks}
        first = min(self.hooks, key=hook_depth)
        for c in chunks:
            x0 = self.clean[first][c]
            added = {
                h: torch.zeros(x0.shape[-1], dtype=x0.dtype, device=x0.device, requires_grad=True) for h in self.hooks
            }
            splices = {h: (lambda x, d=added[h]: x + d) for h in self.hooks}
            o = adapter.output_with_grad(self.tokens[c], {first: x0}, splices)
            grads = torch.autograd.grad(o, list(added.values()), grad_outputs=d_out[c].to(o.dtype), allow_unused=True)
            for h, g in zip(added, grads):
                if g is not None:
                    self.grad[h] += g.double()

    def estimate(self, s: LoadedSAE, max_act: np.ndarray) -> np.ndarray:
        """First-order change of the loss at +1 for every feature; NaN for features that never fired."""
        g = self.grad[s.hook].to(s.sae.W_dec.device)
        est = (s.sae.W_dec.detach().double() @ g).cpu().numpy() * max_act
        return np.where(max_act > 0, est, np.nan)

    def pick(self, s: LoadedSAE, est: np.ndarray, density: np.ndarray) -> np.ndarray:
        spec = self.spec
        pick = np.full(len(est), int(Pick.NONE), dtype=np.int8)
        live = np.flatnonzero(np.isfinite(est))
        if not len(live):
            return pick
        order = live[np.argsort(est[live], kind="stable")]
        k = min(spec.extremes, len(order) // 2)
        pick[order[:k]] = Pick.HELP
        pick[order[len(order) - k :]] = Pick.HURT
        rest = live[pick[live] == Pick.NONE]
        if len(rest) and spec.sample:
            rng = np.random.default_rng([spec.seed, zlib.crc32(s.name.encode())])
            logd = np.log10(density[rest])
            groups = np.array_split(rest[np.argsort(logd, kind="stable")], spec.density_groups)
            per = -(-spec.sample // spec.density_groups)
            for grp in groups:
                if len(grp):
                    pick[rng.choice(grp, size=min(per, len(grp)), replace=False)] = Pick.SAMPLE
        return pick

    def table(self, name: str, s: LoadedSAE, max_act: np.ndarray, density: np.ndarray) -> pd.DataFrame:
        """Rows of `steering` for one SAE (see schema.sql): every feature's estimate, and the
        exact change at +1 and -1 where measured."""
        est = self.estimate(s, max_act)
        pick = self.pick(s, est, density)
        chosen = np.flatnonzero(pick != Pick.NONE)
        plus = np.full(len(est), np.nan)
        minus = np.full(len(est), np.nan)
        if len(chosen):
            w = s.sae.W_dec.detach()[torch.as_tensor(chosen, device=s.sae.W_dec.device)].float()
            v = w * torch.as_tensor(max_act[chosen], dtype=torch.float32, device=w.device)[:, None]
            got = steered_losses(self.adapter, self.tokens, self.seqs, s.hook, self.clean[s.hook], torch.cat([v, -v]))
            plus[chosen] = got[: len(chosen)] - self.clean_loss
            minus[chosen] = got[len(chosen) :] - self.clean_loss
        return pd.DataFrame(
            {
                "sae": name,
                "feature": np.arange(len(est), dtype=np.int32),
                "estimate": est,
                "exact_plus": plus,
                "exact_minus": minus,
                "pick": pick,
            }
        )

    def summary(self, name: str, t: pd.DataFrame) -> dict:
        """One `steering_summary` row: the shares that hurt and help, and how well the estimate agrees."""
        live = t[t["estimate"].notna()]
        sample = t[t["pick"] == Pick.SAMPLE]
        ex = t[t["pick"] != Pick.NONE]
        est = np.concatenate([ex["estimate"], -ex["estimate"]])
        exact = np.concatenate([ex["exact_plus"], ex["exact_minus"]])
        ok = len(exact) >= 3 and np.ptp(exact) > 0 and np.ptp(est) > 0
        return {
            "sae": name,
            "metric": METRIC[self.adapter.kind],
            "clean_loss": self.clean_loss,
            "n_seqs": len(self.seqs),
            "n_live": len(live),
            "est_hurt_plus": float((live["estimate"] > 0).mean()) if len(live) else None,
            "est_hurt_minus": float((live["estimate"] < 0).mean()) if len(live) else None,
            "n_sample": len(sample),
            "hurt_plus": float((sample["exact_plus"] > 0).mean()) if len(sample) else None,
            "hurt_minus": float((sample["exact_minus"] > 0).mean()) if len(sample) else None,
            "hurt_both": float(((sample["exact_plus"] > 0) & (sample["exact_minus"] > 0)).mean())
            if len(sample)
            else None,
            "n_exact": len(ex),
            "spearman": float(pd.Series(est).corr(pd.Series(exact), method="spearman")) if ok else None,
            "sign_agree": float((np.sign(est) == np.sign(exact)).mean()) if len(exact) else None,
        }
