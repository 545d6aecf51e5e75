"""`gflowgr bench runtime`: the actor-learner runtime against the single-process trainer.

Three ways of taking the same number of GFlowGR steps from the same SFT checkpoint, in one run
so machine load hits all alike, with the on-policy strategy on (rollouts generate under the
trie, which is what makes overlap worth having):

- `local`: the single-process trainer (rollout, reward and learner stages one after another);
- `sync`: the Ray runtime with S = 0 (one batch in flight: rollout and learning alternate);
- `async`: the Ray runtime with S = `--staleness` and S + 1 rollout actors (the next batches
  are sampled while the learner trains).

With `--engines hf,vllm` the two Ray modes run again with the vLLM engine (`sync-vllm`,
`async-vllm`), where generation is a larger share of a step. With a LoRA learner
(`--set gfn.lora_rank=8`) the syncs ship the adapter alone, and `sync-merged` runs the S = 0
mode again shipping merged full weights (`runtime.lora_sync: merged`), the payload to compare.

Printed per mode: trajectories learned per second, learner idle %, learner seconds per step
(its own compute: what overlap cannot hide, and what contention for cores inflates), weight-sync
seconds per sync against a raw in-memory copy of the same state dict, sync share of step time,
megabytes and engine load seconds per sync, and rollout tokens/s for each engine. Then the
trajectory buffer's throughput (our batched entries against a `ray.util.queue.Queue` with one
entry per trajectory). The first learner step of each mode is a warm-up and is not timed.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gflowgr_dist.config import Config, apply_overrides

MIX = {"on_policy": 0.5, "cf": 0.25, "random": 0.25}


def bench_config(cfg: Config, mode: str, staleness: int, engine: str = "hf") -> Config:
    """The run's config with the benchmark's sampler mix and the mode's runtime settings."""
    weights = "{" + ", ".join(f"{k}: {v}" for k, v in MIX.items()) + "}"
    merged = mode == "sync-merged"
    mode = "sync" if merged else mode
    overrides = [
        f"runtime.lora_sync={'merged' if merged else 'adapter'}",
        f"gfn.sampler.weights_start={weights}",
        f"gfn.sampler.weights_end={weights}",
        "gfn.calibration_users=0",
        "logging.progress=false",
        "runtime.num_reward_actors=1",
        "runtime.seeding=per_batch",
        f"runtime.engine={engine}",
    ]
    if mode != "local":
        s = 0 if mode == "sync" else staleness
        # S + 1 batches may be in flight: as many rollout actors can sample them at once.
        overrides += [
            f"runtime.num_rollout_actors={s + 1}",
            f"runtime.max_staleness={s}",
            "runtime.sync_every=1",
            f"runtime.buffer_capacity={max(8, s + 2)}",
        ]
    return apply_overrides(cfg, overrides)


def bench_local(cfg: Config, out: Path, steps: int) -> dict[str, Any]:
    """`steps` timed steps of the single-process trainer (rollout → reward → learner)."""
    from gflowgr_dist.runtime.driver import build_trainer
    from gflowgr_dist.train.sft import length_bucketed_batches

    trainer = build_trainer(cfg, out)
    trainer.rng = np.random.default_rng([cfg.run.seed, 7, 0])
    trainer.generator = torch.Generator().manual_seed(cfg.run.seed * 1000)
    rng = np.random.default_rng([cfg.run.seed, 0])
    batches = length_bucketed_batches(trainer.lengths, cfg.train.batch_size, rng)
    _need_batches(batches, steps)
    trainer.model.train()
    trajectories, rollout_s, learn_s, tokens, started = 0, 0.0, 0.0, 0, 0.0
    for index, members in enumerate(batches[: steps + 1]):
        # Rollout stage, timed on its own for tokens/s.
        if index == 1:
            started = time.perf_counter()
        chunk = [trainer.examples[i] for i in members]
        t0 = time.perf_counter()
        batch = trainer.source.build(
            chunk, members, 0.0, trainer.rng, trainer.generator, trainer.state.step
        )
        t1 = time.perf_counter()

        # Reward and learner stages, then the optimizer step.
        loss, _ = trainer.learner_loss(chunk, batch)
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trainer.optimizer.step()
        trainer.state.step += 1
        if index:
            trajectories += batch.num_trajectories
            rollout_s += t1 - t0
            learn_s += time.perf_counter() - t1
            tokens += _tokens(batch, trainer)
    wall = time.perf_counter() - started
    return {
        "mode": "local",
        "wall_s": wall,
        "trajectories": trajectories,
        "trajectories_per_s": trajectories / wall,
        "rollout_tokens_per_s": tokens / max(rollout_s, 1e-9),
        "idle_pct": 0.0,
        "learn_s_per_step": learn_s / steps,
        "sync_s_per_sync": 0.0,
        "sync_mb_per_sync": 0.0,
        "load_s_per_sync": 0.0,
        "sync_share_pct": 0.0,
    }


