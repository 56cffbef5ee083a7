"""Precompute overhead: full precompute time / (bare model forward + SAE encode) on the same tokens.

The baseline runs exactly the model forward passes and `sae.encode` calls the precompute needs,
on the same batches, and nothing else. The full run, with default options, adds reading the
corpus, the decoder pass (on every 4th batch, `--recon-every`), all statistics, example
windows, the splice sample, token effects, neighbours and the DuckDB write. Those last
three (`finalize`) and the splice sample do not grow with tokens, so the ratio falls as
--n-tokens grows (about 5 s of such fixed cost on a 2-core CPU); the "streaming pass" line
leaves `finalize` out.

`--setting small` measures exactly those fixed costs: a 2-layer d_model-256 random
HookedTransformer (d_vocab 30,522, byte-level BPE trained on CPython's docs and padded) with
one ReLU SAE 256 -> 4,096 at blocks.1.hook_resid_pre, its encoder biases set from the model's
own activations so each feature fires on about 1% of tokens, 256 sequences x 128 tokens.
`--arch jumprelu` turns the demo's ReLU SAEs into sae_lens JumpReLUSAEs that fire on exactly the
same tokens: each b_enc raised by 0.1 and every threshold 0.1, so a code is the ReLU code plus the
jump (random SAEs without the demo).

The breakdown lines split the full run's time beyond the bare pass into its parts, each timed
where it runs (exclusive of the parts it calls; encodes inside the splice sample count as the
sample): the model forward and the encodes inside the full run (their excess over the bare pass
is what the full run's own encode step adds), the nonzero scan, the per-feature statistics (on
the CPU also the choice of top-k and reservoir candidates, made in the same compiled pass), the
top-k and reservoir offers (with their context windows), the reconstruction error, the splice
sample, the token file, finalize, and the rest. Each is also given as a fraction of the bare
time, and the fractions add up to overhead_ratio - 1.
Last line: overhead_ratio=<x> tokens_per_s=<y>
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import backend.engine.harvest as harvest  # noqa: E402
import backend.engine.pipeline as pipeline  # noqa: E402
from backend.config import PrecomputeConfig, SAESource  # noqa: E402
from backend.engine.models import load_model  # noqa: E402
from backend.engine.pipeline import precompute  # noqa: E402
from backend.engine.saes import load_saes  # noqa: E402

JUMP = 0.1
"""the threshold of the bench's JumpReLU SAEs, and what their b_enc is raised by"""


def random_saes(folder: Path, hooks: list[str], d_in: int, d_sae: int, arch: str) -> list[SAESource]:
    from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    out = []
    for h in hooks:
        torch.manual_seed(len(out))
        meta = SAEMetadata(hook_name=h)
        sae = (
            TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=32, metadata=meta))
            if arch == "topk"
            else StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=meta))
        )
        with torch.no_grad():
            sae.W_enc.normal_(0, d_in**-0.5)
            sae.b_enc.fill_(-0.5)
        sae.save_model(str(folder / h))
        out.append(SAESource(path=str(folder / h)))
    return [jumprelu_copy(s, folder) for s in out] if arch == "jumprelu" else out


def jumprelu_copy(source: SAESource, folder: Path) -> SAESource:
    """A JumpReLUSAE that fires where the ReLU SAE at `source` does, each code raised by JUMP."""
    from sae_lens import SAE, JumpReLUSAE, JumpReLUSAEConfig

    relu = SAE.load_from_disk(source.path)
    c = relu.cfg
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=c.d_in, d_sae=c.d_sae, metadata=c.metadata))
    with torch.no_grad():
        for name in ("W_enc", "W_dec", "b_dec"):
            getattr(sae, name).copy_(getattr(relu, name))
        sae.b_enc.copy_(relu.b_enc + JUMP)
        sae.threshold.fill_(JUMP)
    out = folder / f"jumprelu-{Path(source.path).name}"
    sae.save_model(str(out))
    return SAESource(path=str(out))


