"""`gflowgr report`: one experiment folder turned into a results table and plots.

A table of means alone cannot say whether a fine-tuned model beats its SFT baseline or only
looks better by chance over a few seeds, so each row also carries a paired bootstrap test on
per-user NDCG@10 against the baseline, pooled over every seed both have. The plots show what the
table cannot: whether training converged (curves), whether GFlowNet fine-tuning moves the
recommendations away from popular items (popularity), and whether the model's log-probabilities
follow the reward (calibration). Everything is read from files the experiment runner wrote;
nothing is trained or evaluated here, and a missing optional file only skips its plot. Heavy
imports (matplotlib, and torch through the metrics module) wait until they are needed.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from gflowgr_dist.errors import DataError
from gflowgr_dist.tracking import read_metrics

logger = logging.getLogger(__name__)

# (results.json key, column header) of the table's metric columns, in order.
METRIC_COLUMNS = (
    ("recall@5", "R@5"),
    ("recall@10", "R@10"),
    ("ndcg@5", "N@5"),
    ("ndcg@10", "N@10"),
    ("coverage@10", "Cov@10"),
)
CALIBRATION = ("calibration", "calib. r")
PAIRED_METRIC = "ndcg@10"
TOP_K = 10
DASH = "–"


def build_report(
    exp_dir: Path,
    *,
    baseline: str = "sft-decoder",
    out_dir: Path | None = None,
    n_bootstrap: int = 10_000,
) -> dict[str, Any]:
    """Writes report.md, report.json and the PNG plots of one experiment folder.

    Args:
        exp_dir: the folder the experiment runner wrote (results.json, seed<s>/<model>/...).
        baseline: the model every row is compared with.
        out_dir: where to write; default `<exp_dir>/report/`.
        n_bootstrap: resamples of the paired bootstrap.

    Returns:
        {"rows": one dict per model, "markdown": the table and legend, "out_dir",
        "paths": {"markdown", "json", and each plot written: "curves", "popularity",
        "calibration"}}

    Raises:
        DataError: `exp_dir` or its results.json is missing or malformed, or `baseline` is not
            one of its models.
    """
    exp_dir = Path(exp_dir)
    results = read_results(exp_dir)
    models = list(results["cells"])
    if baseline not in models:
        raise DataError(
            f"baseline {baseline!r} is not in {str(exp_dir / 'results.json')!r}; "
            f"pass --baseline with one of: {', '.join(models)}"
        )
    seeds = _seeds(results)
    out_dir = Path(out_dir) if out_dir is not None else exp_dir / "report"
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [_row(exp_dir, results["cells"], m, baseline, seeds, n_bootstrap) for m in models]
    markdown = markdown_report(rows, baseline, n_bootstrap)
    paths = {"markdown": out_dir / "report.md", "json": out_dir / "report.json"}
    paths["markdown"].write_text(markdown + "\n")
    meta = {"exp_dir": str(exp_dir), "baseline": baseline, "seeds": seeds}
    meta |= {"n_bootstrap": n_bootstrap, "paired_metric": PAIRED_METRIC, "rows": rows}
    paths["json"].write_text(json.dumps(meta, indent=2) + "\n")
    paths |= _plots(exp_dir, models, baseline, seeds[0] if seeds else None, out_dir)
    logger.info("report: %d models -> %s", len(rows), out_dir)
    return {"rows": rows, "markdown": markdown, "out_dir": out_dir, "paths": paths}


def read_results(exp_dir: Path) -> dict[str, Any]:
    """The runner's results.json, checked for the `cells` mapping the report needs."""
    if not exp_dir.is_dir():
        raise DataError(
            f"experiment folder {str(exp_dir)!r} does not exist; run `gflowgr matrix` (or "
            "`gflowgr table`) first, or pass --dir with the run's output_dir"
        )
    path = exp_dir / "results.json"
    if not path.is_file():
        raise DataError(
            f"{str(path)!r} is missing; run `gflowgr matrix` (or `gflowgr table`) on "
            f"{str(exp_dir)!r} first"
        )
    try:
        results = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{str(path)!r} is not valid JSON ({err}); re-run the experiment") from None
    if not isinstance(results, dict) or not isinstance(results.get("cells"), dict):
        raise DataError(f"{str(path)!r} has no 'cells' mapping; re-run the experiment")
    return results


