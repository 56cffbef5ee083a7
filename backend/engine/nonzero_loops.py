"""Compiled loops (numba) for the dense-output SAEs' nonzeros on CPU: find them, and sum them
into the per-feature statistics.

Why: a ReLU or JumpReLU SAE's codes are dense [tokens, d_sae] floats of which a few percent
fire. torch finds them in four passes over that memory (a comparison, a count, the indices, a
gather of the values), and sums them with one bincount per statistic. Here one pass per row
finds them while the row is in cache, and one pass over the nonzeros fills every sum. Both give
exactly torch's results: the same nonzeros in the same row-major order, and each feature's sums
added in that same order. `FeatureStats` falls back to torch off the CPU, for other dtypes, and
where `SAE_DASHBOARD_NO_NUMBA` is set (which the tests use to compare the two).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import torch

_DTYPES = (torch.float32, torch.float64)
_pool: tuple[int, ThreadPoolExecutor] | None = None
"""(its size, the pool): made again when torch's thread count changes"""


def usable(codes: torch.Tensor) -> bool:
    return codes.device.type == "cpu" and codes.dtype in _DTYPES and not os.environ.get("SAE_DASHBOARD_NO_NUMBA")


def _threads() -> int:
    return max(1, torch.get_num_threads())


def _map(fn, items: list) -> list:
    """fn over items on torch's number of threads (the loops release the GIL)."""
    global _pool
    if len(items) == 1:
        return [fn(items[0])]
    if _pool is None or _pool[0] != _threads():
        _pool = (_threads(), ThreadPoolExecutor(_threads(), thread_name_prefix="nonzeros"))
    return list(_pool[1].map(fn, items))


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _scan_rows(codes, floor, lo, hi, row, feature, value):  # pragma: no cover - compiled
    """Nonzeros of rows lo..hi (value > floor[j]) until the outputs are full; (count, next row)."""
    F = codes.shape[1]
    cap = row.shape[0]
    hits = np.empty(F, np.int64)
    n = 0
    r = lo
    while r < hi and n + F <= cap:
        m = 0
        for j in range(F):  # no branch: the comparison's result moves the write position
            hits[m] = j
            m += codes[r, j] > floor[j]
        for i in range(m):
            j = hits[i]
            row[n] = r
            feature[n] = j
            value[n] = codes[r, j]
            n += 1
        r += 1
    return n, r


def scan(flat: torch.Tensor, floor: torch.Tensor | float, row_dtype: torch.dtype):
    """(row, feature, value) of the entries of `flat` [N, F] above `floor` (per feature or one
    value), row-major, as torch.nonzero finds them; value float32, feature int64."""
    a = flat.detach().contiguous().numpy()
    N, F = a.shape
    fl = np.broadcast_to(np.asarray(floor.cpu() if isinstance(floor, torch.Tensor) else floor, a.dtype), (F,))
    fl = np.ascontiguousarray(fl)
    rdt = np.int32 if row_dtype == torch.int32 else np.int64
    parts = max(1, min(_threads(), N // 16))
    bounds = [N * i // parts for i in range(parts + 1)]

    def part(i: int) -> list[tuple]:
        lo, hi, out = bounds[i], bounds[i + 1], []
        cap = (hi - lo) * F // 16 + F  # grows if the codes are denser than 1 in 16
        while lo < hi:
            row, feature, value = np.empty(cap, rdt), np.empty(cap, np.int64), np.empty(cap, np.float32)
            n, lo = _scan_rows(a, fl, lo, hi, row, feature, value)
            out.append((row[:n], feature[:n], value[:n]))
            cap *= 2
        return out

    pieces = [p for ps in _map(part, list(range(parts))) for p in ps]
    return tuple(torch.from_numpy(np.concatenate([p[k] for p in pieces])) for k in range(3))


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _sum_rows(
    row, feature, value, hist_bin, T, n_pos, pos_width, n_bins, sum_act2, sum_act_pos, pos_fire, pos_act, hist,
    top_min, row_key, res_max, top_sel, res_sel,
):  # pragma: no cover - compiled  # fmt: skip
    n_top = n_res = 0
    for i in range(row.shape[0]):
        f = feature[i]
        v = np.float64(value[i])
        r = row[i]
        p = r % T
        sum_act2[f] += v * v
        sum_act_pos[f] += v * np.float64(p)
        w = f * n_pos + p // pos_width
        pos_fire[w] += 1
        pos_act[w] += v
        hist[f * n_bins + hist_bin[i]] += 1
        if value[i] > top_min[f]:
            top_sel[n_top] = i
            n_top += 1
        if row_key[r] < res_max[f]:
            res_sel[n_res] = i
            n_res += 1
    return n_top, n_res


def add_sums(nz, hist_bin: torch.Tensor, T: int, n_pos: int, pos_width: int, n_bins: int, sums: dict, offers: tuple):
    """Add the nonzeros into `sums` (sum_act2, sum_act_pos, pos_fire, pos_act, hist: CPU tensors
    laid out as FeatureStats keeps them), as torch.bincount would: the batch's float sums start
    from zero, in the nonzeros' order, and are then added to the totals. In the same pass, the
    indices of the nonzeros that may enter a top set (value > top_min[feature]) and a reservoir
    (row_key[row] < res_max[feature]), `offers` = (top_min, row_key, res_max)."""
    batch = {k: torch.zeros_like(sums[k]) for k in ("sum_act2", "sum_act_pos", "pos_act")}
    names = ("sum_act2", "sum_act_pos", "pos_fire", "pos_act", "hist")
    n = nz.row.numel()
    top_sel, res_sel = torch.empty(n, dtype=torch.int64), torch.empty(n, dtype=torch.int64)
    n_top, n_res = _sum_rows(
        nz.row.numpy(), nz.feature.numpy(), nz.value.numpy(), hist_bin.numpy(), T, n_pos, pos_width, n_bins,
        *(batch.get(k, sums[k]).numpy() for k in names), *(t.numpy() for t in offers), top_sel.numpy(), res_sel.numpy(),
    )  # fmt: skip
    for k, v in batch.items():
        sums[k] += v
    return top_sel[:n_top], res_sel[:n_res]
