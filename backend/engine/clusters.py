"""Why features sit where they do in density: diagnostics from the weights (and the densities
the pass measured), computed once at the end of a run so the pages are instant.

- Feature map: a 2-D layout of the decoder directions (UMAP with the cosine metric and a fixed
  seed, or with --feature-map pca the first two principal components of the unit-norm
  directions; the method is recorded).
- The low-density tail's shared encoder direction: replications of Towards Monosemanticity found
  that most features of the ultralow cluster point almost the same way (a training artefact,
  not many features). The tail is the features below the valley that separates the layer's
  low-density mode from its main mode (or below `--tail-below`); each feature's encoder cosine
  to the tail's mean direction is kept, and the share of the tail within 0.9 of it.
- Dense features (> 10%): the most anti-aligned decoder partner (min cosine), since dense
  latents come in antipodal pairs; their correlation with token position is measured in the
  streaming pass (stats.FeatureStats.position_correlation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from backend.density import ULTRALOW, is_dense

if TYPE_CHECKING:
    import torch

TAIL_COSINE = 0.9
"""a tail feature "shares the direction" when its encoder cosine to the tail's mean is above this"""
ANTIPODAL_COSINE = -0.9
"""a dense feature and its most anti-aligned decoder partner are an antipodal pair below this cosine"""


UMAP_NEIGHBOURS = 15
"""UMAP's n_neighbors (its default); an SAE of at most 4x as many features is laid out by PCA"""


def feature_map(W_dec: torch.Tensor, seed: int = 0, method: str = "umap") -> tuple[np.ndarray, str]:
    """[d_sae, 2] coordinates of the decoder directions, and the method that made them: UMAP
    (cosine metric, seed `seed`), or the first two principal components of the unit-norm
    directions (`method="pca"`, and for SAEs too narrow for UMAP's neighbourhoods)."""
    import torch  # here, not at the top: the pages read this module's rules, and torch costs a page 1-2 s to import

    d = torch.nn.functional.normalize(W_dec.detach().float().cpu(), dim=-1).numpy()
    if method == "umap" and len(d) > 4 * UMAP_NEIGHBOURS:
        import umap

        layout = umap.UMAP(n_components=2, metric="cosine", random_state=seed, n_neighbors=UMAP_NEIGHBOURS, n_jobs=1)
        return layout.fit_transform(d).astype(np.float32), "umap"
    centred = (d - d.mean(0)).astype(np.float64)
    # the top two eigenvectors of the d_in x d_in covariance: the SVD's plane, at a fraction
    # of a full SVD's cost when d_sae >> d_in
    _, vecs = np.linalg.eigh(centred.T @ centred)
    return (centred @ vecs[:, :-3:-1]).astype(np.float32), "pca"


def tail_cut(density: np.ndarray, floor: float) -> float:
    """The density below which the low-density tail lies: the valley between the lowest mode of
    the log10-density histogram and the main mode, where there is one; else the ultralow cut."""
    live = density[density > 0]
    if len(live) < 20:
        return ULTRALOW
    lo = max(np.log10(max(floor, 1e-12)), np.log10(live.min())) - 0.05
    edges = np.arange(lo, 0.1, 0.1)
    h, _ = np.histogram(np.log10(live), edges)
    smooth = np.convolve(h, np.array([1, 2, 3, 2, 1]) / 9, mode="same")
    main = int(np.argmax(smooth))
    best, cut = 0.0, None
    for i in range(main):
        if smooth[i] <= 0 or (i > 0 and smooth[i] < smooth[i - 1]) or smooth[i] < smooth[min(i + 1, main)]:
            continue  # not a local peak
        j = i + int(np.argmin(smooth[i : main + 1]))
        if smooth[j] < 0.5 * smooth[i] and smooth[i] > best:
            best, cut = smooth[i], float(10 ** edges[j + 1])
    return cut if cut is not None else ULTRALOW


@dataclass
class Tail:
    cut: float
    n: int
    share: float | None
    """share of the tail whose encoder cosine to the tail's mean direction exceeds TAIL_COSINE"""
    cosine: np.ndarray
    """every feature's encoder cosine to the tail's mean direction (NaN when the tail is empty)"""


def tail_direction(W_enc: torch.Tensor, density: np.ndarray, cut: float) -> Tail:
    import torch

    enc = torch.nn.functional.normalize(W_enc.detach().float().cpu().T, dim=-1).numpy()  # [d_sae, d_in]
    tail = (density > 0) & (density < cut)
    if not tail.any():
        return Tail(cut, 0, None, np.full(len(density), np.nan, dtype=np.float32))
    mean = enc[tail].mean(0)
    mean /= max(np.linalg.norm(mean), 1e-12)
    cos = (enc @ mean).astype(np.float32)
    return Tail(cut, int(tail.sum()), float((cos[tail] > TAIL_COSINE).mean()), cos)


def antipodal(W_dec: torch.Tensor, density: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each dense feature, the feature whose decoder direction is most anti-aligned with it
    and that cosine; -1 / NaN for the others."""
    partner = np.full(len(density), -1, dtype=np.int32)
    cosine = np.full(len(density), np.nan, dtype=np.float32)
    dense = np.flatnonzero(is_dense(density))
    if len(dense):
        import torch

        d = torch.nn.functional.normalize(W_dec.detach().float().cpu(), dim=-1)
        sims = d[torch.as_tensor(dense)] @ d.T
        sims[torch.arange(len(dense)), torch.as_tensor(dense)] = 2.0  # never a feature's own partner
        low = sims.min(1)
        partner[dense] = low.indices.numpy()
        cosine[dense] = low.values.numpy()
    return partner, cosine
