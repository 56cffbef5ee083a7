"""Steer: add strength x max_act x W_dec[f] to the residual stream at the SAE's hook, on every
position, and see what the model does. Strength is in multiples of the feature's max activation
(from the database), so +1 pushes as hard as the feature's strongest firing; negative subtracts.

Causal models: continuations with and without steering (greedy, and sampled with a fixed seed),
the next tokens that gain and lose the most probability. Encoders: cosine of the sentence
embedding to the unsteered one against strength, and the nearest corpus sequences before and
after. Both: the model's own loss on the run's splice sample against strength (loss_curve), the
live twin of the stored steering sweep (engine.steering).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from backend.engine.steering import sample_tokens, steered_losses
from backend.errors import UserError
from backend.live.model import Live
from backend.store import queries

STRENGTHS = (-8.0, -4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0, 8.0)
"""the grid of the loss / cosine curves, in multiples of the feature's max activation"""


def steering_vector(live: Live, sae: str, f: int, strength: float, max_act: float) -> torch.Tensor:
    s = live.sae(sae)
    if not 0 <= f < s.sae.cfg.d_sae:
        raise UserError(f"feature {f} does not exist in {sae} (0 .. {s.sae.cfg.d_sae - 1})")
    if not max_act > 0:
        raise UserError(f"feature {f} of {sae} never fired on the corpus: it has no max activation to steer by")
    return (float(strength) * float(max_act)) * s.sae.W_dec[f].detach()


def _add(v: torch.Tensor):
    return lambda x: x + v.to(device=x.device, dtype=x.dtype)


# ---- causal models ----


def next_token_shift(live: Live, prompt: str, sae: str, f: int, strength: float, max_act: float, k: int = 8):
    """Next-token probabilities after the prompt, plain and steered: the k tokens that gain most
    and the k that lose most."""
    tokens, _, _ = live.tokenize(prompt)
    hook, v = live.sae(sae).hook, steering_vector(live, sae, f, strength, max_act)
    with live.using() as adapter:
        plain = adapter.spliced_logits(tokens, {})[0, -1].float().softmax(-1)
        steered = adapter.spliced_logits(tokens, {hook: _add(v)})[0, -1].float().softmax(-1)
    diff = (steered - plain).cpu().numpy()
    order = np.argsort(diff)
    rows = [*order[::-1][:k], *order[:k]]
    strings = live.token_strings()
    return pd.DataFrame(
        {
            "token": [strings[i] if i < len(strings) else f"<{i}>" for i in rows],
            "p_plain": plain.cpu().numpy()[rows],
            "p_steered": steered.cpu().numpy()[rows],
            "change": diff[rows],
        }
    )


def generate(
    live: Live, prompt: str, sae: str, f: int, strength: float, max_act: float, n_new: int = 20, seed: int = 0
) -> dict[str, tuple[str, str]]:
    """{"greedy": (plain, steered), "sampled": (plain, steered)}: the continuations as text."""
    tokens, _, _ = live.tokenize(prompt)
    room = live.limits.max_tokens - tokens.shape[1]
    n_new = max(0, min(n_new, room))
    hook, v = live.sae(sae).hook, steering_vector(live, sae, f, strength, max_act)
    out = {}
    with live.using() as adapter:
        for mode in ("greedy", "sampled"):
            pair = []
            for splices in ({}, {hook: _add(v)}):
                g = torch.Generator(device=tokens.device).manual_seed(seed)
                seq = tokens
                for _ in range(n_new):
                    logits = adapter.spliced_logits(seq, splices)[0, -1].float()
                    if mode == "greedy":
                        nxt = logits.argmax()
                    else:
                        nxt = torch.multinomial(logits.softmax(-1), 1, generator=g)[0]
                    seq = torch.cat([seq, nxt.view(1, 1)], 1)
                pair.append(adapter.tokenizer.decode(seq[0, tokens.shape[1] :].tolist()))
            out[mode] = (pair[0], pair[1])
    return out


