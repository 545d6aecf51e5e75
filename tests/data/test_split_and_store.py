"""Leave-one-out invariants against a per-user reference, and the Parquet round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gflowgr_dist.data.schema import build_dataset
from gflowgr_dist.data.split import example_items, leave_one_out
from gflowgr_dist.data.store import read_prepared, write_prepared
from gflowgr_dist.errors import DataError


def _reference(dataset, cap):
    """Per-user loop: the definition the vectorised split must equal."""
    rows = []
    for user in range(dataset.num_users):
        n = len(dataset.sequence(user))
        rows += [(user, 0, t) for t in range(1, n - 2)]
        if n >= 3:
            rows.append((user, 1, n - 2))
        if n >= 2:
            rows.append((user, 2, n - 1))
    rows.sort(key=lambda r: (r[0], r[2]))
    return [(u, s, t, max(t - cap, 0)) for u, s, t in rows]


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 12), min_size=1, max_size=8),
    cap=st.integers(1, 5),
)
def test_split_equals_reference(lengths, cap):
    users = np.repeat(np.arange(len(lengths)), lengths).astype(str)
    items = np.concatenate([np.arange(n) for n in lengths]).astype(str)
    dataset = build_dataset(
        name="t",
        source="synthetic",
        raw_users=users,
        raw_items=items,
        timestamps=np.concatenate([np.arange(n) for n in lengths]),
        ratings=None,
        item_ids=[str(i) for i in range(12)],
        item_titles=["t"] * 12,
        item_texts=["t"] * 12,
    )
    splits = leave_one_out(dataset, cap)
    got = list(
        zip(
            splits.users.tolist(),
            splits.split.tolist(),
            splits.target_index.tolist(),
            splits.history_start.tolist(),
            strict=True,
        )
    )
    assert got == _reference(dataset, cap)


def test_split_invariants(synthetic):
    splits = leave_one_out(synthetic, 4)
    for index in range(len(splits.users)):
        history, target = example_items(synthetic, splits, index)
        assert 1 <= len(history) <= 4
        assert target not in history  # synthetic users never repeat an item
    # Every user contributes exactly one valid and one test target: the last two items.
    test = splits.select("test")
    assert len(test) == synthetic.num_users
    for index in test:
        user = splits.users[index]
        assert example_items(synthetic, splits, index)[1] == synthetic.sequence(user)[-1]


def test_store_round_trip(tmp_path, synthetic):
    splits = leave_one_out(synthetic, 5)
    folder = write_prepared(tmp_path / "data", synthetic, splits, {"stats": {"users": 60}})
    dataset, back, meta = read_prepared(folder)
    np.testing.assert_array_equal(dataset.items, synthetic.items)
    np.testing.assert_array_equal(dataset.ratings, synthetic.ratings)
    assert dataset.item_texts == synthetic.item_texts
    np.testing.assert_array_equal(back.target_index, splits.target_index)
    assert back.max_history == 5 and meta["schema_version"] == 1
    assert not list(tmp_path.glob(".data.*"))  # no temporary folder left behind


def test_store_rejects_wrong_version_and_missing_files(tmp_path, synthetic):
    folder = write_prepared(tmp_path / "data", synthetic, leave_one_out(synthetic, 5), {})
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps(meta | {"schema_version": 99}))
    with pytest.raises(DataError, match="schema_version=99, this code reads 1"):
        read_prepared(folder)
    (folder / "items.parquet").unlink()
    with pytest.raises(DataError, match="lacks items.parquet"):
        read_prepared(folder)


def test_build_rejects_unknown_items_and_empty():
    kwargs = dict(
        name="t",
        source="x",
        timestamps=np.array([1]),
        ratings=None,
        item_ids=["a"],
        item_titles=["a"],
        item_texts=["a"],
    )
    with pytest.raises(DataError, match=r"no item record, e\.g\. \['b'\]"):
        build_dataset(raw_users=["u"], raw_items=["b"], **kwargs)
    with pytest.raises(DataError, match="no interactions"):
        build_dataset(raw_users=[], raw_items=[], **kwargs | {"timestamps": np.array([])})