def _seeds(results: dict[str, Any]) -> list[int]:
    """The run's seeds in its own order, then any seed only a cell mentions."""
    seeds = [int(s) for s in results.get("seeds") or []]
    for by_seed in results["cells"].values():
        seeds += [int(s) for s in by_seed if int(s) not in seeds]
    return seeds


# ---- the table rows --------------------------------------------------------------------------


def _row(
    exp_dir: Path,
    cells: dict[str, dict[str, dict[str, Any]]],
    model: str,
    baseline: str,
    seeds: list[int],
    n_bootstrap: int,
) -> dict[str, Any]:
    """One model's means and stds over seeds, its NDCG@10 change and its test vs the baseline."""
    by_seed = cells[model]
    row: dict[str, Any] = {"model": model, "seeds": len(by_seed), "is_baseline": model == baseline}
    for key, _ in (*METRIC_COLUMNS, CALIBRATION):
        row[key], row[f"{key}_std"] = mean_std([cell.get(key) for cell in by_seed.values()])
    base_mean = mean_std([cell.get(PAIRED_METRIC) for cell in cells[baseline].values()])[0]
    row["ndcg@10_change_pct"] = _change_pct(row[PAIRED_METRIC], base_mean)
    test = None if model == baseline else paired_test(exp_dir, model, baseline, seeds, n_bootstrap)
    for key in ("p_value", "ci_low", "ci_high", "mean_diff", "paired_users", "paired_seeds"):
        row[key] = None if test is None else test[key]
    return row


def mean_std(values: list[Any]) -> tuple[float | None, float | None]:
    """Mean and sample std (ddof=1) of the finite numbers; std is None under two values."""
    numbers = [float(v) for v in values if _finite(v)]
    if not numbers:
        return None, None
    array = np.asarray(numbers, dtype=np.float64)
    std = float(array.std(ddof=1)) if array.size > 1 else None
    return float(array.mean()), std


def _change_pct(value: float | None, reference: float | None) -> float | None:
    if value is None or not reference:
        return None
    return 100.0 * (value - reference) / reference


def paired_test(
    exp_dir: Path, model: str, baseline: str, seeds: list[int], n_bootstrap: int
) -> dict[str, Any] | None:
    """Paired bootstrap of per-user NDCG@10, model - baseline, pooled over the shared seeds.

    Within a seed users are inner-joined; the (seed, user) pairs of all seeds are then resampled
    together. None when no seed has per-user results of both.
    """
    ours, theirs, used = [], [], []
    for seed in seeds:
        a = _per_user(exp_dir, seed, model)
        b = _per_user(exp_dir, seed, baseline)
        if a is None or b is None:
            continue
        _, ia, ib = np.intersect1d(a[0], b[0], return_indices=True)
        if ia.size == 0:
            logger.warning("report: %s and %s share no test user in seed %d", model, baseline, seed)
            continue
        ours.append(a[1][ia])
        theirs.append(b[1][ib])
        used.append(seed)
    if not used:
        return None
    from gflowgr_dist.eval.metrics import paired_bootstrap

    a_all, b_all = np.concatenate(ours), np.concatenate(theirs)
    stats = paired_bootstrap(a_all, b_all, n=n_bootstrap, seed=0)
    return {**stats, "paired_users": int(a_all.size), "paired_seeds": used}


def _per_user_path(exp_dir: Path, seed: int, model: str) -> Path:
    return exp_dir / f"seed{seed}" / model / "eval_test.parquet"


