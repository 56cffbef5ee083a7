"""What the feature map's UMAP adds to a precompute's final step, against its principal-component
layout (`--feature-map pca`).

Each measurement runs in a fresh child process, as a precompute would: the first layout pays
umap-learn's and pynndescent's numba compilation (pynndescent keeps its compiled code on disk
after the first process, umap-learn compiles again in every process), the rest only the layout.
Default: the demo's 14 SAEs (d_sae 1,536, d_in 384), every one laid out in one process, twice
(the second process shows what the compile cache saves). `--width N --d-in D`: one random
decoder of that shape (e.g. 65,536 x 2,304, a Gemma Scope 2B residual SAE), laid out once.
Last line: umap_first_s=<x> umap_per_sae_s=<y> pca_per_sae_s=<z>
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _layouts(decoders: list, method: str, out) -> None:
    """Child: a first small layout (200 random directions: the compilation, for UMAP), then each
    decoder in turn; send back the seconds each took, the first one's first."""
    import numpy as np
    import torch

    from backend.engine.clusters import feature_map

    times = []
    for W in [np.random.default_rng(1).standard_normal((200, 32), dtype=np.float32), *decoders]:
        t = time.perf_counter()
        _, got = feature_map(torch.as_tensor(W), 0, method)
        times.append(time.perf_counter() - t)
        assert got == method, got
    out.send(times)


def _run(decoders: list, method: str) -> list[float]:
    ctx = mp.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_layouts, args=(decoders, method, send))
    p.start()
    times = recv.recv()
    p.join()
    return times


def _demo_decoders() -> list:
    from sae_lens import SAE

    root = Path("data/demo-saes")
    if not root.is_dir():
        sys.exit("no data/demo-saes: run `python -m backend demo --no-serve` first, or pass --width")
    return [SAE.load_from_disk(str(p)).W_dec.detach().numpy() for p in sorted(root.iterdir()) if p.is_dir()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=0, help="one random decoder of this many features (0: the demo's)")
    ap.add_argument("--d-in", type=int, default=2304)
    args = ap.parse_args()
    if args.width:
        import numpy as np

        decoders = [np.random.default_rng(0).standard_normal((args.width, args.d_in), dtype=np.float32)]
        rounds = 1
    else:
        decoders = _demo_decoders()
        rounds = 2
    shape = f"{len(decoders)} decoder(s) of {decoders[0].shape[0]:,} x {decoders[0].shape[1]:,}"
    pca = _run(decoders, "pca")
    print(f"{shape}; pca: {sum(pca[1:]):.2f} s in all, {max(pca[1:]):.3f} s at most")
    for r in range(rounds):
        first, *umap = _run(decoders, "umap")
        print(
            f"umap process {r + 1}: a first small layout {first:.1f} s (mostly compilation), then "
            f"{min(umap):.1f}-{max(umap):.1f} s per decoder; {first + sum(umap):.1f} s in all"
        )
    per_umap, per_pca = sum(umap) / len(umap), sum(pca[1:]) / len(decoders)
    print(f"umap_first_s={first:.1f} umap_per_sae_s={per_umap:.2f} pca_per_sae_s={per_pca:.3f}")


if __name__ == "__main__":
    main()
