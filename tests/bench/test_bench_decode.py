"""`gflowgr bench decode` on a tiny trained checkpoint: both paths agree, ratios are printed."""

from __future__ import annotations

import re

from gflowgr_dist.cli import main


def test_bench_decode_prints_side_by_side(tmp_path, capsys, synthetic_cli):
    base = synthetic_cli
    assert main(["run", *base, "--set", "train.epochs=1"]) == 0
    capsys.readouterr()
    assert main(["bench", "decode", *base, "--users", "24", "--batch-size", "8"]) == 0
    out = capsys.readouterr().out
    assert "speed-up" in out
    assert re.search(r"identical top-10 vs generate\s+100\.0%", out), out
    assert main(["evaluate", *base, "--set", "eval.ranker=exact"]) == 0
    assert "sft-decoder" in capsys.readouterr().out
    assert (tmp_path / "sft-decoder/eval_test_exact.parquet").is_file()


def test_bench_gfn_cost_prints_the_ratio(tmp_path, capsys, synthetic_cli):
    base = synthetic_cli
    assert main(["run", *base, "--set", "train.epochs=1"]) == 0
    capsys.readouterr()
    subset = ["--set", "gfn.targets_per_window=1", "--set", "train.window_stride=4"]
    assert main(["bench", "gfn-cost", *base, *subset, "--steps", "2"]) == 0
    out = capsys.readouterr().out
    ratio = float(re.search(r"GFlowGR / SFT epoch time\s+([0-9.]+)x", out).group(1))
    assert ratio > 0.5, out  # GFlowGR does strictly more work per step than SFT
    # Both GFlowGR rows, measured in the same run, each split into sampling and learner time.
    for label in ("every target", "1 target / window"):
        row = re.search(rf"{label}\)\s+([0-9.]+) s\s+\(sampling ([0-9.]+) s, learner", out)
        assert row and float(row.group(1)) >= float(row.group(2)) > 0, out
