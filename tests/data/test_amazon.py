"""Tests of the Amazon loader on tiny dumps written in the three releases' real formats."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gflowgr_dist.data.amazon import kcore_filter, load_amazon
from gflowgr_dist.errors import DataError


def write_lines(path: Path, lines: list[str]) -> Path:
    """Writes one record a line, gzipped when the name ends in .gz."""
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def review14(user: str, item: str, rating: float, time: int) -> str:
    """A 2014 / 2018 review line."""
    return json.dumps(
        {
            "reviewerID": user,
            "asin": item,
            "reviewerName": "x",
            "overall": rating,
            "summary": "ok",
            "unixReviewTime": time,
            "reviewTime": "01 1, 2014",
        }
    )


def review23(user: str, item: str, rating: float, time_ms: int) -> str:
    """A 2023 review line (`asin` is the variant; `parent_asin` is the item)."""
    return json.dumps(
        {
            "rating": rating,
            "title": "t",
            "asin": item + "-v",
            "parent_asin": item,
            "user_id": user,
            "timestamp": time_ms,
            "verified_purchase": True,
        }
    )


def meta14(asin: str, **fields: object) -> str:
    """A 2014 meta line: a Python dict literal (single quotes), as in the real files."""
    return repr({"asin": asin, **fields})


# Reviews: (user, item, rating, time). u1 is written out of time order.
REVIEWS = [
    ("u1", "A", 5.0, 300),
    ("u1", "B", 4.0, 100),
    ("u1", "C", 3.0, 200),
    ("u2", "A", 2.0, 150),
    ("u2", "C", 1.0, 50),
]


@pytest.fixture
def dump2014(tmp_path: Path) -> Path:
    write_lines(tmp_path / "reviews_Beauty_5.json.gz", [review14(*r) for r in REVIEWS])
    meta = [
        meta14(
            "A",
            title="Lip  Balm",
            brand="Acme",
            categories=[["Beauty", "Lips"], ["Beauty"]],
            description="<b>Soft</b>\n lips &amp; more",
            price=3.5,
        ),
        meta14("B", title="Tom's Soap", categories=[["Beauty"]], description="x" * 900),
        meta14("C", related={"also_bought": ["A"]}),
        meta14("UNUSED", title="Never reviewed"),
    ]
    write_lines(tmp_path / "meta_Beauty.json.gz", meta)
    return tmp_path


def test_2014_counts_order_ratings_and_texts(dump2014: Path) -> None:
    ds = load_amazon(dump2014, "Beauty", kcore=0)
    assert ds.name == "amazon2014-Beauty"
    assert ds.source == "amazon"
    assert (ds.num_users, ds.num_items, ds.num_interactions) == (2, 3, 5)
    assert ds.user_ids == ["u1", "u2"]
    assert ds.item_ids == ["A", "B", "C"]
    u1 = ds.user_ids.index("u1")
    assert [ds.item_ids[i] for i in ds.sequence(u1)] == ["B", "C", "A"]
    rows = ds.users == u1
    assert ds.timestamps[rows].tolist() == [100, 200, 300]
    assert ds.ratings[rows].tolist() == [4.0, 3.0, 5.0]
    assert ds.item_titles == ["Lip Balm", "Tom's Soap", "C"]
    assert ds.item_texts[0] == "Lip Balm | Acme | Beauty, Lips | Soft lips & more"
    assert ds.item_texts[1] == "Tom's Soap | Beauty | " + "x" * 500
    assert ds.item_texts[2] == "C"


def test_auto_detects_2014_and_single_quote_meta(dump2014: Path) -> None:
    ds = load_amazon(dump2014, "Beauty", version="auto", kcore=0)
    assert ds.name == "amazon2014-Beauty"
    assert "Tom's Soap" in ds.item_titles


def test_2018_plain_json_meta_and_missing_meta_items(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_lines(tmp_path / "All_Beauty.json.gz", [review14(*r) for r in REVIEWS])
    meta = {
        "asin": "A",
        "title": "Lip Balm",
        "brand": "Acme",
        "category": ["Beauty", "Lips"],
        "description": ["Soft.", "<p>Lasts long</p>"],
        "feature": ["SPF 15"],
    }
    write_lines(tmp_path / "meta_All_Beauty.json.gz", [json.dumps(meta)])
    with caplog.at_level(logging.WARNING):
        ds = load_amazon(tmp_path, "All_Beauty", kcore=0)
    assert ds.name == "amazon2018-All_Beauty"
    assert ds.num_interactions == 5
    assert ds.item_texts == ["Lip Balm | Acme | Beauty, Lips | Soft. Lasts long SPF 15", "B", "C"]
    assert ds.item_titles == ["Lip Balm", "B", "C"]
    assert "2 of 3 items have no entry" in caplog.text


def test_2023_parent_asin_and_milliseconds(tmp_path: Path) -> None:
    reviews = [review23(u, i, r, t * 1000 + 999) for u, i, r, t in REVIEWS]
    write_lines(tmp_path / "Toys.jsonl", reviews)
    meta = [
        {
            "parent_asin": p,
            "title": f"Toy {p}",
            "store": "Shop",
            "categories": ["Toys", "Games"],
            "description": [],
            "features": ["Fun"],
        }
        for p in ("A", "B", "C")
    ]
    write_lines(tmp_path / "meta_Toys.jsonl.gz", [json.dumps(m) for m in meta])
    ds = load_amazon(tmp_path, "Toys", kcore=0)
    assert ds.name == "amazon2023-Toys"
    assert ds.item_ids == ["A", "B", "C"]
    u1 = ds.user_ids.index("u1")
    assert ds.timestamps[ds.users == u1].tolist() == [100, 200, 300]
    assert ds.ratings.tolist() == [4.0, 3.0, 5.0, 1.0, 2.0]
    assert ds.item_texts[1] == "Toy B | Shop | Toys, Games | Fun"


def test_duplicates_keep_earliest(tmp_path: Path) -> None:
    rows = [*REVIEWS, ("u1", "A", 1.0, 50), ("u1", "A", 2.0, 400), ("u2", "C", 5.0, 50)]
    write_lines(tmp_path / "X.json.gz", [review14(*r) for r in rows])
    write_lines(tmp_path / "meta_X.json.gz", [])
    ds = load_amazon(tmp_path, "X", version="2018", kcore=0)
    assert ds.num_interactions == 5
    u1, a = ds.user_ids.index("u1"), ds.item_ids.index("A")
    pair = (ds.users == u1) & (ds.items == a)
    assert ds.timestamps[pair].tolist() == [50]
    assert ds.ratings[pair].tolist() == [1.0]
    u2, c = ds.user_ids.index("u2"), ds.item_ids.index("C")
    assert ds.ratings[(ds.users == u2) & (ds.items == c)].tolist() == [1.0]  # first in file


def brute_force_kcore(rows: list[tuple[int, int]], k: int) -> set[tuple[int, int]]:
    """Reference k-core: remove one under-k user or item at a time until none is left."""
    alive = set(rows)
    changed = True
    while changed:
        changed = False
        for side in (0, 1):
            counts: dict[int, int] = {}
            for row in alive:
                counts[row[side]] = counts.get(row[side], 0) + 1
            weak = {key for key, n in counts.items() if n < k}
            if weak:
                alive = {row for row in alive if row[side] not in weak}
                changed = True
    return alive


# k=2, one row dropped per round: (u3, C) as C has one row; then (u3, D) as u3 has one; then
# (u4, D) as D has one; then (u4, A) as u4 has one.
KCORE_ROWS = [
    ("u1", "A"),
    ("u1", "B"),
    ("u2", "A"),
    ("u2", "B"),
    ("u3", "C"),
    ("u3", "D"),
    ("u4", "D"),
    ("u4", "A"),
]


def test_kcore_needs_several_rounds(tmp_path: Path) -> None:
    users = np.array([u for u, _ in KCORE_ROWS])
    items = np.array([i for _, i in KCORE_ROWS])
    user_counts = {u: int((users == u).sum()) for u in users}
    item_counts = {i: int((items == i).sum()) for i in items}
    single_pass = [user_counts[u] >= 2 and item_counts[i] >= 2 for u, i in KCORE_ROWS]
    assert sum(single_pass) == 7  # one round would only drop (u3, C)
    keep = kcore_filter(users, items, 2)
    survivors = {(str(u), str(i)) for u, i in zip(users[keep], items[keep], strict=True)}
    codes = {name: n for n, name in enumerate(sorted(set(users) | set(items)))}
    reference = brute_force_kcore([(codes[u], codes[i]) for u, i in KCORE_ROWS], 2)
    assert {(codes[u], codes[i]) for u, i in survivors} == reference
    assert survivors == {("u1", "A"), ("u1", "B"), ("u2", "A"), ("u2", "B")}

    rows = [review14(u, i, 5.0, n) for n, (u, i) in enumerate(KCORE_ROWS)]
    write_lines(tmp_path / "K_5.json.gz", rows)
    write_lines(tmp_path / "meta_K.json", [])
    ds = load_amazon(tmp_path, "K", kcore=2)
    assert ds.user_ids == ["u1", "u2"]
    assert ds.item_ids == ["A", "B"]
    assert ds.num_interactions == 4


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), max_size=40, unique=True),
    st.integers(0, 4),
)
def test_kcore_matches_brute_force(rows: list[tuple[int, int]], k: int) -> None:
    users = np.array([u for u, _ in rows], dtype=np.int64)
    items = np.array([i for _, i in rows], dtype=np.int64)
    keep = kcore_filter(users, items, k)
    got = {rows[n] for n in np.flatnonzero(keep)}
    assert got == brute_force_kcore(rows, k)


def test_empty_after_kcore(dump2014: Path) -> None:
    with pytest.raises(DataError, match=r"k-core with k=5 left no interactions.*data\.kcore"):
        load_amazon(dump2014, "Beauty", kcore=5)


def test_auto_no_matching_files(tmp_path: Path) -> None:
    write_lines(tmp_path / "meta_Beauty.json.gz", [])
    with pytest.raises(DataError, match=r"reviews_Beauty_5\.json\.gz.*Beauty\.jsonl.*data\.name"):
        load_amazon(tmp_path, "Beauty")


def test_auto_several_layouts(dump2014: Path) -> None:
    write_lines(dump2014 / "Beauty.json.gz", [review14(*REVIEWS[0])])
    with pytest.raises(DataError, match=r"several releases \(2014, 2018\).*amazon_version"):
        load_amazon(dump2014, "Beauty")


def test_explicit_version_missing_file(dump2014: Path) -> None:
    with pytest.raises(DataError, match=r"missing .*Beauty\.jsonl\.gz"):
        load_amazon(dump2014, "Beauty", version="2023")
    (dump2014 / "meta_Beauty.json.gz").unlink()
    with pytest.raises(DataError, match=r"missing .*meta_Beauty\.json\.gz"):
        load_amazon(dump2014, "Beauty", version="2014")


def test_bad_arguments(dump2014: Path) -> None:
    with pytest.raises(DataError, match="unknown version '2020'"):
        load_amazon(dump2014, "Beauty", version="2020")
    with pytest.raises(DataError, match=r"data\.kcore"):
        load_amazon(dump2014, "Beauty", kcore=-1)
    with pytest.raises(DataError, match="does not exist"):
        load_amazon(dump2014 / "nope", "Beauty")


def test_truncated_gzip(dump2014: Path) -> None:
    path = dump2014 / "reviews_Beauty_5.json.gz"
    lines = [review14(f"u{n}", f"i{n}", 5.0, n) for n in range(300)]
    data = gzip.compress("".join(line + "\n" for line in lines).encode())
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"reviews_Beauty_5\.json\.gz.*truncated or corrupt"):
        load_amazon(dump2014, "Beauty", kcore=0)


def test_not_gzip(dump2014: Path) -> None:
    (dump2014 / "reviews_Beauty_5.json.gz").write_bytes(b"plain text, not gzip\n")
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_amazon(dump2014, "Beauty", kcore=0)


def test_bad_json_line_names_line(dump2014: Path) -> None:
    lines = [review14(*r) for r in REVIEWS]
    lines[2] = lines[2][:-5]
    write_lines(dump2014 / "reviews_Beauty_5.json.gz", lines)
    with pytest.raises(DataError, match=r"reviews_Beauty_5\.json\.gz: bad JSON on line 3"):
        load_amazon(dump2014, "Beauty", kcore=0)


def test_bad_meta_line_names_line(dump2014: Path) -> None:
    write_lines(dump2014 / "meta_Beauty.json.gz", [meta14("A"), "{'asin': 'B', 'title': "])
    with pytest.raises(DataError, match=r"meta_Beauty\.json\.gz: line 2 is neither JSON"):
        load_amazon(dump2014, "Beauty", kcore=0)


def test_missing_field(dump2014: Path) -> None:
    lines = [review14(*r) for r in REVIEWS]
    record = json.loads(lines[1])
    del record["reviewerID"]
    lines[1] = json.dumps(record)
    write_lines(dump2014 / "reviews_Beauty_5.json.gz", lines)
    with pytest.raises(DataError, match=r"missing field `reviewerID` on line 2"):
        load_amazon(dump2014, "Beauty", kcore=0)


def test_wrong_types(tmp_path: Path) -> None:
    write_lines(tmp_path / "meta_T.jsonl", [])
    record = json.loads(review23("u1", "A", 5.0, 1000))
    write_lines(tmp_path / "T.jsonl", [json.dumps({**record, "rating": "five"})])
    with pytest.raises(DataError, match=r"field `rating` on line 1 is not a finite number"):
        load_amazon(tmp_path, "T", kcore=0)
    del record["timestamp"]
    write_lines(tmp_path / "T.jsonl", [json.dumps(record)])
    with pytest.raises(DataError, match=r"missing field `timestamp` on line 1"):
        load_amazon(tmp_path, "T", kcore=0)
    write_lines(tmp_path / "T.jsonl", ["[1, 2]"])
    with pytest.raises(DataError, match=r"line 1 is a list, not an object"):
        load_amazon(tmp_path, "T", kcore=0)


def test_numeric_strings_accepted(tmp_path: Path) -> None:
    record = {"reviewerID": "u", "asin": "A", "overall": "4.0", "unixReviewTime": "1234"}
    write_lines(tmp_path / "S.json", [json.dumps(record), ""])
    write_lines(tmp_path / "meta_S.json", [])
    ds = load_amazon(tmp_path, "S", kcore=0)
    assert ds.ratings.tolist() == [4.0]
    assert ds.timestamps.tolist() == [1234]
