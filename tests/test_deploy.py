"""The manifests under deploy/, checked statically: they parse, agree with each other and with the
repo (image, Ray version, spec paths), Ray accepts the launcher config, and every command they run
is one the `sweep` CLI accepts with a spec that validates."""

from __future__ import annotations

import copy
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from job.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
MANIFESTS = sorted(DEPLOY.rglob("*.yaml"))
LAUNCHER = DEPLOY / "aws" / "cluster.yaml"
IMAGE_WORKDIR = "/app"  # the Dockerfile's WORKDIR; it copies specs/ there
SPEC_PATH = re.compile(r"(?:/app/)?\bspecs/[\w.-]+\.ya?ml")


def _docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _all_docs() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS for doc in _docs(path)]


def _of_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in _all_docs() if doc.get("kind") == kind]


def _walk(node: Any, key: str) -> list[Any]:
    """Every value stored under `key`, at any depth."""
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == key] + [x for v in node.values() for x in _walk(v, key)]
    if isinstance(node, list):
        return [x for v in node for x in _walk(v, key)]
    return []


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for group in _walk(doc, "containers") for c in group]


def _ray_job_specs() -> list[dict[str, Any]]:
    return [d["spec"] for d in _of_kind("RayJob")] + [d["spec"]["jobTemplate"] for d in _of_kind("RayCronJob")]


def _image_name(image: str) -> str:
    """`ghcr.io/org/sweep-job:0.1.0` -> `sweep-job`."""
    return image.rsplit("/", 1)[-1].split("@")[0].split(":")[0]


def _compose_default(value: str) -> str:
    """`${JOB_IMAGE:-sweep-job:local}` -> `sweep-job:local`."""
    match = re.fullmatch(r"\$\{\w+:?-(.*)\}", value)
    return match.group(1) if match else value


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _in_repo(path: str) -> Path:
    return REPO / path.removeprefix(f"{IMAGE_WORKDIR}/")


def test_every_manifest_parses() -> None:
    assert {p.parent.name for p in MANIFESTS} >= {"kuberay", "k8s", "aws"}
    for path in MANIFESTS:
        assert _docs(path), f"{path} holds no YAML document"
    for folder in ("kuberay", "k8s", "aws"):
        assert (DEPLOY / folder / "README.md").is_file()


def test_manifests_name_one_image_tagged_with_the_package_version() -> None:
    images = {c["image"] for doc in _all_docs() for c in _containers(doc)}
    images.add(_docs(LAUNCHER)[0]["docker"]["image"])
    assert len(images) == 1, f"manifests disagree on the image: {sorted(images)}"
    image = images.pop()
    assert image.endswith(f":{_pyproject()['project']['version']}"), image


def test_manifests_and_compose_name_the_same_image() -> None:
    compose = REPO / "docker-compose.yml"
    if not compose.is_file():
        pytest.skip("no docker-compose.yml in the repo yet")
    job_image = _compose_default(yaml.safe_load(compose.read_text())["services"]["job"]["image"])
    manifest_image = _docs(LAUNCHER)[0]["docker"]["image"]
    # Compose builds and tags locally (no registry, a local tag); the name must still be the same.
    assert _image_name(job_image) == _image_name(manifest_image), (job_image, manifest_image)


def test_ray_version_matches_the_pin_everywhere() -> None:
    import ray

    pins = [d for d in _pyproject()["project"]["dependencies"] if d.startswith("ray[")]
    pinned = pins[0].split("==")[1]
    assert ray.__version__ == pinned
    versions = set(_walk(_all_docs(), "rayVersion"))
    assert versions == {pinned}, versions


def test_every_spec_path_exists_in_the_repo_and_the_image() -> None:
    referenced = {m for path in DEPLOY.rglob("*") if path.is_file() for m in SPEC_PATH.findall(path.read_text())}
    assert referenced, "no spec referenced under deploy/"
    for path in referenced:
        assert _in_repo(path).is_file(), f"{path} is referenced under deploy/ but is not in the repo"
    dockerfile = REPO / "Dockerfile"
    if dockerfile.is_file():
        text = dockerfile.read_text()
        assert f"WORKDIR {IMAGE_WORKDIR}" in text and re.search(r"^COPY specs/ specs/", text, re.M), (
            "deploy/ runs specs from /app/specs: the Dockerfile must copy specs/ into WORKDIR /app"
        )


def _effective_command(container: dict[str, Any]) -> list[str]:
    """What a container runs: its command, or the image's entrypoint (tini -> sweep) with its args."""
    return container["command"] + container.get("args", []) if "command" in container else ["sweep", *container["args"]]


def _commands() -> list[list[str]]:
    entrypoints = [shlex.split(spec["entrypoint"]) for spec in _ray_job_specs()]
    cronjob = [_effective_command(c) for doc in _of_kind("CronJob") for c in _containers(doc)]
    return entrypoints + cronjob