def _tokens(batch, trainer) -> int:
    return batch.num_trajectories * trainer.vocab.num_levels


def _need_batches(batches: list, steps: int) -> None:
    if len(batches) < steps + 1:
        from gflowgr_dist.errors import ConfigError

        raise ConfigError(
            f"--steps {steps} needs {steps + 1} training batches, the epoch has {len(batches)}; "
            "lower --steps or train.batch_size"
        )


def bench_distributed(cfg: Config, out: Path, steps: int, mode: str) -> dict[str, Any]:
    """`steps` timed learner steps of the Ray runtime; totals read after warm-up and at the end."""
    from gflowgr_dist.runtime.driver import build_trainer, run_distributed

    marks: dict[int, tuple[float, dict[str, float]]] = {}

    def on_step(run, step: int) -> None:
        marks[step] = (time.perf_counter(), dict(run.totals))

    trainer = build_trainer(cfg, out)
    _need_batches(trainer._train_batches_per_epoch(), steps)
    run_distributed(cfg, out, trainer=trainer, stop_after=steps + 1, on_step=on_step)
    (t0, first), (t1, last) = marks[1], marks[steps + 1]
    delta = {k: last[k] - first[k] for k in last}
    wall = t1 - t0
    syncs = max(1, delta["syncs"])
    return {
        "mode": mode if cfg.runtime.engine == "hf" else f"{mode}-{cfg.runtime.engine}",
        "wall_s": wall,
        "trajectories": delta["trajectories"],
        "trajectories_per_s": delta["trajectories"] / wall,
        "rollout_tokens_per_s": delta["tokens"] / max(delta["rollout_s"], 1e-9),
        "idle_pct": 100 * delta["idle_s"] / wall,
        "learn_s_per_step": delta["learn_s"] / steps,
        "sync_s_per_sync": delta["sync_s"] / syncs,
        "sync_mb_per_sync": delta["sync_bytes"] / syncs / 2**20,
        "load_s_per_sync": delta["load_s"] / syncs,
        "sync_share_pct": 100 * delta["sync_s"] / wall,
        "staleness": cfg.runtime.max_staleness,
    }


def _bench_vllm(cfg: Config, out: Path, steps: int, staleness: int, mode: str) -> dict[str, Any]:
    """A Ray mode with the vLLM engine; its failure is reported beside the other rows."""
    import ray

    from gflowgr_dist.runtime.driver import RuntimeFailureError

    vllm_cfg = bench_config(cfg, mode, staleness, engine="vllm")
    try:
        return bench_distributed(vllm_cfg, out / f"{mode}-vllm", steps, mode)
    except (RuntimeFailureError, ray.exceptions.RayError) as err:
        reason = str(err).strip().splitlines()[-1][:160]
        return {"mode": f"{mode}-vllm", "skipped": f"{type(err).__name__}: {reason}"}


def raw_copy_seconds(cfg: Config, out: Path, repeats: int = 20) -> float:
    """Seconds to clone the backbone's state dict in memory (the floor any sync compares to)."""
    from gflowgr_dist.pipeline import sft_dir
    from gflowgr_dist.train import checkpoint

    model = checkpoint.load_model(cfg.gfn.init_checkpoint or sft_dir(cfg) / "best")[0]
    state = model.state_dict()
    started = time.perf_counter()
    for _ in range(repeats):
        {k: v.detach().clone() for k, v in state.items()}
    return (time.perf_counter() - started) / repeats


