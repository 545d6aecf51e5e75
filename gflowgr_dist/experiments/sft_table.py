"""`gflowgr table`: a results table over several seeds on one dataset, with mean ± std and
training time per epoch. Rows are popularity, SASRec (BCE, CE), SFT (decoder, T5) and the
fine-tuning methods that start from the seed's SFT decoder: GFlowGR (gfn-tb, gfn-db,
gfn-subtb), DPO, S-DPO, GRPO and continued SFT (cont-sft). A row named `<kind>+<tag>` is a
variant of `<kind>` with the overrides listed under its name (e.g. `gfn-tb+lam0.1`).

Each seed is a whole run (its own semantic IDs, initialisation and shuffles) under
`<output_dir>/seed<seed>/`; every model's per-user test results are kept as Parquet there, so
later tables can run paired bootstrap tests against any row. Models are selected on validation
NDCG@10 (early stopping); test is read once, at the end.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from gflowgr_dist.config import Config, apply_overrides, model_kind
from gflowgr_dist.data.store import read_prepared
from gflowgr_dist.errors import DataError
from gflowgr_dist.eval.evaluate import evaluate
from gflowgr_dist.eval.metrics import ranked_from_scores

logger = logging.getLogger(__name__)

TABLE_METRICS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10", "coverage@10")


def model_config(base: Config, model: str, seed: int) -> Config:
    """One (model, seed) cell's config: base + the model's overrides + its seed and folder."""
    kind = model_kind(model)
    overrides = [f"run.seed={seed}", f"run.output_dir={base.run.output_dir / f'seed{seed}'}"]
    if kind.startswith("sft-"):
        overrides.append(f"model.arch={kind.removeprefix('sft-')}")
    if kind in FINE_TUNING:
        overrides += ["model.arch=decoder", f"gfn.algorithm={FINE_TUNING[kind]}"]
    overrides += base.experiment.overrides.get(kind, []) if kind != model else []
    overrides += base.experiment.overrides.get(model, [])
    return apply_overrides(base, overrides)


# Rows that fine-tune the seed's SFT decoder, and the trainer algorithm each runs.
FINE_TUNING = {
    "gfn-tb": "tb",
    "gfn-db": "db",
    "gfn-subtb": "subtb",
    "dpo": "dpo",
    "sdpo": "sdpo",
    "grpo": "grpo",
    "cont-sft": "sft",
}


def run_cell(cfg: Config, model: str) -> dict[str, Any]:
    """Trains and tests one model; returns its test summary and training cost."""
    from gflowgr_dist.pipeline import data_dir, gflowgr, sft, sft_dir

    kind = model_kind(model)
    if kind.startswith("sft-"):
        summary = sft(cfg)
        return {**summary["test"], "seconds_per_epoch": summary["train"]["seconds_per_epoch"]}
    if kind in FINE_TUNING:
        if not (sft_dir(cfg) / "best").exists():
            raise DataError(
                f"{model} fine-tunes the seed's SFT decoder, but {sft_dir(cfg) / 'best'} does "
                "not exist; list sft-decoder before it in experiment.models"
            )
        summary = gflowgr(cfg, out=cfg.run.output_dir / model)
        return {**summary["test"], "seconds_per_epoch": summary["train"]["seconds_per_epoch"]}
    dataset, splits, _ = read_prepared(data_dir(cfg))
    out = cfg.run.output_dir / model
    if model == "pop":
        from gflowgr_dist.models.popularity import Popularity

        pop = Popularity.fit(dataset)
        score = pop.score_histories
        cost = 0.0
    else:
        from gflowgr_dist.models.sasrec import SasRecConfig
        from gflowgr_dist.train.sasrec import train_sasrec

        section = cfg.sasrec.model_dump()
        sas_cfg = SasRecConfig(**section, loss=model.removeprefix("sasrec-"), seed=cfg.run.seed)
        sasrec, fit = train_sasrec(
            dataset, splits, sas_cfg, log_dir=out, progress=cfg.logging.progress
        )
        from gflowgr_dist.train.cf import save_sasrec

        save_sasrec(sasrec, out / "model.safetensors")  # the CF model of later GFlowGR runs
        score = sasrec.scores
        cost = fit["seconds_per_epoch"]

    def rank(histories, exclude, k):
        return ranked_from_scores(score(histories), k, exclude)

    result = evaluate(
        rank, dataset, splits, "test", cfg.eval, per_user_path=out / "eval_test.parquet"
    )
    return {**result.summary, "seconds_per_epoch": cost}


def run_table(base: Config, *, run_missing: bool = True) -> dict[str, Any]:
    """Every (seed, model) cell, then the aggregate; writes results.json and table.md.

    With `run_missing=False` only finished cells are read and aggregated (a row's `seeds`
    column says how many it has).
    """
    from gflowgr_dist.pipeline import prepare, tokenize

    cells: dict[str, dict[int, dict[str, Any]]] = {m: {} for m in base.experiment.models}
    out = base.run.output_dir
    out.mkdir(parents=True, exist_ok=True)
    for seed in base.experiment.seeds:
        # Cells finished by an earlier (or a parallel) run are read back, not redone.
        todo = [m for m in base.experiment.models if not _cell_path(base, m, seed).is_file()]
        if todo and run_missing:  # deterministic per seed: re-preparing gives the same files
            seed_cfg = model_config(base, "pop", seed)
            prepare(seed_cfg)
            tokenize(seed_cfg)
        for model in base.experiment.models:
            path = _cell_path(base, model, seed)
            if path.is_file():
                cells[model][seed] = json.loads(path.read_text())
                continue
            if not run_missing:
                continue
            started = time.perf_counter()
            cell = run_cell(model_config(base, model, seed), model)
            cell["seconds_total"] = time.perf_counter() - started
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(cell, indent=2) + "\n")
            cells[model][seed] = cell
            logger.info("table: %s seed %d -> %s", model, seed, _short(cell))
    return _write(out, base, cells)


def _cell_path(base: Config, model: str, seed: int) -> Path:
    """Where one finished cell's test summary is kept (its presence marks the cell done)."""
    return base.run.output_dir / f"seed{seed}" / model / "cell.json"


