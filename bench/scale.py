"""Cost at a real suite's width, on random weights of its shape (--shape):
- gpt2 (default): a GPT-2-small-shaped HookedTransformer (12 layers, d_model 768, d_vocab 50,257)
  with one SAE of 24,576 features per layer;
- gemma: Gemma 2 2B's widths in 2 layers (d_model 2,304, 8 heads of 256, d_mlp 9,216, d_vocab
  256,000, the real vocabulary size) with one SAE of 65,536 features per layer, Gemma Scope's
  16th-widest residual SAEs; JumpReLU with --arch jumprelu. The blocks are GPT-2's kind (LayerNorm,
  learned positions): the widths are what decide memory and time, not the block's details.
The SAEs sit at blocks.L.hook_resid_pre (TopK k=32, or ReLU/JumpReLU with encoder biases spread so
densities span 1e-5..1e-1), saved and reloaded in sae_lens's format; the corpus is CPython's docs
through a byte-level BPE tokenizer trained here (padded to the model's d_vocab: the hub's
tokenizers cannot be downloaded on the machines this runs on).

The precompute runs in a child process, so its peak RSS is the run's own (model and SAE weights
included). Reported: tokens/s of the streaming pass, the final step's time, peak RSS, peak GPU
memory with --device cuda, the database's size, the memory per SAE (its weights and statistics),
and bench/dashboard.py's latencies on the database the run wrote.
The splice sample (--splice-seqs) costs about 11 s per sequence on a 2-core CPU at GPT-2 width
(12 SAEs each read the stream perturbed by every shallower one, and each splice ends in 50,257
logits), so the default is 32 sequences on a GPU and 4 on a CPU (1 at the gemma shape).
tokens/s is the streaming pass's without the final step and the splice sample, which do not
grow with tokens.
Last line: peak_rss_mb=<x> tokens_per_s=<y> db_mb=<z> per_sae_mb=<w>
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@dataclass(frozen=True)
class ModelShape:
    name: str
    n_layers: int
    d_model: int
    n_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int
    d_sae: int
    """the SAE width measured by default, one SAE per layer"""


SHAPES = {
    "gpt2": ModelShape("gpt2-small-shaped-random", 12, 768, 12, 64, 3072, 50257, 24576),
    "gemma": ModelShape("gemma-2-2b-shaped-random", 2, 2304, 8, 256, 9216, 256000, 65536),
}


def _tokenizer(folder: Path, vocab: int):
    from pydoc_data.topics import topics

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=8000, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tk.train_from_iterator([topics[k] for k in sorted(topics)], trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    tok.add_tokens([f"<pad{i}>" for i in range(vocab - len(tok))])  # the model's 50,257 ids all exist
    tok.save_pretrained(folder / "tok")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder / "tok")  # TransformerLens wants the name_or_path this sets


def _saes(folder: Path, layers: int, d_in: int, d_sae: int, arch: str) -> list:
    import torch
    from precompute import jumprelu_copy
    from sae_lens import StandardSAE, StandardSAEConfig, TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    from backend.config import SAESource

    out = []
    for layer in range(layers):
        hook = f"blocks.{layer}.hook_resid_pre"
        torch.manual_seed(layer)
        meta = SAEMetadata(hook_name=hook, context_size=128)
        if arch == "topk":
            sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=32, metadata=meta))
        else:
            sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae, metadata=meta))
        with torch.no_grad():
            sae.W_enc.normal_(0, d_in**-0.5)
            sae.W_dec.copy_(sae.W_enc.T / sae.W_enc.T.norm(dim=1, keepdim=True))
            if arch != "topk":  # biases from -4.3 to -1.3 sigma: densities from about 1e-5 to 1e-1
                sae.b_enc.copy_(-torch.linspace(1.3, 4.3, d_sae)[torch.randperm(d_sae)])
        sae.save_model(str(folder / f"{arch}-{layer}"))
        out.append(SAESource(path=str(folder / f"{arch}-{layer}")))
    # JumpReLU: the ReLU SAEs turned into ones that fire on the same tokens (bench/precompute.py's)
    return [jumprelu_copy(s, folder) for s in out] if arch == "jumprelu" else out


def _run(args: dict, q) -> None:
    """The child: build, precompute, report."""
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from backend.config import PrecomputeConfig
    from backend.engine import pipeline, propagation
    from backend.engine.models import HookedAdapter
    from backend.engine.saes import load_saes

    folder = Path(args["folder"])
    shape = ModelShape(**args["shape"])
    tok = _tokenizer(folder, shape.d_vocab)
    cfg = HookedTransformerConfig(
        n_layers=shape.n_layers, d_model=shape.d_model, n_heads=shape.n_heads, d_head=shape.d_head,
        d_mlp=shape.d_mlp, n_ctx=256, d_vocab=shape.d_vocab, act_fn="gelu_new", normalization_type="LN",
        seed=0, device=args["device"], dtype=getattr(torch, args["dtype"]),
    )  # fmt: skip
    adapter = HookedAdapter(HookedTransformer(cfg, tokenizer=tok).eval(), name=shape.name)
    sources = _saes(folder, args["layers"], shape.d_model, args["d_sae"], args["arch"])
    saes = load_saes(sources, adapter, args["device"], args["dtype"])
    (folder / "corpus.txt").write_text(_corpus())
    pc = PrecomputeConfig(
        db=str(folder / "scale.duckdb"),
        model=shape.name,
        dtype=args["dtype"],
        corpus=str(folder / "corpus.txt"),
        n_tokens=args["n_tokens"],
        context_len=128,
        batch_size=args["batch_size"],
        device=args["device"],
        saes=sources,
        run_name="scale",
        splice_seqs=args["splice_seqs"],
        **({} if args["loss_parts"] else {"random_draws": 0, "no_steering": True}),
    )
    times = {"splice": 0.0}
    real = pipeline.finalize
    real_update = propagation.Propagation.update

    def timed_update(self, *a, **kw):
        t = time.perf_counter()
        real_update(self, *a, **kw)
        if args["device"].startswith("cuda"):
            torch.cuda.synchronize()
        times["splice"] += time.perf_counter() - t

    propagation.Propagation.update = timed_update
    if args["splice_chunk"]:
        propagation.Propagation.CHUNK = args["splice_chunk"]

    def timed_finalize(*a, **kw):
        t = time.perf_counter()
        out = real(*a, **kw)
        times["finalize"] = time.perf_counter() - t
        return out

    pipeline.finalize = timed_finalize
    from backend.engine import harvest

    real_run = harvest.Harvest.run

    def measured_run(self):
        real_run(self)
        times["harvest_peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        times["stats_mb"] = sum(_nbytes(st) for st in self.stats.values()) / 2**20

    harvest.Harvest.run = measured_run
    if args["device"].startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    pipeline.precompute(pc, adapter, saes)
    wall = time.perf_counter() - t
    q.put(
        {
            "wall_s": wall,
            "finalize_s": times.get("finalize", float("nan")),
            "splice_s": times["splice"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "harvest_peak_mb": times["harvest_peak_mb"],
            "stats_mb": times["stats_mb"],
            "model_mb": sum(_nbytes(p) for p in adapter.model.parameters()) / 2**20,
            "saes_mb": sum(_nbytes(p) for s in saes for p in s.sae.parameters()) / 2**20,
            "gpu_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if args["device"].startswith("cuda") else None,
            "db_mb": os.path.getsize(pc.db) / 2**20,
        }
    )


def _nbytes(x) -> int:
    """Bytes of a tensor, or of every tensor an object holds (FeatureStats and its TopSets)."""
    import torch

    if isinstance(x, torch.Tensor):
        return x.numel() * x.element_size()
    return sum(_nbytes(v) for v in vars(x).values() if isinstance(v, torch.Tensor) or hasattr(v, "win"))


def _corpus() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics)) * 3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=SHAPES, default="gpt2", help="the model's and SAEs' widths (SHAPES)")
    ap.add_argument("--n-tokens", type=int, default=4096)
    ap.add_argument("--layers", type=int, help="SAEs, one per layer from 0 (default: every layer of the shape)")
    ap.add_argument("--d-sae", type=int, help="default: the shape's")
    ap.add_argument("--arch", default="topk", choices=["topk", "standard", "jumprelu"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="model and SAE weights")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--splice-seqs", type=int, default=None, help="splice sample (0: none; default: 32 on cuda, 4 on cpu)"
    )
    ap.add_argument("--splice-chunk", type=int, default=0, help="sequences spliced at a time (0: the engine's)")
    ap.add_argument(
        "--loss-parts", action="store_true", help="also run the random-error baseline and the steering sweep"
    )
    ap.add_argument("--samples", type=int, default=100, help="features whose drilldown is timed")
    args = ap.parse_args()
    shape = SHAPES[args.shape]
    args.layers = args.layers or shape.n_layers
    args.d_sae = args.d_sae or shape.d_sae
    if args.layers > shape.n_layers:
        raise SystemExit(f"--layers {args.layers}: the {args.shape} shape has {shape.n_layers} layers")
    if args.splice_seqs is None:
        args.splice_seqs = 32 if args.device.startswith("cuda") else (4 if args.shape == "gpt2" else 1)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = mp.get_context("spawn")
        q = ctx.Queue()
        p = ctx.Process(target=_run, args=({**vars(args), "shape": asdict(shape), "folder": tmp}, q))
        p.start()
        p.join()
        if p.exitcode != 0:
            raise SystemExit(f"the run failed (exit code {p.exitcode})")
        r = q.get()
        from dashboard import latencies

        dash = latencies(Path(tmp) / "scale.duckdb", args.samples)
    stream_s = r["wall_s"] - r["finalize_s"] - r["splice_s"]
    tps = args.n_tokens / stream_s
    print(
        f"{args.layers} x {args.arch} SAEs of {args.d_sae:,} on {args.device}, {args.n_tokens:,} tokens: wall "
        f"{r['wall_s']:.1f} s, of which the final step {r['finalize_s']:.1f} s and the splice sample "
        f"({args.splice_seqs} sequences) {r['splice_s']:.1f} s; streaming pass without them {tps:,.0f} tokens/s"
        + (f"; peak GPU memory {r['gpu_peak_mb']:,.0f} MB" if r["gpu_peak_mb"] is not None else "")
    )
    print(
        f"memory: model weights {r['model_mb']:,.0f} MB, SAE weights {r['saes_mb']:,.0f} MB, statistics (sums, "
        f"histograms, top-k and reservoir sets with their windows) {r['stats_mb']:,.0f} MB; peak RSS through the "
        f"streaming pass {r['harvest_peak_mb']:,.0f} MB, over the whole run {r['peak_rss_mb']:,.0f} MB"
    )
    per_sae = (r["saes_mb"] + r["stats_mb"]) / args.layers
    print(
        f"per SAE of {shape.d_model:,} x {args.d_sae:,} in {args.dtype}: {per_sae:,.0f} MB (weights "
        f"{r['saes_mb'] / args.layers:,.0f} MB, statistics {r['stats_mb'] / args.layers:,.0f} MB); the model's "
        f"weights {r['model_mb']:,.0f} MB once"
    )
    print("dashboard on this database: " + " ".join(f"{k}={v}" for k, v in dash.items()))
    print(f"peak_rss_mb={r['peak_rss_mb']:.0f} tokens_per_s={tps:.0f} db_mb={r['db_mb']:.1f} per_sae_mb={per_sae:.0f}")


if __name__ == "__main__":
    main()
