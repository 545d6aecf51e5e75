"""Tests of SASRec training and full-ranking evaluation on small synthetic data."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from gflowgr_dist.config import SyntheticConfig
from gflowgr_dist.data.split import leave_one_out, split_histories
from gflowgr_dist.data.synthetic import load_synthetic
from gflowgr_dist.eval.metrics import summarize
from gflowgr_dist.models.popularity import Popularity
from gflowgr_dist.models.sasrec import SasRecConfig
from gflowgr_dist.train.sasrec import (
    evaluate_scores,
    train_sasrec,
    training_windows,
)

CLUSTERED = SyntheticConfig(num_users=150, num_items=60, num_clusters=4, stay_probability=0.9)
FAST = SasRecConfig(
    hidden=32,
    layers=1,
    heads=1,
    dropout=0.1,
    max_len=20,
    lr=5e-3,
    batch_size=32,
    epochs=8,
    patience=100,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run far faster on one thread, above all when other jobs share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", params=[0, 10])
def clustered(request):
    dataset = load_synthetic(CLUSTERED, seed=request.param)
    return dataset, leave_one_out(dataset, 20), request.param


def _train_prefixes(dataset) -> list[np.ndarray]:
    sequences = [dataset.sequence(u) for u in range(dataset.num_users)]
    return [seq[: max(len(seq) - 2, 0)] for seq in sequences]


@pytest.mark.parametrize("stride", [None, 3])
def test_windows_train_each_training_target_once(synthetic, stride) -> None:
    inputs, targets = training_windows(synthetic, max_len=5, stride=stride)
    assert inputs.shape == targets.shape
    assert inputs.shape[1] == 5
    want: Counter = Counter()
    for user in range(synthetic.num_users):
        seq = synthetic.sequence(user)
        want.update((seq[1 : len(seq) - 2] + 1).tolist())  # targets at positions 1 .. n-3
    got = Counter(targets[targets > 0].tolist())
    assert got == want
    assert (inputs[targets > 0] > 0).all()  # every target has an input at its position


def test_windows_pair_each_input_with_its_next_item(synthetic) -> None:
    inputs, targets = training_windows(synthetic, max_len=50)  # no user is cut
    prefixes = [p + 1 for p in _train_prefixes(synthetic) if len(p) >= 2]
    assert len(prefixes) == len(inputs)
    for prefix, x, y in zip(prefixes, inputs, targets, strict=True):
        np.testing.assert_array_equal(x[x > 0], prefix[:-1])
        np.testing.assert_array_equal(y[y > 0], prefix[1:])


def test_popularity_equals_brute_force_count(clustered) -> None:
    dataset, _, _ = clustered
    counts: Counter = Counter()
    for prefix in _train_prefixes(dataset):
        counts.update(prefix.tolist())
    want = sorted(range(dataset.num_items), key=lambda i: (-counts[i], i))
    pop = Popularity.fit(dataset)
    assert pop.counts.tolist() == [counts[i] for i in range(dataset.num_items)]
    assert pop.top_k(dataset.num_items).tolist() == want
    scores = pop.scores(3)
    assert scores.shape == (3, dataset.num_items)


def test_split_histories_match_example_items(clustered) -> None:
    dataset, splits, _ = clustered
    users, histories, targets, _ = split_histories(dataset, splits, "test")
    np.testing.assert_array_equal(users, splits.users[splits.select("test")])
    last = dataset.user_offsets()[users + 1] - 1
    np.testing.assert_array_equal(targets, dataset.items[last])
    np.testing.assert_array_equal(histories[0], dataset.sequence(int(users[0]))[-21:-1])


def test_exclude_history_masks_seen_items(clustered) -> None:
    dataset, splits, _ = clustered
    pop = Popularity.fit(dataset)
    _, ranked = evaluate_scores(pop.score_histories, dataset, splits, "test", True)
    users, _, _, _ = split_histories(dataset, splits, "test")
    for user, row in zip(users.tolist(), ranked, strict=True):
        seen = set(dataset.sequence(user)[:-1].tolist())
        assert not seen & set(row.tolist())
    _, unmasked = evaluate_scores(pop.score_histories, dataset, splits, "test")
    assert (unmasked == pop.top_k(20)[None]).all()


@pytest.mark.parametrize("loss", ["bce", "ce"])
def test_sasrec_beats_popularity(clustered, loss, tmp_path) -> None:
    dataset, splits, seed = clustered
    pop = summarize(
        evaluate_scores(Popularity.fit(dataset).score_histories, dataset, splits, "valid")[0]
    )["ndcg@10"]
    cfg = SasRecConfig(**{**FAST.__dict__, "loss": loss, "seed": seed})
    model, info = train_sasrec(dataset, splits, cfg, log_dir=tmp_path)
    best = info["sasrec/best_val_ndcg@10"]
    assert best > pop + 0.06
    assert best > 1.5 * pop

    # The returned weights are the best epoch's: re-evaluating reproduces its score.
    again = summarize(evaluate_scores(model.scores, dataset, splits, "valid")[0])
    assert again["ndcg@10"] == pytest.approx(best)
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == list(range(1, FAST.epochs + 1))
    assert {"sasrec/loss", "sasrec/val_ndcg@10"} <= set(lines[0])


def test_early_stopping_and_history(synthetic) -> None:
    splits = leave_one_out(synthetic, 20)
    cfg = SasRecConfig(**{**FAST.__dict__, "epochs": 50, "patience": 2, "lr": 0.0})
    _, info = train_sasrec(synthetic, splits, cfg)
    assert info["best_epoch"] == 1  # nothing changes at lr 0, so epoch 1 stays best
    assert info["epochs_run"] == 3
    assert len(info["history"]) == 3
