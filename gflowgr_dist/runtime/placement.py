"""Where the roles run: Ray resource requests per role, or one placement group for all of them.

- `runtime.placement: resources` (default): each rollout actor asks for `actor_cpus` CPUs,
  `rollout_gpus` GPUs and `rollout_resources`; each reward actor for `actor_cpus` and
  `reward_resources`. Ray puts an actor on any node that has them and, after a node is lost,
  restarts it on another node that has them. Custom resources are how a config pins a role to
  a kind of node (a node started with `--resources '{"rollout_node": 4}'`).
- `pack` / `spread`: one placement group with a bundle per actor (the same amounts), reserved
  before any actor starts, so a run either gets all its resources or fails at once naming what
  it asked for, instead of starting some actors and waiting forever for the rest.

The learner and the buffer are not placed here: the learner runs in the driver process (on the
node that runs the driver, the head under `ray job submit`), the buffer at zero CPUs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gflowgr_dist.config import RuntimeConfig


@dataclass
class Placement:
    """Ray `.options()` for each role's actors, and the placement group to remove at the end."""

    rt: RuntimeConfig
    group: Any = None
    bundle_of: dict[tuple[str, int], int] = field(default_factory=dict)

    def demand(self, role: str) -> dict[str, float]:
        """What one actor of `role` asks for, as a Ray bundle."""
        rt = self.rt
        bundle = {"CPU": rt.actor_cpus}
        if role == "rollout":
            if rt.rollout_gpus:
                bundle["GPU"] = rt.rollout_gpus
            bundle |= rt.rollout_resources
        else:
            bundle |= rt.reward_resources
        return bundle

    def options(self, role: str, index: int) -> dict[str, Any]:
        """`ray.remote(cls).options(**...)` for actor `index` of `role`."""
        demand = self.demand(role)
        opts: dict[str, Any] = {
            "num_cpus": demand.pop("CPU"),
            "num_gpus": demand.pop("GPU", 0),
            "max_restarts": self.rt.max_restarts,
            "max_task_retries": 0,
        }
        if self.group is None:
            return opts | ({"resources": demand} if demand else {})
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        strategy = PlacementGroupSchedulingStrategy(
            placement_group=self.group, placement_group_bundle_index=self.bundle_of[role, index]
        )
        return opts | {"scheduling_strategy": strategy}

    def remove(self) -> None:
        if self.group is not None:
            from ray.util.placement_group import remove_placement_group

            remove_placement_group(self.group)
            self.group = None


class PlacementError(RuntimeError):
    """The cluster cannot host what the runtime section asks for."""


def place_roles(rt: RuntimeConfig) -> Placement:
    """Builds the placement of a run (see module docstring); reserves a group if asked."""
    placement = Placement(rt)
    if rt.placement == "resources":
        return placement
    import ray
    from ray.util.placement_group import placement_group

    roles = [("rollout", i) for i in range(rt.num_rollout_actors)]
    roles += [("reward", i) for i in range(rt.num_reward_actors)]
    bundles = [placement.demand(role) for role, _ in roles]
    placement.bundle_of = {key: i for i, key in enumerate(roles)}
    group = placement_group(bundles, strategy=rt.placement.upper(), name="gflowgr-roles")
    ready, _ = ray.wait([group.ready()], timeout=rt.placement_timeout_s)
    if not ready:
        ray.util.remove_placement_group(group)
        raise PlacementError(
            f"runtime.placement={rt.placement!r}: the cluster could not reserve {len(bundles)} "
            f"bundles {bundles} within runtime.placement_timeout_s={rt.placement_timeout_s}s; "
            f"it has {ray.cluster_resources()}. Lower runtime.actor_cpus / rollout_gpus / the "
            "actor counts, or add nodes"
        )
    placement.group = group
    return placement
