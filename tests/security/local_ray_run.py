"""Starts Ray the way `gflowgr train --runtime ray` does on a laptop (`ensure_ray`), then prints
the listening TCP addresses of every Ray process it started and the GCS address.

    python tests/security/local_ray_run.py [--import-ray-first]    # one line: LISTEN {json}

`--import-ray-first` imports Ray before gflowgr starts it, as a library user's process may.

Run by tests/security/test_listeners.py in a process whose environment has no Ray settings,
as a user's shell would not.
"""

from __future__ import annotations

import json
import sys
import time

import psutil

from gflowgr_dist.config import load_config
from gflowgr_dist.runtime.driver import ensure_ray


def main(import_first: bool) -> None:
    if import_first:
        import ray
    cfg = load_config(overrides=["runtime.num_cpus=1"])
    ensure_ray(cfg)
    import ray

    try:
        time.sleep(3)  # let the dashboard agent and runtime-env agent bind
        me = psutil.Process()
        processes = [me, *me.children(recursive=True)]
        listening = set()
        for proc in processes:
            try:
                sockets = proc.net_connections(kind="inet")
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            for sock in sockets:
                if sock.status == psutil.CONN_LISTEN:
                    listening.add((proc.name(), sock.laddr.ip, sock.laddr.port))
        gcs = ray.get_runtime_context().gcs_address
        print("LISTEN " + json.dumps({"gcs": gcs, "sockets": sorted(listening)}), flush=True)
        sys.stdin.readline()  # stay up until the test has tried to connect
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main("--import-ray-first" in sys.argv)