def _per_user(exp_dir: Path, seed: int, model: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(users, per-user NDCG@10) of one cell, or None when it has no usable per-user file."""
    path = _per_user_path(exp_dir, seed, model)
    if not path.is_file():
        return None
    from gflowgr_dist.eval.metrics import load_per_user

    users, _, _, per_user = load_per_user(path)
    if PAIRED_METRIC not in per_user:
        logger.warning("report: %s has no %r column; not paired", path, PAIRED_METRIC)
        return None
    return users, np.asarray(per_user[PAIRED_METRIC], dtype=np.float64)


# ---- Markdown --------------------------------------------------------------------------------


def markdown_report(rows: list[dict[str, Any]], baseline: str, n_bootstrap: int) -> str:
    """The results table, then a legend of its columns and of the test."""
    columns = list(METRIC_COLUMNS)
    if any(row[CALIBRATION[0]] is not None for row in rows):
        columns.append(CALIBRATION)
    head = ["model", *(title for _, title in columns), "seeds", "ΔN@10", "p", "95% CI ΔN@10"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["model"], *(format_mean_std(row, key) for key, _ in columns)]
        cells += [str(row["seeds"]), *_comparison(row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + _legend(baseline, n_bootstrap, CALIBRATION in columns)


def format_mean_std(row: dict[str, Any], key: str) -> str:
    """`mean ± std` with 4 decimals; the mean alone for one seed, a dash for no value."""
    mean, std = row[key], row[f"{key}_std"]
    if mean is None:
        return DASH
    return f"{mean:.4f}" if std is None else f"{mean:.4f} ± {std:.4f}"


def _comparison(row: dict[str, Any]) -> list[str]:
    """The ΔN@10, p and CI cells."""
    if row["is_baseline"]:
        return ["ref", "ref", "ref"]
    change = row["ndcg@10_change_pct"]
    delta = DASH if change is None else f"{change:+.1f}%"
    if row["p_value"] is None:
        return [delta, DASH, DASH]
    return [delta, f"{row['p_value']:.4f}", f"[{row['ci_low']:+.4f}, {row['ci_high']:+.4f}]"]


def _legend(baseline: str, n_bootstrap: int, calibration: bool) -> str:
    lines = [
        "Test metrics: Recall (R@k) and NDCG (N@k) of the top-k list, and Cov@10, the share of "
        "the catalogue that appears in some top-10 list; each is the mean ± sample std "
        "(ddof=1) over seeds (the mean alone for one seed); `seeds` counts them.",
        f"ΔN@10: relative change of the mean NDCG@10 against the baseline `{baseline}` (`ref`).",
        f"p: two-sided paired bootstrap ({n_bootstrap:,} resamples) of per-user NDCG@10, "
        f"model − `{baseline}`. In each seed both have, users are matched by id; the "
        "(seed, user) pairs of all those seeds are pooled and resampled together. "
        "95% CI: percentile interval of the mean difference. "
        f"{DASH}: no per-user results to pair.",
    ]
    if calibration:
        lines.insert(
            1,
            "calib. r: Pearson r between the model's log-probability of an item's "
            "semantic ID and the item's log reward.",
        )
    return "\n".join(f"- {line}" for line in lines)


# ---- plots -----------------------------------------------------------------------------------


def _plots(
    exp_dir: Path, models: list[str], baseline: str, seed: int | None, out_dir: Path
) -> dict[str, Path]:
    """Every plot whose inputs exist, from the first seed; {name: path written}."""
    if seed is None:
        logger.warning("report: results.json lists no seed; no plots")
        return {}
    compared = [baseline, *(m for m in models if m.startswith("gfn-") and m != baseline)]
    written = {
        "curves": plot_curves(exp_dir, models, seed, out_dir / "curves.png"),
        "popularity": plot_popularity(exp_dir, compared, seed, out_dir / "popularity.png"),
        "calibration": plot_calibration(exp_dir, compared, seed, out_dir / "calibration.png"),
    }
    return {name: path for name, path in written.items() if path is not None}


def _figure(panels: int, width: float = 5.0, height: float = 3.6) -> tuple[Any, list[Any]]:
    """A figure on the Agg canvas (no display, no pyplot state) with `panels` axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = min(3, panels)
    rows = math.ceil(panels / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(panels)]
    return fig, axes


def _is_curve_key(key: str) -> bool:
    """A `<role>/loss...` or `<role>/val_ndcg@10` training-curve key."""
    role, _, name = key.rpartition("/")
    return bool(role) and (name.startswith("loss") or name == "val_ndcg@10")


def read_curves(exp_dir: Path, models: list[str], seed: int) -> dict[str, dict[str, Any]]:
    """{curve key: {model: (steps, values)}} from each model's metrics.jsonl in one seed."""
    curves: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for model in models:
        path = exp_dir / f"seed{seed}" / model / "metrics.jsonl"
        if not path.is_file():
            continue
        try:
            records = read_metrics(path)
        except ValueError as err:
            logger.warning("report: cannot read %s (%s); its curves are skipped", path, err)
            continue
        for record in records:
            step = record.get("step")
            for key, value in record.items():
                if step is None or not _is_curve_key(key) or not _finite(value):
                    continue
                steps, values = curves.setdefault(key, {}).setdefault(model, ([], []))
                steps.append(step)
                values.append(float(value))
    return curves


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def plot_curves(exp_dir: Path, models: list[str], seed: int, path: Path) -> Path | None:
    """Loss and validation NDCG@10 against step, one panel per key, one line per model."""
    curves = read_curves(exp_dir, models, seed)
    if not curves:
        logger.warning("report: no metrics.jsonl with curves in seed %d; curves.png skipped", seed)
        return None
    keys = sorted(curves, key=lambda k: (k.endswith("val_ndcg@10"), k))
    fig, axes = _figure(len(keys))
    for ax, key in zip(axes, keys, strict=True):
        for model, (steps, values) in curves[key].items():
            ax.plot(steps, values, label=model, linewidth=1.2)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.legend(fontsize="small")
    fig.suptitle(f"training curves (seed {seed})")
    fig.savefig(path, dpi=110)
    return path


def plot_popularity(exp_dir: Path, models: list[str], seed: int, path: Path) -> Path | None:
    """Histogram of the training popularity of each model's recommended top-10 items."""
    popularity = _popularity(exp_dir / f"seed{seed}" / "data")
    if popularity is None:
        return None
    from gflowgr_dist.eval.metrics import load_per_user

    counts: dict[str, np.ndarray] = {}
    for model in models:
        file = _per_user_path(exp_dir, seed, model)
        if not file.is_file():
            continue
        items = load_per_user(file)[2][:, :TOP_K].ravel()
        items = items[(items >= 0) & (items < popularity.size)]  # drop -1 padding
        if items.size:
            counts[model] = popularity[items] + 1  # +1: never-seen items stay on a log axis
    if not counts:
        logger.warning("report: no eval_test.parquet in seed %d; popularity.png skipped", seed)
        return None
    values_all = np.concatenate(list(counts.values()))
    low, high = float(values_all.min()), float(values_all.max())
    bins = np.logspace(math.log10(low), math.log10(max(high, 2 * low)) + 1e-3, 40)
    fig, (ax,) = _figure(1, width=6.5, height=4.2)
    for model, values in counts.items():
        label = f"{model} (median {np.median(values) - 1:.0f})"
        ax.hist(values, bins=bins, histtype="step", linewidth=1.5, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("training interactions of a recommended item + 1")
    ax.set_ylabel(f"top-{TOP_K} slots")
    ax.set_title(f"popularity of recommended items (seed {seed})")
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=110)
    return path


def _popularity(data: Path) -> np.ndarray | None:
    """Training interactions per item of a prepared dataset, or None (logged) without one."""
    if not data.is_dir():
        logger.warning("report: no prepared dataset at %s; popularity.png skipped", data)
        return None
    from gflowgr_dist.data.store import read_prepared
    from gflowgr_dist.eval.evaluate import training_popularity

    try:
        dataset, _, _ = read_prepared(data)
    except DataError as err:
        logger.warning("report: %s; popularity.png skipped", err)
        return None
    return np.asarray(training_popularity(dataset))


def plot_calibration(exp_dir: Path, models: list[str], seed: int, path: Path) -> Path | None:
    """Scatter of log p(item's semantic ID) against log reward, Pearson r in each legend."""
    points = {}
    for model in models:
        pair = _calibration(exp_dir / f"seed{seed}" / model / "calibration.parquet")
        if pair is not None:
            points[model] = pair
    if not points:
        logger.warning("report: no calibration.parquet in seed %d; calibration.png skipped", seed)
        return None
    fig, (ax,) = _figure(1, width=6.0, height=4.5)
    for model, (log_p, log_r) in points.items():
        r = pearson(log_p, log_r)
        label = f"{model} (r = {DASH if r is None else f'{r:.3f}'})"
        ax.scatter(log_r, log_p, s=5, alpha=0.35, label=label, rasterized=True)
    ax.set_xlabel("log reward")
    ax.set_ylabel("log p(semantic ID)")
    ax.set_title(f"calibration (seed {seed})")
    ax.legend(fontsize="small", markerscale=3)
    fig.savefig(path, dpi=110)
    return path


def _calibration(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """The finite (log_p, log_r) pairs of one calibration.parquet, or None without any."""
    if not path.is_file():
        return None
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    missing = {"log_p", "log_r"} - set(table.column_names)
    if missing:
        logger.warning("report: %s lacks %s; not plotted", path, ", ".join(sorted(missing)))
        return None
    log_p = table["log_p"].to_numpy().astype(np.float64)
    log_r = table["log_r"].to_numpy().astype(np.float64)
    keep = np.isfinite(log_p) & np.isfinite(log_r)
    if not keep.any():
        return None
    return log_p[keep], log_r[keep]


def pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson r, or None when either side is constant or there are under two points."""
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])
