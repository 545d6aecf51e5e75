"""The baseline table end to end on synthetic data: every cell runs, aggregates are right."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gflowgr_dist.cli import main
from gflowgr_dist.config import load_config
from gflowgr_dist.errors import ConfigError
from gflowgr_dist.experiments.sft_table import aggregate_cells, markdown_table, model_config

REPO = Path(__file__).resolve().parents[2]


def test_table_runs_every_cell(tmp_path, capsys):
    sets = [
        f"run.output_dir={tmp_path}",
        "logging.progress=false",
        "experiment.seeds=[1, 2]",
        "experiment.models=[pop, sasrec-ce, sft-decoder]",
        "sasrec.epochs=3",
        "train.epochs=2",
        "model.preset=tiny",
        "data.max_history=8",
    ]
    args = ["--config", str(REPO / "configs/synthetic.yaml")]
    args += [part for value in sets for part in ("--set", value)]
    assert main(["table", *args]) == 0
    printed = capsys.readouterr().out
    assert "| sft-decoder |" in printed and "| 2 |" in printed
    results = json.loads((tmp_path / "results.json").read_text())
    for model in ("pop", "sasrec-ce", "sft-decoder"):
        cells = results["cells"][model]
        assert set(cells) == {"1", "2"}
        values = [cells[s]["ndcg@10"] for s in ("1", "2")]
        assert results["aggregate"][model]["ndcg@10"] == pytest.approx(np.mean(values))
    assert (tmp_path / "seed1/sasrec-ce/eval_test.parquet").is_file()
    assert (tmp_path / "seed2/sft-decoder/eval_test.parquet").is_file()

    # A second run finds every cell done and only re-aggregates (the table resumes).
    cell = tmp_path / "seed2/sft-decoder/cell.json"
    stamp = cell.stat().st_mtime_ns
    assert main(["table", *args]) == 0
    assert cell.stat().st_mtime_ns == stamp
    assert json.loads((tmp_path / "results.json").read_text())["aggregate"] == results["aggregate"]

    # Aggregating a seed with no finished cells runs nothing and counts only finished seeds.
    assert main(["table", *args, "--set", "experiment.seeds=[1, 2, 3]", "--aggregate-only"]) == 0
    assert not (tmp_path / "seed3").exists()
    partial = json.loads((tmp_path / "results.json").read_text())["aggregate"]
    assert partial["pop"]["seeds"] == 2


def test_aggregate_and_markdown():
    cells = {
        1: {
            "recall@5": 0.1,
            "recall@10": 0.2,
            "ndcg@5": 0.05,
            "ndcg@10": 0.08,
            "coverage@10": 0.5,
            "seconds_per_epoch": 2.0,
        },
        2: {
            "recall@5": 0.3,
            "recall@10": 0.4,
            "ndcg@5": 0.15,
            "ndcg@10": 0.12,
            "coverage@10": 0.7,
            "seconds_per_epoch": 4.0,
        },
    }
    agg = aggregate_cells(cells)
    assert agg["recall@5"] == pytest.approx(0.2)
    assert agg["recall@5_std"] == pytest.approx(np.std([0.1, 0.3], ddof=1))
    assert "| m | 0.2000 ± 0.1414 |" in markdown_table({"m": agg})


def test_model_overrides_apply_per_cell(tmp_path):
    base = load_config(
        overrides=[
            f"run.output_dir={tmp_path}",
            "experiment.overrides={sft-t5: [train.lr=0.01]}",
        ]
    )
    cell = model_config(base, "sft-t5", 7)
    assert cell.model.arch == "t5" and cell.train.lr == 0.01 and cell.run.seed == 7
    assert cell.run.output_dir == tmp_path / "seed7"
    assert model_config(base, "sft-decoder", 7).train.lr == base.train.lr
    with pytest.raises(ConfigError, match="unknown model"):
        load_config(overrides=["experiment.models=[gru4rec]"])


def test_matrix_variant_inherits_its_kind_and_adds_its_own_overrides():
    from gflowgr_dist.config import load_config
    from gflowgr_dist.experiments.sft_table import model_config

    files = ["configs/ml100k.yaml", "configs/ml100k-table.yaml", "configs/ml100k-gfn.yaml"]
    base = load_config(files)
    tb = model_config(base, "gfn-tb", 43)
    variant = model_config(base, "gfn-tb+random", 43)
    assert (tb.gfn.algorithm, variant.gfn.algorithm) == ("tb", "tb")
    assert variant.train.epoch_fraction == tb.train.epoch_fraction == 0.5
    assert variant.gfn.sampler.weights_start == {"random": 1.0}
    assert tb.gfn.sampler.weights_start["cf"] > 0
    assert str(variant.run.output_dir).endswith("seed43") and variant.run.seed == 43
    assert model_config(base, "sdpo", 42).gfn.algorithm == "sdpo"
    assert model_config(base, "sft-decoder", 42).train.epochs == 4
