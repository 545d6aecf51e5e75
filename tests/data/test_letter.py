"""LETTER JSON: the shipped Beauty files and malformed inputs written in-test."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gflowgr_dist.data.letter import load_letter
from gflowgr_dist.data.split import leave_one_out
from gflowgr_dist.data.stats import dataset_stats
from gflowgr_dist.errors import DataError
from gflowgr_dist.semantic_ids.table import SemanticIdTable


def test_beauty_counts_and_shared_ids(beauty_dir):
    dataset = load_letter(beauty_dir, "Beauty")
    stats = dataset_stats(dataset, leave_one_out(dataset, 20))
    assert (stats["users"], stats["items"], stats["interactions"]) == (22_363, 12_101, 198_502)
    assert stats["splits"] == {"train": 131_413, "valid": 22_363, "test": 22_363}
    table = SemanticIdTable(dataset.external_sids, [256] * 4, "external")
    assert len(table.unique_codes()) == 12_088
    groups = table.shared_groups()
    assert len(groups) == 11 and sum(map(len, groups)) == 24
    triple = table.items_of([189, 28, 61, 0])  # <a_189><b_28><c_61><d_0>
    assert sorted(dataset.item_ids[i] for i in triple) == ["6091", "9659", "9660"]


def _write(folder, inter, index, items=None):
    folder.mkdir(exist_ok=True)
    (folder / "X.inter.json").write_text(json.dumps(inter))
    (folder / "X.index.json").write_text(json.dumps(index))
    if items is not None:
        (folder / "X.item.json").write_text(json.dumps(items))


def test_small_file_order_and_text(tmp_path):
    index = {"0": ["<a_1>", "<b_2>"], "1": ["<a_1>", "<b_0>"], "2": ["<a_0>", "<b_0>"]}
    items = {"0": {"title": "Soap", "description": "Gentle"}, "1": {"title": "Balm"}}
    _write(tmp_path, {"7": [2, 0, 1], "3": [1, 2]}, index, items)
    dataset = load_letter(tmp_path, "X")
    assert dataset.user_ids == ["3", "7"]
    assert [dataset.item_ids[i] for i in dataset.sequence(1)] == ["2", "0", "1"]
    assert dataset.item_texts == ["Soap | Gentle", "Balm", "2"]
    np.testing.assert_array_equal(dataset.external_sids, [[1, 2], [1, 0], [0, 0]])
    assert dataset.external_sid_tokens[1] == ["<b_0>", "<b_1>", "<b_2>"]


@pytest.mark.parametrize(
    ("inter", "index", "message"),
    [
        ({"0": [0, 5]}, {"0": ["<a_1>"]}, r"have no entry in X\.index\.json, e\.g\. \['5'\]"),
        ({"0": 3}, {"0": ["<a_1>"]}, "expected a list of item ids"),
        ({}, {"0": ["<a_1>"]}, "non-empty JSON object"),
        ({"0": [0, 1]}, {"0": ["<a_1>"], "1": ["<a_1>", "<b_1>"]}, "has 2 tokens, others have 1"),
        ({"0": [0]}, {"0": ["a1"]}, "expected the form <a_12>"),
        ({"0": [0, 1]}, {"0": ["<a_1>"], "1": ["<b_1>"]}, "level prefixes"),
    ],
)
def test_malformed_inputs(tmp_path, inter, index, message):
    _write(tmp_path, inter, index)
    with pytest.raises(DataError, match=message):
        load_letter(tmp_path, "X")


def test_bad_json_and_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"X\.inter\.json' does not exist"):
        load_letter(tmp_path, "X")
    (tmp_path / "X.inter.json").write_text('{"0": [1, 2')
    (tmp_path / "X.index.json").write_text("{}")
    with pytest.raises(DataError, match=r"not valid JSON \(line 1, column"):
        load_letter(tmp_path, "X")
