"""Residual k-means, the dedup level, the ID table and the text encoders."""

from __future__ import annotations

import numpy as np
import pytest

from gflowgr_dist.config import EmbeddingConfig, SemanticIdConfig
from gflowgr_dist.semantic_ids import build_semantic_ids
from gflowgr_dist.semantic_ids.embed import embed_texts, hashing_embed
from gflowgr_dist.semantic_ids.rkmeans import residual_kmeans
from gflowgr_dist.semantic_ids.table import SemanticIdTable, add_dedup_level


def _clusters(seed=0, k=5, per=12, dim=16):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 6, (k, dim))
    x = np.concatenate([c + rng.normal(0, 0.5, (per, dim)) for c in centres])
    return x, np.repeat(np.arange(k), per)


def test_residual_kmeans_is_deterministic_and_in_range():
    x, _ = _clusters()
    a = residual_kmeans(x, [5, 4, 3], iters=20, seed=1)
    b = residual_kmeans(x, [5, 4, 3], iters=20, seed=1)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (60, 3) and a.dtype == np.int64
    assert (a.max(axis=0) < [5, 4, 3]).all() and a.min() >= 0


def test_similar_items_share_prefixes():
    x, cluster = _clusters()
    codes = residual_kmeans(x, [5, 4], iters=30, seed=0)
    same = cluster[:, None] == cluster[None, :]
    share = codes[:, None, 0] == codes[None, :, 0]
    assert share[same].mean() > 0.95 and share[~same].mean() < 0.05


def test_dedup_level_makes_ids_unique_and_keeps_shared_prefix():
    codes = np.array([[1, 2], [1, 2], [0, 0], [1, 2], [0, 1]])
    dedup = add_dedup_level(codes)
    assert dedup[:, 2].tolist() == [0, 1, 0, 2, 0]  # numbered in item order within a group
    assert len(np.unique(dedup, axis=0)) == 5
    np.testing.assert_array_equal(dedup[:, :2], codes)


def test_table_stats_and_shared_ids():
    table = SemanticIdTable(np.array([[1, 0], [1, 0], [0, 1]]), [2, 2], "external")
    assert table.items_of((1, 0)) == [0, 1] and table.items_of([0, 0]) == []
    assert table.sid_string(2) == "<a_0><b_1>"
    stats = table.stats(base_codes=table.codes)
    assert stats["shared_id_groups"] == 1 and stats["items_sharing_an_id"] == 2
    assert stats["before_dedup"]["collision_rate"] == pytest.approx(2 / 3)
    assert stats["utilisation"] == [1.0, 1.0]


def test_table_save_load(tmp_path):
    table = SemanticIdTable(np.array([[1, 0, 0], [0, 1, 0]]), [2, 2, 1], "rkmeans", dedup=True)
    table.save(tmp_path)
    back = SemanticIdTable.load(tmp_path)
    np.testing.assert_array_equal(back.codes, table.codes)
    assert back.codebook_sizes == [2, 2, 1] and back.dedup


def test_hashing_encoder_is_deterministic_and_text_aware():
    texts = ["red space rocket", "blue space rocket", "flour recipe bake"]
    a, b = hashing_embed(texts, 64), hashing_embed(texts, 64)
    np.testing.assert_array_equal(a, b)
    sim = a @ a.T
    assert sim[0, 1] > sim[0, 2] + 0.2
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)


def test_embedding_cache_encodes_only_new_texts(tmp_path, monkeypatch):
    cfg = EmbeddingConfig(encoder="hashing", dim=32)
    cache = tmp_path / "emb.parquet"
    first = embed_texts(["a b", "c d"], cfg, cache=cache)
    calls = []
    import gflowgr_dist.semantic_ids.embed as embed

    real = embed.hashing_embed
    monkeypatch.setattr(embed, "hashing_embed", lambda t, d: calls.append(list(t)) or real(t, d))
    second = embed_texts(["c d", "e f", "a b"], cfg, cache=cache)
    assert calls == [["e f"]]
    np.testing.assert_array_equal(second[[0, 2]], first[[1, 0]])


def test_build_on_synthetic_gives_unique_ids(synthetic):
    cfg = SemanticIdConfig(codebook_sizes=[4, 4], dedup=True)
    table, stats = build_semantic_ids(
        synthetic, cfg, EmbeddingConfig(encoder="hashing", dim=32), seed=0
    )
    assert stats["unique_ids"] == synthetic.num_items and stats["shared_id_groups"] == 0
    assert table.codebook_sizes[:2] == [4, 4]
    assert table.codebook_sizes[2] == stats["before_dedup"]["largest_group"]


@pytest.mark.slow
def test_minilm_encoder_puts_similar_titles_close():
    texts = [
        "Die Hard (1988) | Action, Thriller",
        "Speed (1994) | Action, Thriller",
        "Toy Story (1995) | Animation, Children's, Comedy",
    ]
    v = embed_texts(texts, EmbeddingConfig(encoder="minilm"), cache=None)
    assert v.shape == (3, 384)
    sim = v @ v.T
    assert sim[0, 1] > sim[0, 2] + 0.1  # two action thrillers closer than to a cartoon
