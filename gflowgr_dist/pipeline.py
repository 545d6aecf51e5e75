"""The stages of a run, each reading the previous stage's files under `run.output_dir`.

    prepare   raw source -> data/ (Parquet: interactions, items, users, splits; meta.json)
    tokenize  data/ -> semantic_ids/ (sid_table.parquet, semantic_ids.json)
    sft       semantic_ids/ + data/ -> sft-<arch>/ (checkpoints best/ last/, test results)
    gflowgr   sft-<arch>/best -> gfn-<algorithm>/ (GFlowGR or a baseline, test results)

`run_all` chains the stages; it is what the README's first command runs.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from gflowgr_dist.config import Config
from gflowgr_dist.errors import DataError

logger = logging.getLogger(__name__)


def data_dir(cfg: Config) -> Path:
    return cfg.run.output_dir / "data"


def sid_dir(cfg: Config) -> Path:
    return cfg.run.output_dir / "semantic_ids"


def prepare(cfg: Config) -> dict[str, Any]:
    """Loads the configured source, splits it, writes data/ and returns its statistics."""
    from gflowgr_dist.data import load_dataset
    from gflowgr_dist.data.split import leave_one_out
    from gflowgr_dist.data.stats import dataset_stats
    from gflowgr_dist.data.store import write_prepared

    start = time.perf_counter()
    dataset = load_dataset(cfg.data, cfg.run.seed)
    splits = leave_one_out(dataset, cfg.data.max_history)
    stats = dataset_stats(dataset, splits)
    meta = {
        "stats": stats,
        "split": {
            "rule": "leave-one-out in time order; ties broken by item id",
            "max_history": cfg.data.max_history,
        },
        "data_config": cfg.data.model_dump(mode="json"),
    }
    folder = write_prepared(data_dir(cfg), dataset, splits, meta)
    logger.info("prepared %s in %.1fs -> %s", dataset.name, time.perf_counter() - start, folder)
    return stats


def tokenize(cfg: Config) -> dict[str, Any]:
    """Builds semantic IDs for the prepared items, writes semantic_ids/ and returns statistics."""
    from gflowgr_dist.data.store import read_prepared
    from gflowgr_dist.semantic_ids import build_semantic_ids
    from gflowgr_dist.semantic_ids.embed import encoder_name
    from gflowgr_dist.semantic_ids.trie import SidTrie

    start = time.perf_counter()
    dataset, _, _ = read_prepared(data_dir(cfg))
    cache = cfg.run.output_dir / "cache" / f"embeddings-{encoder_name(cfg.embedding)}.parquet"
    table, stats = build_semantic_ids(
        dataset,
        cfg.semantic_ids,
        cfg.embedding,
        seed=cfg.run.seed,
        cache=cache,
        progress=cfg.logging.progress,
    )
    trie = SidTrie(table.codes, table.codebook_sizes)
    stats["trie_branching"] = trie.branching()
    stats["shared_id_examples"] = [
        {"sid": table.sid_string(g[0]), "items": [dataset.item_ids[i] for i in g]}
        for g in table.shared_groups()[:20]
    ]
    stats["seconds"] = round(time.perf_counter() - start, 2)
    encoder = None if table.method == "external" else encoder_name(cfg.embedding)
    table.save(sid_dir(cfg), extra={"encoder": encoder, "stats": stats})
    logger.info("tokenized %d items in %.1fs", table.num_items, stats["seconds"])
    return stats


def format_sid_stats(stats: dict[str, Any]) -> str:
    util = " ".join(f"{u:.0%}" for u in stats["utilisation"])
    lines = [
        f"levels        {stats['levels']} x {stats['codebook_sizes']}",
        f"unique IDs    {stats['unique_ids']:,} for {stats['items']:,} items",
        f"utilisation   {util} (per level)",
        f"trie fan-out  {stats['trie_branching']} (max children per level)",
    ]
    before = stats.get("before_dedup")
    if before:
        lines.append(
            f"collisions    {before['collision_rate']:.2%} of items before dedup "
            f"({before['items_in_collisions']} items, largest group {before['largest_group']})"
        )
    lines.append(
        f"shared IDs    {stats['shared_id_groups']} groups, {stats['items_sharing_an_id']} items"
    )
    return "\n".join(lines)


def sft_dir(cfg: Config) -> Path:
    return cfg.run.output_dir / f"sft-{cfg.model.arch}"


def sft(cfg: Config, *, resume: bool = False) -> dict[str, Any]:
    """Trains the configured backbone with SFT, then evaluates its best weights on test."""
    from gflowgr_dist.data.store import read_prepared
    from gflowgr_dist.semantic_ids.table import SemanticIdTable
    from gflowgr_dist.train import checkpoint
    from gflowgr_dist.train.sft import SftTrainer

    dataset, splits, _ = read_prepared(data_dir(cfg))
    table = SemanticIdTable.load(sid_dir(cfg))
    out = sft_dir(cfg)
    trainer = SftTrainer(cfg, dataset, splits, table, out)
    fit = trainer.fit(resume=resume)
    if (out / "best").exists():
        checkpoint.restore_weights(trainer.model, out / "best")
    result = trainer.evaluate("test", per_user_path=out / "eval_test.parquet")
    summary = {"train": fit, "test": result.summary}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def evaluate_checkpoint(cfg: Config, folder: Path, *, split: str = "test") -> dict[str, Any]:
    """Evaluates a saved checkpoint on the prepared data; writes per-user Parquet beside it."""
    from gflowgr_dist.data.store import read_prepared
    from gflowgr_dist.train import checkpoint
    from gflowgr_dist.train.sft import SftTrainer

    model, vocab, table, _ = checkpoint.load_model(folder)
    dataset, splits, _ = read_prepared(data_dir(cfg))
    trainer = SftTrainer(cfg, dataset, splits, table, Path(folder).parent, model=model, vocab=vocab)
    path = Path(folder).parent / f"eval_{split}_{cfg.eval.ranker}.parquet"
    return trainer.evaluate(split, per_user_path=path).summary


def run_all(cfg: Config) -> dict[str, Any]:
    """The main job: every stage in order; returns each stage's statistics by name."""
    return {"data": prepare(cfg), "semantic_ids": tokenize(cfg), "sft": sft(cfg)}


