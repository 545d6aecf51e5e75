"""`ray job submit` end to end: a Ray head started with the CLI on 127.0.0.1 (token auth on, as
Ray 2.60 starts it), the synthetic pipeline submitted as a job whose entry point is
`gflowgr train --runtime ray`, which joins that cluster through the RAY_ADDRESS the job gets.

The head runs under `ray start --block` in its own process group, so the test stops exactly the
cluster it started (`ray stop` would also stop the session's test cluster)."""

from __future__ import annotations

import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).with_name("ray")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# One token for this module's head and its clients. `ray start` reads a token but never makes
# one (on a fresh machine there is no ~/.ray/auth_token), so the test hands it one, the way a
# user's cluster gets its token from a secret.
TOKEN = secrets.token_hex(32)


def _client_env() -> dict[str, str]:
    # CLI clients default to no auth; the head started with token auth (Ray's default) needs it.
    return os.environ | {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": TOKEN,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    if not RAY.is_file():
        pytest.skip(f"the ray CLI is not installed beside {sys.executable}")
    port, dashboard = _free_port(), _free_port()
    # Every listener on a free port: the session's test cluster already holds Ray's default
    # agent ports, and a head whose job agent cannot bind never accepts a job.
    agent = [
        f"--dashboard-agent-listen-port={_free_port()}",
        f"--dashboard-agent-grpc-port={_free_port()}",
        f"--metrics-export-port={_free_port()}",
        f"--runtime-env-agent-port={_free_port()}",
    ]  # fmt: skip
    cmd = [
        str(RAY), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
        "--num-cpus=2", "--object-store-memory=200000000", "--disable-usage-stats", *agent,
    ]  # fmt: skip
    log = tmp_path_factory.mktemp("head") / "head.log"
    with log.open("w") as sink:
        head = subprocess.Popen(
            cmd, stdout=sink, stderr=subprocess.STDOUT, env=_client_env(), start_new_session=True
        )
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        # Ready once a job runs: the job server answers before the head's job agent has
        # registered, and a submission in between fails ("no available job agent").
        probe = subprocess.run(
            [str(RAY), "job", "submit", "--address", address, "--", "true"],
            capture_output=True, text=True, env=_client_env(),
        )  # fmt: skip
        if probe.returncode == 0 and "succeeded" in probe.stdout:
            break
        time.sleep(3)
    else:
        os.killpg(head.pid, signal.SIGTERM)
        pytest.fail(f"ray head ran no job within 300 s: {log.read_text()[-2000:]}")
    yield address
    os.killpg(head.pid, signal.SIGTERM)
    head.wait(timeout=60)


def test_ray_job_submit_runs_distributed_training_on_the_head(ray_head, tmp_path):
    out = tmp_path / "run"
    sets = [
        f"run.output_dir={out}", "train.epochs=1", "train.num_threads=1", "model.preset=tiny",
        "train.max_eval_users=20", "gfn.calibration_users=10", "logging.progress=false",
        "runtime.actor_cpus=0.2", "sasrec.epochs=2",
    ]  # fmt: skip
    args = " ".join(f"--set {shlex.quote(s)}" for s in sets)
    cli = f"{shlex.quote(sys.executable)} -m gflowgr_dist.cli"
    config = f"--config {REPO / 'configs/synthetic.yaml'}"
    entry = f"{cli} run {config} {args} && {cli} train --runtime ray {config} {args}"
    # Through the documented wrapper: the repository as working dir, cluster/runtime-env.yaml,
    # the token from RAY_AUTH_TOKEN.
    env = _client_env() | {"RAY_CLI": str(RAY)}
    submitted = subprocess.run(
        [
            "bash", str(REPO / "cluster/submit.sh"), "--address", ray_head,
            "--submission-id", "gflowgr-test", "--", "bash", "-c", entry,
        ],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=900,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    assert "succeeded" in submitted.stdout
    assert "== GFlowGR (tb" in submitted.stdout
    summary = json.loads((out / "gfn-tb/summary.json").read_text())
    assert summary["runtime"]["restarts"] == {"rollout-0": 0, "reward-0": 0}
    assert summary["train"]["steps"] > 0 and summary["test"]["valid_id_rate"] == 1.0
    # The guide's follow-up commands work on the finished job.
    status = subprocess.run(
        [str(RAY), "job", "status", "--address", ray_head, "gflowgr-test"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert status.returncode == 0 and "'gflowgr-test' succeeded" in status.stdout, status.stderr
    logs = subprocess.run(
        [str(RAY), "job", "logs", "--address", ray_head, "gflowgr-test"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert logs.returncode == 0 and "== GFlowGR (tb" in logs.stdout
