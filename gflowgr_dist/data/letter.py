"""LETTER / LC-Rec processed JSON: `X.inter.json`, `X.index.json`, optional `X.item.json`.

This is the form in which LETTER (Wang et al., CIKM 2024) released Amazon Beauty and Instruments,
and on which GFlowGR reports its main table. `X.inter.json` maps a user id to its items in time
order (no timestamps: list position stands in for time); `X.index.json` maps an item id to its
semantic-ID tokens, one per level (`<a_183>`, `<b_70>`, ...), used as given: items that share an
ID stay sharing it (Beauty has 11 such groups), exactly as LETTER's own evaluation sees them.
`X.item.json`, when present, gives item text (title, description, ...).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from gflowgr_dist.data.schema import RecDataset, build_dataset
from gflowgr_dist.errors import DataError

logger = logging.getLogger(__name__)

_TOKEN = re.compile(r"^<([A-Za-z]+)_(\d+)>$")


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise DataError(f"{str(path)!r} does not exist; a LETTER dataset folder needs {what}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(
            f"{str(path)!r} is not valid JSON (line {err.lineno}, column {err.colno}: {err.msg})"
        ) from None
    except UnicodeDecodeError:
        raise DataError(f"{str(path)!r} is not UTF-8 text; is it the right file?") from None


def load_letter(folder: Path, name: str) -> RecDataset:
    """Loads `{name}.inter.json`, `{name}.index.json` and, if present, `{name}.item.json`.

    Raises:
        DataError: a file is missing or malformed, an interaction names an item the index lacks,
            or index entries disagree in length or level prefixes.
    """
    folder = Path(folder)
    inter_path = folder / f"{name}.inter.json"
    index_path = folder / f"{name}.index.json"
    inter = _read_json(inter_path, f"{name}.inter.json (user -> items)")
    index = _read_json(index_path, f"{name}.index.json (item -> semantic-ID tokens)")
    texts = _read_item_texts(folder / f"{name}.item.json")
    users, items, stamps = _flatten_sequences(inter, inter_path)

    # Keep index entries that interactions use; an interaction item the index lacks is an error.
    if not isinstance(index, dict):
        raise DataError(f"{str(index_path)!r} must be a JSON object item id -> list of tokens")
    used = sorted(set(items), key=_numeric_first)
    missing = [i for i in used if i not in index]
    if missing:
        raise DataError(
            f"{len(missing)} item(s) in {inter_path.name} have no entry in {index_path.name}, "
            f"e.g. {missing[:3]}; the index must cover every interacted item"
        )
    unused = len(index) - len(used)
    if unused:
        logger.warning("%s: %d index item(s) never interacted with; dropped", name, unused)
    codes, tokens = _parse_index({i: index[i] for i in used}, index_path)

    dataset = build_dataset(
        name=name,
        source="letter",
        raw_users=users,
        raw_items=items,
        timestamps=np.asarray(stamps, dtype=np.int64),
        ratings=None,
        item_ids=used,
        item_titles=[_title(texts.get(i), i) for i in used],
        item_texts=[_text(texts.get(i), i) for i in used],
    )
    dataset.external_sids = codes
    dataset.external_sid_tokens = tokens
    dataset.extra["has_item_text"] = bool(texts)
    return dataset


def _numeric_first(key: str) -> tuple[int, int | str]:
    return (0, int(key)) if key.isdigit() else (1, key)


def _flatten_sequences(inter: Any, path: Path) -> tuple[list[str], list[str], list[int]]:
    if not isinstance(inter, dict) or not inter:
        raise DataError(f"{str(path)!r} must be a non-empty JSON object user id -> item list")
    users, items, stamps = [], [], []
    for user, seq in inter.items():
        if not isinstance(seq, list) or not all(isinstance(i, int | str) for i in seq):
            raise DataError(
                f"{str(path)!r}: user {user!r} maps to {type(seq).__name__} "
                f"{str(seq)[:60]!r}; expected a list of item ids"
            )
        users.extend([str(user)] * len(seq))
        items.extend(str(i) for i in seq)
        stamps.extend(range(len(seq)))
    return users, items, stamps


def _parse_index(index: dict[str, Any], path: Path) -> tuple[np.ndarray, list[list[str]]]:
    """Token lists -> codes [I, L] and, per level, the token string of each code."""
    levels: int | None = None
    prefixes: list[str] = []
    rows = []
    for item, toks in index.items():
        if not isinstance(toks, list) or not toks:
            raise DataError(f"{str(path)!r}: item {item!r} has {toks!r}, not a list of tokens")
        if levels is None:
            levels = len(toks)
        if len(toks) != levels:
            raise DataError(
                f"{str(path)!r}: item {item!r} has {len(toks)} tokens, others have {levels}"
            )
        parsed = [_TOKEN.match(t) if isinstance(t, str) else None for t in toks]
        if not all(parsed):
            raise DataError(
                f"{str(path)!r}: item {item!r} has tokens {toks!r}; expected the form <a_12>"
            )
        if not prefixes:
            prefixes = [m.group(1) for m in parsed]
        if [m.group(1) for m in parsed] != prefixes:
            raise DataError(
                f"{str(path)!r}: item {item!r} has level prefixes "
                f"{[m.group(1) for m in parsed]}, others have {prefixes}"
            )
        rows.append([int(m.group(2)) for m in parsed])
    codes = np.asarray(rows, dtype=np.int64)
    tokens = [
        [f"<{prefixes[level]}_{c}>" for c in range(int(codes[:, level].max()) + 1)]
        for level in range(codes.shape[1])
    ]
    return codes, tokens


def _read_item_texts(path: Path) -> dict[str, dict[str, Any]]:
    if not path.is_file():
        return {}
    data = _read_json(path, "item text")
    if not isinstance(data, dict):
        raise DataError(f"{str(path)!r} must be a JSON object item id -> fields")
    return {str(k): v for k, v in data.items() if isinstance(v, dict)}


def _title(fields: dict[str, Any] | None, item: str) -> str:
    return str(fields.get("title") or item) if fields else item


def _text(fields: dict[str, Any] | None, item: str) -> str:
    if not fields:
        return item
    keys = ("title", "brand", "categories", "description")
    parts = [str(fields[k]).strip() for k in keys if fields.get(k) not in (None, "")]
    return " | ".join(p[:500] for p in parts if p) or item
