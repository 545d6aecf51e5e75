"""The on-disk form of a prepared dataset: Parquet files plus a versioned `meta.json`.

A prepared dataset folder holds:

- `interactions.parquet`: user, item, timestamp, rating (sorted by user, timestamp, item)
- `items.parquet`: item, item_id (original), title, text
- `users.parquet`: user, user_id (original)
- `splits.parquet`: user, split (train / valid / test), target_index, history_start
- `external_sids.parquet` (only when the source ships semantic IDs): item, codes, tokens
- `meta.json`: schema_version, name, source, statistics, the split rule

Files are written to a temporary folder and renamed into place, so a crash never leaves a
half-written dataset that a later stage would read.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gflowgr_dist.data.schema import SCHEMA_VERSION, RecDataset, validate
from gflowgr_dist.data.split import Splits
from gflowgr_dist.errors import DataError

FILES = ("interactions.parquet", "items.parquet", "users.parquet", "splits.parquet", "meta.json")


def write_prepared(folder: Path, dataset: RecDataset, splits: Splits, meta: dict[str, Any]) -> Path:
    """Writes the dataset and its splits atomically into `folder` (replacing an older one)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        _write_tables(tmp, dataset, splits)
        full_meta = {"schema_version": SCHEMA_VERSION, "name": dataset.name}
        full_meta |= {"source": dataset.source, **meta}
        (tmp / "meta.json").write_text(json.dumps(full_meta, indent=2, sort_keys=False) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _write_tables(folder: Path, dataset: RecDataset, splits: Splits) -> None:
    pq.write_table(
        pa.table(
            {
                "user": dataset.users,
                "item": dataset.items,
                "timestamp": dataset.timestamps,
                "rating": dataset.ratings,
            }
        ),
        folder / "interactions.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "item": np.arange(dataset.num_items, dtype=np.int64),
                "item_id": pa.array(dataset.item_ids, pa.string()),
                "title": pa.array(dataset.item_titles, pa.string()),
                "text": pa.array(dataset.item_texts, pa.string()),
            }
        ),
        folder / "items.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "user": np.arange(dataset.num_users, dtype=np.int64),
                "user_id": pa.array(dataset.user_ids, pa.string()),
            }
        ),
        folder / "users.parquet",
    )
    pq.write_table(splits.to_table(), folder / "splits.parquet")
    if dataset.external_sids is not None:
        tokens = dataset.external_sid_tokens or []
        pq.write_table(
            pa.table(
                {
                    "item": np.arange(dataset.num_items, dtype=np.int64),
                    "codes": pa.array(dataset.external_sids.tolist(), pa.list_(pa.int64())),
                }
            ),
            folder / "external_sids.parquet",
        )
        (folder / "external_sid_tokens.json").write_text(json.dumps(tokens))


def read_prepared(folder: Path) -> tuple[RecDataset, Splits, dict[str, Any]]:
    """Reads a folder written by `write_prepared`.

    Raises:
        DataError: a file is missing, or the schema version is not the one this code writes.
    """
    folder = Path(folder)
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise DataError(
            f"prepared dataset {str(folder)!r} lacks {', '.join(missing)}; "
            "run `gflowgr prepare --config ...` first"
        )
    meta = json.loads((folder / "meta.json").read_text())
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise DataError(
            f"prepared dataset {str(folder)!r} has schema_version="
            f"{meta.get('schema_version')!r}, this code reads {SCHEMA_VERSION}; "
            "re-run `gflowgr prepare` to rebuild it"
        )
    inter = pq.read_table(folder / "interactions.parquet")
    items = pq.read_table(folder / "items.parquet")
    users = pq.read_table(folder / "users.parquet")
    dataset = RecDataset(
        name=meta["name"],
        source=meta["source"],
        users=inter["user"].to_numpy(),
        items=inter["item"].to_numpy(),
        timestamps=inter["timestamp"].to_numpy(),
        ratings=inter["rating"].to_numpy(zero_copy_only=False).astype(np.float32),
        user_ids=users["user_id"].to_pylist(),
        item_ids=items["item_id"].to_pylist(),
        item_titles=items["title"].to_pylist(),
        item_texts=items["text"].to_pylist(),
    )
    if (folder / "external_sids.parquet").is_file():
        codes = pq.read_table(folder / "external_sids.parquet")["codes"].to_pylist()
        dataset.external_sids = np.asarray(codes, dtype=np.int64)
        dataset.external_sid_tokens = json.loads((folder / "external_sid_tokens.json").read_text())
    validate(dataset)
    splits = Splits.from_table(pq.read_table(folder / "splits.parquet"))
    return dataset, splits, meta