def test_every_command_is_one_the_cli_accepts_with_a_valid_spec() -> None:
    from job.cli import build_parser

    commands = _commands()
    assert {cmd[1] for cmd in commands} == {"run", "submit"}, commands
    for command in commands:
        assert command[0] == "sweep", command
        args = build_parser().parse_args(command[1:])
        job = load_spec(_in_repo(args.spec), args.overrides)
        assert job.storage.uri.startswith("s3://"), f"{command}: a cluster run needs S3 storage"


def test_the_cronjob_submits_to_the_raycluster_with_its_token() -> None:
    (cluster,) = _of_kind("RayCluster")
    (cronjob,) = _of_kind("CronJob")
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    (container,) = _containers(cronjob)
    assert "command" not in container, "args keep the image's entrypoint: tini passes the pod's SIGTERM on"
    command = _effective_command(container)
    address = command[command.index("--address") + 1]
    assert address == f"http://{cluster['metadata']['name']}-head-svc:8265"
    env = {e["name"]: e for e in container["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token"
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == cluster["spec"]["authOptions"]["secretName"]
    assert not [name for name in env if name.startswith("AWS_")], "storage secrets must not reach the submitter"


def test_kuberay_jobs_retry_clean_up_and_run_trials_on_gpus() -> None:
    specs = _ray_job_specs()
    assert len(specs) == 2
    for spec in specs:
        assert spec["shutdownAfterJobFinishes"] is True
        assert spec["ttlSecondsAfterFinished"] > 0 and spec["backoffLimit"] >= 1
        assert spec["submissionMode"] in {"K8sJobMode", "HTTPMode"}
        assert spec["rayClusterSpec"]["authOptions"]["mode"] == "token"
    for doc in _of_kind("RayJob") + _of_kind("RayCronJob") + _of_kind("RayCluster"):
        groups = _walk(doc, "workerGroupSpecs")[0]
        gpus = [c["resources"]["limits"].get("nvidia.com/gpu") for g in groups for c in _containers(g)]
        assert gpus and all(int(g) >= 1 for g in gpus), doc["metadata"]["name"]


def test_ray_pods_read_storage_credentials_from_a_mounted_secret_file() -> None:
    for doc in _of_kind("RayJob") + _of_kind("RayCronJob") + _of_kind("RayCluster"):
        pods = [t["spec"] for t in _walk(doc, "template")]
        assert pods, doc["metadata"]["name"]
        for pod in pods:
            volumes = {v["name"]: v for v in pod["volumes"]}
            assert volumes["s3-credentials"]["secret"]["secretName"] == "sweep-job-s3"
            assert pod["securityContext"]["fsGroup"] == 1000, "the image's user reads the file through its group"
            for container in pod["containers"]:
                where = (doc["metadata"]["name"], container["name"])
                mounts = {m["name"]: m for m in container["volumeMounts"]}
                assert mounts["s3-credentials"]["readOnly"] is True, where
                env = {e["name"]: e.get("value") for e in container["env"]}
                assert env["AWS_SHARED_CREDENTIALS_FILE"] == f"{mounts['s3-credentials']['mountPath']}/credentials", where
                assert [e["configMapRef"]["name"] for e in container["envFrom"]] == ["sweep-job-s3"], where


def test_no_manifest_puts_s3_keys_in_environment_variables() -> None:
    """Keys in variables reach every process Ray starts and `kubectl describe`; they travel as a file."""
    for path in MANIFESTS:
        for doc in _docs(path):
            for container in _containers(doc) + [c for group in _walk(doc, "initContainers") for c in group]:
                names = [e["name"] for e in container.get("env", [])]
                assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"} & set(names), (path, names)
                assert not [e for e in container.get("envFrom", []) if "secretRef" in e], (path, container["name"])
        assert "AWS_SECRET_ACCESS_KEY=" not in path.read_text(), f"{path}: a key passed as a variable"


def test_launcher_keeps_tini_as_the_containers_init() -> None:
    run_options = _docs(LAUNCHER)[0]["docker"]["run_options"]
    assert "--entrypoint=tini" in run_options, run_options


def test_raycronjob_is_scheduled_and_flagged_alpha() -> None:
    (cron,) = _of_kind("RayCronJob")
    assert len(cron["spec"]["schedule"].split()) == 5
    text = (DEPLOY / "kuberay" / "raycronjob.yaml").read_text()
    assert "feature-gates=RayCronJob=true" in text and "ALPHA" in text


def test_launcher_config_passes_rays_own_validation() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = _docs(LAUNCHER)[0]
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    assert config["provider"]["type"] == "aws"
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] == 0
    workers = [t for name, t in config["available_node_types"].items() if name != config["head_node_type"]]
    (gpu,) = workers
    assert gpu["min_workers"] == 0 and gpu["max_workers"] >= 1 and gpu["resources"]["GPU"] == 1
    assert gpu["node_config"]["InstanceMarketOptions"] == {"MarketType": "spot"}
    assert config["setup_commands"] == [] and config["worker_setup_commands"] == [], "the image holds everything"
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in cmd for cmd in starts if "ray start" in cmd)
