"""The driver: starts the roles, runs the actor-learner loop, evaluates and checkpoints.

    driver --WorkItem--> RolloutActor xR --RolloutResult--> RewardActor xK --ScoredBatch-->
    TrajectoryBuffer (admission by staleness S) --> learner (this process) --weights vN-->
    every RolloutActor (object store, one control call per actor)

The loop is single-threaded and event-driven (`ray.wait` over outstanding calls, each with a
deadline): the learner trains in this process while rollout and reward actors work in theirs.
At most S + 1 batches are in flight, so a batch is consumed at most S learner steps after the
weights that sampled it; the buffer enforces the bound anyway (out-of-order arrivals) and hands
stale batches back for re-issue.

Sampling streams travel inside each `WorkItem`, so any actor (or a restarted one) reproduces a
batch. `runtime.seeding=stream` chains them exactly as the single-process trainer consumes its
per-epoch stream (batch k starts where batch k-1 ended: rollouts run in order, which is what
lets S = 0 with one rollout actor reproduce the single-process losses);
`per_batch` seeds each batch on its own so rollouts run in parallel.

Training cursor = which batches (and example ids) of the current epoch the learner consumed;
generated-but-unconsumed work is re-issued after a failure or a resume, never counted twice.
It is saved inside the trainer checkpoint (`trainer_state.pt`), so one atomic rename covers
weights, heads, optimizer, RNG, cursor and buffer counters.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from gflowgr_dist.config import Config
from gflowgr_dist.models.lora import is_adapter_only
from gflowgr_dist.runtime.buffer import buffer_actor_class
from gflowgr_dist.runtime.learner import Learner, StepOutcome
from gflowgr_dist.runtime.messages import (
    BufferCounters,
    Health,
    RolloutResult,
    ScoredBatch,
    SeedState,
    WorkItem,
    WorkKey,
)
from gflowgr_dist.runtime.placement import place_roles
from gflowgr_dist.runtime.reward import RewardActor
from gflowgr_dist.runtime.rollout import RolloutActor, RolloutSpec
from gflowgr_dist.runtime.weight_sync import WeightSyncError, push_weights, resolve_ack

logger = logging.getLogger(__name__)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


class RuntimeFailureError(RuntimeError):
    """A role timed out, died too often, or the loop can make no progress."""


@dataclass
class Cursor:
    """Training cursor: what the learner has consumed (not what was generated).

    `consumed` are batch indices of `epoch`'s batch list, `consumed_ids` their example ids in
    consumption order; `next_seed` is (stream seeding) where the first unconsumed batch's
    sampling streams start.
    """

    epoch: int = 0
    consumed: list[int] = field(default_factory=list)
    consumed_ids: list[int] = field(default_factory=list)
    next_seed: SeedState | None = None
    buffer: BufferCounters = field(default_factory=BufferCounters)

    def to_json(self) -> str:
        blob = {
            "epoch": self.epoch,
            "consumed": self.consumed,
            "consumed_ids": self.consumed_ids,
            "next_seed": self.next_seed.to_json() if self.next_seed else None,
            "buffer": asdict(self.buffer),
        }
        return json.dumps(blob)

    @classmethod
    def from_json(cls, text: str) -> Cursor:
        blob = json.loads(text)
        seed = blob["next_seed"]
        return cls(
            epoch=blob["epoch"],
            consumed=list(blob["consumed"]),
            consumed_ids=list(blob["consumed_ids"]),
            next_seed=SeedState.from_json(seed) if seed else None,
            buffer=BufferCounters(**blob["buffer"]),
        )


@dataclass
class Pending:
    """One outstanding Ray call and what to do if it fails or is late."""

    kind: str  # "rollout" | "reward" | "sync"
    actor: str
    deadline: float
    work: WorkItem | None = None
    result: RolloutResult | None = None
    version: int = -1


@dataclass
class RunResult:
    """What `run_distributed` returns (besides the checkpoints it wrote)."""

    fit: dict[str, Any]
    losses: list[float | None]  # per consumed batch, None for a skipped step
    staleness: list[int]  # learner version - policy version of every consumed batch
    consumed_ids: dict[int, list[int]]  # epoch -> example ids in consumption order
    counters: BufferCounters
    restarts: dict[str, int]
    stopped_early: bool = False
    nodes: dict[str, str] = field(default_factory=dict)  # actor -> Ray node id at the end
    retired: list[str] = field(default_factory=list)  # actors taken out of service


StepHook = Callable[["DistributedRun", int], None]


def _brief(err: BaseException) -> str:
    """One line for an error raised in an actor (Ray's text carries the remote traceback)."""
    cause = getattr(err, "cause", None) or err
    lines = str(cause).strip().splitlines() or [""]
    return f"{type(cause).__name__}: {lines[-1]}"


def _where(health: Health) -> tuple[str, int]:
    """The process behind an actor: (Ray node id, pid)."""
    return health.node, health.pid


def ensure_ray(cfg: Config) -> bool:
    """Joins `runtime.address` / RAY_ADDRESS, else starts Ray in-process on loopback.

    Returns whether this call started Ray (then the run shuts it down at the end).
    """
    import sys

    rt = cfg.runtime
    address = rt.address or os.environ.get("RAY_ADDRESS")
    if not address:
        _keep_local_ray_on_loopback(already_imported="ray" in sys.modules)
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address)
        return True
    ray.init(
        address="local",  # start one; never join whatever /tmp/ray last recorded
        num_cpus=rt.num_cpus or os.cpu_count(),
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
    )
    return True


