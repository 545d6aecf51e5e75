"""Local mode lets no one in: Ray started as `gflowgr` starts it on a laptop listens only on
loopback, and a client without the cluster's token is refused.

The Ray here is started in a subprocess with every RAY_* variable removed from its environment
(a user's shell sets none), so the test checks what `ensure_ray` itself guarantees."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HELPER = Path(__file__).with_name("local_ray_run.py")


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return address.is_loopback or bool(mapped and mapped.is_loopback)


@pytest.fixture(scope="module", params=["cli", "ray-imported-first"])
def local_ray(request):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    flags = ["--import-ray-first"] if request.param == "ray-imported-first" else []
    proc = subprocess.Popen(
        [sys.executable, str(HELPER), *flags], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True, env=env | {"RAY_USAGE_STATS_ENABLED": "0"},
    )  # fmt: skip
    line = ""
    for line in proc.stdout:
        if line.startswith("LISTEN "):
            break
    assert line.startswith("LISTEN "), "the helper did not start Ray"
    yield json.loads(line.removeprefix("LISTEN ")) | {"variant": request.param}
    proc.stdin.write("\n")
    proc.stdin.flush()
    proc.wait(timeout=120)


def test_every_ray_listener_is_on_loopback(local_ray):
    sockets = local_ray["sockets"]
    names = {name for name, _, _ in sockets}
    assert {"gcs_server", "raylet"} <= names, sockets  # the check saw Ray's own servers
    exposed = [s for s in sockets if not _loopback(s[1])]
    assert exposed == [], f"listening beyond loopback: {exposed}"
    assert local_ray["gcs"].startswith("127.0.0.1:")


def _connect(gcs: str, env: dict[str, str]) -> str:
    """Output of a client process that tries to join `gcs` ("" if it hung, being refused).

    The client resolves its own address to loopback as the cluster does (else it could not
    reach a cluster that listens on loopback only, token or not).
    """
    env = env | {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    code = (
        "import ray\n"
        f"ray.init(address={gcs!r}, log_to_driver=False)\n"
        "print('CONNECTED', ray.cluster_resources())\n"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=30
        )
    except subprocess.TimeoutExpired:  # Ray's client keeps retrying a refused handshake
        return ""
    return done.stdout


@pytest.mark.parametrize(
    "client_env",
    [
        {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64},  # a wrong token
        {"RAY_AUTH_MODE": "disabled"},  # no token at all
    ],
    ids=["wrong-token", "no-token"],
)
def test_a_client_without_the_token_is_refused(local_ray, client_env, tmp_path):
    if local_ray["variant"] != "cli":
        pytest.skip("token auth does not depend on how Ray was imported")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env |= client_env | {"HOME": str(tmp_path)}  # no ~/.ray/auth_token to fall back on
    assert "CONNECTED" not in _connect(local_ray["gcs"], env)


def test_a_client_with_the_token_joins(local_ray):
    # The control for the refusals above: the same client with the cluster's token (Ray keeps
    # it in ~/.ray/auth_token) gets in.
    if local_ray["variant"] != "cli":
        pytest.skip("token auth does not depend on how Ray was imported")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    assert "CONNECTED" in _connect(local_ray["gcs"], env | {"RAY_AUTH_MODE": "token"})
