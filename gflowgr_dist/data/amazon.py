"""Loads the Amazon review dumps (2014, 2018 and 2023 releases) as users download them.

Generative-recommendation papers evaluate on Amazon categories (Beauty, Sports, Toys, ...) taken
from one of three public releases whose file names, field names and meta formats all differ:
the 2014 meta files are Python dict literals rather than JSON, the 2018 ones are JSON, and the
2023 release names items by `parent_asin` and times in milliseconds. This module reads any of
them, unchanged and streamed line by line (the files reach several GB), into one `RecDataset`:
duplicates dropped, k-core filtered, each item with a text to embed for semantic IDs.

A malformed dump (corrupt gzip, bad line, missing field) raises one `DataError` naming the file,
the line and the problem, rather than a traceback from `json` or `gzip`.
"""

from __future__ import annotations

import ast
import gzip
import html
import json
import logging
import math
import re
import zlib
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from tqdm import tqdm

from gflowgr_dist.data.schema import RecDataset, build_dataset
from gflowgr_dist.errors import DataError

logger = logging.getLogger(__name__)

VERSIONS = ("2014", "2018", "2023")
MAX_DESCRIPTION_CHARS = 500
_READ_ERRORS = (OSError, EOFError, zlib.error, UnicodeDecodeError)
_PARSE_ERRORS = (ValueError, SyntaxError, TypeError, MemoryError, RecursionError)
_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class _Layout:
    """File names and field names of one release; `{c}` in a pattern is the category."""

    version: str
    reviews: tuple[str, ...]
    meta: tuple[str, ...]
    user_key: str
    item_key: str
    rating_key: str
    time_key: str
    time_divisor: int
    meta_item_key: str
    brand_key: str
    category_key: str
    description_keys: tuple[str, ...]
    literal_meta: bool


_LAYOUTS = {
    "2014": _Layout(
        version="2014",
        reviews=(
            "reviews_{c}_5.json.gz",
            "reviews_{c}_5.json",
            "reviews_{c}.json.gz",
            "reviews_{c}.json",
        ),
        meta=("meta_{c}.json.gz", "meta_{c}.json"),
        user_key="reviewerID",
        item_key="asin",
        rating_key="overall",
        time_key="unixReviewTime",
        time_divisor=1,
        meta_item_key="asin",
        brand_key="brand",
        category_key="categories",
        description_keys=("description",),
        literal_meta=True,
    ),
    "2018": _Layout(
        version="2018",
        reviews=("{c}_5.json.gz", "{c}_5.json", "{c}.json.gz", "{c}.json"),
        meta=("meta_{c}.json.gz", "meta_{c}.json"),
        user_key="reviewerID",
        item_key="asin",
        rating_key="overall",
        time_key="unixReviewTime",
        time_divisor=1,
        meta_item_key="asin",
        brand_key="brand",
        category_key="category",
        description_keys=("description", "feature"),
        literal_meta=False,
    ),
    "2023": _Layout(
        version="2023",
        reviews=("{c}.jsonl.gz", "{c}.jsonl"),
        meta=("meta_{c}.jsonl.gz", "meta_{c}.jsonl"),
        user_key="user_id",
        item_key="parent_asin",
        rating_key="rating",
        time_key="timestamp",
        time_divisor=1000,
        meta_item_key="parent_asin",
        brand_key="store",
        category_key="categories",
        description_keys=("description", "features"),
        literal_meta=False,
    ),
}


@dataclass
class _Reviews:
    """The review log with users and items coded in order of first appearance."""

    users: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray
    ratings: np.ndarray
    user_names: list[str]
    item_names: list[str]


