"""cluster/: the launcher YAML validates against the schema Ray ships in its wheel, the KubeRay
RayJob's pod templates against Kubernetes' published schema and its own fields against the
RayJob v1 API, both ask for what configs/cluster.yaml declares, and none exposes the dashboard.
`cluster/submit.sh` itself runs for real in tests/runtime/test_job_submit.py."""

from __future__ import annotations

import copy
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gflowgr_dist.config import load_config

REPO = Path(__file__).resolve().parents[2]
CLUSTER = load_config([REPO / "configs/cluster.yaml"]).runtime.nodes


def _yaml(name: str) -> dict:
    return yaml.safe_load((REPO / "cluster" / name).read_text())


def _validate_launcher(config: dict) -> None:
    # What `ray up` does before anything else: fill defaults, then check the schema.
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


def test_launcher_yaml_validates_against_rays_schema():
    _validate_launcher(_yaml("ray-cluster-aws.yaml"))


def test_launcher_schema_check_catches_a_misspelt_key():
    import jsonschema

    config = _yaml("ray-cluster-aws.yaml")
    config["available_node_types"]["gpu_worker"]["min_worker"] = 4
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        _validate_launcher(config)


def test_launcher_node_types_are_what_the_cluster_preset_declares():
    types = _yaml("ray-cluster-aws.yaml")["available_node_types"]
    head = _yaml("ray-cluster-aws.yaml")["head_node_type"]
    launched = {
        name: (node["resources"], 1 if name == head else node["min_workers"])
        for name, node in types.items()
    }
    for name, (resources, count) in launched.items():
        if name != head:
            assert types[name]["min_workers"] == types[name]["max_workers"]
        assert {k: float(v) for k, v in resources.items()} == CLUSTER[name].resources, name
        assert count == CLUSTER[name].count, name
    assert set(launched) == set(CLUSTER)


def test_launcher_keeps_the_dashboard_on_loopback_and_token_auth_on():
    config = _yaml("ray-cluster-aws.yaml")
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    options = " ".join(config["docker"]["run_options"])
    assert "RAY_AUTH_MODE=token" in options and "RAY_AUTH_TOKEN_PATH=" in options
    token_path = options.split("RAY_AUTH_TOKEN_PATH=")[1].split()[0]
    assert token_path in config["file_mounts"], "the token file reaches every node"


def _pod_templates(job: dict) -> dict[str, dict]:
    cluster = job["spec"]["rayClusterSpec"]
    templates = {"submitter": job["spec"]["submitterPodTemplate"]}
    templates["head"] = cluster["headGroupSpec"]["template"]
    for group in cluster["workerGroupSpecs"]:
        templates[group["groupName"]] = group["template"]
    return templates


def _validate_pod_template(template: dict) -> None:
    import kubernetes_validate

    resource = {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": "gflowgr"},
        "template": template,
    }
    kubernetes_validate.validate(resource, "1.33", strict=True)


# Fields of the RayJob v1 API (KubeRay's CRD, ray.io/v1) this manifest may use. KubeRay's CRD is
# not installable offline here, so the pod templates are checked against Kubernetes' schema and
# these levels against the API's field names.
RAYJOB_SPEC = {
    "entrypoint", "runtimeEnvYAML", "shutdownAfterJobFinishes", "ttlSecondsAfterFinished",
    "backoffLimit", "submitterPodTemplate", "rayClusterSpec", "submissionMode", "suspend",
    "activeDeadlineSeconds", "entrypointNumCpus", "entrypointNumGpus", "entrypointResources",
    "metadata", "jobId", "clusterSelector", "managedBy", "deletionStrategy",
}  # fmt: skip
RAYCLUSTER_SPEC = {
    "rayVersion", "headGroupSpec", "workerGroupSpecs", "enableInTreeAutoscaling",
    "autoscalerOptions", "headServiceAnnotations", "suspend", "managedBy",
    "gcsFaultToleranceOptions",
}  # fmt: skip
HEAD_GROUP = {"rayStartParams", "template", "serviceType", "headService", "enableIngress"}
WORKER_GROUP = {
    "groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template",
    "numOfHosts", "scaleStrategy", "suspend", "idleTimeoutSeconds",
}  # fmt: skip