def _keep_local_ray_on_loopback(already_imported: bool) -> None:
    """Makes a Ray started here listen on 127.0.0.1 only.

    On Linux Ray maps 127.0.0.1 to the host's primary address and its GCS, raylet and agents
    listen on every interface unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which Ray reads when
    it is imported: set it first; if Ray was imported already (a library user's process), set
    the constant Ray read from it. A user who exported the variable keeps their choice.
    """
    if os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") not in (None, "0"):
        logger.warning(
            "runtime: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=%s: the local Ray may listen beyond "
            "loopback; unset it to keep Ray on 127.0.0.1",
            os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"],
        )
        return
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    if already_imported:
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False


class DistributedRun:
    """One training run on Ray; see the module docstring. Build, then `run()`."""

    def __init__(self, cfg: Config, trainer, out: Path, on_step: StepHook | None = None):
        import ray

        self.cfg, self.rt = cfg, cfg.runtime
        self.trainer = trainer
        self.learner = Learner(
            trainer, self._start_learners(cfg, trainer), cfg.runtime.task_timeout_s
        )
        self.out = Path(out)
        self.on_step = on_step
        rt = self.rt
        spec = RolloutSpec(
            cfg=cfg,
            dataset=trainer.dataset,
            table=trainer.table,
            vocab=trainer.vocab,
            model_class=type(trainer.model),
            model_config=trainer.model.config,
            examples=trainer.examples,
            cf_model=trainer.cf_model,
            seq2seq=trainer.seq2seq,
        )
        self.spec_ref = ray.put(spec)
        self.placement = place_roles(rt)
        self.rollouts = {
            name: ray.remote(RolloutActor)
            .options(**self.placement.options("rollout", i))
            .remote(self.spec_ref, name, rt.engine)
            for i, name in enumerate(f"rollout-{i}" for i in range(rt.num_rollout_actors))
        }
        codes = trainer.table.codes
        self.rewards = {
            name: ray.remote(RewardActor)
            .options(**self.placement.options("reward", i))
            .remote(cfg.gfn.reward, codes, name)
            for i, name in enumerate(f"reward-{i}" for i in range(rt.num_reward_actors))
        }
        # The buffer lives on the driver's node: it holds state the driver cannot lose with a
        # worker node (an unpinned zero-CPU actor may land on any node).
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.buffer = (
            buffer_actor_class()
            .options(num_cpus=0, scheduling_strategy=here)
            .remote(rt.buffer_capacity, rt.max_staleness)
        )
        self.restarts = {name: 0 for name in [*self.rollouts, *self.rewards]}
        self.retired: list[str] = []
        self.pending: dict[Any, Pending] = {}
        self.latest_state_ref = None
        self.latest_version = -1
        # The last full payload: a restarted engine loads it before an adapter-only one
        # (runtime.lora_sync: adapter). None until the first sync, which is always full.
        self.base_state_ref, self.base_version = None, -1
        self.losses: list[float | None] = []
        self.staleness: list[int] = []
        self.consumed_ids: dict[int, list[int]] = {}
        self.reward_turn = 0
        self.sync_seconds = 0.0
        # The learner's step runs here while the driver thread keeps the pipeline moving.
        self.step_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="learner-step")
        self.window = {"tokens": 0, "rollout_s": 0.0, "idle_s": 0.0, "started": time.perf_counter()}
        # Whole-run sums of the same quantities (the runtime benchmark reads them).
        self.totals = {
            "idle_s": 0.0,
            "learn_s": 0.0,
            "sync_s": 0.0,
            "load_s": 0.0,
            "syncs": 0,
            "sync_bytes": 0,
            "tokens": 0,
            "rollout_s": 0.0,
            "trajectories": 0,
        }
        self._check_health()
        self.nccl = None
        if rt.weight_sync == "nccl":
            from gflowgr_dist.runtime.weight_transfer_gpu import NcclWeightSync

            self.nccl = NcclWeightSync(
                trainer.model, self.rollouts, master_port=rt.nccl_port, timeout_s=rt.sync_timeout_s
            )

    # --- roles -----------------------------------------------------------------------------

    def _start_learners(self, cfg: Config, trainer) -> dict[str, Any]:
        """Ranks 1 … N-1 of the data-parallel learners, joined with this process (gloo; NCCL
        between GPU learners)."""
        import ray
        import torch.distributed as dist

        rt = cfg.runtime
        if rt.num_learners == 1:
            return {}
        from gflowgr_dist.runtime.learner import LearnerSpec, LearnerWorker, collective_backend
        from gflowgr_dist.runtime.messages import current_node_ip

        model = trainer.model
        spec = LearnerSpec(
            cfg, trainer.dataset, trainer.splits, trainer.table, trainer.vocab,
            type(model), model.config, trainer.cf_model,
        )  # fmt: skip
        spec_ref = ray.put(spec)
        gpus = 1 if trainer.device.type == "cuda" else 0  # each replica on a GPU of its own
        workers = {
            f"learner-{rank}": ray.remote(LearnerWorker)
            .options(num_cpus=rt.actor_cpus, num_gpus=gpus, max_restarts=0)
            .remote(spec_ref, rank)
            for rank in range(1, rt.num_learners)
        }
        init = f"tcp://{current_node_ip()}:{_free_port()}"
        joins = [w.join.remote(init, rt.num_learners, rt.task_timeout_s) for w in workers.values()]
        timeout = timedelta(seconds=rt.task_timeout_s)
        try:
            dist.init_process_group(collective_backend(trainer.device), init_method=init, rank=0,
                                    world_size=rt.num_learners, timeout=timeout)  # fmt: skip
            ray.get(joins, timeout=rt.task_timeout_s)
        except Exception as err:
            if dist.is_initialized():
                dist.destroy_process_group()
            for handle in workers.values():
                ray.kill(handle, no_restart=True)
            raise RuntimeFailureError(
                f"the {rt.num_learners} data-parallel learners did not form their group at "
                f"{init} within runtime.task_timeout_s={rt.task_timeout_s}s: {err}"
            ) from err
        return workers

    def _check_health(self) -> None:
        import ray

        handles = {**self.rollouts, **self.rewards}
        refs = {name: h.health.remote() for name, h in handles.items()}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=300)
        late = [name for name, ref in refs.items() if ref not in ready]
        if late:
            raise RuntimeFailureError(f"actors {late} did not start within 300s (phase 'health')")
        # Which process serves each actor: a restart is over once another one answers.
        self.incarnation = {name: _where(ray.get(ref)) for name, ref in refs.items()}

    def sync(self) -> None:
        """Sends the learner's weights (version = learner step) to every rollout actor."""
        started = time.perf_counter()
        if self.nccl is not None:  # blocking: one NCCL broadcast to every actor
            acks = self.nccl.send(self.learner.version)
            self.latest_version = self.learner.version
            self.totals["load_s"] += sum(a.load_seconds for a in acks.values())
            self._count_sync(time.perf_counter() - started)
            return
        full = self.base_state_ref is None
        payload = self.learner.sync_payload(full=full)
        ticket = push_weights(self.rollouts, payload, self.learner.version)
        self.latest_state_ref, self.latest_version = ticket.state_ref, ticket.version
        if not is_adapter_only(payload):  # what a restarted engine loads before an adapter
            self.base_state_ref, self.base_version = ticket.state_ref, ticket.version
        self.totals["sync_bytes"] += sum(v.numel() * v.element_size() for v in payload.values())
        deadline = time.monotonic() + self.rt.sync_timeout_s
        for name, (_, ref) in ticket.pending.items():
            self.pending[ref] = Pending("sync", name, deadline, version=ticket.version)
        self._count_sync(time.perf_counter() - started)

    def _count_sync(self, seconds: float) -> None:
        self.sync_seconds = seconds
        self.totals["sync_s"] += seconds
        self.totals["syncs"] += 1

    def _resync(self, name: str) -> None:
        if self.nccl is not None:  # a new member: the NCCL world is formed again
            self.nccl.reconnect()
            self.nccl.send(self.latest_version)
            return
        handle = self.rollouts[name]
        loads = [(self.latest_state_ref, self.latest_version)]
        if self.base_state_ref is not self.latest_state_ref:  # adapter syncs: the base first
            loads.insert(0, (self.base_state_ref, self.base_version))
        deadline = time.monotonic() + self.rt.sync_timeout_s
        for state_ref, version in loads:  # an actor runs its calls in this order
            ref = handle.load_weights.remote(state_ref, version)
            self.pending[ref] = Pending("sync", name, deadline, version=version)

    def _restart(self, name: str, why: str) -> None:
        """A hung or failing actor: kill it so Ray starts it afresh, then recover it."""
        import ray

        logger.warning("runtime: actor %s %s; restarting it", name, why)
        ray.kill({**self.rollouts, **self.rewards}[name], no_restart=False)
        self._recover(name, RuntimeError(why))

    def _recover(self, name: str, err: Exception) -> None:
        """A dead actor: re-issue its work, then re-sync it once Ray has restarted it.

        An actor that keeps failing (more than runtime.max_restarts times) or does not come
        back within runtime.restart_timeout_s is taken out of service while another actor of
        its role remains; the last one failing stops the run with the reason.
        """
        self.restarts[name] += 1
        self._reissue_calls_of(name)
        if self.restarts[name] > self.rt.max_restarts:
            self._retire(
                name,
                f"failed {self.restarts[name]} times (runtime.max_restarts="
                f"{self.rt.max_restarts}); last error: {_brief(err)}",
            )
            return
        logger.warning("runtime: actor %s died (%s); recovering", name, type(err).__name__)
        try:
            self._await_restart(name)
        except RuntimeFailureError as late:
            self._retire(name, str(late))
            return
        if name in self.rollouts:
            self._resync(name)

    def _reissue_calls_of(self, name: str) -> None:
        mine = [(ref, p) for ref, p in self.pending.items() if p.actor == name]
        for ref, pending in mine:
            del self.pending[ref]
            if pending.kind == "rollout":
                self.reissue.appendleft(pending.work)
            elif pending.kind == "reward":
                self._submit_reward(pending.result, avoid=name)

    def _retire(self, name: str, why: str) -> None:
        """Takes `name` out of service, or stops the run if it is the last of its role."""
        import ray

        role = self.rollouts if name in self.rollouts else self.rewards
        if len(role) == 1:
            raise RuntimeFailureError(f"actor {name} {why}; no other actor of its role is left")
        logger.error("runtime: taking actor %s out of service: %s", name, why)
        self.retired.append(name)
        ray.kill(role.pop(name), no_restart=True)

    def _await_restart(self, name: str) -> None:
        """Blocks until a new process of `name` answers (calls sent meanwhile would fail).

        The old process may still answer for a moment after `ray.kill`: only an answer from
        another process (node, pid) ends the wait.
        """
        import ray

        handle = {**self.rollouts, **self.rewards}[name]
        deadline = time.monotonic() + self.rt.restart_timeout_s
        last = "its old process still answers"
        while time.monotonic() < deadline:
            try:
                left = max(0.1, deadline - time.monotonic())
                where = _where(ray.get(handle.health.remote(), timeout=left))
                if where != self.incarnation.get(name):
                    self.incarnation[name] = where
                    return
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as err:
                last = f"{type(err).__name__}: {err}"
            time.sleep(0.2)
        raise RuntimeFailureError(
            f"actor {name} did not come back within runtime.restart_timeout_s="
            f"{self.rt.restart_timeout_s}s (phase 'restart'): {last}"
        )

    def _submit_reward(self, result: RolloutResult, avoid: str | None = None) -> None:
        names = [n for n in self.rewards if n != avoid] or list(self.rewards)
        name = names[self.reward_turn % len(names)]
        self.reward_turn += 1
        ref = self.rewards[name].score.remote(result)
        deadline = time.monotonic() + self.rt.task_timeout_s
        self.pending[ref] = Pending("reward", name, deadline, result=result)

    # --- the epoch loop --------------------------------------------------------------------

    def _work_seed(self, epoch: int, index: int) -> SeedState | None:
        seed = self.cfg.run.seed
        if self.rt.seeding == "per_batch":
            return SeedState.seeded(
                [seed, 7, epoch, index], seed * 1_000_003 + epoch * 1009 + index
            )
        return self.chain.get(index)

    def _progress(self) -> float:
        return self.learner.version / max(1, self.trainer.schedule.total_steps)

    def _issue(self) -> None:
        """Hands out work while fewer than S + 1 batches are in flight and an actor is idle."""
        busy = {p.actor for p in self.pending.values() if p.kind == "rollout"}
        idle = [name for name in self.rollouts if name not in busy]
        while idle:
            if self.reissue:  # already counted in flight
                work = self.reissue.popleft()
                work.attempt += 1
                work.progress = self._progress()
            elif len(self.inflight) >= (self.rt.max_staleness + 1) * self.learner.world_size:
                return
            elif self.todo:
                index = self.todo[0]
                seed = self._work_seed(self.epoch, index)
                if seed is None:  # stream seeding: the previous batch has not returned yet
                    return
                self.todo.popleft()
                ids = self.batches[index]
                work = WorkItem(WorkKey(self.epoch, index), ids, self._progress(), seed)
            else:
                return
            name = idle.pop(0)
            self.inflight[work.key] = work
            ref = self.rollouts[name].generate.remote(work)
            deadline = time.monotonic() + self.rt.task_timeout_s
            self.pending[ref] = Pending("rollout", name, deadline, work=work)

    def _complete(self, ref: Any) -> None:
        import ray

        pending = self.pending.pop(ref, None)
        if pending is None:  # belonged to an actor already recovered
            return
        try:
            if pending.kind == "sync":
                ack = resolve_ack(pending.actor, ref, pending.version)
                self.totals["load_s"] += ack.load_seconds
                return
            value = ray.get(ref)
        except (ray.exceptions.RayActorError, WeightSyncError, ray.exceptions.RayTaskError) as err:
            died = isinstance(err, ray.exceptions.RayActorError) or isinstance(
                err.__cause__, ray.exceptions.RayActorError
            )
            if not died and pending.kind != "sync":
                raise  # a rollout / reward call that raised: a bug or bad data, not a fault
            self.pending[ref] = pending  # handled with the rest of the actor's calls
            if died:
                self._recover(pending.actor, err)
            else:  # the sync failed in the actor (or acked a wrong version): start it afresh
                self._restart(pending.actor, f"failed phase 'load_weights': {_brief(err)}")
            return
        if pending.kind == "rollout":
            result: RolloutResult = value
            index = result.work.key.index
            if self.rt.seeding == "stream" and index in self.successor:
                self.chain.setdefault(self.successor[index], result.seed_after)
            self._submit_reward(result)
        else:
            self._admit(value)

    def _admit(self, scored: ScoredBatch) -> None:
        import ray

        status = ray.get(self.buffer.put.remote(scored, self.learner.version))
        if status == "dropped":
            self.inflight.pop(scored.work.key, None)
            self.reissue.append(scored.work)
        elif status == "full":  # cannot happen while in-flight <= S + 1 <= capacity
            raise RuntimeFailureError(
                f"trajectory buffer full (capacity {self.rt.buffer_capacity}); raise "
                "runtime.buffer_capacity above runtime.max_staleness + 1"
            )

    def _wait(self) -> None:
        """Blocks until one outstanding call finishes; raises naming a late actor and phase."""
        if not self.pending:
            raise RuntimeFailureError(
                f"runtime stalled: nothing in flight, {len(self.todo)} batches to issue, "
                f"{len(self.reissue)} to re-issue, buffer empty (epoch {self.epoch})"
            )
        nearest = min(p.deadline for p in self.pending.values())
        self._poll(max(0.0, nearest - time.monotonic()), idle=True)

    def _poll(self, timeout: float, *, idle: bool) -> None:
        """Handles the calls that finish within `timeout` s, or restarts an actor past its
        deadline. `idle`: the learner has nothing to do meanwhile (counted as idle time)."""
        import ray

        started = time.perf_counter()
        ready, _ = ray.wait(list(self.pending), num_returns=1, timeout=timeout)
        if idle:
            self.window["idle_s"] += time.perf_counter() - started
            self.totals["idle_s"] += time.perf_counter() - started
        if not ready:
            late = [p for p in self.pending.values() if p.deadline <= time.monotonic()]
            if late:
                p = late[0]
                what = {"rollout": "generate", "reward": "score", "sync": "load_weights"}[p.kind]
                knob = f"runtime.{'sync' if p.kind == 'sync' else 'task'}_timeout_s"
                self._restart(p.actor, f"did not finish phase '{what}' within {knob}")
            return
        for ref in ready:
            self._complete(ref)

    def _step_serving(self, scored: ScoredBatch) -> StepOutcome:
        """The learner's step on a helper thread while this thread keeps the pipeline moving.

        Rollouts that finish during the step go on to a reward actor, and scored batches into
        the buffer, at once rather than after the step, so the next batch is waiting when the
        step ends. Only this thread touches the driver's state; the helper runs the step alone.
        Re-syncing a restarted actor meanwhile sends the weights of the last sync (an object
        already in the store), never the ones the optimizer is writing.
        """
        future = self.step_pool.submit(self.learner.step, scored)
        while not future.done():
            self._issue()
            if not self.pending:
                break
            nearest = min(p.deadline for p in self.pending.values())
            self._poll(min(0.05, max(0.0, nearest - time.monotonic())), idle=False)
        return future.result()

    def _consume(self, group: list[ScoredBatch]) -> StepOutcome:
        """One learner step on `group` (one batch per learner replica), then its accounting."""
        version = self.learner.version
        if self.learner.workers:
            outcome = self.learner.step_group(group)
        elif self.nccl is not None:  # a resync would broadcast weights being written: inline
            outcome = self.learner.step(group[0])
        else:
            outcome = self._step_serving(group[0])
        lags = [version - scored.policy_version for scored in group]
        for scored, lag in zip(group, lags, strict=True):
            self._account(scored, lag)
        self.losses.append(outcome.loss)
        self.totals["learn_s"] += outcome.seconds
        if outcome.loss is not None:
            if self.learner.version % self.rt.sync_every == 0:
                self.sync()
            self._log(outcome, max(lags))
        return outcome

    def _account(self, scored: ScoredBatch, lag: int) -> None:
        self.inflight.pop(scored.work.key, None)
        self.cursor.consumed.append(scored.work.key.index)
        ids = [int(i) for i in scored.batch.example_ids]
        self.cursor.consumed_ids.extend(ids)
        self.consumed_ids.setdefault(self.epoch, []).extend(ids)
        self.staleness.append(lag)
        self.window["tokens"] += scored.tokens
        self.window["rollout_s"] += scored.rollout_seconds
        for key, value in (
            ("tokens", scored.tokens),
            ("rollout_s", scored.rollout_seconds),
            ("trajectories", scored.batch.num_trajectories),
        ):
            self.totals[key] += value

    def _log(self, outcome: StepOutcome, lag: int) -> None:
        """One line per learner step with fixed fields; everything to the metrics files."""
        import ray

        trainer = self.trainer
        counters: BufferCounters = ray.get(self.buffer.get_counters.remote())
        depth = ray.get(self.buffer.depth.remote())
        wall = time.perf_counter() - self.window["started"]
        m = outcome.metrics
        row = {
            "learner/loss": outcome.loss,
            **{f"learner/{k}": v for k, v in m.items()},
            "learner/version": self.learner.version,
            "learner/grad_norm": outcome.grad_norm,
            "learner/lr": trainer.scheduler.get_last_lr()[0],
            "learner/idle_pct": 100 * self.window["idle_s"] / max(wall, 1e-9),
            "learner/staleness": lag,
            "learner/staleness_max": max(self.staleness),
            "learner/staleness_mean": float(np.mean(self.staleness)),
            "rollout/tokens_per_s": self.window["tokens"] / max(self.window["rollout_s"], 1e-9),
            "sync/seconds": self.sync_seconds,
            "buffer/depth": depth,
            "buffer/admitted": counters.admitted,
            "buffer/dropped": counters.dropped,
            "buffer/consumed": counters.consumed,
            "runtime/restarts": sum(self.restarts.values()),
        }
        logger.info(
            "learner step=%d version=%d loss=%.4f loss_sft=%.4f loss_gfn=%.4f log_z=%.3f "
            "log_r=%.3f depth=%d stale_max=%d stale_mean=%.2f idle=%.0f%% tok_s=%.0f sync_s=%.3f",
            trainer.state.step,
            self.learner.version,
            outcome.loss,
            m.get("loss_sft", float("nan")),
            m.get("loss_gfn", float("nan")),
            m.get("log_z", float("nan")),
            m.get("log_reward_pos", float("nan")),
            depth,
            row["learner/staleness_max"],
            row["learner/staleness_mean"],
            row["learner/idle_pct"],
            row["rollout/tokens_per_s"],
            self.sync_seconds,
        )
        trainer.metrics.log(trainer.state.step, row)
        self.window = {"tokens": 0, "rollout_s": 0.0, "idle_s": 0.0, "started": time.perf_counter()}

    def _run_epoch(self, stop_after: int | None) -> tuple[bool, bool]:
        """One epoch through the actors; returns (schedule used up, stopped by `stop_after`)."""
        import ray

        trainer, seed = self.trainer, self.cfg.run.seed
        self.epoch = self.cursor.epoch
        self.batches = trainer.epoch_batches(self.epoch)
        done = set(self.cursor.consumed)
        order = [i for i in range(len(self.batches)) if i not in done]
        self.todo = deque(order)
        self.successor = dict(itertools.pairwise(order))
        first = self.cursor.next_seed or SeedState.seeded(
            [seed, 7, self.epoch], seed * 1000 + self.epoch
        )
        self.chain = {order[0]: first} if order else {}
        self.reissue: deque[WorkItem] = deque()
        self.inflight: dict[WorkKey, WorkItem] = {}
        trainer.model.train()
        group: list[ScoredBatch] = []  # batches taken for the next step, one per learner
        while len(self.cursor.consumed) < len(self.batches):
            self._issue()
            take = ray.get(self.buffer.take.remote(self.learner.version))
            for work in take.dropped:
                self.inflight.pop(work.key, None)
                self.reissue.append(work)
            if take.scored is not None:
                group.append(take.scored)
            left = len(self.batches) - len(self.cursor.consumed) - len(group)
            if len(group) < self.learner.world_size and left > 0:
                if take.scored is None:
                    self._wait()
                continue
            outcome = self._consume(group)
            group = []
            if self.on_step is not None and outcome.loss is not None:
                self._issue()  # so that a hook finds work in flight
                self.on_step(self, self.learner.version)
            step = self.learner.version
            every = self.rt.checkpoint_every
            if every and outcome.loss is not None and step % every == 0:
                self.save()
            if stop_after is not None and step >= stop_after:
                self.save()
                return False, True
            if outcome.schedule_done:
                return True, False
        return False, False

    # --- checkpoints -----------------------------------------------------------------------

    def _next_seed(self) -> SeedState | None:
        # At an epoch boundary the cursor already names the next epoch, whose streams start
        # afresh: the chain still holds the finished epoch's.
        if self.rt.seeding != "stream" or self.cursor.epoch != self.epoch:
            return None
        done = set(self.cursor.consumed)
        left = [i for i in range(len(self.batches)) if i not in done]
        return self.chain.get(left[0]) if left else None

    def save(self) -> None:
        """`last/` with the cursor and buffer counters inside the trainer state (atomic)."""
        import ray

        from gflowgr_dist.train import checkpoint

        self.cursor.next_seed = self._next_seed()
        self.cursor.buffer = ray.get(self.buffer.get_counters.remote())
        bundle = self.trainer._bundle()
        bundle.state = dict(self.trainer.state.__dict__) | {"runtime": self.cursor.to_json()}
        checkpoint.save(self.out / "last", bundle)

    def _resume(self) -> None:
        import ray

        from gflowgr_dist.train import checkpoint
        from gflowgr_dist.train.sft import TrainState

        folder = self.out / "last"
        trainer = self.trainer
        state = checkpoint.load_training_state(
            folder, trainer.model, trainer.optimizer, trainer.scheduler, trainer._heads()
        )
        runtime = state.pop("runtime", None)
        trainer.state = TrainState(**state)
        self.cursor = Cursor.from_json(runtime) if runtime else Cursor(epoch=trainer.state.epoch)
        ray.get(self.buffer.set_counters.remote(self.cursor.buffer))
        logger.info(
            "runtime: resumed from %s at epoch %d, step %d, %d batches of the epoch consumed",
            folder,
            trainer.state.epoch,
            trainer.state.step,
            len(self.cursor.consumed),
        )

    # --- the whole run ---------------------------------------------------------------------

    def run(self, *, resume: bool = False, stop_after: int | None = None) -> RunResult:
        """Trains as `SftTrainer.fit` does (epochs, validation, early stop, `last/`, `best/`)."""
        trainer = self.trainer
        self.cursor = Cursor()
        if resume:
            self._resume()
        self.learner.push_state()
        self.sync()
        stopped = False
        while trainer.state.epoch < self.cfg.train.epochs:
            started = time.perf_counter()
            out_of_budget, stopped = self._run_epoch(stop_after)
            if stopped:
                break
            trainer.state.epoch_seconds.append(time.perf_counter() - started)
            trainer.state.epoch += 1
            counters = self.cursor.buffer
            self.cursor = Cursor(epoch=trainer.state.epoch, buffer=counters)
            stop = out_of_budget
            if trainer.state.epoch % self.cfg.train.eval_every == 0 or out_of_budget:
                stop |= trainer._validate()
            self.save()
            if stop:
                break
        trainer.metrics.close()
        return self._result(stopped)

    def _result(self, stopped: bool) -> RunResult:
        import ray

        from gflowgr_dist.models.backbones import count_parameters

        state = self.trainer.state
        fit = {
            "best_epoch": state.best_epoch,
            "best_val_ndcg@10": state.best_metric,
            "epochs": state.epoch,
            "steps": state.step,
            "seconds_per_epoch": float(np.mean(state.epoch_seconds or [0.0])),
            "train_minutes": state.train_seconds / 60,
            "parameters": count_parameters(self.trainer.model),
        }
        return RunResult(
            fit=fit,
            losses=self.losses,
            staleness=self.staleness,
            consumed_ids=self.consumed_ids,
            counters=ray.get(self.buffer.get_counters.remote()),
            restarts=dict(self.restarts),
            retired=list(self.retired),
            stopped_early=stopped,
            nodes=self.nodes(),
        )

    def shutdown(self) -> None:
        import ray
        import torch.distributed as dist

        if self.learner.workers:
            leaving = [w.leave.remote() for w in self.learner.workers.values()]
            ray.wait(leaving, num_returns=len(leaving), timeout=30)
            if dist.is_initialized():
                dist.destroy_process_group()
        self.step_pool.shutdown(wait=True)
        workers = list(self.learner.workers.values())
        for handle in [*self.rollouts.values(), *self.rewards.values(), self.buffer, *workers]:
            ray.kill(handle, no_restart=True)
        self.placement.remove()

    def nodes(self, timeout_s: float = 60.0) -> dict[str, str]:
        """Actor name -> Ray node id it runs on now ("" for one that is busy or gone)."""
        import ray

        refs = {name: h.health.remote() for name, h in {**self.rollouts, **self.rewards}.items()}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
        where = {}
        for name, ref in refs.items():
            try:
                where[name] = ray.get(ref).node if ref in ready else ""
            except ray.exceptions.RayActorError:
                where[name] = ""
        return where


