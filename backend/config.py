"""Typed options for every command. Field docstrings double as `--help` text (see __main__)."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from backend.errors import UserError


@dataclass
class SAESource:
    """One SAE: a local folder in sae_lens's saved format, or a pretrained release + id."""

    path: str | None = None
    release: str | None = None
    sae_id: str | None = None
    name: str | None = None

    def __post_init__(self):
        if (self.path is None) == (self.release is None):
            raise UserError("an SAE is either a local folder (--sae PATH) or --release R --sae-id ID")
        if self.release is not None and not self.sae_id:
            raise UserError(f"release {self.release!r} needs --sae-id (an id or a pattern like 'blocks.*')")

    def describe(self) -> str:
        return self.path if self.path else f"{self.release}/{self.sae_id}"


DTYPES = ("float32", "bfloat16", "float16")


def splice_members(seqs: np.ndarray, size: int, every: int) -> np.ndarray:
    """True for the sequence numbers in a splice sample of `size` sequences taken as consecutive
    pairs from every `every`-th pair (sequence 2 * every * k and the one after it). The one
    definition, used by the pass and by the read side."""
    period = 2 * every
    index = 2 * (seqs // period) + seqs % period  # position in the sample
    return (seqs % period < 2) & (index < size)


@dataclass
class InputConfig:
    """What is read: the model, the corpus and how it is cut into sequences. Shared by
    precompute and train-saes, so both take the same options with the same help."""

    model: str = "embedded"
    """'embedded' (all-MiniLM-L6-v2 from pip), a TransformerLens name such as gpt2, hf:NAME for a Hugging Face
    causal LM, or a local HF encoder folder"""
    corpus: str = "embedded"
    """'embedded[:heldout|train|all]', a .txt/.jsonl/.parquet file, or a Hugging Face dataset name"""
    corpus_split: str = "train"
    """split of a Hugging Face dataset"""
    text_field: str = "text"
    """field/column holding the text in .jsonl/.parquet/HF corpora"""
    n_tokens: int = 100_000
    """tokens to read (sequences x context length); precompute also takes 0: the whole corpus"""
    context_len: int = 128
    """tokens per sequence fed to the model, special tokens included"""
    batch_size: int = 32
    """sequences per forward pass"""
    device: str = "cpu"
    """torch device: cpu, cuda, cuda:1 ..."""
    seed: int = 0
    """random seed (example sampling, SAE initialisation)"""

    def _check_positive(self, *names: str) -> None:
        for name in names:
            if getattr(self, name) <= 0:
                raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")


@dataclass
class PrecomputeConfig(InputConfig):
    db: str = "data/features.duckdb"
    """feature database to write (created if missing; holds several runs)"""
    saes: list[SAESource] = field(default_factory=list)
    """SAEs to analyse; all must read the model's residual stream"""
    dtype: str = "float32"
    """model and SAE dtype (float32, bfloat16, float16); statistics are always kept in float32/64"""
    n_top: int = 20
    """top-activating examples per feature"""
    n_buckets: int = 5
    """activation-quantile buckets for sampled examples"""
    per_bucket: int = 5
    """sampled examples per bucket"""
    left: int = 24
    """context tokens shown before an example's token"""
    right: int = 8
    """context tokens shown after an example's token"""
    recon_every: int = 4
    """measure reconstruction error (MSE, explained variance, by position) on every N-th batch of sequences;
    1 = all (the decoder pass costs as much as the encoder; density, L0 and examples always use every token)"""
    sae_context: int | None = None
    """context length the SAEs were trained on, for SAEs whose sae_lens config does not record one
    (cfg.metadata.context_size): reconstruction is then reported inside and beyond it"""
    splice_seqs: int | None = None
    """size of the splice sample, on which each SAE is spliced into the model: the model's own loss recovered,
    by context length, against random errors, its error followed through the later hooks and to the output,
    and the steering sweep (the Layers page); 0 skips it. Default: a 32nd of the run's sequences, between 1
    and 32 (32 for a whole corpus): each spliced sequence ends in a full vocabulary's logits once per SAE and
    more, so a fixed 32 would dominate a small run"""
    splice_every: int = 1
    """the splice sample is pairs of consecutive sequences (an encoder's loss pairs them), taken from every N-th
    pair of the corpus: sequences 0, 1, 2N, 2N + 1, 4N, ... until --splice-seqs of them; 1 takes the first
    --splice-seqs sequences. Spreading it over the corpus gives an encoder's contrastive loss negatives from
    other documents. A rule of sequence numbers alone, so shards splice the same sequences as one pass"""
    random_draws: int = 2
    """random directions per token, each of the norm of the SAE's reconstruction error there, whose effect on
    the model's loss is set against the error's own (are the SAE's errors worse than random ones of the same
    size?); averaged; 0 skips this baseline (each draw costs one splice of every SAE on the splice sample)"""
    steer_extremes: int = 10
    """steering sweep: features per SAE whose exact loss change is measured among those the first-order
    estimate says lower the loss most at +1 x max activation, and as many it says raise it most"""
    steer_sample: int = 32
    """steering sweep: features per SAE, drawn evenly across density quantiles, whose exact loss change at +1
    and -1 is measured (the share of features that hurt or help comes from these); with --steer-extremes 0 and
    this 0 only the estimate is kept"""
    steer_len: int | None = None
    """steering sweep: tokens per text of its sample (encoders: each pair of the splice sample cut to this length
    as the context breakdown cuts it; causal models: each sequence's first tokens); default: the whole splice
    sample. Its cost is one forward of the sample per measured feature and sign, so shorter is cheaper"""
    no_steering: bool = False
    """skip the steering sweep (every feature's first-order estimate from one backward pass per run, and the
    exact steered forwards above, on the splice sample)"""
    tail_below: float | None = None
    """density below which a feature counts as the low-density tail for the shared-direction diagnostic;
    default: the valley between the layer's low-density mode and its main mode (else 1e-5)"""
    n_effects: int = 10
    """top and bottom tokens per feature by W_dec . W_U (or W_E)"""
    n_neighbours: int = 10
    """nearest features by decoder cosine similarity"""
    feature_map: str = "umap"
    """layout of the Clusters page's feature map: umap (cosine metric, the run's seed; on 2 CPU cores about 3 s
    per SAE of 1,536 features plus 10 s of compilation per process, minutes at 65k features) or pca (the unit
    decoder directions' first two principal components, under a second at any width)"""
    include_special: bool = False
    """count BOS/CLS/SEP positions in the statistics (they often dominate a few features)"""
    run_name: str | None = None
    """run id in the database; default: model name + a hash of the options"""
    force: bool = False
    """recompute a run that is already complete"""
    append: bool = False
    """add these SAEs to the complete run in --db that read the same model, corpus and options (every option but
    the SAEs and where the run executes must match; the corpus must give the same tokens, which is checked): a
    suite built one group of SAEs at a time, each needing only its own memory. Per-SAE tables equal one pass over
    all SAEs; what is measured across SAEs (error propagation, compounding) covers the SAEs of each group"""
    shard: str | None = None
    """'I/N': process every N-th sequence starting at I and save a partial state to merge later"""
    workers: int = 0
    """split the corpus into this many shards and run them as Ray tasks (one GPU each where there are GPUs),
    then merge them into one run; 0 runs in this process without Ray"""
    ray_address: str | None = None
    """Ray cluster to use with --workers (e.g. ray://head:10001 or auto); default: start a local Ray"""

    def __post_init__(self):
        self._check_positive("context_len", "batch_size", "n_top", "n_buckets", "per_bucket", "recon_every")
        if min(self.random_draws, self.steer_extremes, self.steer_sample) < 0:
            raise UserError("--random-draws, --steer-extremes and --steer-sample must be >= 0")
        if self.steer_len is not None and not 4 <= self.steer_len <= self.context_len:
            raise UserError(f"--steer-len must be between 4 and --context-len ({self.context_len})")
        if self.splice_seqs is None:
            n_seqs = math.ceil(self.n_tokens / self.context_len) if self.n_tokens > 0 else None
            self.splice_seqs = min(32, max(1, math.ceil(n_seqs / 32))) if n_seqs else 32
        if self.splice_seqs < 0:
            raise UserError("--splice-seqs must be >= 0")
        if self.splice_every < 1:
            raise UserError("--splice-every must be >= 1")
        if self.n_tokens < 0:
            raise UserError(f"--n-tokens must be positive, or 0 for the whole corpus; got {self.n_tokens}")
        if self.dtype not in DTYPES:
            raise UserError(f"--dtype {self.dtype!r}: use one of {', '.join(DTYPES)}")
        if self.left < 0 or self.right < 0:
            raise UserError("--left and --right must be >= 0")
        if self.context_len < 4:
            raise UserError("--context-len must be at least 4")
        if self.shard is not None:
            self.shard_index()
        if self.workers < 0 or (self.workers and self.shard):
            raise UserError("--workers must be >= 0, and cannot be combined with --shard")
        if self.feature_map not in ("umap", "pca"):
            raise UserError(f"--feature-map {self.feature_map!r}: use umap or pca")
        if self.append and (self.shard or self.workers):
            raise UserError("--append runs in one process: drop --shard and --workers")

    @classmethod
    def from_dict(cls, d: dict, **overrides) -> PrecomputeConfig:
        """The config `asdict` wrote (a shard's state, a Ray task's arguments), with overrides."""
        values = {**d, **overrides}
        values["saes"] = [s if isinstance(s, SAESource) else SAESource(**s) for s in values.get("saes", [])]
        return cls(**values)

    def in_splice_sample(self, seqs) -> np.ndarray:
        """Which of these sequence numbers belong to the splice sample (see splice_every)."""
        return splice_members(np.asarray(seqs), self.splice_seqs, self.splice_every)

    def shard_index(self) -> tuple[int, int] | None:
        if self.shard is None:
            return None
        try:
            i, n = (int(p) for p in self.shard.split("/"))
        except ValueError:
            raise UserError(f"--shard must look like 0/4, got {self.shard!r}") from None
        if not 0 <= i < n:
            raise UserError(f"--shard {self.shard}: need 0 <= I < N")
        return i, n

    _UNKEYED = ("db", "force", "shard", "run_name", "device", "workers", "ray_address", "append")
    """options that change where or how a run executes, not what it measures"""

    def run_key(self) -> dict:
        """The options a run appended to must share with this one: all but the SAEs and _UNKEYED."""
        keyed = {k: v for k, v in asdict(self).items() if k not in (*self._UNKEYED, "saes")}
        return json.loads(json.dumps(keyed, sort_keys=True, default=str))

    def run_id(self) -> str:
        if self.run_name:
            return self.run_name
        keyed = {k: v for k, v in asdict(self).items() if k not in self._UNKEYED}
        digest = hashlib.sha1(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:8]
        return f"{self.model.split('/')[-1]}-{digest}"


@dataclass
class TrainConfig(InputConfig):
    out: str = "data/saes"
    """folder that receives one sae_lens SAE folder per hook and architecture"""
    corpus: str = "embedded:train"
    """corpus (same choices as precompute); the embedded default trains on the split precompute never reads"""
    n_tokens: int = 200_000
    """training tokens per SAE (activations are computed once for all hooks)"""
    hooks: list[str] = field(default_factory=list)
    """hook names; default: every residual hook point of the model"""
    architectures: list[str] = field(default_factory=lambda: ["topk", "standard"])
    """sae_lens architectures to train: topk, standard (ReLU + L1), jumprelu"""
    expansion: int = 4
    """d_sae = expansion x d_model"""
    k: int = 32
    """active features per token for TopK SAEs"""
    l1_coefficient: float = 2.0
    """sparsity penalty for standard (ReLU + L1) SAEs"""
    l0_coefficient: float = 0.3
    """sparsity penalty for JumpReLU SAEs"""
    lr: float = 1e-3
    """learning rate (constant, with a linear decay over the last 20% of steps)"""
    train_batch: int = 1024
    """tokens per optimiser step"""
    epochs: int = 3
    """passes over the collected activations"""
    force: bool = False
    """retrain SAEs that already exist in --out"""

    def __post_init__(self):
        bad = set(self.architectures) - {"topk", "standard", "jumprelu"}
        if bad:
            raise UserError(f"unknown architecture(s) {sorted(bad)}: use topk, standard, jumprelu")
        self._check_positive("n_tokens", "context_len", "batch_size", "expansion", "k", "train_batch", "epochs")