def load_amazon(
    folder: Path, category: str, *, version: str = "auto", kcore: int = 5
) -> RecDataset:
    """Reads one Amazon category from a folder of downloaded dump files.

    Files looked for (`.gz` or plain), with the 5-core review file preferred when both exist:

    - 2014: `reviews_{category}_5.json[.gz]` or `reviews_{category}.json[.gz]`, and
      `meta_{category}.json[.gz]` (Python dict literals, JSON also accepted).
    - 2018: `{category}_5.json[.gz]` or `{category}.json[.gz]`, and `meta_{category}.json[.gz]`.
    - 2023: `{category}.jsonl[.gz]` and `meta_{category}.jsonl[.gz]`; items are `parent_asin`
      and millisecond timestamps become seconds.

    Processing, in order: a user's repeated reviews of one item keep only the earliest (ties
    in time: the first in the file); users and items with fewer than `kcore` interactions are
    removed, repeatedly until none is left; meta entries of items without reviews are ignored;
    items with reviews but no meta entry are kept with their asin as title and text (counted in
    a warning). Item texts read `title | brand | categories | description`, empty parts skipped.

    Args:
        folder: folder holding the downloaded files.
        category: the category part of the file names, e.g. "Beauty" or "All_Beauty".
        version: "2014", "2018", "2023", or "auto" to pick the one whose files are present.
        kcore: minimum interactions per user and per item; 0 or 1 keeps everything.

    Returns:
        The dataset, named `amazon{version}-{category}`, with `source="amazon"`.

    Raises:
        DataError: files missing or ambiguous, a file is corrupt or malformed (naming the file
            and line), or no interaction survives the k-core filter.
    """
    folder = Path(folder)
    _check_arguments(folder, category, version, kcore)
    layout, reviews_path, meta_path = _resolve_files(folder, category, version)
    name = f"amazon{layout.version}-{category}"
    logger.info("%s: reading %s and %s", name, reviews_path.name, meta_path.name)
    reviews = _read_reviews(reviews_path, layout)
    keep = _first_occurrences(reviews.users, reviews.items, reviews.timestamps)
    logger.info("%s: %d reviews, %d duplicates dropped", name, keep.size, int((~keep).sum()))
    keep[keep] = kcore_filter(reviews.users[keep], reviews.items[keep], kcore)
    if not keep.any():
        raise DataError(
            f"{name}: k-core with k={kcore} left no interactions of the {keep.size} in "
            f"{reviews_path}; set a smaller data.kcore (0 disables the filter)"
        )
    logger.info("%s: %d interactions left after %d-core", name, int(keep.sum()), kcore)
    item_ids = sorted({reviews.item_names[i] for i in np.unique(reviews.items[keep]).tolist()})
    titles, texts = _read_item_texts(meta_path, layout, item_ids, name)
    user_names = np.asarray(reviews.user_names, dtype=str)
    item_names = np.asarray(reviews.item_names, dtype=str)
    return build_dataset(
        name=name,
        source="amazon",
        raw_users=user_names[reviews.users[keep]],
        raw_items=item_names[reviews.items[keep]],
        timestamps=reviews.timestamps[keep],
        ratings=reviews.ratings[keep],
        item_ids=item_ids,
        item_titles=titles,
        item_texts=texts,
    )


def kcore_filter(users: np.ndarray, items: np.ndarray, k: int) -> np.ndarray:
    """Finds the k-core of a user-item log: every kept user and item has >= k kept rows.

    Removing a user can push an item below k and vice versa, so rows are dropped in rounds
    until a round drops nothing. Each row counts once (deduplicate first if needed).

    Args:
        users: user of each interaction, [E], any ids `np.unique` can sort.
        items: item of each interaction, [E].
        k: minimum count; k <= 1 keeps every row.

    Returns:
        Boolean mask of the rows kept, [E].
    """
    keep = np.ones(len(users), dtype=bool)
    if k <= 1 or keep.size == 0:
        return keep
    _, user_codes = np.unique(np.asarray(users), return_inverse=True)
    _, item_codes = np.unique(np.asarray(items), return_inverse=True)
    user_codes, item_codes = user_codes.ravel(), item_codes.ravel()
    kept = keep.size
    while True:
        user_counts = np.bincount(user_codes[keep], minlength=int(user_codes.max()) + 1)
        item_counts = np.bincount(item_codes[keep], minlength=int(item_codes.max()) + 1)
        keep &= (user_counts[user_codes] >= k) & (item_counts[item_codes] >= k)
        now = int(keep.sum())
        if now == kept:
            return keep
        kept = now


def _check_arguments(folder: Path, category: str, version: str, kcore: int) -> None:
    """Rejects arguments no file layout can satisfy, before touching the files."""
    if version != "auto" and version not in VERSIONS:
        raise DataError(
            f"amazon: unknown version {version!r}; set data.amazon_version to one of "
            f"auto, {', '.join(VERSIONS)}"
        )
    if not category or "/" in category or "\\" in category:
        raise DataError(
            f"amazon: category {category!r} is not a file-name part; set data.name to the "
            f"category as it appears in the file names (e.g. Beauty)"
        )
    if isinstance(kcore, bool) or not isinstance(kcore, int) or kcore < 0:
        raise DataError(f"amazon: data.kcore must be an integer >= 0, got {kcore!r}")
    if not folder.is_dir():
        raise DataError(
            f"amazon: data folder {folder} does not exist; set data.path to the folder "
            f"holding the downloaded files"
        )


