"""Does the cluster a config declares have room for the roles it asks for? Checked before Ray.

A preset for a GPU box or a cluster says what it targets in `runtime.nodes` (node types, how
many of each and their Ray resources). `check_capacity` packs every actor's bundle onto those
nodes (first fit, largest bundles first, as Ray's scheduler would have to) and fails with one
message naming what was asked, what was declared and which knob to turn, instead of a run that
waits forever for a GPU that does not exist. Plain Python: `config.py` calls it while validating,
so `--dry-run` catches the mistake in well under a second.

Known limit: first-fit-decreasing can reject a mix that an exact packer would fit (rare with a
handful of actor shapes); declare one node more, or set `runtime.nodes: {}` to skip the check.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Node instances expanded at most: beyond this the totals check alone is used.
MAX_PACKED_NODES = 2_000


@dataclass(frozen=True)
class Bundle:
    """What one actor asks for, and the config keys that set it (named in errors)."""

    role: str
    demand: dict[str, float]
    knobs: str


@dataclass
class _Node:
    kind: str
    free: dict[str, float] = field(default_factory=dict)

    def fits(self, demand: dict[str, float]) -> bool:
        return _fits(self.free, demand)

    def take(self, demand: dict[str, float]) -> None:
        for name, amount in demand.items():
            self.free[name] -= amount


def role_bundles(rt) -> list[Bundle]:
    """Every actor the runtime starts, as bundles (the learner on rank 0 runs in the driver)."""
    rollout = {"CPU": rt.actor_cpus, "GPU": rt.rollout_gpus, **rt.rollout_resources}
    reward = {"CPU": rt.actor_cpus, **rt.reward_resources}
    learner = {"CPU": rt.actor_cpus}
    rollout_knobs = (
        f"runtime.num_rollout_actors={rt.num_rollout_actors} / actor_cpus={rt.actor_cpus:g} / "
        f"rollout_gpus={rt.rollout_gpus:g} / rollout_resources={rt.rollout_resources}"
    )
    bundles = [Bundle("rollout", _nonzero(rollout), rollout_knobs)] * rt.num_rollout_actors
    reward_knobs = (
        f"runtime.num_reward_actors={rt.num_reward_actors} / actor_cpus={rt.actor_cpus:g} / "
        f"reward_resources={rt.reward_resources}"
    )
    bundles += [Bundle("reward", _nonzero(reward), reward_knobs)] * rt.num_reward_actors
    learner_knobs = f"runtime.num_learners={rt.num_learners} / actor_cpus={rt.actor_cpus:g}"
    bundles += [Bundle("learner", _nonzero(learner), learner_knobs)] * (rt.num_learners - 1)
    return bundles


def check_capacity(rt) -> None:
    """Raises ValueError when the declared `rt.nodes` cannot host the roles (no-op if empty)."""
    if not rt.nodes:
        return
    bundles = role_bundles(rt)
    asked = _totals(b.demand for b in bundles)
    declared = _totals(
        {name: amount * node.count for name, amount in node.resources.items()}
        for node in rt.nodes.values()
    )
    for name, amount in asked.items():
        if amount > declared.get(name, 0.0) + 1e-9:
            raise ValueError(_shortfall(rt, bundles, name, amount, declared.get(name, 0.0)))
    for bundle in bundles:
        if not any(_fits(node.resources, bundle.demand) for node in rt.nodes.values()):
            raise ValueError(
                f"one {bundle.role} actor asks for {_fmt(bundle.demand)}, more than any node "
                f"type in runtime.nodes has ({_node_list(rt)}); lower {bundle.knobs} or "
                "declare a bigger node"
            )
    _pack(rt, bundles, asked)


def _pack(rt, bundles: list[Bundle], asked: dict[str, float]) -> None:
    nodes = [
        _Node(kind, dict(node.resources))
        for kind, node in rt.nodes.items()
        for _ in range(node.count)
    ]
    if len(nodes) > MAX_PACKED_NODES:
        return
    order = sorted(bundles, key=lambda b: (b.demand.get("GPU", 0.0), sum(b.demand.values())))
    for bundle in reversed(order):
        home = next((node for node in nodes if node.fits(bundle.demand)), None)
        if home is None:
            raise ValueError(
                f"the roles ask for {_fmt(asked)} in all, within runtime.nodes' totals, but they "
                f"do not pack onto its nodes ({_node_list(rt)}): a {bundle.role} actor "
                f"({_fmt(bundle.demand)}) is left without a node; lower {bundle.knobs} or "
                "declare more nodes"
            )
        home.take(bundle.demand)


def _shortfall(rt, bundles: list[Bundle], name: str, amount: float, have: float) -> str:
    parts: dict[str, list[float]] = {}
    for bundle in bundles:
        if name in bundle.demand:
            parts.setdefault(bundle.role, []).append(bundle.demand[name])
    by_role = ", ".join(f"{role} {len(v)} x {v[0]:g}" for role, v in parts.items())
    knobs = "; ".join(sorted({b.knobs for b in bundles if name in b.demand}))
    return (
        f"the roles ask for {name}={amount:g} ({by_role}) but runtime.nodes declares "
        f"{name}={have:g} ({_node_list(rt)}); lower {knobs}, or declare more nodes"
    )


def _node_list(rt) -> str:
    return ", ".join(
        f"{kind}: {node.count} x {_fmt(node.resources)}" for kind, node in rt.nodes.items()
    )


def _fits(resources: dict[str, float], demand: dict[str, float]) -> bool:
    return all(resources.get(name, 0.0) + 1e-9 >= amount for name, amount in demand.items())


def _nonzero(demand: dict[str, float]) -> dict[str, float]:
    return {name: amount for name, amount in demand.items() if amount > 0}


def _totals(demands) -> dict[str, float]:
    totals: dict[str, float] = {}
    for demand in demands:
        for name, amount in demand.items():
            totals[name] = totals.get(name, 0.0) + amount
    return totals


def _fmt(demand: dict[str, float]) -> str:
    return "{" + ", ".join(f"{name}: {amount:g}" for name, amount in demand.items()) + "}"