def steering_sample(live: Live, db: str, run_id: str) -> tuple[torch.Tensor, list[int]]:
    """The stored sweep's sample: the run's splice sample cut to its --steer-len (engine.steering)."""
    tokens, seqs = queries.splice_sample(db, run_id)
    if not seqs:
        raise UserError("this run has no splice sample, so the loss under steering is not drawn (--splice-seqs)")
    full = torch.as_tensor(tokens, dtype=torch.long)
    return sample_tokens(live.adapter.kind, full, seqs, queries.run_option(db, run_id, "steer_len")), seqs


def loss_curve(
    live: Live, tokens: torch.Tensor, seqs: list[int], sae: str, f: int, max_act: float, strengths=STRENGTHS
) -> pd.DataFrame:
    """The model's own loss (engine.loss) on the run's splice sample with the feature's direction
    added at every position, at each strength, and its change from the unsteered loss: the same
    computation as the stored steering sweep, so at +1 and -1 it equals the stored exact values."""
    hook = live.sae(sae).hook
    vectors = torch.stack([steering_vector(live, sae, f, s, max_act) for s in (0.0, *strengths)])
    with live.using() as adapter:
        tokens = tokens.to(adapter.device)
        clean = adapter.activations(tokens, [hook])[hook]
        losses = steered_losses(adapter, tokens, seqs, hook, clean, vectors)
    return pd.DataFrame({"strength": list(strengths), "loss": losses[1:], "change": losses[1:] - losses[0]})


# ---- encoders ----


def _embedding(adapter, tokens: torch.Tensor, hook: str, v: torch.Tensor | None) -> torch.Tensor:
    clean = adapter.activations(tokens, [hook])
    _, emb = adapter.spliced_forward(tokens, clean, {hook: _add(v)} if v is not None else {}, [])
    return emb


def embedding_curve(live: Live, text: str, sae: str, f: int, max_act: float, strengths=STRENGTHS) -> pd.DataFrame:
    """Cosine of the steered sentence embedding (mean-pooled) to the unsteered one, per strength."""
    tokens, _, _ = live.tokenize(text)
    hook = live.sae(sae).hook
    rows = []
    with live.using() as adapter:
        plain = _embedding(adapter, tokens, hook, None)
        for s in strengths:
            emb = _embedding(adapter, tokens, hook, steering_vector(live, sae, f, s, max_act))
            rows.append({"strength": s, "cosine": float(torch.nn.functional.cosine_similarity(emb, plain, dim=-1)[0])})
    return pd.DataFrame(rows)


def corpus_index(live: Live, db: str, run_id: str, n: int = 64, length: int = 128) -> tuple[np.ndarray, list[str]]:
    """Unit-norm sentence embeddings of the run's first n sequences (their first `length`
    tokens), and a readable snippet of each: the small index steering's nearest neighbours come
    from, built on first use (about 3 s for the demo on 2 CPU cores)."""

    def build():
        rows = queries.sequences_head(db, run_id, n)
        if not rows:
            raise UserError("this run stored no sequences to search")
        toks = torch.as_tensor(np.array([r[:length] for r in rows]), dtype=torch.long)
        embs = []
        with live.using() as adapter:
            for chunk in toks.to(adapter.device).split(16):
                _, emb = adapter.spliced_forward(chunk, {}, {}, [])
                embs.append(torch.nn.functional.normalize(emb.float(), dim=-1).cpu())
        text = [live.adapter.tokenizer.decode(t, skip_special_tokens=True)[:240] for t in toks.tolist()]
        return torch.cat(embs).numpy(), text

    return live.cached(("index", db, run_id, n, length), build)


def nearest(
    live: Live, index: tuple[np.ndarray, list[str]], text: str, sae: str, f: int, strength: float, max_act: float, k=3
) -> dict[str, pd.DataFrame]:
    """The corpus sequences nearest to the text's embedding, unsteered and steered."""
    tokens, _, _ = live.tokenize(text)
    hook, v = live.sae(sae).hook, steering_vector(live, sae, f, strength, max_act)
    embs, snippets = index
    out = {}
    with live.using() as adapter:
        for name, vec in (("plain", None), ("steered", v)):
            e = torch.nn.functional.normalize(_embedding(adapter, tokens, hook, vec).float(), dim=-1).cpu().numpy()[0]
            sims = embs @ e
            top = np.argsort(-sims)[:k]
            out[name] = pd.DataFrame({"cosine": sims[top], "sequence": top, "text": [snippets[i] for i in top]})
    return out