def _first_existing(folder: Path, patterns: tuple[str, ...], category: str) -> Path | None:
    """The first of the pattern's files present in `folder`, or None."""
    for pattern in patterns:
        path = folder / pattern.format(c=category)
        if path.is_file():
            return path
    return None


def _resolve_files(folder: Path, category: str, version: str) -> tuple[_Layout, Path, Path]:
    """Picks the layout (detecting it for "auto") and its review and meta files."""
    if version == "auto":
        found = [v for v in VERSIONS if _first_existing(folder, _LAYOUTS[v].reviews, category)]
        if len(found) != 1:
            raise DataError(_detection_message(folder, category, found))
        version = found[0]
    layout = _LAYOUTS[version]
    reviews = _require(folder, layout.reviews, category, version)
    return layout, reviews, _require(folder, layout.meta, category, version)


def _require(folder: Path, patterns: tuple[str, ...], category: str, version: str) -> Path:
    """The first of the pattern's files present in `folder`.

    Raises:
        DataError: none is present, naming the path expected.
    """
    path = _first_existing(folder, patterns, category)
    if path is None:
        names = " or ".join(p.format(c=category) for p in patterns)
        raise DataError(
            f"amazon {version}: missing {folder / patterns[0].format(c=category)} "
            f"(looked for {names}); download it, or set data.amazon_version / data.name "
            f"to match the files you have"
        )
    return path


def _detection_message(folder: Path, category: str, found: list[str]) -> str:
    """Explains why auto-detection found no layout, or several."""
    searched = "; ".join(
        f"{v}: {', '.join(p.format(c=category) for p in _LAYOUTS[v].reviews)}" for v in VERSIONS
    )
    if found:
        problem = f"review files of several releases ({', '.join(found)}) are present"
        fix = f"set data.amazon_version to one of {', '.join(found)}"
    else:
        problem = f"no review file for category {category!r}"
        fix = "set data.name to the category as spelled in the file names, or data.path"
    return (
        f"amazon: cannot detect the dump version in {folder}: {problem} (searched for {searched})"
        f"; {fix} (or set data.amazon_version explicitly)"
    )


def _open_text(path: Path) -> IO[str]:
    """Opens a dump file as text, decompressing `.gz` files on the fly."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def _read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yields (1-based line number, line) for the non-blank lines of a file.

    Raises:
        DataError: the file cannot be read or decompressed (truncated or corrupt).
    """
    line_no = 0
    disable = None if logger.isEnabledFor(logging.INFO) else True
    try:
        with (
            _open_text(path) as handle,
            tqdm(desc=path.name, unit=" lines", disable=disable, leave=False) as bar,
        ):
            for line_no, line in enumerate(handle, start=1):
                bar.update()
                if line.strip():
                    yield line_no, line
    except _READ_ERRORS as exc:
        raise DataError(
            f"{path}: cannot read past line {line_no}: {exc}; the file is truncated or corrupt "
            f"(or not {'gzip' if path.suffix == '.gz' else 'UTF-8 text'}), download it again"
        ) from exc


def _parse_record(line: str, path: Path, line_no: int, literal: bool) -> dict[str, object]:
    """Parses one line as a JSON object (or, if `literal`, a Python dict literal)."""
    try:
        record = json.loads(line)
    except _PARSE_ERRORS as exc:
        if not literal:
            raise DataError(f"{path}: bad JSON on line {line_no}: {exc}") from exc
        try:
            record = ast.literal_eval(line.strip())
        except _PARSE_ERRORS as literal_exc:
            raise DataError(
                f"{path}: line {line_no} is neither JSON nor a Python dict literal: {exc}"
            ) from literal_exc
    if not isinstance(record, dict):
        raise DataError(f"{path}: line {line_no} is a {type(record).__name__}, not an object")
    return record


def _field(record: dict[str, object], key: str, path: Path, line_no: int) -> object:
    """The value of a required field."""
    if record.get(key) is None:
        raise DataError(f"{path}: missing field `{key}` on line {line_no}")
    return record[key]


def _as_id(value: object, key: str, path: Path, line_no: int) -> str:
    """A user or item id: a non-empty string (integers accepted)."""
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise DataError(f"{path}: field `{key}` on line {line_no} is not an id: {value!r}")
    return str(value)


def _as_number(value: object, key: str, path: Path, line_no: int) -> float:
    """A finite number, given as a number or a numeric string."""
    try:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise TypeError
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    if not math.isfinite(number) or abs(number) >= 2**53:
        raise DataError(
            f"{path}: field `{key}` on line {line_no} is not a finite number: {value!r}"
        )
    return number


