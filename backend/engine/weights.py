"""Weight-only tables: what each feature's decoder direction does to tokens, and its nearest
features. They need no corpus, only W_dec and the model's (un)embedding."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch


@torch.no_grad()
def token_effects(name: str, sae, matrix: torch.Tensor, k: int, chunk: int = 1024) -> pd.DataFrame:
    W = sae.W_dec.detach().float()
    M = matrix.to(W.device).float()
    k = min(k, M.shape[1])
    frames = []
    for lo in range(0, W.shape[0], chunk):
        logits = W[lo : lo + chunk] @ M
        for direction, largest in ((1, True), (-1, False)):
            v, i = torch.topk(logits, k, dim=1, largest=largest)
            f = np.repeat(np.arange(lo, lo + v.shape[0]), k)
            frames.append(
                pd.DataFrame(
                    {
                        "sae": name,
                        "feature": f.astype(np.int32),
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
    k = min(k, W.shape[0] - 1)
    frames = []
    for lo in range(0, W.shape[0], chunk):
        cos = W[lo : lo + chunk] @ W.T
        rows = torch.arange(cos.shape[0], device=W.device)
        cos[rows, rows + lo] = -2.0  # never one's own neighbour
        v, i = torch.topk(cos, k, dim=1)
        frames.append(
            pd.DataFrame(
                {
                    "sae": name,
                    "feature": np.repeat(np.arange(lo, lo + cos.shape[0]), k).astype(np.int32),
                    "rank": np.tile(np.arange(k), cos.shape[0]).astype(np.int16),
                    "other": i.cpu().numpy().ravel().astype(np.int32),
                    "cosine": v.cpu().numpy().ravel().astype(np.float32),
                }
            )
        )
    return pd.concat(frames)