def bench_buffer(batches: int = 40, batch_size: int = 256) -> dict[str, float]:
    """Trajectories/s through our buffer (one entry per batch) vs a Ray queue per trajectory."""
    import ray
    from ray.util.queue import Queue

    from gflowgr_dist.runtime.buffer import buffer_actor_class

    scored = [_fake_scored(i, batch_size) for i in range(4)]
    buffer = buffer_actor_class().options(num_cpus=0).remote(8, 0)
    started = time.perf_counter()
    for i in range(batches):
        ray.get(buffer.put.remote(scored[i % 4], 0))
        assert ray.get(buffer.take.remote(0)).scored is not None
    ours = batches * batch_size / (time.perf_counter() - started)
    ray.kill(buffer)

    queue = Queue(maxsize=batch_size)
    rows = [scored[0].batch.items[i % len(scored[0].batch.items)] for i in range(batch_size)]
    started = time.perf_counter()
    count = max(1, batches // 8)
    for _ in range(count):
        for row in rows:
            queue.put(row)
        for _ in rows:
            queue.get()
    single = count * batch_size / (time.perf_counter() - started)
    queue.shutdown()
    return {"ours_traj_per_s": ours, "queue_traj_per_s": single, "ratio": ours / single}


def _fake_scored(index: int, size: int):
    """A scored batch of `size` trajectories (ML-100K-sized ids) for the buffer benchmark."""
    from gflowgr_dist.gfn.trajectories import TrajectoryBatch
    from gflowgr_dist.runtime.messages import ScoredBatch, SeedState, WorkItem, WorkKey

    examples, width = size // 4, 4
    rng = np.random.default_rng(index)
    batch = TrajectoryBatch(
        example_ids=np.arange(examples),
        users=rng.integers(0, 900, examples),
        targets=rng.integers(0, 1600, examples),
        items=rng.integers(0, 1600, (examples, width)),
        levels=rng.integers(0, 3, (examples, width)),
        strategies=rng.integers(0, 4, (examples, width - 1)),
        cf_scores=rng.random((examples, width)).astype(np.float32),
    )
    work = WorkItem(WorkKey(0, index), batch.example_ids, 0.0, SeedState.seeded([index], index))
    rewards = rng.random((examples, width)).astype(np.float32)
    return ScoredBatch(work, batch, np.log(rewards), rewards, "bench", 0.0, 0.0, size)


def bench_runtime(
    cfg: Config, out: Path, *, steps: int = 10, staleness: int = 1, engines: tuple = ("hf",)
) -> dict[str, Any]:
    """All modes side by side (see the module docstring); Ray is started once for all."""
    import ray

    from gflowgr_dist.runtime.driver import ensure_ray

    out = Path(out)
    rows = [bench_local(bench_config(cfg, "local", staleness), out / "local", steps)]
    started_ray = ensure_ray(cfg)
    try:
        modes = ("sync", "async", "sync-merged") if cfg.gfn.lora_rank else ("sync", "async")
        for mode in modes:
            mode_cfg = bench_config(cfg, mode, staleness)
            rows.append(bench_distributed(mode_cfg, out / mode, steps, mode))
        for mode in ("sync", "async") if "vllm" in engines else ():
            if importlib.util.find_spec("vllm") is None:
                rows.append({"mode": f"{mode}-vllm", "skipped": "vllm is not installed"})
            else:
                rows.append(_bench_vllm(cfg, out, steps, staleness, mode))
        buffer = bench_buffer()
    finally:
        if started_ray:
            ray.shutdown()
    by = {row["mode"]: row["trajectories_per_s"] for row in rows if "skipped" not in row}
    ratios = {
        "async / sync": by["async"] / by["sync"],
        "async / single-process": by["async"] / by["local"],
    }
    if "async-vllm" in by and "sync-vllm" in by:
        ratios["async-vllm / sync-vllm"] = by["async-vllm"] / by["sync-vllm"]
    return {
        "steps": steps,
        "rows": rows,
        "raw_copy_s": raw_copy_seconds(cfg, out),
        "ratios": ratios,
        "buffer": buffer,
    }


def format_runtime(result: dict[str, Any]) -> str:
    lines = [
        f"{'mode':<12}{'traj/s':>10}{'idle %':>9}{'learn s':>9}{'sync s':>9}{'sync %':>8}"
        f"{'sync MB':>9}{'load s':>9}{'rollout tok/s':>15}"
    ]
    for row in result["rows"]:
        if "skipped" in row:
            lines.append(f"{row['mode']:<12}skipped: {row['skipped']}")
            continue
        lines.append(
            f"{row['mode']:<12}{row['trajectories_per_s']:>10.1f}{row['idle_pct']:>9.1f}"
            f"{row['learn_s_per_step']:>9.3f}{row['sync_s_per_sync']:>9.4f}"
            f"{row['sync_share_pct']:>8.2f}{row['sync_mb_per_sync']:>9.3f}"
            f"{row['load_s_per_sync']:>9.4f}{row['rollout_tokens_per_s']:>15.0f}"
        )
    buffer = result["buffer"]
    lines += [
        f"{name + ' trajectories/s':<40}{ratio:.2f}x" for name, ratio in result["ratios"].items()
    ]
    lines += [
        f"{'raw state-dict copy':<40}{result['raw_copy_s']:.4f} s",
        f"buffer: batched entries {buffer['ours_traj_per_s']:,.0f} traj/s, Ray queue per "
        f"trajectory {buffer['queue_traj_per_s']:,.0f} traj/s ({buffer['ratio']:.0f}x)",
    ]
    return "\n".join(lines)
