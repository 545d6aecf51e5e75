"""The driver SIGKILLed at a random learner step, then `--resume`: the run continues from the
last complete checkpoint with the exact training cursor and ends where an uninterrupted run
ends (the same final weights, every example consumed exactly once).

The driver runs in its own process group (its own Ray cluster too), so the kill takes the
driver and every Ray process it started, as a machine losing the job would.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

HELPER = Path(__file__).with_name("driver_kill_run.py")
ENV = os.environ | {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def _result(out: Path, mode: str) -> dict:
    done = subprocess.run(
        [sys.executable, str(HELPER), str(out), mode],
        capture_output=True, text=True, env=ENV, timeout=900,
    )  # fmt: skip
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stdout[-2000:] + done.stderr[-4000:]
    return json.loads(lines[-1].removeprefix("RESULT "))


def _kill_at_random_step(out: Path, rng: random.Random, steps: int) -> int:
    target = rng.randint(2, steps - 2)
    proc = subprocess.Popen(
        [sys.executable, str(HELPER), str(out), "run"], stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True, env=ENV, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 600
    for line in proc.stdout:
        if line.strip() == f"STEP {target}":
            os.killpg(proc.pid, signal.SIGKILL)  # mid-step: maybe mid-checkpoint
            break
        assert time.monotonic() < deadline, "the run never reached the chosen step"
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"the run ended before step {target}"
    return target


@pytest.mark.slow
def test_sigkilled_driver_resumes_to_the_uninterrupted_result(tmp_path):
    reference = _result(tmp_path / "ref", "reference")
    steps = len(reference["losses"])
    assert steps >= 6
    killed_at = _kill_at_random_step(tmp_path / "kill", random.Random(11), steps)
    resumed = _result(tmp_path / "kill", "resume")
    print(f"\nkilled at step {killed_at} of {steps}; resumed for {len(resumed['losses'])} steps")
    # The resumed run did the steps after the last complete checkpoint (step killed_at or the
    # one before, if the kill fell inside that checkpoint's write) ...
    assert steps - killed_at <= len(resumed["losses"]) <= steps - killed_at + 1
    assert resumed["losses"] == reference["losses"][steps - len(resumed["losses"]) :]
    # ... consumed each example exactly once across the kill, and ended in the same state.
    assert sorted(resumed["ids"]) == reference["ids"]
    assert resumed["digest"] == reference["digest"]