def small_setting(folder: Path, device: str):
    """The fixed-cost setting (see the module docstring): the adapter, the SAE's source, the corpus file."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata
    from scale import _corpus, _tokenizer
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from backend.engine.models import HookedAdapter

    tok = _tokenizer(folder, 30522)
    cfg = HookedTransformerConfig(
        n_layers=2, d_model=256, n_heads=4, d_head=64, d_mlp=1024, n_ctx=128, d_vocab=30522,
        act_fn="gelu_new", normalization_type="LN", seed=0, device=device,
    )  # fmt: skip
    adapter = HookedAdapter(HookedTransformer(cfg, tokenizer=tok).eval(), name="small-random")
    hook = "blocks.1.hook_resid_pre"
    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=256, d_sae=4096, metadata=SAEMetadata(hook_name=hook)))
    text = _corpus()[:200_000]
    ids = torch.tensor(tok(text)["input_ids"][: 16 * 127]).view(16, 127)
    with torch.no_grad():
        sae.W_enc.normal_(0, 256**-0.5)
        sae.W_dec.copy_(sae.W_enc.T / sae.W_enc.T.norm(dim=1, keepdim=True))
        x = adapter.activations(adapter.wrap(ids.numpy())[0], [hook])[hook].reshape(-1, 256).cpu()
        pre = (x - sae.b_dec) @ sae.W_enc  # each feature's threshold: its 99th percentile here
        sae.b_enc.copy_(-torch.quantile(pre, 0.99, dim=0))
    sae.save_model(str(folder / "relu-4096"))
    (folder / "corpus.txt").write_text(_corpus())
    return adapter, [SAESource(path=str(folder / "relu-4096"))], str(folder / "corpus.txt")


class Parts:
    """Exclusive wall time of named parts of the full run, timed only while `on`. A part entered
    inside another is paused out of it, except inside the splice sample and finalize, whose inner
    calls count as themselves."""

    SWALLOWING = ("splice sample", "finalize")

    def __init__(self, sync):
        self.sync, self.on = sync, False
        self.total: dict[str, float] = {}
        self._stack: list[list] = []  # [name, start of its current stretch]

    def wrap(self, owner, attr: str, part: str) -> None:
        real = getattr(owner, attr)
        timer = self

        def timed(*a, **kw):
            if not timer.on or (timer._stack and timer._stack[-1][0] in timer.SWALLOWING):
                return real(*a, **kw)
            timer._enter(part)
            try:
                return real(*a, **kw)
            finally:
                timer._leave()

        setattr(owner, attr, timed)

    def _enter(self, part: str) -> None:
        self.sync()
        now = time.perf_counter()
        if self._stack:
            top = self._stack[-1]
            self.total[top[0]] = self.total.get(top[0], 0.0) + now - top[1]
        self._stack.append([part, now])

    def _leave(self) -> None:
        self.sync()
        now = time.perf_counter()
        part, start = self._stack.pop()
        self.total[part] = self.total.get(part, 0.0) + now - start
        if self._stack:
            self._stack[-1][1] = now


def time_parts(parts: Parts, adapter) -> None:
    from backend.engine import stats
    from backend.engine.propagation import Propagation
    from backend.engine.saes import LoadedSAE

    parts.wrap(type(adapter), "activations", "model forward")
    parts.wrap(LoadedSAE, "encode", "encode")
    parts.wrap(LoadedSAE, "pre_activations", "encode")
    parts.wrap(stats._Nonzeros, "scan", "nonzero scan")
    parts.wrap(stats._Nonzeros, "from_choice", "nonzero scan")
    parts.wrap(stats.FeatureStats, "update", "statistics")
    parts.wrap(stats.FeatureStats, "_add_sums", "statistics")
    parts.wrap(stats.FeatureStats, "_offer_candidates", "top-k / reservoir offers")
    parts.wrap(stats.FeatureStats, "flush", "top-k / reservoir offers")
    for name in ("decode", "decode_nonzeros"):
        parts.wrap(LoadedSAE, name, "reconstruction")
    parts.wrap(stats.FeatureStats, "update_recon", "reconstruction")
    parts.wrap(Propagation, "update", "splice sample")
    parts.wrap(Propagation, "flush", "splice sample")
    parts.wrap(harvest.Harvest, "_write_tokens", "token file")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setting", choices=["demo", "small"], default="demo", help="small: the fixed-cost setting")
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--sae", action="append", default=[], help="SAE folders (default: demo SAEs, else random ones)")
    ap.add_argument("--d-sae", type=int, default=1536, help="width of random SAEs")
    ap.add_argument("--arch", default="topk", choices=["topk", "standard", "jumprelu"])
    ap.add_argument(
        "--n-tokens",
        type=int,
        default=500_000,
        help="tokens to read (default: about the whole embedded corpus, the README's headline figure)",
    )
    ap.add_argument(
        "--feature-map",
        default="pca",
        choices=["pca", "umap"],
        help="the final step's feature map: pca (default here, as the ratios in the README were measured: UMAP "
        "is a fixed cost per SAE, about 3 s at 1,536 features plus 10 s of compilation, measured on its own) or umap "
        "(precompute's default)",
    )
    ap.add_argument("--context-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--corpus", default="embedded:all")
    ap.add_argument(
        "--loss-parts",
        action="store_true",
        help="also run the random-error baseline and the steering sweep (bench/splice.py times those); "
        "off, the figure is the streaming pass's overhead as before them",
    )
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-precompute-"))
    if args.setting == "small":
        adapter, sources, args.corpus = small_setting(tmp, args.device)
        args.model, args.n_tokens, args.context_len, args.batch_size = adapter.name, 256 * 128, 128, 32
    else:
        adapter = load_model(args.model, args.device)
        if args.sae:
            sources = [SAESource(path=p) for p in args.sae]
        elif args.model == "embedded" and Path("data/demo-saes").is_dir():
            family = "standard" if args.arch == "jumprelu" else args.arch
            sources = [
                SAESource(path=str(p)) for p in sorted(Path("data/demo-saes").iterdir()) if p.name.startswith(family)
            ]
            if args.arch == "jumprelu":
                sources = [jumprelu_copy(s, tmp) for s in sources]
        else:
            hooks = adapter.hook_names()[:: max(1, len(adapter.hook_names()) // 7)]
            sources = random_saes(tmp, hooks, adapter.d_model, args.d_sae, args.arch)
    saes = load_saes(sources, adapter, args.device, "float32")
    cfg = PrecomputeConfig(
        db=str(tmp / "bench.duckdb"),
        model=args.model,
        corpus=args.corpus,
        n_tokens=args.n_tokens,
        context_len=args.context_len,
        batch_size=args.batch_size,
        device=args.device,
        saes=sources,
        feature_map=args.feature_map,
        **({} if args.loss_parts else {"random_draws": 0, "no_steering": True}),
    )
    hooks = sorted({s.hook for s in saes})
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    # The precompute reads the corpus in a background thread. Each batch it reads is produced
    # under `gate`, and a bare pass holds `gate` while it is timed, so corpus work never runs
    # inside the baseline's time (waiting for the gate counts against the precompute).
    gate = threading.Lock()
    real_batches = harvest._batches

    def gated_batches(*a, **kw):
        it = real_batches(*a, **kw)
        while True:
            with gate:
                item = next(it, None)
            if item is None:
                return
            yield item

    harvest._batches = gated_batches

    @torch.no_grad()
    def bare(content) -> float:
        """The model forward and the SAE encodes of one batch, and nothing else."""
        with gate:
            t = time.perf_counter()
            tokens, _ = adapter.wrap(content)
            acts = adapter.activations(tokens, hooks)
            for s in saes:
                s.sae.encode(acts[s.hook].to(s.sae.dtype))
            sync()
            return time.perf_counter() - t

    # This machine's speed drifts by 10% over minutes (shared host), so two separate runs do not
    # compare. Instead every batch the precompute reads is also run bare, right before or after
    # (alternating) its real step, and that bare time is subtracted from the precompute's wall time.
    bare_s: list[float] = []
    finalize_s: list[float] = []
    n_seqs: list[int] = []
    parts = Parts(sync)
    time_parts(parts, adapter)
    real_step, real_finalize = harvest.Harvest.step, pipeline.finalize

    def paired_step(self, seq_ids, content):
        n_seqs.append(len(seq_ids))
        if len(bare_s) % 2:
            real_step(self, seq_ids, content)
            sync()
            bare_s.append(untimed(bare, content))
        else:
            bare_s.append(untimed(bare, content))
            real_step(self, seq_ids, content)

    def untimed(fn, *a, **kw):
        """Parts are timed during the precompute, except in the bare passes and finalize."""
        parts.on = False
        try:
            return fn(*a, **kw)
        finally:
            parts.on = True

    def timed_finalize(*a, **kw):
        t = time.perf_counter()
        try:
            return untimed(real_finalize, *a, **kw)
        finally:
            finalize_s.append(time.perf_counter() - t)

    harvest.Harvest.step, pipeline.finalize = paired_step, timed_finalize
    bare(next(iter(harvest._batches(cfg, adapter)))[1])  # warm-up: first-call allocations, kernel choice
    t = time.perf_counter()
    parts.on = True
    precompute(cfg, adapter, saes)
    parts.on = False
    sync()
    t_bare = sum(bare_s)
    t_full = time.perf_counter() - t - t_bare
    n_tok = sum(n_seqs) * args.context_len
    print(
        f"{len(saes)} SAEs x d_sae {saes[0].sae.cfg.d_sae} on {args.model}, {n_tok:,} tokens, device {args.device}, "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"bare forward + encode: {t_bare:.2f} s   full precompute: {t_full:.2f} s (finalize {finalize_s[0]:.2f} s)")
    print(f"streaming pass alone (full minus finalize) / bare: {(t_full - finalize_s[0]) / t_bare:.3f}")
    print_parts(parts.total, t_bare, t_full, finalize_s[0])
    print(f"overhead_ratio={t_full / t_bare:.3f} tokens_per_s={n_tok / t_full:.0f}")


def print_parts(total: dict[str, float], t_bare: float, t_full: float, t_finalize: float) -> None:
    """The full run beyond the bare pass, part by part (see the module docstring)."""
    fwd = total.pop("model forward", 0.0) + total.pop("encode", 0.0)
    rows = [("forward + encode beyond bare", fwd - t_bare)]
    rows += [(k, total.get(k, 0.0)) for k in (
        "nonzero scan", "statistics", "top-k / reservoir offers", "reconstruction", "splice sample", "token file",
    )]  # fmt: skip
    rows.append(("finalize", t_finalize))
    rows.append(("other", t_full - fwd - sum(v for _, v in rows[1:])))
    print("beyond the bare pass:")
    for name, sec in rows:
        print(f"  {name:<30} {sec:8.2f} s  {sec / t_bare:+.3f} x bare")


if __name__ == "__main__":
    main()