def run_distributed(
    cfg: Config,
    out: Path,
    *,
    trainer=None,
    resume: bool = False,
    stop_after: int | None = None,
    on_step: StepHook | None = None,
) -> RunResult:
    """Trains `trainer` (default: built from the run's files as `pipeline.gflowgr` does) on Ray.

    `stop_after` ends the run after that many learner steps with a checkpoint (for resume);
    `on_step(run, step)` is called after every learner step (tests kill actors from it).
    """
    import ray

    started_ray = ensure_ray(cfg)
    run = None
    try:
        trainer = trainer or build_trainer(cfg, out)
        run = DistributedRun(cfg, trainer, out, on_step)
        return run.run(resume=resume, stop_after=stop_after)
    finally:
        if run is not None:
            run.shutdown()
        if started_ray:
            ray.shutdown()


def build_trainer(cfg: Config, out: Path):
    """The `GflowgrTrainer` of `pipeline.gflowgr`: SFT start, CF model, prepared data."""
    from gflowgr_dist.data.store import read_prepared
    from gflowgr_dist.pipeline import data_dir, needs_cf, sft_dir, sid_dir
    from gflowgr_dist.semantic_ids.table import SemanticIdTable
    from gflowgr_dist.train import checkpoint
    from gflowgr_dist.train.cf import load_or_train_cf
    from gflowgr_dist.train.gflowgr import GflowgrTrainer

    dataset, splits, _ = read_prepared(data_dir(cfg))
    init = cfg.gfn.init_checkpoint or sft_dir(cfg) / "best"
    model = vocab = None
    if Path(init).exists():
        model, vocab, table, _ = checkpoint.load_model(init)
    else:
        table = SemanticIdTable.load(sid_dir(cfg))
    cf_model = load_or_train_cf(cfg, dataset, splits) if needs_cf(cfg) else None
    return GflowgrTrainer(
        cfg, dataset, splits, table, Path(out), model=model, vocab=vocab, cf_model=cf_model
    )


def train_ray(cfg: Config, out: Path, *, resume: bool = False) -> dict[str, Any]:
    """`gflowgr train --runtime ray`: the distributed run, then test evaluation as in-process."""
    from gflowgr_dist.train import checkpoint

    out = Path(out)
    trainer = build_trainer(cfg, out)
    result = run_distributed(cfg, out, trainer=trainer, resume=resume)
    if (out / "best").exists():
        checkpoint.restore_weights(trainer.model, out / "best")
    test = trainer.evaluate("test", per_user_path=out / "eval_test.parquet")
    calibration = trainer.calibration(out / "calibration.parquet")["pearson"]
    runtime = {
        "dropped": result.counters.dropped,
        "admitted": result.counters.admitted,
        "restarts": result.restarts,
        "retired": result.retired,
        "skipped_steps": sum(loss is None for loss in result.losses),
        "staleness_max": max(result.staleness or [0]),
    }
    summary = {
        "train": result.fit,
        "test": test.summary | {"calibration": calibration},
        "runtime": runtime,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
