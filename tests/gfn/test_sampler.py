"""Tests of the adaptive trajectory sampler: schedule, banned items, strategies and fallbacks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gflowgr_dist.config import STRATEGIES, SamplerConfig
from gflowgr_dist.gfn.sampler import (
    CLICKED,
    LIKED,
    STRATEGY_ID,
    UNOBSERVED,
    Augmentation,
    ExampleBatch,
    TrajectorySampler,
    random_unobserved,
)

NUM_ITEMS = 60


def _only(strategy: str) -> dict[str, float]:
    return {strategy: 1.0}


def _config(weights: dict[str, float], **kwargs) -> SamplerConfig:
    """A config whose mixture is `weights` at every progress."""
    return SamplerConfig(weights_start=weights, weights_end=weights, **kwargs)


def _batch(
    rng: np.random.Generator,
    count: int,
    num_items: int = NUM_ITEMS,
    history: int = 8,
    cf: bool = True,
    target_in_logs: bool = True,
) -> ExampleBatch:
    """`count` examples; each user has `history` distinct training items besides the target.

    The logs are the history (unique items, so an item's level is well defined), plus the target
    itself when `target_in_logs` (the sampler must never propose it).
    """
    targets = rng.integers(0, num_items, count)
    excluded, logged, levels = [], [], []
    for target in targets:
        others = np.setdiff1d(np.arange(num_items), [target])
        items = rng.choice(others, size=history, replace=False)
        item_levels = rng.choice([LIKED, CLICKED], size=history)
        excluded.append(items)
        if target_in_logs:
            items = np.append(items, target)
            item_levels = np.append(item_levels, LIKED)
        logged.append(items)
        levels.append(item_levels)
    return ExampleBatch(
        users=np.arange(count),
        targets=targets,
        target_levels=np.full(count, LIKED),
        excluded=excluded,
        logged_items=logged,
        logged_levels=levels,
        cf_scores=rng.normal(size=(count, num_items)) if cf else None,
    )


def _assert_not_banned(aug: Augmentation, batch: ExampleBatch, history: bool) -> None:
    for row, target in enumerate(batch.targets):
        assert target not in aug.items[row]
        if history:
            assert not np.isin(aug.items[row], batch.excluded[row]).any()


# ---------------------------------------------------------------- schedule


SCHEDULE_CFG = SamplerConfig(
    weights_start={"random": 1.0, "cf": 3.0},  # total 4; logs and on_policy missing -> 0
    weights_end={"logs": 1.0, "on_policy": 1.0},  # total 2
    cf_band_start=(0.0, 0.5),
    cf_band_end=(0.9, 1.0),
)


def test_schedule_endpoints_and_midpoint() -> None:
    sampler = TrajectorySampler(SCHEDULE_CFG, NUM_ITEMS)
    start = sampler.schedule(0.0)
    assert start.weights == pytest.approx({"logs": 0, "random": 0.25, "cf": 0.75, "on_policy": 0})
    assert start.cf_band == pytest.approx((0.0, 0.5))
    end = sampler.schedule(1.0)
    assert end.weights == pytest.approx({"logs": 0.5, "random": 0, "cf": 0, "on_policy": 0.5})
    assert end.cf_band == pytest.approx((0.9, 1.0))
    # p = 0.5: raw (logs, random, cf, on_policy) = (0.5, 0.5, 1.5, 0.5), total 3.
    mid = sampler.schedule(0.5)
    assert mid.progress == 0.5
    assert mid.weights == pytest.approx(
        {"logs": 1 / 6, "random": 1 / 6, "cf": 0.5, "on_policy": 1 / 6}
    )
    assert mid.cf_band == pytest.approx((0.45, 0.75))


@settings(max_examples=50, deadline=None)
@given(st.floats(-3.0, 4.0, allow_nan=False))
def test_schedule_is_normalised_interpolation(progress: float) -> None:
    sampler = TrajectorySampler(SCHEDULE_CFG, NUM_ITEMS)
    got = sampler.schedule(progress)
    p = min(max(progress, 0.0), 1.0)
    assert got.progress == pytest.approx(p)
    raw = {
        s: (1 - p) * SCHEDULE_CFG.weights_start.get(s, 0.0)
        + p * SCHEDULE_CFG.weights_end.get(s, 0.0)
        for s in STRATEGIES
    }
    total = sum(raw.values())
    assert set(got.weights) == set(STRATEGIES)
    for s in STRATEGIES:
        assert got.weights[s] == pytest.approx(raw[s] / total)
        assert got.weights[s] >= 0.0
    assert sum(got.weights.values()) == pytest.approx(1.0)
    assert got.cf_band == pytest.approx((0.9 * p, 0.5 + 0.5 * p))


def test_schedule_clips_progress() -> None:
    sampler = TrajectorySampler(SCHEDULE_CFG, NUM_ITEMS)
    assert sampler.schedule(-2.0) == sampler.schedule(0.0)
    assert sampler.schedule(7.5) == sampler.schedule(1.0)
    assert sampler.schedule(-2.0).progress == 0.0
    assert sampler.schedule(7.5).progress == 1.0


def test_schedule_metrics_are_namespaced() -> None:
    schedule = TrajectorySampler(SCHEDULE_CFG, NUM_ITEMS).schedule(0.5)
    metrics = schedule.as_metrics()
    expected = {f"sampler/weight_{s}" for s in STRATEGIES}
    expected |= {"sampler/cf_band_low", "sampler/cf_band_high"}
    assert set(metrics) == expected
    assert metrics["sampler/weight_cf"] == pytest.approx(0.5)
    assert metrics["sampler/cf_band_low"] == pytest.approx(0.45)
    assert metrics["sampler/cf_band_high"] == pytest.approx(0.75)
    assert all(isinstance(v, float) for v in metrics.values())


# ---------------------------------------------------------------- banned items


@pytest.mark.parametrize("strategy", ["random", "cf"])
def test_sample_never_proposes_banned_items(strategy: str) -> None:
    rng = np.random.default_rng(0)
    batch = _batch(rng, count=200, history=20)
    cfg = _config(_only(strategy), num_augmented=10, cf_band_start=(0.0, 0.3))
    aug = TrajectorySampler(cfg, NUM_ITEMS).sample(batch, 0.0, rng)
    assert aug.items.shape == aug.levels.shape == aug.strategies.shape == (200, 10)
    assert (aug.strategies == STRATEGY_ID[strategy]).all()
    assert (aug.levels == UNOBSERVED).all()
    assert ((aug.items >= 0) & (aug.items < NUM_ITEMS)).all()
    _assert_not_banned(aug, batch, history=True)


@pytest.mark.parametrize("strategy", ["random", "cf"])
def test_without_exclude_history_only_the_target_is_banned(strategy: str) -> None:
    rng = np.random.default_rng(1)
    # Half the catalogue is the user's history: some of it must be drawn.
    batch = _batch(rng, count=100, history=NUM_ITEMS // 2)
    cfg = _config(
        _only(strategy),
        num_augmented=10,
        exclude_history=False,
        cf_band_start=(0.0, 1.0),
        cf_band_end=(0.0, 1.0),
    )
    aug = TrajectorySampler(cfg, NUM_ITEMS).sample(batch, 0.0, rng)
    _assert_not_banned(aug, batch, history=False)
    seen = sum(np.isin(aug.items[r], batch.excluded[r]).sum() for r in range(100))
    assert seen > 0.25 * aug.items.size  # about half expected


# ---------------------------------------------------------------- the mixture


def test_strategy_frequencies_match_the_mixture() -> None:
    rng = np.random.default_rng(2)
    count, slots = 600, 8
    batch = _batch(rng, count=count)
    cfg = SamplerConfig(
        num_augmented=slots,
        weights_start={"logs": 0.4, "random": 0.1, "cf": 0.3, "on_policy": 0.2},
        weights_end={"logs": 0.0, "random": 0.3, "cf": 0.3, "on_policy": 0.4},
    )
    sampler = TrajectorySampler(cfg, NUM_ITEMS)

    def on_policy(rows: np.ndarray, n: int) -> np.ndarray:
        return rng.integers(0, NUM_ITEMS, size=(len(rows), n))

    aug = sampler.sample(batch, 0.5, rng, on_policy=on_policy)
    weights = sampler.schedule(0.5).weights  # (0.2, 0.2, 0.3, 0.3)
    total = count * slots
    for name, w in weights.items():
        freq = (aug.strategies == STRATEGY_ID[name]).mean()
        assert abs(freq - w) < 5 * math.sqrt(w * (1 - w) / total), (name, freq, w)


# ---------------------------------------------------------------- CF curriculum


def _brute_force_ranks(scores: np.ndarray, banned: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Rank of each item among the allowed items: how many allowed items score lower."""
    allowed = np.flatnonzero(~banned)
    return np.array([sum(scores[j] < scores[item] for j in allowed) for item in items])


def _banned_row(batch: ExampleBatch, row: int) -> np.ndarray:
    banned = np.zeros(batch.cf_scores.shape[1], dtype=bool)
    banned[batch.targets[row]] = True
    banned[batch.excluded[row]] = True
    return banned


@pytest.mark.parametrize("band", [(0.0, 0.2), (0.8, 1.0)])
def test_cf_items_lie_in_the_percentile_band_exactly(band: tuple[float, float]) -> None:
    # 110 items, target + 9 history banned: 100 allowed, so band * 100 are whole ranks.
    rng = np.random.default_rng(3)
    num_items, slots = 110, 16
    batch = _batch(rng, count=40, num_items=num_items, history=9)
    cfg = _config(_only("cf"), num_augmented=slots, cf_band_start=band, cf_band_end=band)
    aug = TrajectorySampler(cfg, num_items).sample(batch, 0.3, rng)
    assert (aug.strategies == STRATEGY_ID["cf"]).all()
    _assert_not_banned(aug, batch, history=True)
    seen = set()
    for row in range(40):
        banned = _banned_row(batch, row)
        assert (~banned).sum() == 100
        ranks = _brute_force_ranks(batch.cf_scores[row], banned, aug.items[row])
        percentiles = ranks / 100
        assert (percentiles >= band[0]).all() and (percentiles < band[1]).all(), percentiles
        seen |= set(ranks.tolist())
    # The draws cover the whole band (640 draws over 20 ranks).
    assert seen == set(range(round(band[0] * 100), round(band[1] * 100)))


@pytest.mark.parametrize("band", [(0.0, 0.2), (0.8, 1.0)])
def test_cf_items_in_band_with_uneven_catalogues(band: tuple[float, float]) -> None:
    # History sizes vary, so the allowed count n varies; rank r's percentile cell [r/n, (r+1)/n)
    # must meet the band.
    rng = np.random.default_rng(4)
    num_items, slots = 97, 12
    batches = [_batch(rng, count=4, num_items=num_items, history=h) for h in range(0, 40, 3)]
    cfg = _config(_only("cf"), num_augmented=slots, cf_band_start=band, cf_band_end=band)
    sampler = TrajectorySampler(cfg, num_items)
    for batch in batches:
        aug = sampler.sample(batch, 1.0, rng)
        _assert_not_banned(aug, batch, history=True)
        for row in range(len(batch.targets)):
            banned = _banned_row(batch, row)
            n = (~banned).sum()
            ranks = _brute_force_ranks(batch.cf_scores[row], banned, aug.items[row])
            assert (ranks / n < band[1]).all() and ((ranks + 1) / n > band[0]).all(), (n, ranks)


def test_cf_band_moves_with_progress() -> None:
    # Start band (0, 0.1) → end band (0.9, 1.0): the mean rank climbs from the bottom to the top.
    rng = np.random.default_rng(5)
    num_items = 110
    batch = _batch(rng, count=30, num_items=num_items, history=9)
    cfg = _config(_only("cf"), num_augmented=8, cf_band_start=(0.0, 0.1), cf_band_end=(0.9, 1.0))
    sampler = TrajectorySampler(cfg, num_items)
    means = []
    for progress in (0.0, 1.0):
        aug = sampler.sample(batch, progress, rng)
        ranks = [
            _brute_force_ranks(batch.cf_scores[r], _banned_row(batch, r), aug.items[r])
            for r in range(30)
        ]
        means.append(np.mean(ranks) / 100)
    assert means[0] < 0.1 and means[1] >= 0.9


def test_cf_falls_back_to_random_without_scores() -> None:
    rng = np.random.default_rng(6)
    batch = _batch(rng, count=50, cf=False)
    aug = TrajectorySampler(_config(_only("cf"), num_augmented=6), NUM_ITEMS).sample(
        batch, 0.5, rng
    )
    assert (aug.strategies == STRATEGY_ID["random"]).all()
    assert (aug.levels == UNOBSERVED).all()
    _assert_not_banned(aug, batch, history=True)


# ---------------------------------------------------------------- logs


def test_logs_use_logged_items_at_their_levels() -> None:
    rng = np.random.default_rng(7)
    batch = _batch(rng, count=100, history=5, target_in_logs=True)
    aug = TrajectorySampler(_config(_only("logs"), num_augmented=8), NUM_ITEMS).sample(
        batch, 0.0, rng
    )
    assert (aug.strategies == STRATEGY_ID["logs"]).all()
    for row, target in enumerate(batch.targets):
        logged = batch.logged_items[row].tolist()
        level_of = dict(zip(logged, batch.logged_levels[row].tolist(), strict=True))
        for item, level in zip(aug.items[row].tolist(), aug.levels[row].tolist(), strict=True):
            assert item != target
            assert item in level_of
            assert level == level_of[item]
    assert set(np.unique(aug.levels)) == {LIKED, CLICKED}


def test_logs_fall_back_to_random_without_other_logs() -> None:
    rng = np.random.default_rng(8)
    batch = _batch(rng, count=6, history=3)
    # Row 0: only the target is logged; row 1: nothing logged; the rest keep their logs.
    batch.logged_items[0] = np.array([batch.targets[0]])
    batch.logged_levels[0] = np.array([LIKED])
    batch.logged_items[1] = np.array([], dtype=np.int64)
    batch.logged_levels[1] = np.array([], dtype=np.int64)
    aug = TrajectorySampler(_config(_only("logs"), num_augmented=5), NUM_ITEMS).sample(
        batch, 0.0, rng
    )
    for row in (0, 1):
        assert (aug.strategies[row] == STRATEGY_ID["random"]).all()
        assert (aug.levels[row] == UNOBSERVED).all()
    assert (aug.strategies[2:] == STRATEGY_ID["logs"]).all()
    for row in (0, 1):
        assert batch.targets[row] not in aug.items[row]
        assert not np.isin(aug.items[row], batch.excluded[row]).any()


# ---------------------------------------------------------------- on-policy


def test_on_policy_slots_take_the_callables_items() -> None:
    rng = np.random.default_rng(9)
    count, slots = 80, 6
    batch = _batch(rng, count=count)
    calls = []

    def on_policy(rows: np.ndarray, n: int) -> np.ndarray:
        calls.append((rows.copy(), n))
        # A recognisable item per (row, slot).
        return (rows[:, None] * 7 + np.arange(n)[None, :] * 3) % NUM_ITEMS

    weights = {"on_policy": 0.25, "random": 0.75}  # ~18% of rows have no on-policy slot
    aug = TrajectorySampler(_config(weights, num_augmented=slots), NUM_ITEMS).sample(
        batch, 0.0, rng, on_policy=on_policy
    )
    want = aug.strategies == STRATEGY_ID["on_policy"]
    assert len(calls) == 1
    rows, n = calls[0]
    assert n == slots
    np.testing.assert_array_equal(rows, np.flatnonzero(want.any(axis=1)))
    expected = (np.arange(count)[:, None] * 7 + np.arange(slots)[None, :] * 3) % NUM_ITEMS
    np.testing.assert_array_equal(aug.items[want], expected[want])
    assert (aug.levels[want] == UNOBSERVED).all()
    assert (aug.items[~want] != expected[~want]).any()  # the other slots are left alone
    assert 0.15 < want.mean() < 0.35
    assert not want.any(axis=1).all()  # so asking only for the rows that need it is tested


def test_on_policy_falls_back_to_random_without_a_callable() -> None:
    rng = np.random.default_rng(10)
    batch = _batch(rng, count=50)
    aug = TrajectorySampler(_config(_only("on_policy"), num_augmented=4), NUM_ITEMS).sample(
        batch, 0.0, rng
    )
    assert (aug.strategies == STRATEGY_ID["random"]).all()
    assert (aug.levels == UNOBSERVED).all()
    _assert_not_banned(aug, batch, history=True)


# ---------------------------------------------------------------- random_unobserved


@settings(max_examples=150, deadline=None)
@given(
    rows=st.integers(1, 5),
    num_items=st.integers(1, 40),
    density=st.floats(0.0, 0.95),
    count=st.integers(0, 45),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_unobserved_distinct_and_allowed(
    rows: int, num_items: int, density: float, count: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    banned = rng.random((rows, num_items)) < density
    banned[:, rng.integers(0, num_items)] = False  # at least one allowed item per row
    items = random_unobserved(banned, count, rng)
    assert items.shape == (rows, count)
    for row in range(rows):
        allowed = set(np.flatnonzero(~banned[row]).tolist())
        got = items[row].tolist()
        assert set(got) <= allowed
        if count <= len(allowed):
            assert len(set(got)) == count  # distinct
        else:
            assert set(got) == allowed  # too few: every allowed item, repeated


def test_random_unobserved_is_uniform() -> None:
    rng = np.random.default_rng(11)
    banned = np.zeros((4000, 10), dtype=bool)
    banned[:, :2] = True
    items = random_unobserved(banned, 1, rng)[:, 0]
    counts = np.bincount(items, minlength=10)
    assert counts[:2].sum() == 0
    assert (np.abs(counts[2:] - 500) < 5 * math.sqrt(500 * 7 / 8)).all(), counts


# ---------------------------------------------------------------- determinism and shapes


def test_sample_is_deterministic_for_a_seed() -> None:
    batch = _batch(np.random.default_rng(12), count=40)
    cfg = SamplerConfig(
        num_augmented=7,
        weights_start={"logs": 0.25, "random": 0.25, "cf": 0.25, "on_policy": 0.25},
    )
    sampler = TrajectorySampler(cfg, NUM_ITEMS)

    def run(seed: int) -> Augmentation:
        rng = np.random.default_rng(seed)
        return sampler.sample(
            batch, 0.4, rng, on_policy=lambda rows, n: rng.integers(0, NUM_ITEMS, (len(rows), n))
        )

    first, second, other = run(123), run(123), run(124)
    for field in ("items", "levels", "strategies"):
        np.testing.assert_array_equal(getattr(first, field), getattr(second, field))
    assert not np.array_equal(first.items, other.items)


def test_zero_augmented_items() -> None:
    rng = np.random.default_rng(13)
    batch = _batch(rng, count=5)
    aug = TrajectorySampler(SamplerConfig(num_augmented=0), NUM_ITEMS).sample(batch, 0.5, rng)
    assert aug.items.shape == aug.levels.shape == aug.strategies.shape == (5, 0)
