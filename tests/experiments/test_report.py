"""`gflowgr report` on a hand-built experiment folder whose numbers are known in advance."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gflowgr_dist.cli import main
from gflowgr_dist.data.split import leave_one_out
from gflowgr_dist.data.store import write_prepared
from gflowgr_dist.errors import DataError
from gflowgr_dist.eval.metrics import save_per_user
from gflowgr_dist.experiments.report import build_report

SEEDS = (1, 2)
BASE = "sft-decoder"
METRICS = ("recall@5", "recall@10", "ndcg@5", "ndcg@10", "coverage@10")
USERS = 50
ITEMS = 40  # the synthetic fixture's catalogue
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
N_BOOT = 500


def _cells(rng: np.random.Generator) -> dict[str, dict[str, dict[str, float]]]:
    """Test summaries: random per (model, seed); only some cells have a calibration."""
    cells: dict[str, dict[str, dict[str, float]]] = {}
    for model in (BASE, "gfn-tb", "gfn-db", "pop"):
        cells[model] = {}
        for seed in SEEDS:
            cell = {m: float(rng.uniform(0.01, 0.3)) for m in METRICS}
            if model == "gfn-tb":
                cell["calibration"] = float(rng.uniform(0.2, 0.9))
            cells[model][str(seed)] = cell
    return cells


def _per_user(folder: Path, users: np.ndarray, ndcg: np.ndarray, rng) -> None:
    ranked = rng.integers(0, ITEMS, size=(users.size, 10))
    ranked[::7, 8:] = -1  # padding, as short lists have
    per_user = {"ndcg@10": ndcg, "recall@10": (ndcg > 0).astype(np.float64)}
    save_per_user(folder / "eval_test.parquet", users, users + 1000, ranked, per_user)


def _metrics_jsonl(path: Path, role: str) -> None:
    records = []
    for step in range(0, 50, 10):
        record = {"step": step, "time": step * 0.5, f"{role}/loss": 2.0 / (step + 1)}
        if step % 20 == 0:  # records lack some keys
            record[f"{role}/val_ndcg@10"] = 0.01 * step
        records.append(json.dumps(record))
    path.write_text("\n".join(records) + "\n")


def _calibration(path: Path, rng) -> None:
    log_r = rng.normal(size=80)
    log_p = 0.8 * log_r + rng.normal(scale=0.5, size=80)
    columns = {"user": np.arange(80), "item": np.arange(80) % ITEMS, "log_p": log_p}
    pq.write_table(pa.table({**columns, "log_r": log_r}), path)


@pytest.fixture
def exp(tmp_path, synthetic) -> dict:
    """2 seeds; gfn-tb beats the baseline for every user, gfn-db equals it, pop has no files."""
    rng = np.random.default_rng(7)
    cells = _cells(rng)
    folder = tmp_path / "exp"
    folder.mkdir()
    results = {"seeds": list(SEEDS), "cells": cells, "aggregate": {}}
    (folder / "results.json").write_text(json.dumps(results))
    a_all, b_all = [], []
    for seed in SEEDS:
        users = np.arange(USERS) + 10 * seed
        base = rng.uniform(0.0, 0.5, USERS)
        _per_user(folder / f"seed{seed}" / BASE, users, base, rng)
        _per_user(folder / f"seed{seed}" / "gfn-db", users[::-1], base[::-1].copy(), rng)
        # gfn-tb: shuffled, and seed 2 lacks 5 users: the test pairs by user id, not by row.
        keep = USERS if seed == 1 else USERS - 5
        better = base + rng.uniform(0.01, 0.2, USERS)
        order = rng.permutation(keep)
        _per_user(folder / f"seed{seed}" / "gfn-tb", users[order], better[order], rng)
        a_all.append(better[:keep])
        b_all.append(base[:keep])
    first = folder / f"seed{SEEDS[0]}"
    write_prepared(first / "data", synthetic, leave_one_out(synthetic, 5), {})
    _metrics_jsonl(first / BASE / "metrics.jsonl", "sft")
    _metrics_jsonl(first / "gfn-tb" / "metrics.jsonl", "gfn")
    _calibration(first / BASE / "calibration.parquet", rng)
    _calibration(first / "gfn-tb" / "calibration.parquet", rng)
    diff = np.concatenate(a_all) - np.concatenate(b_all)
    return {"dir": folder, "cells": cells, "diff": diff}


def _table_rows(markdown: str) -> dict[str, list[str]]:
    """{model: its cells} of the Markdown table, plus the header under "model"."""
    rows = {}
    for line in markdown.splitlines():
        if line.startswith("| "):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


def _expected(values: list[float]) -> str:
    array = np.array(values)
    return f"{array.mean():.4f} ± {np.std(array, ddof=1):.4f}"


def test_table_numbers_match_numpy(exp, tmp_path):
    out = tmp_path / "out"
    report = build_report(exp["dir"], out_dir=out, n_bootstrap=N_BOOT)
    markdown = (out / "report.md").read_text()
    rows = _table_rows(markdown)
    header = rows["model"]
    assert header[:6] == ["R@5", "R@10", "N@5", "N@10", "Cov@10", "calib. r"]
    assert header[6:] == ["seeds", "ΔN@10", "p", "95% CI ΔN@10"]
    for model, by_seed in exp["cells"].items():
        for col, metric in enumerate(METRICS):
            assert rows[model][col] == _expected([by_seed[str(s)][metric] for s in SEEDS])
        assert rows[model][6] == "2"
    gfn_tb = exp["cells"]["gfn-tb"]
    assert rows["gfn-tb"][5] == _expected([gfn_tb[str(s)]["calibration"] for s in SEEDS])
    assert rows["pop"][5] == "–"
    ndcg = {m: np.mean([c[str(s)]["ndcg@10"] for s in SEEDS]) for m, c in exp["cells"].items()}
    change = 100 * (ndcg["gfn-db"] - ndcg[BASE]) / ndcg[BASE]
    assert rows["gfn-db"][7] == f"{change:+.1f}%"
    assert "paired bootstrap" in markdown and "ddof=1" in markdown  # the legend
    saved = json.loads((out / "report.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(report["rows"]))
    assert {row["model"] for row in saved["rows"]} == set(exp["cells"])


def test_single_seed_shows_the_mean_alone(exp, tmp_path):
    results = json.loads((exp["dir"] / "results.json").read_text())
    results["cells"]["pop"] = {"1": results["cells"]["pop"]["1"]}
    (exp["dir"] / "results.json").write_text(json.dumps(results))
    rows = _table_rows(build_report(exp["dir"], n_bootstrap=N_BOOT)["markdown"])
    assert rows["pop"][3] == f"{results['cells']['pop']['1']['ndcg@10']:.4f}"
    assert rows["pop"][6] == "1"
    assert (exp["dir"] / "report" / "report.md").is_file()  # the default out_dir


def test_p_values(exp, tmp_path):
    report = build_report(exp["dir"], out_dir=tmp_path / "out", n_bootstrap=N_BOOT)
    by_model = {row["model"]: row for row in report["rows"]}
    better = by_model["gfn-tb"]
    assert better["p_value"] == pytest.approx(1 / (N_BOOT + 1))
    assert better["mean_diff"] == pytest.approx(exp["diff"].mean())
    assert better["paired_users"] == exp["diff"].size == 2 * USERS - 5
    assert better["paired_seeds"] == list(SEEDS)
    assert 0 < better["ci_low"] < better["mean_diff"] < better["ci_high"]
    same = by_model["gfn-db"]
    assert same["p_value"] == 1.0 and same["mean_diff"] == 0.0
    assert same["ci_low"] == same["ci_high"] == 0.0
    assert by_model["pop"]["p_value"] is None
    rows = _table_rows(report["markdown"])
    assert rows[BASE][7:] == ["ref", "ref", "ref"]
    assert rows["pop"][8:] == ["–", "–"]
    assert rows["gfn-db"][8:] == ["1.0000", "[+0.0000, +0.0000]"]
    assert rows["gfn-tb"][8] == f"{1 / (N_BOOT + 1):.4f}"


def test_plots_are_png(exp, tmp_path):
    out = tmp_path / "out"
    paths = build_report(exp["dir"], out_dir=out, n_bootstrap=N_BOOT)["paths"]
    for name in ("curves", "popularity", "calibration"):
        assert paths[name] == out / f"{name}.png"
        assert paths[name].read_bytes()[:8] == PNG_MAGIC


def test_missing_optional_files_are_skipped(exp, tmp_path, caplog):
    first = exp["dir"] / f"seed{SEEDS[0]}"
    for path in first.glob("*/*"):
        if path.name in ("metrics.jsonl", "calibration.parquet"):
            path.unlink()
    (first / "data").rename(tmp_path / "moved-data")
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="gflowgr_dist.experiments.report"):
        report = build_report(exp["dir"], out_dir=out, n_bootstrap=N_BOOT)
    assert set(report["paths"]) == {"markdown", "json"}
    assert not list(out.glob("*.png"))
    for skipped in ("curves.png", "popularity.png", "calibration.png"):
        assert skipped in caplog.text


def test_bad_data_folder_skips_only_popularity(exp, tmp_path, caplog):
    (exp["dir"] / f"seed{SEEDS[0]}" / "data" / "meta.json").unlink()
    with caplog.at_level(logging.WARNING, logger="gflowgr_dist.experiments.report"):
        paths = build_report(exp["dir"], out_dir=tmp_path / "out", n_bootstrap=N_BOOT)["paths"]
    assert "popularity" not in paths and "curves" in paths and "calibration" in paths
    assert "meta.json" in caplog.text


def test_bad_input_raises_data_error(exp, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=r"nowhere.*does not exist.*gflowgr matrix"):
        build_report(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"empty/results\.json.*missing.*gflowgr matrix"):
        build_report(empty)
    with pytest.raises(DataError, match=r"'sasrec-ce' is not in .*sft-decoder, gfn-tb, gfn-db"):
        build_report(exp["dir"], baseline="sasrec-ce")
    (empty / "results.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        build_report(empty)


def test_cli_prints_the_table(exp, capsys):
    assert main(["report", "--dir", str(exp["dir"]), "--set", "logging.level=WARNING"]) == 0
    printed = capsys.readouterr().out
    assert "| gfn-tb |" in printed and "| sft-decoder |" in printed
    assert str(exp["dir"] / "report") in printed and "curves.png" in printed
    assert (exp["dir"] / "report" / "report.md").is_file()


def test_cli_reports_bad_input(exp, tmp_path, capsys):
    assert main(["report", "--dir", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert main(["report", "--dir", str(exp["dir"]), "--baseline", "dpo"]) == 2
    assert "'dpo' is not in" in capsys.readouterr().err
