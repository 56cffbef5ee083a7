"""Load SAEs through sae_lens (its pretrained registry or local folders) and check they fit the model."""

from __future__ import annotations

import difflib
import fnmatch
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from backend.config import SAESource
from backend.engine.models import ModelAdapter
from backend.errors import UserError


class _TopKKeepingChoice(torch.nn.Module):
    """sae_lens's TopK activation with the same result, which also keeps the indices and values it
    chose. Statistics then read a TopK SAE's nonzeros from them instead of scanning the dense
    codes, a pass over d_sae floats per token that costs about a tenth of the encode itself."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k
        self.chosen: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values, indices = torch.topk(x, k=self.k, dim=-1, sorted=False)
        values = values.relu()
        self.chosen = (indices, values)
        return torch.zeros_like(x).scatter_(-1, indices, values)


def keep_topk_choice(sae) -> None:
    """Swap in `_TopKKeepingChoice` where the SAE's activation is exactly sae_lens's dense TopK;
    anything else (a subclass, the sparse-output mode, other architectures) is left alone."""
    from sae_lens.saes.topk_sae import TopK

    act = getattr(sae, "activation_fn", None)
    if type(act) is TopK and not act.use_sparse_activations:
        sae.activation_fn = _TopKKeepingChoice(act.k)


@dataclass
class LoadedSAE:
    name: str
    source: str
    sae: object  # sae_lens.SAE
    fast_decode: bool = False
    """decode TopK codes from the encoder's choice; set by `load_saes` only after checking that it
    equals sae_lens's own decode for this SAE with the installed sae_lens"""

    @property
    def hook(self) -> str:
        return self.sae.cfg.metadata.hook_name

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """`sae.encode(x)`, and for TopK SAEs the (indices, values) per token it chose, [..., k]."""
        codes = self.sae.encode(x)
        act = self.sae.activation_fn
        if not isinstance(act, _TopKKeepingChoice) or act.chosen is None:
            return codes, None
        chosen, act.chosen = act.chosen, None
        return codes, chosen if chosen[0].shape[:-1] == codes.shape[:-1] else None

    sparse_decode: bool = False
    """decode a ReLU or JumpReLU SAE from the nonzero codes the statistics found
    (`decode_nonzeros`); set by `load_saes` only after checking that it equals sae_lens's own decode"""

    floor: torch.Tensor | float | None = None
    """for ReLU and JumpReLU SAEs, what a pre-activation must exceed to fire (0, or each feature's
    JumpReLU threshold where that is above 0); set by `load_saes` only after checking that
    `pre_activations` above it are exactly sae_lens's codes. Why: the statistics then find the
    nonzero codes in the pre-activations with one comparison, and the activation function's own
    passes over the dense codes (ReLU; for JumpReLU also a mask, a cast and a product) never run."""

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """sae_lens's encode up to its activation function: a code is the pre-activation where
        that exceeds `floor`, else 0 (`codes_from`)."""
        sae = self.sae
        h = sae.process_sae_in(x) @ sae.W_enc
        h += sae.b_enc  # in place, on the product's own memory: the same sum as sae_lens's `+`
        return sae.hook_sae_acts_pre(h)

    def codes_from(self, pre: torch.Tensor) -> torch.Tensor:
        return torch.where(pre > self.floor, pre, 0.0)

    def decode_nonzeros(
        self, row: torch.Tensor, feature: torch.Tensor, value: torch.Tensor, lead_shape
    ) -> torch.Tensor:
        """`sae.decode(codes)` from the codes' nonzeros: `row` (of the codes flattened to
        [rows, d_sae], ascending), `feature`, `value`. Why: a ReLU SAE fires on a few percent of
        its features, and summing those decoder rows costs a fraction of the dense product."""
        sae = self.sae
        n = math.prod(lead_shape)
        counts = torch.bincount(row.long(), minlength=n)
        out = torch.nn.functional.embedding_bag(
            feature.long(),
            sae.W_dec,
            torch.cumsum(counts, 0) - counts,
            per_sample_weights=value.to(sae.W_dec.dtype),
            mode="sum",
        )
        return self._after_product(out.reshape(*lead_shape, -1))

    def decode(self, codes: torch.Tensor, chosen: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """`sae.decode(codes)`. Why the fast path exists: for a TopK SAE whose choice is at hand,
        summing the k chosen rows of W_dec per token costs a quarter of the dense product at k=32
        of 1536. It replays TopKSAE.decode's steps after the product, so `load_saes` checks it
        against sae_lens's decode before turning it on (tests pin it for the pinned sae_lens)."""
        if chosen is None or not self.fast_decode:
            return self.sae.decode(codes)
        return self._decode_chosen(chosen)

    def _decode_chosen(self, chosen: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        sae = self.sae
        idx, vals = chosen
        k = idx.shape[-1]
        if sae.cfg.rescale_acts_by_decoder_norm:
            vals = vals / sae.W_dec.norm(dim=-1)[idx]
        out = torch.nn.functional.embedding_bag(
            idx.reshape(-1, k), sae.W_dec, per_sample_weights=vals.reshape(-1, k).to(sae.W_dec.dtype), mode="sum"
        )
        return self._after_product(out.reshape(*idx.shape[:-1], -1))

    def _after_product(self, out: torch.Tensor) -> torch.Tensor:
        """The steps sae_lens's TopKSAE.decode and StandardSAE.decode take after codes @ W_dec."""
        sae = self.sae
        out = sae.hook_sae_recons(out + sae.b_dec)
        return sae.reshape_fn_out(sae.run_time_activation_norm_fn_out(out), sae.d_head)


def _probe_input(sae, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, n, sae.cfg.d_in, generator=g).to(device=sae.W_dec.device, dtype=sae.dtype)


def _same_decode(sae, got: torch.Tensor, want: torch.Tensor) -> bool:
    tol = 1e-4 if sae.dtype == torch.float32 else 2e-2
    return bool(torch.allclose(got.float(), want.float(), rtol=tol, atol=tol * float(want.abs().max().clamp(min=1))))


@torch.no_grad()
def fast_decode_agrees(item: LoadedSAE, n: int = 8) -> bool:
    """Whether the chosen-rows decode equals sae_lens's decode on a few random inputs; a future
    sae_lens whose TopKSAE.decode changes falls back to its own decode instead of diverging."""
    from sae_lens import TopKSAE

    sae = item.sae
    if type(sae) is not TopKSAE:  # the class whose decode this mirrors
        return False
    codes, chosen = item.encode(_probe_input(sae, n))
    return chosen is not None and _same_decode(sae, item._decode_chosen(chosen), sae.decode(codes))


def _dense_output(sae) -> bool:
    """ReLU and JumpReLU SAEs as sae_lens defines them, the classes `floor_of` and the sparse
    decode mirror (not subclasses, which may change either step)."""
    from sae_lens import JumpReLUSAE, StandardSAE

    return type(sae) in (StandardSAE, JumpReLUSAE) and type(sae.activation_fn) is torch.nn.ReLU


def floor_of(sae) -> torch.Tensor | float | None:
    """The value above which a dense-output SAE's pre-activation is its code (see LoadedSAE.floor)."""
    from sae_lens import JumpReLUSAE

    if not _dense_output(sae):
        return None
    if type(sae) is JumpReLUSAE:  # relu(h) * (h > threshold): h where h > max(0, threshold)
        return sae.threshold.detach().clamp(min=0).to(sae.dtype)
    return 0.0


@torch.no_grad()
def floor_agrees(item: LoadedSAE, n: int = 64) -> bool:
    """Whether codes read from the pre-activations above `floor_of` are exactly sae_lens's
    encode on a batch of random inputs."""
    sae = item.sae
    floor = floor_of(sae)
    if floor is None:
        return False
    probe = LoadedSAE(item.name, item.source, sae, floor=floor)
    x = _probe_input(sae, n)
    return bool(torch.equal(probe.codes_from(probe.pre_activations(x)), sae.encode(x)))


@torch.no_grad()
def sparse_decode_agrees(item: LoadedSAE, n: int = 8) -> bool:
    """Whether decoding a ReLU or JumpReLU SAE from its nonzero codes equals sae_lens's decode on
    a few random inputs (the same guard as fast_decode_agrees, for dense-output SAEs)."""
    sae = item.sae
    if not _dense_output(sae):
        return False
    codes = sae.encode(_probe_input(sae, n))
    flat = codes.reshape(n, -1)
    row, feature = torch.nonzero(flat, as_tuple=True)
    got = item.decode_nonzeros(row, feature, flat[row, feature], codes.shape[:-1])
    return _same_decode(sae, got, sae.decode(codes))


def _registry() -> dict:
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    return get_pretrained_saes_directory()


def expand_sources(sources: list[SAESource]) -> list[SAESource]:
    """Replace `--sae-id` patterns (fnmatch, e.g. 'blocks.*.hook_resid_pre') by the registry's ids;
    unknown releases or ids fail here, before anything is downloaded."""
    out: list[SAESource] = []
    registry = None
    for src in sources:
        if src.path is not None:
            if not (Path(src.path) / "cfg.json").exists():
                raise UserError(f"{src.path} is not an sae_lens SAE folder (no cfg.json)")
            out.append(src)
            continue
        registry = registry or _registry()
        if src.release not in registry:
            close = difflib.get_close_matches(src.release, list(registry), n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UserError(f"unknown sae_lens release {src.release!r}{hint}")
        ids = list(registry[src.release].saes_map)
        matched = [i for i in ids if fnmatch.fnmatchcase(i, src.sae_id)]
        if not matched:
            close = difflib.get_close_matches(src.sae_id, ids, n=3, cutoff=0.4)
            hint = f"; did you mean {', '.join(close)}?" if close else f" (it has {len(ids)} ids, e.g. {ids[0]})"
            raise UserError(f"release {src.release!r} has no SAE id matching {src.sae_id!r}{hint}")
        out += [SAESource(release=src.release, sae_id=i, name=src.name if len(matched) == 1 else None) for i in matched]
    return out


def load_saes(sources: list[SAESource], adapter: ModelAdapter, device: str, dtype: str) -> list[LoadedSAE]:
    """Load and validate every SAE; raises UserError on the first that does not fit the model."""
    from sae_lens import SAE

    loaded = []
    for src in expand_sources(sources):
        try:
            if src.path is not None:
                sae = SAE.load_from_disk(src.path, device=device, dtype=dtype)
                default_name = Path(src.path).name
            else:
                sae = SAE.from_pretrained(src.release, src.sae_id, device=device, dtype=dtype)
                default_name = src.sae_id
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - network, format and hub errors; one line for the user
            raise UserError(f"could not load SAE {src.describe()}: {str(e).splitlines()[0][:300]}") from None
        item = LoadedSAE(src.name or default_name, src.describe(), sae)
        check_fits(item, adapter)
        keep_topk_choice(sae)
        item.fast_decode = fast_decode_agrees(item)
        item.sparse_decode = sparse_decode_agrees(item)
        if floor_agrees(item):
            item.floor = floor_of(sae)
        loaded.append(item)
    names = [s.name for s in loaded]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise UserError(f"two SAEs share the name {sorted(dup)[0]!r}; give them distinct folder names")
    return loaded


def check_fits(item: LoadedSAE, adapter: ModelAdapter) -> None:
    cfg = item.sae.cfg
    hook = cfg.metadata.hook_name
    if not hook:
        raise UserError(f"SAE {item.source} does not say which hook it reads (cfg.metadata.hook_name)")
    adapter.check_hook(hook)
    if cfg.d_in != adapter.d_model:
        raise UserError(
            f"SAE {item.source} has d_in={cfg.d_in} but {adapter.name} has d_model={adapter.d_model} at {hook}"
        )
    if getattr(cfg.metadata, "hook_head_index", None) is not None:
        raise UserError(f"SAE {item.source} reads one attention head; only residual-stream SAEs are supported")
