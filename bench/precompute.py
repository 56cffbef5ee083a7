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
    return out


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setting", choices=["demo", "small"], default="demo", help="small: the fixed-cost setting")
    ap.add_argument("--model", default="embedded")
    ap.add_argument("--sae", action="append", default=[], help="SAE folders (default: demo SAEs, else random ones)")
    ap.add_argument("--d-sae", type=int, default=1536, help="width of random SAEs")
    ap.add_argument("--arch", default="topk", choices=["topk", "standard"])
    ap.add_argument(
        "--n-tokens",
        type=int,
        default=500_000,
        help="tokens to read (default: about the whole embedded corpus, the README's headline figure)",
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
            sources = [
                SAESource(path=str(p)) for p in sorted(Path("data/demo-saes").iterdir()) if p.name.startswith(args.arch)
            ]
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
    real_step, real_finalize = harvest.Harvest.step, pipeline.finalize

    def paired_step(self, seq_ids, content):
        n_seqs.append(len(seq_ids))
        if len(bare_s) % 2:
            real_step(self, seq_ids, content)
            sync()
            bare_s.append(bare(content))
        else:
            bare_s.append(bare(content))
            real_step(self, seq_ids, content)

    def timed_finalize(*a, **kw):
        t = time.perf_counter()
        try:
            return real_finalize(*a, **kw)
        finally:
            finalize_s.append(time.perf_counter() - t)

    harvest.Harvest.step, pipeline.finalize = paired_step, timed_finalize
    bare(next(iter(harvest._batches(cfg, adapter)))[1])  # warm-up: first-call allocations, kernel choice
    t = time.perf_counter()
    precompute(cfg, adapter, saes)
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
    print(f"overhead_ratio={t_full / t_bare:.3f} tokens_per_s={n_tok / t_full:.0f}")


if __name__ == "__main__":
    main()
