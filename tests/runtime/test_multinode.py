"""Several Ray nodes on one machine (`ray.cluster_utils.Cluster`, custom resources standing in for
GPUs): every role lands on the kind of node the config names, and the run survives losing the
worker node that holds a rollout actor (restart elsewhere, re-sync, re-issue; each example
consumed once). Runs tests/runtime/multinode_run.py in a subprocess: this process already
belongs to the session's Ray cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("multinode_run.py")


@pytest.mark.parametrize("placement", ["resources", "spread"])
def test_roles_follow_the_config_and_survive_losing_a_rollout_node(tmp_path, placement):
    env = os.environ | {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "run"), placement],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.startswith("MULTINODE ")]
    assert done.returncode == 0 and lines, done.stdout[-2000:] + done.stderr[-4000:]
    summary = json.loads(lines[-1].removeprefix("MULTINODE "))
    before, after = summary["before"], summary["after"]
    assert before["rollout-0"] in ("rollout-a", "rollout-b")
    assert before["reward-0"] == "reward"
    # rollout-0's node was removed: it came back on the other rollout node, nowhere else.
    assert after["rollout-0"] in ("rollout-a", "rollout-b")
    assert after["rollout-0"] != before["rollout-0"]
    assert after["reward-0"] == "reward"
    assert summary["restarts"]["rollout-0"] >= 1
    assert summary["consumed_once"] and summary["finite"] and summary["steps"] >= 4
