"""Weight-only tables: what each feature's decoder direction does to tokens, and its nearest
features. They need no corpus, only W_dec and the model's (un)embedding.

Both are the extremes of a product (features x d_model) @ (d_model x n), which at GPT-2-small
width is most of the final step's time on a CPU. Where the CPU multiplies bfloat16 natively
(AVX512-BF16) and d_model >= 512 the product is taken in bfloat16 (3x faster here), each row's 3k best
columns are rescored in fp32, and the row is kept only when a rigorous bound on bfloat16's error
shows no other column can reach its k-th value; the rows it cannot certify are recomputed in fp32.
So the tables equal the fp32 product's extremes either way.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

BLOCK = 32  # top_k ranks whole blocks of this many columns by their extreme
_U = 2.0**-9  # bfloat16's unit roundoff
CANDIDATES = 3  # a row's k-th value is certified against its (CANDIDATES * k)-th bfloat16 one (3 measured best)
GIVE_UP = 0.5
"""past this share of uncertified rows (after GIVE_UP_AFTER rows) the rest go straight to fp32: each
uncertified row costs its bfloat16 pass on top of the fp32 one, so beyond about half the bfloat16 pass
saves nothing. Random unit rows against a random 2,304 x 256,000 unembedding (Gemma 2's vocabulary)
left 53% uncertified: among 256,000 columns the top values lie closer than bfloat16 can tell."""
GIVE_UP_AFTER = 2048


def bf16_is_fast(device: torch.device, d: int) -> bool:
    """On GPUs the fp32 product is already fast; on CPUs without native bfloat16 it is the faster,
    and below d_model 512 ranking the candidates costs what bfloat16 saves (measured)."""
    return device.type == "cpu" and d >= 512 and torch.cpu._is_avx512_bf16_supported()


def top_k(x: torch.Tensor, k: int, largest: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.topk(x, k, dim=1) for wide rows, faster (17 vs 24 ms on 1024 x 30522, k 20): the k
    best entries lie in the k blocks of BLOCK columns with the best extremes, so only those
    blocks' entries are ranked."""
    rows, n = x.shape
    m = n - n % BLOCK
    if m < 4 * k * BLOCK:
        return torch.topk(x, k, dim=1, largest=largest)
    blocks = x[:, :m].view(rows, m // BLOCK, BLOCK)
    ext = blocks.amax(-1) if largest else blocks.amin(-1)
    best = torch.topk(ext, k, dim=1, largest=largest).indices
    cols = (best[:, :, None] * BLOCK + torch.arange(BLOCK, device=x.device)).flatten(1)
    if m < n:
        cols = torch.cat([cols, torch.arange(m, n, device=x.device).expand(rows, -1)], 1)
    v, j = torch.topk(x.gather(1, cols), k, dim=1, largest=largest)
    return v, cols.gather(1, j)


class TopProducts:
    """The k largest/smallest entries of each row of W @ M, as fp32 ranks them (module docstring)."""

    def __init__(self, M: torch.Tensor, k: int, fast: bool | None = None):
        self.M = M.float()
        self.k = min(k, self.M.shape[1])
        self.fast = bf16_is_fast(self.M.device, self.M.shape[0]) if fast is None else fast
        if self.fast:
            self.M16 = self.M.bfloat16()
            self.Mt = self.M.T.contiguous()
            d = self.M.shape[0]
            # |bf16 product - exact| <= (2u + u^2) |w| max|m| from rounding the inputs, plus fp32
            # accumulation error (gamma) in that product, the rescoring and the fp32 product compared
            # with, counted as 4 gamma
            gamma = d * 2.0**-24 / (1 - d * 2.0**-24)
            self.err = (2 * _U + _U * _U + 4 * gamma) * float(self.M.norm(dim=0).max())
        self.n_uncertified = 0
        self.n_rows = 0

    def rows(self, W: torch.Tensor, largest: tuple[bool, ...], skip: torch.Tensor | None = None):
        """For each of `largest`, (values, columns) of W's rows; `skip[r]` is a column row r may not pick."""
        W = W.float()
        if not self.fast:
            return self._exact(W, largest, skip)
        approx = (W.bfloat16() @ self.M16).float()  # ranking fp32 is faster than bfloat16 here
        err = self.err * W.norm(dim=1, keepdim=True)
        out, bad = [], torch.zeros(len(W), dtype=torch.bool, device=W.device)
        n_cand = min(CANDIDATES * self.k, self.M.shape[1] - (skip is not None))
        for big in largest:
            _exclude(approx, skip, big)
            cv, cand = top_k(approx, n_cand, big)
            exact = torch.bmm(self.Mt[cand], W[:, :, None]).squeeze(2)
            v, j = torch.topk(exact, self.k, dim=1, largest=big)
            edge = cv[:, -1:]  # every column outside `cand` is at most this far (or below)
            if big:
                bad |= (v[:, -1:] <= edge + 2 * _U * edge.abs() + err).squeeze(1)
            else:
                bad |= (v[:, -1:] >= edge - 2 * _U * edge.abs() - err).squeeze(1)
            out.append([v, cand.gather(1, j)])
        if bad.any():
            self.n_uncertified += int(bad.sum())
            redo = self._exact(W[bad], largest, None if skip is None else skip[bad])
            for o, (v, i) in zip(out, redo):
                o[0][bad], o[1][bad] = v, i
        self.n_rows += len(W)
        if self.n_rows >= GIVE_UP_AFTER and self.n_uncertified > GIVE_UP * self.n_rows:
            self.fast = False
        return [tuple(o) for o in out]

    def _exact(self, W, largest, skip):
        prod = W @ self.M
        res = []
        for big in largest:
            _exclude(prod, skip, big)
            res.append(top_k(prod, self.k, big))
        return res


def _exclude(x: torch.Tensor, skip: torch.Tensor | None, largest: bool) -> None:
    """Set x[r, skip[r]] to the value that ranks last, so row r never picks that column."""
    if skip is not None:
        x[torch.arange(len(x), device=x.device), skip] = float("-inf") if largest else float("inf")


@torch.no_grad()
def token_effects(name: str, sae, matrix: torch.Tensor, k: int, chunk: int = 1024) -> pd.DataFrame:
    W = sae.W_dec.detach()
    top = TopProducts(matrix.to(W.device), k)
    k = top.k
    frames = []
    for lo in range(0, W.shape[0], chunk):
        for direction, (v, i) in zip((1, -1), top.rows(W[lo : lo + chunk], (True, False))):
            frames.append(
                pd.DataFrame(
                    {
                        "sae": name,
                        "feature": np.repeat(np.arange(lo, lo + v.shape[0]), k).astype(np.int32),
                        "direction": np.int8(direction),
                        "rank": np.tile(np.arange(k), v.shape[0]).astype(np.int16),
                        "token_id": i.cpu().numpy().ravel().astype(np.int32),
                        "value": v.cpu().numpy().ravel().astype(np.float32),
                    }
                )
            )
    return pd.concat(frames).sort_values(["feature", "direction", "rank"], kind="stable")


@torch.no_grad()
def neighbours(name: str, sae, k: int, chunk: int = 2048) -> pd.DataFrame:
    W = torch.nn.functional.normalize(sae.W_dec.detach().float(), dim=1)
    top = TopProducts(W.T, min(k, W.shape[0] - 1))
    k = top.k
    frames = []
    for lo in range(0, W.shape[0], chunk):
        rows = W[lo : lo + chunk]
        ((v, i),) = top.rows(rows, (True,), skip=torch.arange(lo, lo + len(rows), device=W.device))
        frames.append(
            pd.DataFrame(
                {
                    "sae": name,
                    "feature": np.repeat(np.arange(lo, lo + len(rows)), k).astype(np.int32),
                    "rank": np.tile(np.arange(k), len(rows)).astype(np.int16),
                    "other": i.cpu().numpy().ravel().astype(np.int32),
                    "cosine": v.cpu().numpy().ravel().astype(np.float32),
                }
            )
        )
    return pd.concat(frames)