def _short(summary: dict[str, Any]) -> str:
    return " ".join(f"{m}={summary[m]:.4f}" for m in TABLE_METRICS)


def _write(out: Path, base: Config, cells: dict[str, dict[int, dict[str, Any]]]) -> dict:
    aggregate = {model: aggregate_cells(by_seed) for model, by_seed in cells.items() if by_seed}
    results = {"seeds": base.experiment.seeds, "cells": cells, "aggregate": aggregate}
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "table.md").write_text(markdown_table(aggregate) + "\n")
    return results


def aggregate_cells(by_seed: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample std over seeds of every table metric and of the epoch time."""
    out: dict[str, Any] = {"seeds": len(by_seed)}
    names = [*TABLE_METRICS, "seconds_per_epoch"]
    if all("calibration" in cell for cell in by_seed.values()):
        names.append("calibration")
    for name in names:
        values = np.array([cell[name] for cell in by_seed.values()], dtype=np.float64)
        out[name] = float(values.mean())
        out[f"{name}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return out


def markdown_table(aggregate: dict[str, dict[str, Any]]) -> str:
    head = "| model | R@5 | R@10 | N@5 | N@10 | Cov@10 | s / epoch | seeds |"
    rows = [head, "|---|---|---|---|---|---|---|---|"]
    for model, agg in aggregate.items():
        cols = [f"{agg[m]:.4f} ± {agg[m + '_std']:.4f}" for m in TABLE_METRICS]
        epoch = f"{agg['seconds_per_epoch']:.1f}" if agg["seconds_per_epoch"] else "–"
        rows.append(f"| {model} | {' | '.join(cols)} | {epoch} | {agg['seeds']} |")
    return "\n".join(rows)
