"""configs/: every preset validates through the CLI's --dry-run, and one that asks for more than
the cluster it declares fails before any work, naming what was asked and what was declared."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
PRESETS = ["ml100k", "beauty-letter", "local-multigpu", "cluster", "synthetic"]


def _gflowgr(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gflowgr_dist.cli", *args], capture_output=True, text=True, cwd=REPO
    )


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_validates_with_dry_run(preset):
    done = _gflowgr("run", "--config", f"configs/{preset}.yaml", "--dry-run")
    assert done.returncode == 0, done.stderr
    resolved = yaml.safe_load(done.stdout)
    assert resolved["run"]["name"]
    if preset in ("local-multigpu", "cluster"):
        runtime = resolved["runtime"]
        assert runtime["enabled"] and runtime["engine"] == "vllm" and runtime["nodes"]


@pytest.mark.parametrize(
    ("preset", "override", "words"),
    [
        # 10 engines x half a GPU on a box of 4 GPUs.
        (
            "local-multigpu",
            "runtime.num_rollout_actors=10",
            ["GPU=5", "rollout 10 x 0.5", "declares GPU=4", "runtime.num_rollout_actors=10"],
        ),
        # Two engines per GPU with the default memory share: both would take 90%.
        (
            "local-multigpu",
            "runtime.vllm_memory_fraction=0.9",
            ["vllm_memory_fraction=0.9", "rollout_gpus=0.5", "<= 0.5"],
        ),
        # A reward actor pinned to a node kind with room for 8.
        ("cluster", "runtime.num_reward_actors=9", ["reward_node=9", "declares reward_node=8"]),
        # One actor bigger than every node.
        ("cluster", "runtime.actor_cpus=40", ["CPU=960", "declares CPU=272"]),
    ],
)
def test_preset_asking_beyond_its_declared_nodes_fails_naming_both(preset, override, words):
    done = _gflowgr("run", "--config", f"configs/{preset}.yaml", "--set", override, "--dry-run")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("gflowgr run: error: invalid config (1 problem)")
    for word in words:
        assert word in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