def _read_reviews(path: Path, layout: _Layout) -> _Reviews:
    """Streams the review file into coded arrays, in file order."""
    user_index: dict[str, int] = {}
    item_index: dict[str, int] = {}
    users, items, times = array("q"), array("q"), array("q")
    ratings = array("d")
    for line_no, line in _read_lines(path):
        record = _parse_record(line, path, line_no, literal=False)
        values = [
            _field(record, key, path, line_no)
            for key in (layout.user_key, layout.item_key, layout.rating_key, layout.time_key)
        ]
        user = _as_id(values[0], layout.user_key, path, line_no)
        item = _as_id(values[1], layout.item_key, path, line_no)
        ratings.append(_as_number(values[2], layout.rating_key, path, line_no))
        times.append(int(_as_number(values[3], layout.time_key, path, line_no)))
        users.append(user_index.setdefault(user, len(user_index)))
        items.append(item_index.setdefault(item, len(item_index)))
    if not users:
        raise DataError(f"{path}: the file holds no reviews; download it again")
    return _Reviews(
        users=np.asarray(users, dtype=np.int64),
        items=np.asarray(items, dtype=np.int64),
        timestamps=np.asarray(times, dtype=np.int64) // layout.time_divisor,
        ratings=np.asarray(ratings, dtype=np.float32),
        user_names=list(user_index),
        item_names=list(item_index),
    )


def _first_occurrences(users: np.ndarray, items: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Mask keeping each (user, item) pair's earliest row (the first in the file on ties)."""
    order = np.lexsort((np.arange(users.size), times, items, users))
    sorted_users, sorted_items = users[order], items[order]
    first = np.ones(users.size, dtype=bool)
    first[1:] = (sorted_users[1:] != sorted_users[:-1]) | (sorted_items[1:] != sorted_items[:-1])
    keep = np.zeros(users.size, dtype=bool)
    keep[order[first]] = True
    return keep


def _read_item_texts(
    path: Path, layout: _Layout, item_ids: list[str], name: str
) -> tuple[list[str], list[str]]:
    """Titles and texts of `item_ids` from the meta file; the asin where an item has none.

    Lines whose item id (found with a regular expression, before parsing) is not needed are
    skipped unparsed: most of a meta file describes items the reviews never name, and parsing
    2014 Python literals is slow. The first entry of an item wins (2018 meta repeats some).
    """
    needed = set(item_ids)
    found: dict[str, tuple[str, str]] = {}
    key = re.escape(layout.meta_item_key)
    quick_id = re.compile(rf"""['"]{key}['"]\s*:\s*['"]([^'"\\]+)['"]""")
    for line_no, line in _read_lines(path):
        match = quick_id.search(line)
        if match and (match.group(1) not in needed or match.group(1) in found):
            continue
        record = _parse_record(line, path, line_no, literal=layout.literal_meta)
        item = _as_id(
            _field(record, layout.meta_item_key, path, line_no), layout.meta_item_key, path, line_no
        )
        if item in needed and item not in found:
            found[item] = _describe(record, layout, item)
    missing = len(needed) - len(found)
    if missing:
        logger.warning(
            "%s: %d of %d items have no entry in %s; their asin serves as title and text",
            name,
            missing,
            len(needed),
            path.name,
        )
    pairs = [found.get(item, (item, item)) for item in item_ids]
    return [title for title, _ in pairs], [text for _, text in pairs]


def _describe(record: dict[str, object], layout: _Layout, item: str) -> tuple[str, str]:
    """(title, text) of one meta entry; text is `title | brand | categories | description`."""
    title = " ".join(_strings(record.get("title")))
    brand = " ".join(_strings(record.get(layout.brand_key)))
    categories = ", ".join(dict.fromkeys(_strings(record.get(layout.category_key))))
    description = " ".join(s for k in layout.description_keys for s in _strings(record.get(k)))
    description = description[:MAX_DESCRIPTION_CHARS].rstrip()
    parts = [title, brand, categories, description]
    text = " | ".join(part for part in parts if part)
    return title or item, text or item


def _strings(value: object) -> list[str]:
    """The non-empty cleaned strings in a meta value (strings, numbers, nested lists)."""
    if isinstance(value, str):
        cleaned = _clean(value)
        return [cleaned] if cleaned else []
    if isinstance(value, list | tuple):
        return [s for element in value for s in _strings(element)]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return [str(value)]
    return []


def _clean(text: str) -> str:
    """Strips HTML tags and entities and collapses whitespace."""
    return _SPACE.sub(" ", html.unescape(_TAG.sub(" ", text))).strip()
