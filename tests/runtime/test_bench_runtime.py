"""`gflowgr bench runtime` on a tiny checkpoint, against the session's Ray cluster: every mode
runs the same number of learner steps and the table and ratios it prints are consistent."""

from __future__ import annotations

import re

from gflowgr_dist.cli import main


def test_bench_runtime_prints_every_mode_side_by_side(tmp_path, capsys, ray_cluster, synthetic_cli):
    small = ["--set", "train.batch_size=16", "--set", "runtime.actor_cpus=0.1"]
    base = [*synthetic_cli, *small]
    assert main(["run", *base, "--set", "train.epochs=1", "--set", "run.finetune=false"]) == 0
    capsys.readouterr()
    lora = ["--set", "gfn.lora_rank=4"]  # adds the row that ships merged weights
    assert main(["bench", "runtime", *base, *lora, "--steps", "2"]) == 0
    out = capsys.readouterr().out
    rows = {}
    for mode in ("local", "sync", "async", "sync-merged"):
        number = r"\s+([0-9.]+)"
        found = re.search(rf"^{mode}{number * 7}\s+(\d+)$", out, re.M)
        assert found, out
        rows[mode] = [float(x) for x in found.groups()]
    assert 0 < rows["sync"][5] < rows["sync-merged"][5]  # MB per sync: adapter < merged
    for mode, (traj_s, idle, learn_s, _, sync_pct, _, _, tok_s) in rows.items():
        assert traj_s > 0 and tok_s > 0 and learn_s > 0, (mode, out)
        assert 0 <= idle <= 100 and 0 <= sync_pct <= 100, (mode, out)
    assert rows["local"][1] == 0.0 and rows["local"][4] == 0.0  # one process: no wait, no sync
    ratio = float(re.search(r"async / sync trajectories/s\s+([0-9.]+)x", out).group(1))
    assert abs(ratio - rows["async"][0] / rows["sync"][0]) < 0.01 * ratio + 0.01, out
    assert re.search(r"buffer: batched entries [0-9,]+ traj/s, Ray queue per trajectory", out)
