"""cluster/: the launcher config validates against the schema inside the Ray package, and the
KubeRay manifests agree with pyproject.toml, with jobs/ and with each other on what matters."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from mfray.cli import build_parser
from mfray.config import load_config
from mfray.train.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"
LAUNCHER = CLUSTER / "aws-gpu.yaml"
SHARED = "/mnt/shared"  # where every pod and node mounts the shared volume
SECRET = "mfray-ray-token"

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
RAY_PIN = next(m.group(1) for d in PYPROJECT["project"]["dependencies"]
               if (m := re.fullmatch(r"ray\[[^]]*\]==(\S+)", d)))
PY_TAG = "py" + PYPROJECT["project"]["requires-python"].removeprefix(">=").replace(".", "")
RAY_IMAGE = f"rayproject/ray:{RAY_PIN}-{PY_TAG}-gpu"
MFRAY_IMAGE = f"mfray:{PYPROJECT['project']['version']}-ray{RAY_PIN}-{PY_TAG}-gpu"


def _load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


DOCS = [d for p in sorted(KUBERAY.glob("*.yaml")) for d in _load_all(p)]
RAY_OBJECTS = [d for d in DOCS if d["apiVersion"] == "ray.io/v1"]
RAYJOBS = [d for d in RAY_OBJECTS if d["kind"] == "RayJob"]


def _cluster_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every Ray cluster the manifests bring up: the RayCluster's, and each RayJob's own."""
    for d in RAY_OBJECTS:
        yield d["metadata"]["name"], d["spec"] if d["kind"] == "RayCluster" \
            else d["spec"]["rayClusterSpec"]


SPECS = list(_cluster_specs())
SPEC_IDS = [name for name, _ in SPECS]


