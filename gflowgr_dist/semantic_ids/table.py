"""The semantic-ID table: item <-> codes, with shared IDs kept and measured.

A semantic ID is one code per level; level l's code c is the token `<x_c>` where x is the level's
letter (`<a_12><b_7><c_30>`). Tokenisers can give two items the same codes (similar titles, a
full codebook). Two ways are supported:

- a dedup level (TIGER): one more level numbers the items that share all other codes, 0, 1, ...
  in item order, so every item gets a unique ID;
- an external index taken as is (LETTER): items may share an ID; `items_of` returns every item
  behind an ID, so decoding that ID recommends all of them.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gflowgr_dist.errors import DataError

LEVEL_LETTERS = string.ascii_lowercase


def add_dedup_level(codes: np.ndarray) -> np.ndarray:
    """Appends a level numbering items that share all codes: [I, L] -> [I, L + 1]."""
    _, group, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    group = group.reshape(-1)
    order = np.lexsort((np.arange(len(group)), group))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(len(group), dtype=np.int64)
    rank[order] = np.arange(len(group)) - np.repeat(starts, counts)
    return np.concatenate([codes, rank[:, None]], axis=1)


@dataclass
class SemanticIdTable:
    """Codes of every item and the inverse map from an ID to its items.

    Attributes:
        codes: [I, L] int64, codes[i, l] in [0, codebook_sizes[l]).
        codebook_sizes: codes available per level, [L].
        method: "rkmeans", "rqvae" or "external".
        dedup: whether the last level is a dedup level.
        level_names: token letter per level.
    """

    codes: np.ndarray
    codebook_sizes: list[int]
    method: str
    dedup: bool = False
    level_names: list[str] = field(default_factory=list)
    _items_by_sid: dict[tuple[int, ...], list[int]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.codes = np.asarray(self.codes, dtype=np.int64)
        if self.codes.ndim != 2 or self.codes.shape[1] != len(self.codebook_sizes):
            raise DataError(
                f"semantic-ID codes of shape {self.codes.shape} do not match "
                f"{len(self.codebook_sizes)} codebook sizes"
            )
        too_big = self.codes.max(axis=0) >= np.asarray(self.codebook_sizes)
        if self.codes.min() < 0 or too_big.any():
            raise DataError(f"semantic-ID codes fall outside codebook sizes {self.codebook_sizes}")
        if not self.level_names:
            self.level_names = list(LEVEL_LETTERS[: self.num_levels])
        self._items_by_sid = {}
        for item, row in enumerate(map(tuple, self.codes.tolist())):
            self._items_by_sid.setdefault(row, []).append(item)

    @property
    def num_items(self) -> int:
        return int(self.codes.shape[0])

    @property
    def num_levels(self) -> int:
        return int(self.codes.shape[1])

    def token(self, level: int, code: int) -> str:
        return f"<{self.level_names[level]}_{code}>"

    def tokens_of(self, item: int) -> list[str]:
        return [self.token(level, int(c)) for level, c in enumerate(self.codes[item])]

    def sid_string(self, item: int) -> str:
        return "".join(self.tokens_of(item))

    def items_of(self, codes: tuple[int, ...] | list[int] | np.ndarray) -> list[int]:
        """Every item behind an ID ([] when no item has it)."""
        return list(self._items_by_sid.get(tuple(int(c) for c in codes), []))

    def unique_codes(self) -> np.ndarray:
        """Distinct IDs, [S, L] int64, sorted lexicographically."""
        return np.unique(self.codes, axis=0)

    def shared_groups(self) -> list[list[int]]:
        """Groups of two or more items sharing one ID."""
        return [items for items in self._items_by_sid.values() if len(items) > 1]

    def stats(self, base_codes: np.ndarray | None = None) -> dict[str, Any]:
        """Utilisation per level, shared IDs, and (given the pre-dedup codes) collisions."""
        groups = self.shared_groups()
        out: dict[str, Any] = {
            "items": self.num_items,
            "levels": self.num_levels,
            "codebook_sizes": list(self.codebook_sizes),
            "unique_ids": len(self._items_by_sid),
            "utilisation": [
                len(np.unique(self.codes[:, level])) / size
                for level, size in enumerate(self.codebook_sizes)
            ],
            "shared_id_groups": len(groups),
            "items_sharing_an_id": sum(len(g) for g in groups),
        }
        if base_codes is not None:
            _, counts = np.unique(base_codes, axis=0, return_counts=True)
            out["before_dedup"] = {
                "unique_ids": len(counts),
                "items_in_collisions": int(counts[counts > 1].sum()),
                "collision_rate": float(counts[counts > 1].sum() / self.num_items),
                "largest_group": int(counts.max()),
            }
        return out

    def save(self, folder: Path, extra: dict[str, Any] | None = None) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        table = pa.table(
            {
                "item": np.arange(self.num_items, dtype=np.int64),
                "codes": pa.array(self.codes.tolist(), pa.list_(pa.int64())),
                "sid": pa.array([self.sid_string(i) for i in range(self.num_items)]),
            }
        )
        pq.write_table(table, folder / "sid_table.parquet")
        meta = {
            "method": self.method,
            "dedup": self.dedup,
            "codebook_sizes": self.codebook_sizes,
            "level_names": self.level_names,
            **(extra or {}),
        }
        (folder / "semantic_ids.json").write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, folder: Path) -> SemanticIdTable:
        meta_path, table_path = folder / "semantic_ids.json", folder / "sid_table.parquet"
        if not (meta_path.is_file() and table_path.is_file()):
            raise DataError(
                f"{str(folder)!r} holds no semantic-ID table; run `gflowgr tokenize` first"
            )
        meta = json.loads(meta_path.read_text())
        codes = np.asarray(pq.read_table(table_path)["codes"].to_pylist(), dtype=np.int64)
        return cls(
            codes=codes,
            codebook_sizes=meta["codebook_sizes"],
            method=meta["method"],
            dedup=meta["dedup"],
            level_names=meta["level_names"],
        )
