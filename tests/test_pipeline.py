"""The main job end to end through the CLI: synthetic in-process, ML-100K as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from gflowgr_dist.cli import main
from gflowgr_dist.semantic_ids.table import SemanticIdTable

REPO = Path(__file__).resolve().parents[1]


def test_run_synthetic_writes_every_stage(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(
        [
            "run",
            "--config",
            str(REPO / "configs/synthetic.yaml"),
            "--set",
            f"run.output_dir={out}",
            "--set",
            "logging.progress=false",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "users         200" in printed and "unique IDs    120 for 120 items" in printed
    meta = json.loads((out / "data/meta.json").read_text())
    assert meta["stats"]["users"] == 200 and meta["schema_version"] == 1
    splits = pq.read_table(out / "data/splits.parquet")
    assert splits.num_rows == meta["stats"]["interactions"] - 200  # one per item but the first
    table = SemanticIdTable.load(out / "semantic_ids")
    assert table.num_items == 120 and len(table.unique_codes()) == 120


def test_tokenize_before_prepare_is_a_clear_error(tmp_path, capsys):
    code = main(["tokenize", "--set", f"run.output_dir={tmp_path}"])
    assert code == 2
    assert "run `gflowgr prepare --config ...` first" in capsys.readouterr().err


def test_bad_data_path_fails_cleanly_and_keeps_previous_output(tmp_path, capsys):
    out = tmp_path / "out"
    base = ["--config", str(REPO / "configs/synthetic.yaml"), "--set", f"run.output_dir={out}"]
    assert main(["prepare", *base]) == 0
    before = (out / "data/interactions.parquet").read_bytes()
    code = main(
        [
            "prepare",
            *base,
            "--set",
            "data.source=letter",
            "--set",
            f"data.path={tmp_path}",
            "--set",
            "data.name=Nope",
        ]
    )
    assert code == 2
    assert "Nope.inter.json' does not exist" in capsys.readouterr().err
    assert (out / "data/interactions.parquet").read_bytes() == before


def test_ml100k_main_job_as_a_user_runs_it(tmp_path, ml100k_available):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "gflowgr_dist.cli",
            "run",
            "--config",
            "configs/ml100k.yaml",
            "--set",
            f"run.output_dir={tmp_path}",
            "--set",
            "logging.progress=false",
            # The demo's own settings, with a 1-minute SFT budget: CI checks the path, not
            # the quality (the README's numbers come from the full budget).
            "--set",
            "train.max_minutes=1",
            # ... and a fine-tuning stage of a few Ray learner steps.
            "--set",
            "run.finetune_overrides=[train.epochs=1, train.epoch_fraction=0.05, train.lr=5e-4]",
            "--set",
            "gfn.calibration_users=50",
            "--set",
            "train.max_eval_users=100",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=1500,
    )
    assert out.returncode == 0, out.stderr
    # logging.progress=false silences transformers' bars too, in Ray's workers as well.
    assert "Writing model shards" not in out.stderr and "Loading weights" not in out.stderr
    assert "users         943" in out.stdout
    assert "items         1,682" in out.stdout
    assert "interactions  100,000" in out.stdout
    assert "unique IDs    1,682 for 1,682 items" in out.stdout
    stats = json.loads((tmp_path / "semantic_ids/semantic_ids.json").read_text())["stats"]
    assert stats["levels"] == 4 and stats["shared_id_groups"] == 0
    assert "sft-decoder" in out.stdout and "pop " in out.stdout
    summary = json.loads((tmp_path / "sft-decoder/summary.json").read_text())
    assert summary["test"]["users"] == 943 and summary["test"]["valid_id_rate"] == 1.0
    # The fine-tuning stage ran on the Ray runtime the config asks for, and was tested.
    assert "== GFlowGR (tb, λ=1.0) on Ray: 2 rollout (hf) + 1 reward actor(s), S=1" in out.stdout
    tuned = json.loads((tmp_path / "gfn-tb/summary.json").read_text())
    assert tuned["train"]["steps"] > 0 and tuned["runtime"]["staleness_max"] <= 1
    assert tuned["test"]["users"] == 943 and tuned["test"]["valid_id_rate"] == 1.0