def _groups(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [spec["headGroupSpec"], *spec["workerGroupSpecs"]]


def _gpus(group: dict[str, Any]) -> int:
    return sum(int(c["resources"].get("limits", {}).get("nvidia.com/gpu", 0))
               for c in group["template"]["spec"]["containers"])


def _bytes(quantity: str) -> int:
    """A Kubernetes quantity such as 10Gi (or plain bytes) in bytes."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)?", str(quantity))
    assert m, f"unexpected quantity {quantity!r}"
    return int(m.group(1)) * units.get(m.group(2) or "", 1)


def _dockerfile_workdir() -> str:
    return re.findall(r"^WORKDIR (\S+)$", (CLUSTER / "Dockerfile").read_text(), re.MULTILINE)[-1]


# ---------------------------------------------------------------------- the cluster launcher


def test_launcher_validates_against_the_schema_inside_ray() -> None:
    # found without importing ray, which reads RAY_AUTH_MODE once, when imported
    (ray_dir,) = importlib.util.find_spec("ray").submodule_search_locations
    schema = json.loads((Path(ray_dir) / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load(LAUNCHER.read_text())
    jsonschema.validate(config, schema)
    # the schema is strict enough to catch a misspelt key, so passing it means something
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**config, "head_start_ray_command": []}, schema)


def test_launcher_pins_ray_and_keeps_token_auth_on() -> None:
    config = yaml.safe_load(LAUNCHER.read_text())
    assert config["docker"]["image"] == RAY_IMAGE
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]
    assert config["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start


def test_launcher_gpu_nodes_fit_the_gpu_configs() -> None:
    config = yaml.safe_load(LAUNCHER.read_text())
    types = config["available_node_types"]
    assert "GPU" not in types[config["head_node_type"]]["resources"]
    gpu = [t for t in types.values() if t["resources"].get("GPU", 0) > 0]
    assert len(gpu) == 1
    simulate = load_config(REPO / "jobs" / "configs" / "gpu-vllm-1.5b.yaml")
    # a run asks for GPUs only when they are there at its start: keep enough nodes up
    assert gpu[0]["min_workers"] * gpu[0]["resources"]["GPU"] >= \
        simulate.resources.inference_actors
    train = load_config(REPO / "jobs" / "configs" / "train-gpu-1.5b.yaml", cls=TrainConfig)
    assert gpu[0]["max_workers"] * gpu[0]["resources"]["GPU"] >= train.resources.num_workers
    # the vLLM engine of the GPU config is installed on the nodes
    assert "vllm" in " ".join(config["setup_commands"])


def test_no_file_turns_token_auth_off() -> None:
    for path in [*CLUSTER.rglob("*"), *(REPO / "jobs").rglob("*")]:
        if path.is_file() and path.suffix != ".pyc":
            text = path.read_text()
            assert not re.search(r"AUTH_MODE\W*disabled|mode:\s*disabled", text), path


# ---------------------------------------------------------------------- the KubeRay manifests


def test_manifests_are_one_raycluster_and_two_rayjobs_on_one_volume() -> None:
    assert sorted(d["kind"] for d in RAY_OBJECTS) == ["RayCluster", "RayJob", "RayJob"]
    assert {shlex.split(j["spec"]["entrypoint"])[1].rsplit("/", 1)[1] for j in RAYJOBS} == \
        {"simulate.py", "train.py"}
    (pvc,) = [d for d in DOCS if d["kind"] == "PersistentVolumeClaim"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # head and GPU nodes share it
    for _, spec in SPECS:
        for group in _groups(spec):
            pod = group["template"]["spec"]
            claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
                      for v in pod["volumes"] if "persistentVolumeClaim" in v}
            mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
            assert claims[mounts[SHARED]] == pvc["metadata"]["name"]


@pytest.mark.parametrize(("name", "spec"), SPECS, ids=SPEC_IDS)
def test_ray_version_and_images_match_pyproject(name: str, spec: dict[str, Any]) -> None:
    assert spec["rayVersion"] == RAY_PIN
    for group in _groups(spec):
        for container in group["template"]["spec"]["containers"]:
            # the registry in front is yours (cluster/README.md); the tag is checked
            assert container["image"].rsplit("/", 1)[-1] == MFRAY_IMAGE


def test_the_image_builds_on_rays_image_and_holds_the_jobs() -> None:
    text = (CLUSTER / "Dockerfile").read_text()
    assert re.findall(r"^FROM (\S+)$", text, re.MULTILINE) == [RAY_IMAGE]
    assert f"-t {MFRAY_IMAGE} " in text
    assert "COPY --chown=ray:users jobs ./jobs" in text and _dockerfile_workdir()


@pytest.mark.parametrize(("name", "spec"), SPECS, ids=SPEC_IDS)
def test_token_auth_is_on(name: str, spec: dict[str, Any]) -> None:
    assert spec["authOptions"] == {"mode": "token", "secretName": SECRET}
    for group in _groups(spec):
        for container in group["template"]["spec"]["containers"]:
            # KubeRay sets the mode and the token from authOptions; nothing may override them
            assert not any(e["name"].startswith("RAY_AUTH") for e in container.get("env", []))


@pytest.mark.parametrize(("name", "spec"), SPECS, ids=SPEC_IDS)
def test_pods_size_dev_shm_above_the_object_store(name: str, spec: dict[str, Any]) -> None:
    for group in _groups(spec):
        pod = group["template"]["spec"]
        (container,) = pod["containers"]
        shm = next(m["name"] for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm")
        empty_dir = next(v["emptyDir"] for v in pod["volumes"] if v["name"] == shm)
        assert empty_dir["medium"] == "Memory"
        size = _bytes(empty_dir["sizeLimit"])
        assert int(group["rayStartParams"]["object-store-memory"]) < size
        limits, requests = container["resources"]["limits"], container["resources"]["requests"]
        assert limits == requests  # Guaranteed pods: Ray sizes itself from the limits
        assert size < _bytes(limits["memory"])  # /dev/shm counts against the pod's memory


@pytest.mark.parametrize(("name", "spec"), SPECS, ids=SPEC_IDS)
def test_gpu_worker_groups(name: str, spec: dict[str, Any]) -> None:
    assert _gpus(spec["headGroupSpec"]) == 0  # GPUs are for the workers
    gpu_groups = [g for g in spec["workerGroupSpecs"] if _gpus(g) > 0]
    assert gpu_groups
    for group in gpu_groups:
        assert 1 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        tolerations = group["template"]["spec"].get("tolerations", [])
        assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)


@pytest.mark.parametrize("job", RAYJOBS, ids=[j["metadata"]["name"] for j in RAYJOBS])
def test_rayjob_runs_a_job_of_jobs_with_a_config_that_fits(job: dict[str, Any]) -> None:
    spec = job["spec"]
    python, script, *args = shlex.split(spec["entrypoint"])
    prefix = _dockerfile_workdir() + "/"
    assert python == "python" and script.startswith(prefix + "jobs/")
    assert (REPO / script.removeprefix(prefix)).is_file()
    command = Path(script).stem
    cli = build_parser().parse_args([command, *args])  # flags the CLI knows (exits otherwise)

    config = REPO / cli.config.removeprefix(prefix)
    assert config.is_file()
    cfg = load_config(config, cls=TrainConfig) if command == "train" else load_config(config)
    for path in (cli.data, cli.out, cfg.policy.model):
        assert path.startswith(SHARED + "/"), path  # every node sees it

    gpus_at_start = sum(_gpus(g) * g["replicas"] for g in spec["rayClusterSpec"]
                        ["workerGroupSpecs"])
    if command == "train":
        assert cfg.resources.use_gpu and cfg.resources.num_workers <= gpus_at_start
    else:
        assert cfg.policy.engine == "vllm"
        assert cfg.resources.inference_actors <= gpus_at_start

    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    jobs_env = yaml.safe_load((REPO / "jobs" / "runtime_env.yaml").read_text())
    assert runtime_env == {"env_vars": jobs_env["env_vars"]}  # the code is in the image
    assert spec["shutdownAfterJobFinishes"] is True  # no idle GPUs after the job


def test_cluster_readme_names_every_file() -> None:
    readme = (CLUSTER / "README.md").read_text()
    for path in CLUSTER.rglob("*"):
        if path.is_file() and path.name != "README.md":
            assert str(path.relative_to(CLUSTER)) in readme, path
