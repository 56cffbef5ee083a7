"""How an SAE's error travels: splice its reconstruction into the model and measure downstream.

Measured on the splice sample, the sequences numbered below `--splice-seqs` (a global rule, so a
single pass and any set of shards use the same sequences). For each SAE i of the run:

- at every hook j at or after i's hook that has an SAE in the run: the residual change
  sum ||x'_j - x_j||^2 / sum ||x_j||^2, and, for each SAE of i's family (architecture) at j, its
  reconstruction of the perturbed stream x'_j next to that of the clean x_j on the same tokens;
- at the output, the model's metric (per-token CE loss for causal models, cosine of the
  mean-pooled final embedding to the clean one for encoders) with i alone spliced, with i's hook
  zero-ablated instead (together with the clean output, that gives the `saes` table's CE loss /
  cosine recovered), and with every SAE of i's family at hooks up to i's spliced at once
  (compounding).

Every forward starts from the clean activations the pass already has (at i's hook for a splice
there, at the deepest hook for the clean output), so a splice at layer L costs only the layers
after L.

Everything is kept as sums and counts, so shard states add up to exactly one pass. Only i's own
family is measured at later hooks: that is what the Layers page draws, and measuring every family
would double the sample's cost.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import pandas as pd
import torch

from backend.engine.models import ModelAdapter, constant_splice, hook_depth, recovered
from backend.engine.saes import LoadedSAE

OUTPUT_METRIC = {"causal": "ce_loss", "encoder": "cosine"}


def family(s: LoadedSAE) -> str:
    return s.sae.cfg.architecture()


def splice_fn(s: LoadedSAE):
    """Replace a hook's activations by the SAE's reconstruction of them."""

    def fn(x: torch.Tensor) -> torch.Tensor:
        codes, chosen = s.encode(x.to(s.sae.dtype))
        return s.decode(codes, chosen).to(x.dtype)

    return fn


def measured_after(hook: str, hooks: list[str]) -> list[str]:
    """Hooks where a splice at `hook` is measured: itself, and every hook strictly deeper.
    A different name at the same depth (resid_post L and resid_pre L+1) may run before the
    splice in the forward pass, so it is left out rather than measured on the clean stream."""
    d = hook_depth(hook)
    return [h for h in hooks if h == hook or hook_depth(h) > d]


def compound_chains(saes: list[LoadedSAE]) -> dict[str, list[LoadedSAE]]:
    """Per family, its SAEs in depth order; a family with two SAEs at one depth has no chain
    (which of them to splice there is not defined)."""
    by_family: dict[str, list[LoadedSAE]] = defaultdict(list)
    for s in saes:
        by_family[family(s)].append(s)
    out = {}
    for fam, members in by_family.items():
        if len({hook_depth(s.hook) for s in members}) == len(members):
            out[fam] = sorted(members, key=lambda s: hook_depth(s.hook))
    return out


@dataclass
class _Recon:
    """Sums for one SAE reconstructing one stream: tokens, sum ||x||^2, sum ||x - x_hat||^2, sum x."""

    n: torch.Tensor
    x2: torch.Tensor
    err: torch.Tensor
    sum_x: torch.Tensor

    @classmethod
    def zeros(cls, d: int, device) -> _Recon:
        z = torch.zeros((), dtype=torch.float64, device=device)
        return cls(z.clone(), z.clone(), z.clone(), torch.zeros(d, dtype=torch.float64, device=device))

    def add(self, x: torch.Tensor, x_hat: torch.Tensor, m: torch.Tensor) -> None:
        x, x_hat = x.double(), x_hat.double()
        self.n += m.sum()
        self.x2 += (x.pow(2).sum(-1) * m).sum()
        self.err += ((x - x_hat).pow(2).sum(-1) * m).sum()
        self.sum_x += (x * m[..., None]).sum((0, 1))

    def merge(self, o: _Recon) -> None:
        self.n += o.n
        self.x2 += o.x2
        self.err += o.err
        self.sum_x += o.sum_x

    def figures(self) -> dict[str, float]:
        n, x2, err = float(self.n), float(self.x2), float(self.err)
        var = x2 - float(self.sum_x.pow(2).sum()) / n if n else float("nan")
        return {
            "n_tokens": int(n),
            "x2": x2,
            "err": err,
            "var": var,
            "ev": 1.0 - err / var if n and var > 0 else None,
            "rel_error": err / x2 if x2 > 0 else None,
        }


class Propagation:
    """Sums of the splice sample for every (spliced SAE, measured hook / SAE) pair."""

    def __init__(self, adapter: ModelAdapter, saes: list[LoadedSAE], device: torch.device):
        self.adapter, self.saes, self.device = adapter, saes, device
        self.hooks = sorted({s.hook for s in saes}, key=hook_depth)
        self.by_name = {s.name: s for s in saes}
        self.measured = {s.name: measured_after(s.hook, self.hooks) for s in saes}
        # SAEs of i's family read at each measured hook, i itself excluded
        self.targets = {
            s.name: {
                h: [t for t in saes if t.hook == h and family(t) == family(s) and t.name != s.name]
                for h in self.measured[s.name]
            }
            for s in saes
        }
        self.chains = compound_chains(saes)
        self.metric = OUTPUT_METRIC[adapter.kind]
        self.n_seqs = 0
        zero = lambda n: torch.zeros(n, dtype=torch.float64, device=device)  # noqa: E731
        # (i, hook) -> [tokens, sum ||x' - x||^2, sum ||x||^2]
        self.resid = {(s.name, h): zero(3) for s in saes for h in self.measured[s.name]}
        # (i or None for the clean stream, target j) -> sums of j's reconstruction
        d = {s.name: s.sae.cfg.d_in for s in saes}
        self.recon = {(None, s.name): _Recon.zeros(d[s.name], device) for s in saes}
        for s in saes:
            for ts in self.targets[s.name].values():
                for t in ts:
                    self.recon[(s.name, t.name)] = _Recon.zeros(d[t.name], device)
        # (mode, i) -> [n, sum of the clean metric, sum of the spliced (or ablated) one]
        self.output = {(mode, s.name): zero(3) for s in saes for mode in ("alone", "ablated")}
        for chain in self.chains.values():
            for s in chain:
                self.output[("compound", s.name)] = zero(3)

    CHUNK = 8
    """sequences spliced at a time: a causal model's logits for the output metric are
    [rows, T, vocab] floats (50,257 wide for GPT-2), so the sample goes through in chunks"""

    @torch.no_grad()
    def update(self, tokens: torch.Tensor, clean: dict[str, torch.Tensor], mask: torch.Tensor) -> None:
        """One batch of the splice sample: tokens [b, T], clean activations at the run's hooks,
        mask [b, T] of the tokens that count (special tokens excluded). Sums add up, so
        chunking changes nothing but memory."""
        for start in range(0, len(tokens), self.CHUNK):
            rows = slice(start, start + self.CHUNK)
            self._update(tokens[rows], {h: a[rows] for h, a in clean.items()}, mask[rows])

    def _update(self, tokens: torch.Tensor, clean: dict[str, torch.Tensor], mask: torch.Tensor) -> None:
        m = mask.to(self.device, torch.float64)
        self.n_seqs += len(tokens)
        run = self.adapter.spliced_forward
        _, clean_out = run(tokens, clean, {}, [])
        n_tok = m.sum()
        clean_sq = {h: (clean[h].double().pow(2).sum(-1) * m).sum() for h in self.hooks}  # the same for every splice
        alone, ablated = {}, {}
        for s in self.saes:
            x_hat = splice_fn(s)(clean[s.hook])
            self.recon[(None, s.name)].add(clean[s.hook], x_hat, m)
            got, out = run(tokens, clean, {s.hook: constant_splice(x_hat)}, self.measured[s.name])
            alone[s.name] = (got, out)
            self._add_output(("alone", s.name), clean_out, out)
            if s.hook not in ablated:
                ablated[s.hook] = self.adapter.ablated_output(tokens, clean, s.hook)
            self._add_output(("ablated", s.name), clean_out, ablated[s.hook])
            for h, x_new in got.items():
                cell = self.resid[(s.name, h)]
                cell[0] += n_tok
                cell[1] += ((x_new.double() - clean[h].double()).pow(2).sum(-1) * m).sum()
                cell[2] += clean_sq[h]
                for t in self.targets[s.name][h]:
                    self.recon[(s.name, t.name)].add(x_new, splice_fn(t)(x_new), m)
        for chain in self.chains.values():
            # Walk the chain once: the stream at the next SAE's hook, with every SAE so far
            # spliced, is captured on the way, and the forward starts from there with that SAE's
            # reconstruction put in. The first link is the first SAE alone, which already ran.
            got, out = alone[chain[0].name]
            self._add_output(("compound", chain[0].name), clean_out, out)
            for k in range(1, len(chain)):
                x_hat = splice_fn(chain[k])(got[chain[k].hook])
                nxt = [chain[k + 1].hook] if k + 1 < len(chain) else []
                got, out = run(tokens, clean, {chain[k].hook: constant_splice(x_hat)}, nxt)
                self._add_output(("compound", chain[k].name), clean_out, out)

    def _add_output(self, key, clean_out: torch.Tensor, out: torch.Tensor) -> None:
        cell = self.output[key]
        if self.metric == "ce_loss":  # per-token losses [b, T-1]
            cell[0] += out.numel()
            cell[1] += clean_out.double().sum()
            cell[2] += out.double().sum()
        else:  # pooled embeddings [b, d]: cosine to the clean one, which is 1 for the clean run
            cos = torch.nn.functional.cosine_similarity(out.double(), clean_out.double(), dim=-1)
            cell[0] += len(cos)
            cell[1] += len(cos)
            cell[2] += cos.sum()

    def downstream(self, name: str) -> dict[str, float | str | None]:
        """The `saes` table's downstream columns for one SAE: the output metric clean, with the
        SAE spliced in, and with its hook zero-ablated, and how much of the clean model the splice
        keeps (CE loss or cosine recovered); all None without a splice sample."""
        n, clean, spliced = self.output[("alone", name)].tolist()
        ablated = self.output[("ablated", name)][2].item()
        metric = f"{self.metric}_recovered"
        if not n:
            return dict.fromkeys(("metric", "value", "clean", "spliced", "ablated"))
        c, s, a = clean / n, spliced / n, ablated / n
        return {"metric": metric, "value": recovered(metric, c, s, a), "clean": c, "spliced": s, "ablated": a}

    def state_dict(self) -> dict:
        return {
            "resid": {k: v.cpu() for k, v in self.resid.items()},
            "recon": {k: {f: getattr(v, f).cpu() for f in ("n", "x2", "err", "sum_x")} for k, v in self.recon.items()},
            "output": {k: v.cpu() for k, v in self.output.items()},
            "n_seqs": self.n_seqs,
        }

    def merge_state(self, d: dict) -> None:
        for k, v in d["resid"].items():
            self.resid[k] += v.to(self.device)
        for k, v in d["recon"].items():
            self.recon[k].merge(_Recon(**{f: t.to(self.device) for f, t in v.items()}))
        for k, v in d["output"].items():
            self.output[k] += v.to(self.device)
        self.n_seqs += d["n_seqs"]

    # ---- tables ----
    def frames(self, run_id: str, names: dict[str, str]) -> dict[str, pd.DataFrame]:
        """Rows of `propagation`, `propagation_recon` and `splice_output` (see schema.sql);
        `names` maps each SAE to its id in the database. No rows when the sample was empty."""
        if not self.n_seqs:
            return {t: pd.DataFrame(columns=c) for t, c in _COLUMNS.items()}
        resid = []
        for (i, h), (n, delta, x2) in ((k, v.tolist()) for k, v in self.resid.items()):
            resid.append(
                {
                    "run_id": run_id,
                    "sae": names[i],
                    "hook": h,
                    "depth": hook_depth(h),
                    "n_tokens": int(n),
                    "delta_sq": delta,
                    "clean_sq": x2,
                    "resid_change": delta / x2 if x2 > 0 else None,
                }
            )
        recon = []
        for (i, j), sums in self.recon.items():
            if i is None:
                continue
            c, p = self.recon[(None, j)].figures(), sums.figures()
            # the clean figures on the splice sample's tokens, which are the same tokens
            recon.append(
                {
                    "run_id": run_id,
                    "sae": names[i],
                    "target": names[j],
                    "hook": self.by_name[j].hook,
                    "depth": hook_depth(self.by_name[j].hook),
                    "n_tokens": p["n_tokens"],
                    **{f"{k}_clean": c[k] for k in ("err", "var", "x2", "ev", "rel_error")},
                    **{f"{k}_spliced": p[k] for k in ("err", "var", "x2", "ev", "rel_error")},
                }
            )
        output = []
        for (mode, i), (n, clean, spliced) in ((k, v.tolist()) for k, v in self.output.items()):
            s = self.by_name[i]
            chain = self.chains.get(family(s), []) if mode == "compound" else [s]  # alone, ablated
            upto = [c for c in chain if hook_depth(c.hook) <= hook_depth(s.hook)]
            output.append(
                {
                    "run_id": run_id,
                    "sae": names[i],
                    "mode": mode,
                    "family": family(s),
                    "depth": hook_depth(s.hook),
                    "n_spliced": len(upto),
                    "metric": self.metric,
                    "n": int(n),
                    "clean_sum": clean,
                    "spliced_sum": spliced,
                    "clean": clean / n if n else None,
                    "spliced": spliced / n if n else None,
                }
            )
        return {
            "propagation": pd.DataFrame(resid, columns=_COLUMNS["propagation"]),
            "propagation_recon": pd.DataFrame(recon, columns=_COLUMNS["propagation_recon"]),
            "splice_output": pd.DataFrame(output, columns=_COLUMNS["splice_output"]),
        }


_RECON_FIGS = [f"{k}_{w}" for w in ("clean", "spliced") for k in ("err", "var", "x2", "ev", "rel_error")]
_COLUMNS = {
    "propagation": ["run_id", "sae", "hook", "depth", "n_tokens", "delta_sq", "clean_sq", "resid_change"],
    "propagation_recon": ["run_id", "sae", "target", "hook", "depth", "n_tokens", *_RECON_FIGS],
    "splice_output": [
        "run_id",
        "sae",
        "mode",
        "family",
        "depth",
        "n_spliced",
        "metric",
        "n",
        "clean_sum",
        "spliced_sum",
        "clean",
        "spliced",
    ],
}