def test_rayjob_uses_only_rayjob_v1_fields_and_valid_pod_templates():
    job = _yaml("kuberay-rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    assert set(spec) <= RAYJOB_SPEC, set(spec) - RAYJOB_SPEC
    cluster = spec["rayClusterSpec"]
    assert set(cluster) <= RAYCLUSTER_SPEC and set(cluster["headGroupSpec"]) <= HEAD_GROUP
    for group in cluster["workerGroupSpecs"]:
        assert set(group) <= WORKER_GROUP, set(group) - WORKER_GROUP
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    for name, template in _pod_templates(job).items():
        _validate_pod_template(template)
        for container in template["spec"]["containers"]:
            env = {e["name"]: e for e in container["env"]}
            assert env["RAY_AUTH_MODE"]["value"] == "token", name
            assert "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"], name
        assert template["spec"]["securityContext"]["runAsNonRoot"] is True, name


def test_pod_template_check_catches_a_misspelt_key():
    import kubernetes_validate

    template = _pod_templates(_yaml("kuberay-rayjob.yaml"))["head"]
    template["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="resource"):
        _validate_pod_template(template)


def test_rayjob_runs_the_pinned_ray_on_what_the_cluster_preset_declares():
    job = _yaml("kuberay-rayjob.yaml")
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == _pinned_ray()
    started = {"head": (_start_resources(cluster["headGroupSpec"]["rayStartParams"]), 1)}
    for group in cluster["workerGroupSpecs"]:
        name = group["groupName"].replace("-", "_")
        started[name] = (_start_resources(group["rayStartParams"]), group["replicas"])
        gpus = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert float(gpus.get("nvidia.com/gpu", 0)) == started[name][0].get("GPU", 0.0)
    assert started == {name: (node.resources, node.count) for name, node in CLUSTER.items()}
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[:2] == ["gflowgr", "run"] and (REPO / words[words.index("--config") + 1]).is_file()


def _start_resources(params: dict) -> dict[str, float]:
    resources = {"CPU": float(params["num-cpus"])}
    if "num-gpus" in params:
        resources["GPU"] = float(params["num-gpus"])
    if "resources" in params:  # KubeRay's quoting: a JSON object inside a quoted string
        resources |= {k: float(v) for k, v in json.loads(json.loads(params["resources"])).items()}
    return resources


def _pinned_ray() -> str:
    pyproject = (REPO / "pyproject.toml").read_text()
    return pyproject.split('"ray[default]==')[1].split('"')[0]


def test_runtime_env_yaml_excludes_what_must_not_travel():
    env = _yaml("runtime-env.yaml")
    assert {".git", ".venv", "outputs"} <= set(env["excludes"])
    assert set(env) <= {"excludes", "env_vars", "working_dir", "pip", "py_modules"}
    from ray.runtime_env import RuntimeEnv

    RuntimeEnv(**env)  # Ray's own validation of the runtime-env fields


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ([], {}, "no command to run"),
        (["--bogus", "--", "true"], {}, "unknown option '--bogus'"),
        (["--address", "127.0.0.1:6379", "--", "true"], {}, "is not the job API's http(s)"),
        (["--", "true"], {"RAY_AUTH_TOKEN": "", "HOME": "/nonexistent"}, "no Ray token"),
        (["--", "true"], {"RAY_CLI": "/nonexistent/ray"}, "'/nonexistent/ray' not found"),
    ],
)
def test_submit_script_refuses_bad_arguments_with_one_clear_error(args, env, message):
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    environ = environ | {"RAY_CLI": str(Path(sys.executable).with_name("ray"))} | env
    done = subprocess.run(
        ["bash", str(REPO / "cluster/submit.sh"), *args], capture_output=True, text=True,
        env=environ,
    )  # fmt: skip
    assert done.returncode == 2
    assert message in done.stderr and done.stderr.count("error:") == 1, done.stderr
