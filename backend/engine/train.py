"""Train residual-stream SAEs with sae_lens's own trainer, fed by our activation stream.

Activations for all hooks are collected in one pass over the corpus, kept in memory (float32,
n_tokens x d_model per hook), shuffled, and served to `SAETrainer` as an endless iterator of
batches. The last 10% of tokens are held out to report L0, explained variance and dead features.
"""

from __future__ import annotations

import functools
import logging
import math
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from backend.config import TrainConfig
from backend.engine.corpus import documents, token_contexts
from backend.engine.harvest import n_special
from backend.engine.models import ModelAdapter, load_model
from backend.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    hook: str
    architecture: str
    path: str
    l0: float
    explained_variance: float
    dead_fraction: float
    trained: bool


@torch.no_grad()
def collect_activations(adapter: ModelAdapter, hooks: list[str], cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """[n_tokens, d_model] float32 activations per hook, special tokens excluded."""
    content_len = cfg.context_len - n_special(adapter)
    n_seqs = math.ceil(cfg.n_tokens / max(content_len, 1))
    docs = documents(cfg.corpus, cfg.corpus_split, cfg.text_field)
    chunks = token_contexts(docs, adapter.tokenizer, content_len)
    out: dict[str, list[torch.Tensor]] = {h: [] for h in hooks}
    got = 0
    bar = tqdm(total=n_seqs * content_len, unit="tok", unit_scale=True, desc="activations", file=sys.stderr)
    batch: list[np.ndarray] = []

    def flush():
        nonlocal got
        tokens, mask = adapter.wrap(np.stack(batch))
        acts = adapter.activations(tokens, hooks)
        for h in hooks:
            out[h].append(acts[h][mask].float().cpu())
        got += int(mask.sum())
        bar.update(int(mask.sum()))
        batch.clear()

    for i, chunk in enumerate(chunks):
        if i >= n_seqs:
            break
        batch.append(chunk)
        if len(batch) == cfg.batch_size:
            flush()
    if batch:
        flush()
    bar.close()
    if got < 10 * cfg.train_batch:
        raise UserError(f"corpus {cfg.corpus!r} gave only {got} tokens; training needs at least {10 * cfg.train_batch}")
    return {h: torch.cat(v) for h, v in out.items()}


def _batches(acts: torch.Tensor, batch: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    while True:
        for idx in torch.randperm(len(acts), generator=g).split(batch):
            if len(idx) == batch:
                yield acts[idx]


def _training_sae(arch: str, hook: str, d_in: int, cfg: TrainConfig, device: str, steps: int):
    from sae_lens import (
        JumpReLUTrainingSAE,
        JumpReLUTrainingSAEConfig,
        StandardTrainingSAE,
        StandardTrainingSAEConfig,
        TopKTrainingSAE,
        TopKTrainingSAEConfig,
    )
    from sae_lens.saes.sae import SAEMetadata

    common = dict(
        d_in=d_in,
        d_sae=d_in * cfg.expansion,
        device=device,
        normalize_activations="expected_average_only_in",
        metadata=SAEMetadata(hook_name=hook, context_size=cfg.context_len),
    )
    torch.manual_seed(cfg.seed)
    if arch == "topk":
        return TopKTrainingSAE(TopKTrainingSAEConfig(k=cfg.k, aux_loss_coefficient=1.0, **common))
    warm = max(1, steps // 10)
    if arch == "standard":
        return StandardTrainingSAE(
            StandardTrainingSAEConfig(l1_coefficient=cfg.l1_coefficient, l1_warm_up_steps=warm, **common)
        )
    return JumpReLUTrainingSAE(
        JumpReLUTrainingSAEConfig(l0_coefficient=cfg.l0_coefficient, l0_warm_up_steps=warm, **common)
    )


@torch.no_grad()
def evaluate(sae, acts: torch.Tensor, batch: int = 4096) -> tuple[float, float, float]:
    """L0, explained variance (pooled) and dead fraction of an inference SAE on activations."""
    sse, l0, fired = 0.0, 0.0, torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    for x in acts.split(batch):
        x = x.to(sae.device)
        z = sae.encode(x)
        sse += float((x - sae.decode(z)).pow(2).sum())
        l0 += float((z > 0).sum())
        fired |= (z > 0).any(0).cpu()
    total = float((acts - acts.mean(0)).pow(2).sum())
    return l0 / len(acts), 1 - sse / total, 1 - float(fired.float().mean())


@contextmanager
def _quiet_trainer():
    """sae_lens's trainer draws its own progress bars, which would interleave with ours (one bar
    per SAE): silence them while it runs, and put its module globals back afterwards."""
    import sae_lens.training.activation_scaler as scaler_module
    import sae_lens.training.sae_trainer as trainer_module

    saved = trainer_module.tqdm, scaler_module.tqdm
    trainer_module.tqdm = scaler_module.tqdm = functools.partial(tqdm, disable=True)
    try:
        yield
    finally:
        trainer_module.tqdm, scaler_module.tqdm = saved


def train_one(arch: str, hook: str, train_acts: torch.Tensor, cfg: TrainConfig, out: Path):
    from sae_lens import SAE
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.training.sae_trainer import SAETrainer

    total = cfg.epochs * len(train_acts)
    steps = total // cfg.train_batch
    sae = _training_sae(arch, hook, train_acts.shape[1], cfg, cfg.device, steps)
    # dead_feature_window is in steps: sae_lens's default (1000) exceeds a short run, and then
    # TopK's auxiliary loss never revives dead latents. Linear decay over the last 20%.
    tcfg = SAETrainerConfig(
        total_training_samples=total,
        train_batch_size_samples=cfg.train_batch,
        lr=cfg.lr,
        lr_end=cfg.lr,
        lr_scheduler_name="constant",
        lr_decay_steps=steps // 5,
        device=cfg.device,
        dead_feature_window=50,
        feature_sampling_window=10**9,
        n_batches_for_norm_estimate=50,
        logger=LoggingConfig(log_to_wandb=False),
    )
    trainer = SAETrainer(cfg=tcfg, sae=sae, data_provider=_batches(train_acts, cfg.train_batch, cfg.seed))
    with _quiet_trainer():
        trained = trainer.fit()
    trained.save_inference_model(str(out))
    return SAE.load_from_disk(str(out), device=cfg.device)


def sae_folder(out: str | Path, arch: str, hook: str) -> Path:
    return Path(out) / f"{arch}-{hook}"


def train_saes(cfg: TrainConfig, adapter: ModelAdapter | None = None) -> list[TrainResult]:
    """Train every (hook, architecture) pair that is not already in cfg.out."""
    from sae_lens import SAE

    adapter = adapter or load_model(cfg.model, cfg.device)
    hooks = cfg.hooks or adapter.hook_names()
    if cfg.hooks:
        for h in hooks:
            adapter.check_hook(h)
    todo = [(h, a) for h in hooks for a in cfg.architectures]
    missing = [(h, a) for h, a in todo if cfg.force or not (sae_folder(cfg.out, a, h) / "cfg.json").exists()]
    acts = collect_activations(adapter, sorted({h for h, _ in todo}), cfg)
    results = []
    for hook, arch in tqdm(todo, desc="train SAEs", unit="sae", file=sys.stderr):
        n = len(acts[hook])
        split = int(n * 0.9)
        folder = sae_folder(cfg.out, arch, hook)
        if (hook, arch) in missing:
            folder.mkdir(parents=True, exist_ok=True)
            sae = train_one(arch, hook, acts[hook][:split], cfg, folder)
        else:
            sae = SAE.load_from_disk(str(folder), device=cfg.device)
        l0, ev, dead = evaluate(sae, acts[hook][split:])
        results.append(TrainResult(hook, arch, str(folder), l0, ev, dead, (hook, arch) in missing))
    for r in results:
        log.info(
            "%s: L0 %.1f, explained variance %.3f, dead %.1f%%",
            Path(r.path).name,
            r.l0,
            r.explained_variance,
            100 * r.dead_fraction,
        )
    return results


def summary(results: list[TrainResult]) -> str:
    """The table `train-saes` prints."""
    lines = [f"{'sae':44} {'L0':>7} {'EV':>7} {'dead':>7}"]
    for r in results:
        lines.append(
            f"{Path(r.path).name:44} {r.l0:>7.1f} {r.explained_variance:>7.3f} {r.dead_fraction:>7.1%}"
            + ("" if r.trained else "  (existing)")
        )
    return "\n".join(lines)
