"""Cost of the error-propagation sample on the demo: the share of the precompute's wall time
spent in `Propagation.update` (splicing each SAE in, following the error through the later hooks,
compounding), measured inside the same run, so the share is paired by construction.

Runs the demo's own precompute (`DemoConfig().precompute`, the SAEs in data/demo-saes, built by
`python -m backend demo`) into a temporary file, --repeat times.
Last line: splice_share=<median> splice_s=<median> precompute_s=<median>
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.config import SAESource  # noqa: E402
from backend.demo import DemoConfig  # noqa: E402
from backend.engine import propagation  # noqa: E402
from backend.engine.pipeline import precompute  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--saes", default="data/demo-saes", help="folder of the demo's trained SAEs")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--splice-seqs", type=int, default=None, help="default: the demo's")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    folders = sorted(p.parent for p in Path(args.saes).glob("*/cfg.json"))
    if not folders:
        raise SystemExit(f"no SAEs in {args.saes}: run `python -m backend demo --no-serve` first")
    spent = [0.0]
    update = propagation.Propagation.update

    def timed(self, *a, **kw):
        t = time.perf_counter()
        update(self, *a, **kw)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        spent[0] += time.perf_counter() - t

    propagation.Propagation.update = timed
    shares, splice_s, total_s = [], [], []
    for r in range(args.repeat):
        cfg = DemoConfig().precompute
        cfg.saes = [SAESource(path=str(f)) for f in folders]
        cfg.device = args.device
        if args.splice_seqs is not None:
            cfg.splice_seqs = args.splice_seqs
        with tempfile.TemporaryDirectory() as tmp:
            cfg.db = str(Path(tmp) / "demo.duckdb")
            spent[0] = 0.0
            t = time.perf_counter()
            precompute(cfg)
            total = time.perf_counter() - t
        shares.append(spent[0] / total)
        splice_s.append(spent[0])
        total_s.append(total)
        print(
            f"run {r + 1}: precompute {total:.1f} s, splice sample ({cfg.splice_seqs} seqs) {spent[0]:.1f} s "
            f"= {spent[0] / total:.1%}",
            flush=True,
        )
    print(f"spread: share {min(shares):.1%} .. {max(shares):.1%}")
    print(
        f"splice_share={statistics.median(shares):.3f} splice_s={statistics.median(splice_s):.1f} "
        f"precompute_s={statistics.median(total_s):.1f}"
    )


if __name__ == "__main__":
    main()
