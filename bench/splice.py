"""Cost of the splice sample on the demo: the share of the precompute's wall time spent in
`Propagation.update` (splicing each SAE in, following the error through the later hooks,
compounding, the random-error baseline, the shorter texts) and in the steering sweep
(engine.steering.Sweep), measured inside the same run; and, with --paired, what the model-loss
parts (loss by context length, random errors, the steering sweep) add to the whole precompute:
runs with them and without them interleaved.

Runs the demo's own precompute (`DemoConfig().precompute`, the SAEs in data/demo-saes, built by
`python -m backend demo`) into a temporary file, --repeat times.
Last line: splice_share=<median> splice_s=<median> steer_s=<median> precompute_s=<median>
[loss_parts_overhead=<median>]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.config import SAESource  # noqa: E402
from backend.demo import DemoConfig  # noqa: E402
from backend.engine import loss, propagation, steering  # noqa: E402
from backend.engine.pipeline import precompute  # noqa: E402


def _timer(cls, name, spent, key):
    inner = getattr(cls, name)

    def timed(self, *a, **kw):
        t = time.perf_counter()
        out = inner(self, *a, **kw)
        spent[key] += time.perf_counter() - t
        return out

    setattr(cls, name, timed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--saes", default="data/demo-saes", help="folder of the demo's trained SAEs")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--splice-seqs", type=int, default=None, help="default: the demo's")
    ap.add_argument("--paired", action="store_true", help="also run without the model-loss parts, interleaved")
    ap.add_argument("--baseline-seqs", type=int, default=8, help="splice sample of the run without them")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    folders = sorted(p.parent for p in Path(args.saes).glob("*/cfg.json"))
    if not folders:
        raise SystemExit(f"no SAEs in {args.saes}: run `python -m backend demo --no-serve` first")
    spent = {"splice": 0.0, "steer": 0.0}
    _timer(propagation.Propagation, "update", spent, "splice")
    _timer(steering.Sweep, "__init__", spent, "steer")
    _timer(steering.Sweep, "table", spent, "steer")
    lengths = loss.encoder_lengths
    shares, splice_s, steer_s, total_s, overhead = [], [], [], [], []
    for r in range(args.repeat):
        times = {}
        for with_parts in (True, False) if args.paired else (True,):
            cfg = DemoConfig().precompute
            cfg.saes = [SAESource(path=str(f)) for f in folders]
            cfg.device = args.device
            if args.splice_seqs is not None:
                cfg.splice_seqs = args.splice_seqs
            # without the parts: no shorter texts, no random errors, no steering sweep, and the splice
            # sample the demo had before them (--baseline-seqs consecutive sequences)
            loss.encoder_lengths = lengths if with_parts else (lambda n: [])
            if not with_parts:
                cfg.random_draws, cfg.no_steering = 0, True
                cfg.splice_seqs, cfg.splice_every = args.baseline_seqs, 1
            with tempfile.TemporaryDirectory() as tmp:
                cfg.db = str(Path(tmp) / "demo.duckdb")
                spent.update(splice=0.0, steer=0.0)
                t = time.perf_counter()
                precompute(cfg)
                total = time.perf_counter() - t
            times[with_parts] = total
            print(
                f"run {r + 1} {'with' if with_parts else 'without'} the loss parts: precompute {total:.1f} s, "
                f"splice sample ({cfg.splice_seqs} seqs) {spent['splice']:.1f} s, "
                f"steering sweep {spent['steer']:.1f} s",
                flush=True,
            )
            if with_parts:
                shares.append((spent["splice"] + spent["steer"]) / total)
                splice_s.append(spent["splice"])
                steer_s.append(spent["steer"])
                total_s.append(total)
        if args.paired:
            overhead.append(times[True] / times[False] - 1)
    loss.encoder_lengths = lengths
    print(
        f"spread: share {min(shares):.1%} .. {max(shares):.1%}"
        + (f"; overhead {min(overhead):.1%} .. {max(overhead):.1%}" if overhead else "")
    )
    tail = f" loss_parts_overhead={statistics.median(overhead):.3f}" if overhead else ""
    print(
        f"splice_share={statistics.median(shares):.3f} splice_s={statistics.median(splice_s):.1f} "
        f"steer_s={statistics.median(steer_s):.1f} precompute_s={statistics.median(total_s):.1f}{tail}"
    )


if __name__ == "__main__":
    main()
