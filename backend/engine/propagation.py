"""How an SAE's error travels: splice its reconstruction into the model and measure downstream.

Measured on the splice sample, `--splice-seqs` sequences taken as consecutive pairs from every
`--splice-every`-th pair (config.splice_members: a rule of sequence numbers, so a single pass and
any set of shards use the same sequences). For each SAE i of the run:

- at every hook j at or after i's hook that has an SAE in the run: the residual change
  sum ||x'_j - x_j||^2 / sum ||x_j||^2, and, for each SAE of i's family (architecture) at j, its
  reconstruction of the perturbed stream x'_j next to that of the clean x_j on the same tokens;
- at the output, the model's own loss (engine.loss: next-token CE for causal models, the
  contrastive loss sentence encoders are trained with for encoders) with i alone spliced, with
  i's hook zero-ablated instead (with the clean loss, that gives the `saes` table's loss
  recovered), with every SAE of i's family at hooks up to i's spliced at once (compounding), and
  with a random direction of the reconstruction error's norm added at each token instead of the
  error itself (are the SAE's errors worse than random ones of the same size?);
- by context: the loss with i spliced per range of preceding tokens (causal models), or with the
  sample's pairs cut to shorter texts (encoders).

Every forward starts from the clean activations the pass already has (at i's hook for a splice
there, at the deepest hook for the clean output), so a splice at layer L costs only the layers
after L.

Everything is kept as sums, or as outputs per sequence (the losses are computed from those once
the whole sample is in), so shard states add up to exactly one pass. Only i's own
family is measured at later hooks: that is what the Layers page draws, and measuring every family
would double the sample's cost.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from backend.engine import loss
from backend.engine.models import ModelAdapter, constant_splice, hook_depth, recovered
from backend.engine.saes import LoadedSAE
from backend.loss_names import METRIC


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
    """Per-sequence outputs and sums of the splice sample for every (spliced SAE, measured hook / SAE) pair."""

    def __init__(
        self,
        adapter: ModelAdapter,
        saes: list[LoadedSAE],
        device: torch.device,
        context_len: int,
        random_draws: int = 2,
        seed: int = 0,
    ):
        self.adapter, self.saes, self.device = adapter, saes, device
        self.kind = adapter.kind
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
        self.metric = METRIC[adapter.kind]
        self.context_len, self.random_draws, self.seed = context_len, random_draws, seed
        self.lengths = loss.encoder_lengths(context_len) if self.kind == "encoder" else []
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
        self.outputs: dict[tuple[str, str, int], dict[int, torch.Tensor]] = defaultdict(dict)
        """(mode, SAE or "" for the clean model, draw or text length) -> sequence -> its output
        (per-token losses, or the pooled embedding); the losses are computed from these once the
        whole sample is in, since an encoder's contrastive loss pairs sequences"""
        self.tokens: dict[int, torch.Tensor] = {}
        """the sample's token ids by sequence, for the steering sweep at the end of the run"""
        self._pending: list = []

    CHUNK = 8
    """sequences spliced at a time: a causal model's logits for the output metric are
    [rows, T, vocab] floats (50,257 wide for GPT-2), so the sample goes through in chunks"""

    @torch.no_grad()
    def update(
        self, tokens: torch.Tensor, clean: dict[str, torch.Tensor], mask: torch.Tensor, seqs: np.ndarray
    ) -> None:
        """One batch's share of the splice sample: tokens [b, T], clean activations at the run's
        hooks, mask [b, T] of the tokens that count (special tokens excluded), the sequence numbers.
        Rows wait until CHUNK of them are in (a sample spread over the corpus brings a pair per
        batch, and two-row forwards waste most of a CPU's time); `flush` runs the rest. Sums add up
        and outputs are kept per sequence, so chunking changes nothing but memory."""
        self._pending.append((tokens, clean, mask, np.asarray(seqs)))
        if sum(len(p[0]) for p in self._pending) >= self.CHUNK:
            self.flush(whole_chunks=True)

    @torch.no_grad()
    def flush(self, whole_chunks: bool = False) -> None:
        """Run the waiting rows (with `whole_chunks`, only full chunks; the rest keeps waiting)."""
        if not self._pending:
            return
        tokens = torch.cat([p[0] for p in self._pending])
        clean = {h: torch.cat([p[1][h] for p in self._pending]) for h in self._pending[0][1]}
        mask = torch.cat([p[2] for p in self._pending])
        seqs = np.concatenate([p[3] for p in self._pending])
        self._pending = []
        stop = len(tokens) - len(tokens) % self.CHUNK if whole_chunks else len(tokens)
        for start in range(0, stop, self.CHUNK):
            rows = slice(start, start + self.CHUNK)
            self._update(tokens[rows], {h: a[rows] for h, a in clean.items()}, mask[rows], list(seqs[rows]))
        if stop < len(tokens):
            rest = slice(stop, None)
            self._pending = [(tokens[rest], {h: a[rest] for h, a in clean.items()}, mask[rest], seqs[rest])]

    def _keep(self, key: tuple[str, str, int], seqs: list[int], out: torch.Tensor) -> None:
        for s, row in zip(seqs, out):
            self.outputs[key][int(s)] = row.detach().float().cpu()

    def random_like(self, s: LoadedSAE, x: torch.Tensor, x_hat: torch.Tensor, seqs: list[int], draw: int):
        """x plus a random direction per token with the norm of that token's reconstruction error,
        drawn from a generator seeded by (run seed, SAE, sequence, draw): shards draw the same."""
        norm = (x_hat.float() - x.float()).norm(dim=-1, keepdim=True)
        z = torch.stack(
            [
                torch.randn(
                    x.shape[1:],
                    generator=torch.Generator().manual_seed(zlib.crc32(f"{self.seed}/{s.name}/{q}/{draw}".encode())),
                )
                for q in seqs
            ]
        ).to(x.device)
        return (x.float() + norm * torch.nn.functional.normalize(z, dim=-1)).to(x.dtype)

    def _update(self, tokens: torch.Tensor, clean: dict[str, torch.Tensor], mask: torch.Tensor, seqs) -> None:
        m = mask.to(self.device, torch.float64)
        self.n_seqs += len(tokens)
        for q, row in zip(seqs, tokens):
            self.tokens[int(q)] = row.cpu()
        run = self.adapter.spliced_forward
        _, clean_out = run(tokens, clean, {}, [])
        self._keep(("clean", "", 0), seqs, clean_out)
        n_tok = m.sum()
        clean_sq = {h: (clean[h].double().pow(2).sum(-1) * m).sum() for h in self.hooks}  # the same for every splice
        alone, ablated = {}, {}
        for s in self.saes:
            x_hat = splice_fn(s)(clean[s.hook])
            self.recon[(None, s.name)].add(clean[s.hook], x_hat, m)
            got, out = run(tokens, clean, {s.hook: constant_splice(x_hat)}, self.measured[s.name])
            alone[s.name] = (got, out)
            self._keep(("alone", s.name, 0), seqs, out)
            if s.hook not in ablated:
                ablated[s.hook] = self.adapter.ablated_output(tokens, clean, s.hook)
            self._keep(("ablated", s.name, 0), seqs, ablated[s.hook])
            for draw in range(self.random_draws):
                noisy = self.random_like(s, clean[s.hook], x_hat, seqs, draw)
                self._keep(("random", s.name, draw), seqs, run(tokens, clean, {s.hook: constant_splice(noisy)}, [])[1])
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
            self._keep(("compound", chain[0].name, 0), seqs, out)
            for k in range(1, len(chain)):
                x_hat = splice_fn(chain[k])(got[chain[k].hook])
                nxt = [chain[k + 1].hook] if k + 1 < len(chain) else []
                got, out = run(tokens, clean, {chain[k].hook: constant_splice(x_hat)}, nxt)
                self._keep(("compound", chain[k].name, 0), seqs, out)
        for length in self.lengths:  # encoders: the same pairs as shorter texts
            short = loss.truncate(tokens, seqs, length)
            acts = self.adapter.activations(short, self.hooks)
            self._keep(("clean", "", length), seqs, run(short, acts, {}, [])[1])
            for s in self.saes:
                x_hat = splice_fn(s)(acts[s.hook])
                self._keep(("alone", s.name, length), seqs, run(short, acts, {s.hook: constant_splice(x_hat)}, [])[1])

    def loss(self, mode: str, name: str = "", arg: int = 0) -> tuple[float | None, int]:
        return loss.sample_loss(self.kind, self.outputs.get((mode, name, arg), {}))

    def downstream(self, name: str) -> dict[str, float | str | None]:
        """The `saes` table's downstream columns for one SAE: the model's own loss clean, with the
        SAE spliced in, and with its hook zero-ablated, how much of the clean loss the splice
        keeps (CE / contrastive loss recovered), and for encoders the mean cosine of the spliced
        embedding to the clean one; all None without a splice sample (or, for an encoder, a pair)."""
        self.flush()
        (c, n), (s, _), (a, _) = self.loss("clean"), self.loss("alone", name), self.loss("ablated", name)
        cos = loss.mean_cosine(self.outputs.get(("alone", name, 0), {}), self.outputs.get(("clean", "", 0), {}))
        if not n:
            return dict.fromkeys(("metric", "value", "clean", "spliced", "ablated", "cosine"))
        return {
            "metric": f"{self.metric}_recovered",
            "value": recovered(c, s, a),
            "clean": c,
            "spliced": s,
            "ablated": a,
            "cosine": cos if self.kind == "encoder" else None,
        }

    def state_dict(self) -> dict:
        self.flush()
        return {
            "resid": {k: v.cpu() for k, v in self.resid.items()},
            "recon": {k: {f: getattr(v, f).cpu() for f in ("n", "x2", "err", "sum_x")} for k, v in self.recon.items()},
            "outputs": {k: dict(v) for k, v in self.outputs.items()},
            "tokens": dict(self.tokens),
            "n_seqs": self.n_seqs,
        }

    def merge_state(self, d: dict) -> None:
        for k, v in d["resid"].items():
            self.resid[k] += v.to(self.device)
        for k, v in d["recon"].items():
            self.recon[k].merge(_Recon(**{f: t.to(self.device) for f, t in v.items()}))
        for k, v in d["outputs"].items():
            self.outputs[k].update(v)
        self.tokens.update(d["tokens"])
        self.n_seqs += d["n_seqs"]

    # ---- tables ----
    def frames(self, run_id: str, names: dict[str, str]) -> dict[str, pd.DataFrame]:
        """Rows of `propagation`, `propagation_recon`, `splice_output` and `splice_context` (see schema.sql);
        `names` maps each SAE to its id in the database. No rows when the sample was empty."""
        self.flush()
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
        clean, _ = self.loss("clean")
        output = []
        keys = sorted({(mode, i) for mode, i, _ in self.outputs if mode != "clean"})
        for mode, i in keys:
            s = self.by_name[i]
            chain = self.chains.get(family(s), []) if mode == "compound" else [s]  # alone, ablated, random
            upto = [c for c in chain if hook_depth(c.hook) <= hook_depth(s.hook)]
            draws = range(self.random_draws) if mode == "random" else [0]
            values = [self.loss(mode, i, d) for d in draws]
            spliced = [v for v, _ in values if v is not None]
            output.append(
                {
                    "run_id": run_id,
                    "sae": names[i],
                    "mode": mode,
                    "family": family(s),
                    "depth": hook_depth(s.hook),
                    "n_spliced": len(upto),
                    "draws": len(draws) if mode == "random" else None,
                    "metric": self.metric,
                    "n": values[0][1],
                    "clean": clean,
                    "spliced": float(np.mean(spliced)) if spliced else None,
                    "cosine": (
                        float(
                            np.mean(
                                [
                                    loss.mean_cosine(self.outputs[(mode, i, d)], self.outputs[("clean", "", 0)])
                                    for d in draws
                                ]
                            )
                        )
                        if self.kind == "encoder"
                        else None
                    ),
                }
            )
        return {
            "propagation": pd.DataFrame(resid, columns=_COLUMNS["propagation"]),
            "propagation_recon": pd.DataFrame(recon, columns=_COLUMNS["propagation_recon"]),
            "splice_output": pd.DataFrame(output, columns=_COLUMNS["splice_output"]),
            "splice_context": pd.DataFrame(self.context_rows(run_id, names), columns=_COLUMNS["splice_context"]),
        }

    def context_rows(self, run_id: str, names: dict[str, str]) -> list[dict]:
        """The loss with each SAE alone spliced in, by context: causal models per range of tokens
        a prediction sees (from the full sample's per-token losses), encoders per text length
        (the sample run again at shorter lengths, and at the run's own)."""
        rows = []
        if self.kind == "causal":
            clean = self.outputs[("clean", "", 0)]
            for lo, hi in loss.context_buckets(self.context_len):
                cols = slice(lo - 1, hi)  # the prediction at position p sees p + 1 tokens
                c = torch.cat([clean[q][cols].double() for q in sorted(clean)])
                for s in self.saes:
                    spl = self.outputs[("alone", s.name, 0)]
                    v = torch.cat([spl[q][cols].double() for q in sorted(spl)])
                    rows.append(self._context_row(run_id, names, s, lo, hi, len(c), float(c.mean()), float(v.mean())))
            return rows
        for length in [*self.lengths, self.context_len]:
            arg = 0 if length == self.context_len else length
            c, n = self.loss("clean", "", arg)
            if c is None:
                continue
            for s in self.saes:
                rows.append(
                    self._context_row(run_id, names, s, length, length, n, c, self.loss("alone", s.name, arg)[0])
                )
        return rows

    def _context_row(self, run_id, names, s, lo, hi, n, clean, spliced) -> dict:
        return {
            "run_id": run_id,
            "sae": names[s.name],
            "family": family(s),
            "depth": hook_depth(s.hook),
            "metric": self.metric,
            "ctx_lo": lo,
            "ctx_hi": hi,
            "n": n,
            "clean": clean,
            "spliced": spliced,
            "increase": spliced - clean,
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
        "draws",
        "metric",
        "n",
        "clean",
        "spliced",
        "cosine",
    ],
    "splice_context": [
        "run_id",
        "sae",
        "family",
        "depth",
        "metric",
        "ctx_lo",
        "ctx_hi",
        "n",
        "clean",
        "spliced",
        "increase",
    ],
}
