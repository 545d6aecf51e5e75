"""The adaptive trajectory sampler: which items become the N augmented trajectories of an example.

GFlowGR (paper.md §3) fits P(item | user) ∝ R(item) over trajectories the learner is shown: the
positive plus N augmented ones per training example. Four strategies propose them:

- `logs`: other items the user interacted with, each carrying its behaviour level (ML-100K and
  Amazon ratings: >= `liked_rating` is liked, else clicked);
- `random`: items the user never interacted with, uniformly;
- `cf`: a curriculum over a collaborative model's scores (SASRec): the catalogue, minus the
  target and the user's items, is sorted by score and an item is drawn from a percentile band
  that moves from the bottom (easy, `cf_band_start`) to the top (hard, `cf_band_end`);
- `on_policy`: samples from the current model under the trie, with temperature.

The adaptive rule (paper.md §3 leaves it open; this is ours): every augmented slot draws its
strategy from a mixture whose weights, like the CF band, move linearly with training progress
p ∈ [0, 1] from `weights_start` to `weights_end`. `schedule(p)` returns both so they are logged
and can be replayed. A slot whose strategy has nothing to offer (no other logs; no on-policy
function) falls back to `random`.

Plain numpy/torch: no Ray, no model class. The on-policy strategy receives a callable.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gflowgr_dist.config import STRATEGIES, SamplerConfig

LIKED, CLICKED, UNOBSERVED = 0, 1, 2  # behaviour levels, the index into the r_a values
STRATEGY_ID = {name: i for i, name in enumerate(STRATEGIES)}
POSITIVE = -1  # the strategy column of the positive trajectory

# (example rows [E], number per row) -> sampled items [E, n] from the current policy
OnPolicyFn = Callable[[np.ndarray, int], np.ndarray]


@dataclass
class ExampleBatch:
    """The training examples one learner step augments (E of them).

    Attributes:
        users: dense user ids, [E].
        targets: the positive item of each example, [E].
        target_levels: behaviour level of each positive (LIKED / CLICKED), [E].
        excluded: per example, the items never to propose (the user's training items).
        logged_items: per example, the user's other logged items the `logs` strategy may use.
        logged_levels: per example, their behaviour levels.
        cf_scores: the collaborative model's score of every item for each example, [E, I],
            or None when no CF model is used.
    """

    users: np.ndarray
    targets: np.ndarray
    target_levels: np.ndarray
    excluded: list[np.ndarray]
    logged_items: list[np.ndarray]
    logged_levels: list[np.ndarray]
    cf_scores: np.ndarray | None = None


@dataclass
class Augmentation:
    """The N augmented items of every example, with where they came from.

    Attributes:
        items: [E, N] item ids.
        levels: [E, N] behaviour levels (LIKED / CLICKED for logs, else UNOBSERVED).
        strategies: [E, N] index into STRATEGIES.
    """

    items: np.ndarray
    levels: np.ndarray
    strategies: np.ndarray


@dataclass
class Schedule:
    """The sampler's state at one training progress p: mixture weights and the CF band."""

    progress: float
    weights: dict[str, float]
    cf_band: tuple[float, float]

    def as_metrics(self) -> dict[str, float]:
        out = {f"sampler/weight_{k}": v for k, v in self.weights.items()}
        return out | {
            "sampler/cf_band_low": self.cf_band[0],
            "sampler/cf_band_high": self.cf_band[1],
        }


class TrajectorySampler:
    """Draws augmented items for a batch of examples (see module docstring)."""

    def __init__(self, cfg: SamplerConfig, num_items: int) -> None:
        self.cfg = cfg
        self.num_items = num_items

    def schedule(self, progress: float) -> Schedule:
        """Mixture weights (normalised) and CF band at training progress p ∈ [0, 1]."""
        p = float(np.clip(progress, 0.0, 1.0))
        start, end = self.cfg.weights_start, self.cfg.weights_end
        raw = {s: (1 - p) * start.get(s, 0.0) + p * end.get(s, 0.0) for s in STRATEGIES}
        total = sum(raw.values())
        low = (1 - p) * self.cfg.cf_band_start[0] + p * self.cfg.cf_band_end[0]
        high = (1 - p) * self.cfg.cf_band_start[1] + p * self.cfg.cf_band_end[1]
        return Schedule(p, {s: v / total for s, v in raw.items()}, (low, high))

    def sample(
        self,
        batch: ExampleBatch,
        progress: float,
        rng: np.random.Generator,
        on_policy: OnPolicyFn | None = None,
    ) -> Augmentation:
        """N augmented items per example under the schedule at `progress`."""
        count, slots = len(batch.targets), self.cfg.num_augmented
        schedule = self.schedule(progress)
        weights = np.array([schedule.weights[s] for s in STRATEGIES])
        strategies = rng.choice(len(STRATEGIES), size=(count, slots), p=weights)  # [E, N]
        banned = self._banned(batch)  # [E, I]

        # Random first: it is every other strategy's fallback.
        items = random_unobserved(banned, slots, rng)  # [E, N]
        levels = np.full((count, slots), UNOBSERVED)
        used = np.full((count, slots), STRATEGY_ID["random"])

        # CF curriculum where asked and a CF model exists.
        want = strategies == STRATEGY_ID["cf"]
        if want.any() and batch.cf_scores is not None:
            drawn = cf_band_items(batch.cf_scores, banned, slots, schedule.cf_band, rng)
            items, used = np.where(want, drawn, items), np.where(want, STRATEGY_ID["cf"], used)

        # Logged items at their behaviour level.
        want = strategies == STRATEGY_ID["logs"]
        if want.any():
            self._fill_logs(batch, want, items, levels, used, rng)

        # The current policy's own samples.
        want = strategies == STRATEGY_ID["on_policy"]
        if want.any() and on_policy is not None:
            rows = np.flatnonzero(want.any(axis=1))
            drawn = on_policy(rows, slots)  # [R, N]
            for i, row in enumerate(rows):
                cols = want[row]
                items[row, cols] = drawn[i, cols]
                used[row, cols] = STRATEGY_ID["on_policy"]
        return Augmentation(items, levels, used)

    def _banned(self, batch: ExampleBatch) -> np.ndarray:
        """[E, I] bool: the target always; the user's items too unless configured otherwise."""
        banned = np.zeros((len(batch.targets), self.num_items), dtype=bool)
        banned[np.arange(len(batch.targets)), batch.targets] = True
        if self.cfg.exclude_history:
            for row, items in enumerate(batch.excluded):
                banned[row, items] = True
        return banned

    def _fill_logs(
        self,
        batch: ExampleBatch,
        want: np.ndarray,
        items: np.ndarray,
        levels: np.ndarray,
        used: np.ndarray,
        rng: np.random.Generator,
    ) -> None:
        for row in np.flatnonzero(want.any(axis=1)):
            pool = batch.logged_items[row]
            keep = pool != batch.targets[row]
            pool, pool_levels = pool[keep], batch.logged_levels[row][keep]
            if len(pool) == 0:
                continue  # no other logs: the slot stays random
            cols = np.flatnonzero(want[row])
            pick = rng.choice(len(pool), size=len(cols), replace=len(cols) > len(pool))
            items[row, cols] = pool[pick]
            levels[row, cols] = pool_levels[pick]
            used[row, cols] = STRATEGY_ID["logs"]


def random_unobserved(banned: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` distinct non-banned items per row, uniformly (top-k of random keys), [E, count].

    A row with fewer than `count` allowed items repeats them.
    """
    keys = rng.random(banned.shape)
    keys[banned] = -1.0
    order = np.argsort(-keys, axis=1)[:, :count]  # [E, count]
    allowed = (~banned).sum(axis=1, keepdims=True)
    slot = np.arange(count)[None, :] % np.maximum(allowed, 1)
    return np.take_along_axis(order, slot, axis=1)


def cf_band_items(
    scores: np.ndarray,
    banned: np.ndarray,
    count: int,
    band: tuple[float, float],
    rng: np.random.Generator,
) -> np.ndarray:
    """Items whose CF-score percentile among allowed items lies in `band`, [E, count].

    Percentile 0 is the lowest score (an easy negative), 1 the highest (hard). Draws are
    uniform within the band and independent (a narrow band may repeat an item).
    """
    masked = np.where(banned, np.inf, scores)  # banned sort last
    order = np.argsort(masked, axis=1, kind="stable")  # [E, I] ascending
    allowed = (~banned).sum(axis=1)  # [E]
    low = np.floor(band[0] * allowed).astype(np.int64)
    high = np.maximum(np.ceil(band[1] * allowed).astype(np.int64), low + 1)
    offsets = rng.integers(0, (high - low)[:, None], size=(len(scores), count))  # [E, count]
    ranks = np.minimum(low[:, None] + offsets, np.maximum(allowed - 1, 0)[:, None])
    return np.take_along_axis(order, ranks, axis=1)