def gfn_dir(cfg: Config) -> Path:
    return cfg.run.output_dir / f"gfn-{cfg.gfn.algorithm}"


def needs_cf(cfg: Config) -> bool:
    """Whether the run reads the collaborative model (CF curriculum or CF reward)."""
    sampler = cfg.gfn.sampler
    uses_band = sampler.weights_start.get("cf", 0) > 0 or sampler.weights_end.get("cf", 0) > 0
    return cfg.gfn.algorithm != "sft" and (uses_band or cfg.gfn.reward.score == "cf")


def gflowgr(cfg: Config, *, out: Path | None = None, resume: bool = False) -> dict[str, Any]:
    """GFlowGR (or a baseline) fine-tuning from the SFT checkpoint, then test evaluation.

    The start is `gfn.init_checkpoint`, else this run's `sft-<arch>/best` when it exists, else
    a fresh backbone (joint training from scratch).
    """
    from gflowgr_dist.data.store import read_prepared
    from gflowgr_dist.semantic_ids.table import SemanticIdTable
    from gflowgr_dist.train import checkpoint
    from gflowgr_dist.train.cf import load_or_train_cf
    from gflowgr_dist.train.gflowgr import GflowgrTrainer

    dataset, splits, _ = read_prepared(data_dir(cfg))
    out = Path(out or gfn_dir(cfg))
    init = cfg.gfn.init_checkpoint or sft_dir(cfg) / "best"
    model = vocab = None
    if Path(init).exists():
        model, vocab, table, _ = checkpoint.load_model(init)
        logger.info("gfn: starting from %s", init)
    elif cfg.gfn.init_checkpoint is not None:
        raise DataError(
            f"gfn.init_checkpoint={str(init)!r} does not exist; run `gflowgr sft` first or "
            "unset it to train jointly from scratch"
        )
    else:
        table = SemanticIdTable.load(sid_dir(cfg))
        logger.info("gfn: no SFT checkpoint at %s; training jointly from scratch", init)
    cf_model = load_or_train_cf(cfg, dataset, splits) if needs_cf(cfg) else None
    trainer = GflowgrTrainer(
        cfg, dataset, splits, table, out, model=model, vocab=vocab, cf_model=cf_model
    )
    fit = trainer.fit(resume=resume)
    if (out / "best").exists():
        checkpoint.restore_weights(trainer.model, out / "best")
    result = trainer.evaluate("test", per_user_path=out / "eval_test.parquet")
    calibration = trainer.calibration(out / "calibration.parquet")["pearson"]
    summary = {"train": fit, "test": result.summary | {"calibration": calibration}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
