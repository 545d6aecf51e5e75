"""ML-100K: both file layouts, the statistics the issue pins, and malformed files."""

from __future__ import annotations

import numpy as np
import pytest

from gflowgr_dist.data.movielens import load_ml100k
from gflowgr_dist.data.split import leave_one_out
from gflowgr_dist.data.stats import dataset_stats
from gflowgr_dist.errors import DataError


def test_recbole_wheel_counts(ml100k_available):
    dataset = load_ml100k()
    stats = dataset_stats(dataset, leave_one_out(dataset, 20))
    assert (stats["users"], stats["items"], stats["interactions"]) == (943, 1682, 100_000)
    assert stats["users_with_tied_last_two"] == 415
    assert stats["splits"] == {"train": 100_000 - 3 * 943, "valid": 943, "test": 943}
    assert dataset.item_texts[0] == "Toy Story (1995) | Animation, Children's, Comedy"
    assert np.isfinite(dataset.ratings).all() and set(np.unique(dataset.ratings)) == {1, 2, 3, 4, 5}


def _write_grouplens(folder, data_lines, item_lines):
    folder.mkdir()
    (folder / "u.data").write_text("\n".join(data_lines) + "\n")
    (folder / "u.item").write_text("\n".join(item_lines) + "\n", encoding="latin-1")


def _item(i, title, genres=()):
    flags = ["1" if g in genres else "0" for g in range(19)]
    return "|".join([str(i), title, "01-Jan-1995", "", "http://x"] + flags)


def test_grouplens_layout_and_tie_break(tmp_path):
    folder = tmp_path / "ml-100k"
    data = ["1\t20\t5\t100", "1\t10\t3\t100", "1\t30\t4\t50", "2\t10\t1\t10", "2\t30\t2\t20"]
    items = [_item(10, "Heat (1995)", [1]), _item(20, "Caf\xe9 (1996)", [5, 8]), _item(30, "X")]
    _write_grouplens(folder, data, items)
    dataset = load_ml100k(folder)
    assert dataset.user_ids == ["1", "2"]
    # Items 10 and 20 share timestamp 100: the lower dense item id (10 -> 0) comes first.
    assert [dataset.item_ids[i] for i in dataset.sequence(0)] == ["30", "10", "20"]
    assert dataset.item_texts[1] == "Café (1996) | Comedy, Drama"
    assert dataset.item_texts[2] == "X"
    assert dataset.ratings[:3].tolist() == [4.0, 3.0, 5.0]


def test_grouplens_malformed(tmp_path):
    folder = tmp_path / "bad"
    _write_grouplens(folder, ["1\t10\t5"], [_item(10, "Heat (1995)")])
    with pytest.raises(DataError, match=r"u\.data' line 1: expected 4 fields"):
        load_ml100k(folder)
    (folder / "u.data").write_text("1\t10\tfive\t3\n")
    with pytest.raises(DataError, match="not a number"):
        load_ml100k(folder)
    (folder / "u.data").write_text("1\t99\t5\t3\n")
    with pytest.raises(DataError, match=r"no item record, e\.g\. \['99'\]"):
        load_ml100k(folder)
    (folder / "u.item").write_text("10|Heat (1995)|only-three\n")
    (folder / "u.data").write_text("1\t10\t5\t3\n")
    with pytest.raises(DataError, match=r"u\.item' line 1: expected 24"):
        load_ml100k(folder)


def test_recbole_layout_missing_column(tmp_path):
    folder = tmp_path / "rb"
    folder.mkdir()
    (folder / "ml-100k.inter").write_text("user_id:token\titem_id:token\trating:float\n1\t2\t3\n")
    (folder / "ml-100k.item").write_text("item_id:token\tmovie_title:token_seq\n2\tA\n")
    with pytest.raises(DataError, match=r"lacks column\(s\) \['timestamp'\]"):
        load_ml100k(folder)


def test_unknown_folder(tmp_path):
    with pytest.raises(DataError, match="holds neither"):
        load_ml100k(tmp_path)
