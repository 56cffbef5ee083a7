"""The model's own loss: what "performance" means wherever the dashboard says it.

- Causal models: next-token cross-entropy, averaged over every predicted token of the sample
  (as sae_lens's `get_recons_loss` does; special tokens are predicted and predicted from too).
- Encoders (sentence-transformers models such as all-MiniLM-L6-v2): the objective they were
  trained with, the in-batch contrastive loss of sentence-transformers'
  MultipleNegativesRankingLoss: cross-entropy over 20 x the cosine similarities of each anchor
  to every positive of the batch, the right one being its own pair. The pairs are adjacent
  windows of the corpus: sample sequence 2k (anchor) and 2k + 1 (positive), which the corpus
  reader cut from consecutive text, so a pair is one passage split in two. That reuses the
  splice sample's own forwards (no extra model run), and every sequence of the sample is in
  exactly one pair; the whole sample is one batch, so the loss does not depend on how the
  sample was split into batches or shards.

Both are losses: lower is better, and an intervention can raise or lower them. Each is computed
from per-sequence outputs (per-token losses, or pooled embeddings) keyed by sequence number.
"""

from __future__ import annotations

import math

import torch

SCALE = 20.0
"""sentence-transformers' MultipleNegativesRankingLoss scale (1 / temperature)"""


def contrastive_loss(anchors: torch.Tensor, positives: torch.Tensor, scale: float = SCALE) -> torch.Tensor:
    """Mean over pairs of cross-entropy over scale x cos(anchor_i, positive_j), target j = i; [..., n, d]
    in, [...] out (a leading batch of whole samples is allowed)."""
    a = torch.nn.functional.normalize(anchors.double(), dim=-1)
    p = torch.nn.functional.normalize(positives.double(), dim=-1)
    scores = scale * a @ p.transpose(-1, -2)
    return (torch.logsumexp(scores, -1) - scores.diagonal(dim1=-2, dim2=-1)).mean(-1)


def pairs(seqs: list[int]) -> tuple[list[int], list[int]]:
    """(anchors, positives): sequence 2k with 2k + 1, for every k with both in `seqs`."""
    have = set(seqs)
    anchors = sorted(s for s in have if s % 2 == 0 and s + 1 in have)
    return anchors, [s + 1 for s in anchors]


def loss_of(kind: str, outputs: torch.Tensor, seqs: list[int]) -> torch.Tensor:
    """The sample's loss (differentiable) from outputs [n, ...] of the sequences `seqs`, in order:
    per-token losses [n, T - 1] for causal models, pooled embeddings [n, d] for encoders."""
    if kind == "causal":
        return outputs.double().mean()
    anchors, positives = pairs(seqs)
    where = {q: i for i, q in enumerate(seqs)}
    return contrastive_loss(outputs[[where[q] for q in anchors]], outputs[[where[q] for q in positives]])


def sample_loss(kind: str, outputs: dict[int, torch.Tensor]) -> tuple[float | None, int]:
    """(loss_of over the whole sample, how many terms it averages) from per-sequence outputs:
    predicted tokens for causal models, pairs for encoders. None where the sample has no term
    (an encoder sample of one sequence)."""
    seqs = sorted(outputs)
    n = sum(outputs[s].numel() for s in seqs) if kind == "causal" else len(pairs(seqs)[0])
    if not n:
        return None, 0
    return float(loss_of(kind, torch.stack([outputs[s] for s in seqs]), seqs)), n


def mean_cosine(outputs: dict[int, torch.Tensor], clean: dict[int, torch.Tensor]) -> float | None:
    """Encoders: mean cosine of each sequence's embedding to its clean one (1 for the clean model)."""
    seqs = sorted(outputs)
    if not seqs:
        return None
    a = torch.stack([outputs[s].double() for s in seqs])
    b = torch.stack([clean[s].double() for s in seqs])
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1).mean())


def context_buckets(context_len: int) -> list[tuple[int, int]]:
    """Causal models: (lo, hi) ranges of how many tokens a prediction sees (the token it
    predicts from and every one before it, BOS included): 1-16, 17-32, 33-64, ... up to the
    longest a sequence of `context_len` tokens has, context_len - 1."""
    top = context_len - 1
    out, lo, hi = [], 1, 16
    while lo <= top:
        out.append((lo, min(hi, top)))
        lo, hi = hi + 1, hi * 2
    return out


def encoder_lengths(context_len: int) -> list[int]:
    """Encoders: the text lengths (tokens, [CLS] and [SEP] included) the sample is also run at,
    16, 32, 64, ... below the run's own length, which is measured by the full sample."""
    return [2**k for k in range(4, max(4, math.ceil(math.log2(context_len)))) if 2**k < context_len]


def truncate(tokens: torch.Tensor, seqs: list[int], length: int) -> torch.Tensor:
    """Encoder sequences [CLS] content [SEP] cut to `length` tokens so that a pair stays adjacent
    text: an anchor (even sequence) keeps the end of its content, a positive (odd) the start."""
    cls, sep = tokens[:, :1], tokens[:, -1:]
    keep = length - 2
    rows = []
    for row, s in zip(tokens[:, 1:-1], seqs):
        rows.append(row[-keep:] if s % 2 == 0 else row[:keep])
    return torch.cat([cls, torch.stack(rows), sep], 1)
