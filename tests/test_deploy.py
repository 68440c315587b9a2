"""The manifests under deploy/, checked statically: they parse, agree with each other and with the
repo (image, Ray version, spec paths), Ray accepts the launcher config, every command they run is
one the `sweep` CLI accepts with a spec that validates, and every Kubernetes object is valid against
its real schema (KubeRay v1.7.0's CRDs, Kubernetes' own), unknown fields rejected."""

from __future__ import annotations

import copy
import functools
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate.utils
import pytest
import yaml
from referencing import Registry, Resource

from job.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
MANIFESTS = sorted(DEPLOY.rglob("*.yaml"))
LAUNCHER = DEPLOY / "aws" / "cluster.yaml"
KUSTOMIZATIONS = sorted(DEPLOY.rglob("kustomization.yaml"))
IMAGE_COMPONENT = DEPLOY / "image" / "kustomization.yaml"
# What kubectl applies: everything but the launcher config and kustomize's own files.
KUBE_MANIFESTS = [p for p in MANIFESTS if p != LAUNCHER and p.name != "kustomization.yaml"]
IMAGE_PLACEHOLDER = "sweep-job"  # what the manifests say; deploy/image/kustomization.yaml sets the real one
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


def _kube_docs() -> list[dict[str, Any]]:
    return [doc for path in KUBE_MANIFESTS for doc in _docs(path)]


def _image() -> str:
    """The image deploy/image/kustomization.yaml puts in place of the placeholder: `newName:newTag`."""
    (entry,) = _docs(IMAGE_COMPONENT)[0]["images"]
    assert entry["name"] == IMAGE_PLACEHOLDER, entry
    return f"{entry['newName']}:{entry['newTag']}"


def test_manifests_name_one_image_set_once_and_tagged_with_the_package_version() -> None:
    images = {c["image"] for doc in _kube_docs() for c in _containers(doc)}
    assert images == {IMAGE_PLACEHOLDER}, f"manifests must say image: {IMAGE_PLACEHOLDER} (got {sorted(images)})"
    image = _image()
    assert image.endswith(f":{_pyproject()['project']['version']}"), image
    assert _docs(LAUNCHER)[0]["docker"]["image"] == image, "the launcher and kustomize name different images"


def test_each_kustomization_lists_every_manifest_of_its_folder_and_the_image_component() -> None:
    folders = {p.parent for p in KUBE_MANIFESTS}
    assert {p.parent for p in KUSTOMIZATIONS} == folders | {IMAGE_COMPONENT.parent}
    assert _docs(IMAGE_COMPONENT)[0]["kind"] == "Component"
    for folder in folders:
        (kustomization,) = _docs(folder / "kustomization.yaml")
        assert kustomization["kind"] == "Kustomization", folder
        assert sorted(kustomization["resources"]) == sorted(p.name for p in KUBE_MANIFESTS if p.parent == folder), folder
        assert kustomization["components"] == ["../image"], folder
        assert "images" not in kustomization, f"{folder}: the image is named once, in {IMAGE_COMPONENT}"


def test_the_kuberay_manifests_are_applied_one_at_a_time_by_label() -> None:
    # `kubectl apply -k deploy/kuberay -l sweep-job/schedule=once|nightly`: never both (same sweep name).
    labels = {doc["kind"]: doc["metadata"]["labels"].get("sweep-job/schedule") for doc in _docs_in(DEPLOY / "kuberay")}
    assert labels == {"RayJob": "once", "RayCronJob": "nightly"}
    readme = (DEPLOY / "kuberay" / "README.md").read_text()
    assert "-l sweep-job/schedule=once" in readme and "-l sweep-job/schedule=nightly" in readme


def _docs_in(folder: Path) -> list[dict[str, Any]]:
    return [doc for path in KUBE_MANIFESTS if path.parent == folder for doc in _docs(path)]


def _names(docs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return sorted((d["kind"], d["metadata"]["name"]) for d in docs)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with its built-in kustomize) is not installed")
@pytest.mark.parametrize("folder", sorted({p.parent.name for p in KUBE_MANIFESTS}))
def test_kustomize_renders_every_manifest_with_the_real_image(folder: str) -> None:
    done = subprocess.run(["kubectl", "kustomize", str(DEPLOY / folder)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rendered = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    assert _names(rendered) == _names(_docs_in(DEPLOY / folder))
    images = {c["image"] for doc in rendered for c in _containers(doc)}
    assert images == {_image()}, images


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
    assert {cmd[1] for cmd in commands} == {"run", "submit", "results"}, commands
    sweeps, checks = set(), []
    for command in commands:
        assert command[0] == "sweep", command
        args = build_parser().parse_args(command[1:])
        if args.verb == "results":
            checks.append(args)
            continue
        job = load_spec(_in_repo(args.spec), args.overrides)
        assert job.storage.uri.startswith("s3://"), f"{command}: a cluster run needs S3 storage"
        sweeps.add(f"{job.storage.uri}/{job.name}")
    # The regression check reads the runs the scheduled sweeps write.
    assert checks and all(a.uri in sweeps and float(a.fail_if_worse) > 0 and a.trend for a in checks), (checks, sweeps)


def test_the_cronjob_submits_to_the_raycluster_with_its_token() -> None:
    (cluster,) = _of_kind("RayCluster")
    (cronjob,) = [d for d in _docs_in(DEPLOY / "k8s") if d["kind"] == "CronJob"]
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
        assert spec["backoffLimit"] >= 1 and 0 < spec["activeDeadlineSeconds"] <= 6 * 3600
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


def test_the_regression_check_fails_its_job_at_once_on_exit_3_after_the_nightly_sweeps() -> None:
    (check,) = _docs_in(DEPLOY / "regression")
    job = check["spec"]["jobTemplate"]["spec"]
    (rule,) = job["podFailurePolicy"]["rules"]
    (container,) = _containers(check)
    assert rule["action"] == "FailJob" and rule["onExitCodes"] == {"containerName": container["name"], "operator": "In", "values": [3]}
    assert job["template"]["spec"]["restartPolicy"] == "Never" and "command" not in container
    pod = job["template"]["spec"]
    assert {v["name"]: v for v in pod["volumes"]}["s3-credentials"]["secret"]["secretName"] == "sweep-job-s3"
    assert {e["name"]: e["value"] for e in container["env"]} == {"AWS_SHARED_CREDENTIALS_FILE": "/etc/sweep-job/aws/credentials"}
    # After the sweeps' start plus their deadline, on the same days.
    minute, hour, *days = check["spec"]["schedule"].split()
    for sweep in _of_kind("RayCronJob") + [d for d in _of_kind("CronJob") if d["metadata"]["name"] != check["metadata"]["name"]]:
        s_minute, s_hour, *s_days = sweep["spec"]["schedule"].split()
        deadline_s = _walk(sweep, "activeDeadlineSeconds")[0]
        assert days == s_days and int(hour) * 60 + int(minute) >= int(s_hour) * 60 + int(s_minute) + deadline_s / 60, sweep["metadata"]["name"]


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


def test_launcher_pins_one_current_gpu_machine_image_and_says_how_to_refresh_it() -> None:
    types = _docs(LAUNCHER)[0]["available_node_types"].values()
    images = {t["node_config"].get("ImageId") for t in types}
    (image,) = images  # Ray's fallback, without one, is a CUDA 11.2-era Deep Learning AMI
    assert image and re.fullmatch(r"ami-[0-9a-f]{8,17}", image), images
    readme = (DEPLOY / "aws" / "README.md").read_text()
    assert "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id" in readme


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


# --- Deletion rules: what KubeRay's operator checks beyond the CRD (ray-operator's validation.go) ---

CONDITIONS = ({"jobStatus": "SUCCEEDED"}, {"jobStatus": "FAILED"}, {"jobDeploymentStatus": "Failed"})
DELETION_ORDER = ("DeleteWorkers", "DeleteCluster", "DeleteSelf")  # each at least as late as the one before


def _rules(spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, int]]:
    """condition -> policy -> ttlSeconds; a repeated (condition, policy) pair fails."""
    by_condition: dict[tuple[str, str], dict[str, int]] = {}
    for rule in spec["deletionStrategy"]["deletionRules"]:
        condition = dict(rule["condition"])
        ttl = condition.pop("ttlSeconds", 0)
        ((key, value),) = condition.items()  # the CRD's rule: jobStatus or jobDeploymentStatus, not both
        policies = by_condition.setdefault((key, value), {})
        assert rule["policy"] not in policies, f"duplicate rule {rule}"
        policies[rule["policy"]] = ttl
    return by_condition


def test_gpu_workers_go_when_the_job_ends_by_deletion_rules_the_operator_accepts() -> None:
    for spec in _ray_job_specs():
        # KubeRay refuses deletionRules with shutdownAfterJobFinishes, and a TTL needs the latter.
        assert not spec.get("shutdownAfterJobFinishes") and "ttlSecondsAfterFinished" not in spec
        assert not spec["rayClusterSpec"].get("enableInTreeAutoscaling"), "KubeRay: no DeleteWorkers with autoscaling"
        rules = _rules(spec)
        assert sorted(rules) == sorted(next(iter(c.items())) for c in CONDITIONS), rules
        for condition, policies in rules.items():
            assert policies["DeleteWorkers"] == 0, f"{condition}: GPU workers must go at once"
            assert "DeleteCluster" in policies, condition
            ttls = [policies[p] for p in DELETION_ORDER if p in policies]
            assert ttls == sorted(ttls), f"{condition}: KubeRay wants DeleteWorkers <= DeleteCluster <= DeleteSelf TTLs"


def test_scheduled_rayjobs_delete_themselves_and_one_offs_stay() -> None:
    (cron,) = _of_kind("RayCronJob")
    assert all("DeleteSelf" in p for p in _rules(cron["spec"]["jobTemplate"]).values()), "old firings pile up"
    (job,) = _of_kind("RayJob")
    assert not any("DeleteSelf" in p for p in _rules(job["spec"]).values()), "`kubectl get rayjob` shows the outcome"
    readme = (DEPLOY / "kuberay" / "README.md").read_text()
    assert "RayJobDeletionPolicy" in readme, "say which feature gate deletionRules need"


# --- Schemas: KubeRay's CRDs for its kinds, Kubernetes' for the rest, every pod template and metadata ---

KUBERAY_CRDS = REPO.parent / "shared" / "schemas" / "kuberay-v1.7.0"  # where it comes from: its README
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml", "RayCronJob": "ray.io_raycronjobs.yaml"}
K8S_DEFINITIONS = {"CronJob": "io.k8s.api.batch.v1.CronJob"}
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
POD_TEMPLATE = "io.k8s.api.core.v1.PodTemplateSpec"
# An older Kubernetes minor still on managed clusters, and the newest kubernetes-validate ships.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())
needs_crds = pytest.mark.skipif(not KUBERAY_CRDS.is_dir(), reason=f"KubeRay's CRDs are not at {KUBERAY_CRDS} (shared/schemas)")


def _reject_unknown(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with unknown fields an error wherever it lists its fields (what `kubectl apply`'s
    strict field validation does); objects marked x-kubernetes-preserve-unknown-fields stay open."""
    out = dict(schema)
    if "properties" in schema:
        out["properties"] = {name: _reject_unknown(sub) for name, sub in schema["properties"].items()}
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            out.setdefault("additionalProperties", False)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            out[key] = _reject_unknown(schema[key])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in schema:
            out[key] = [_reject_unknown(sub) for sub in schema[key]]
    return out


@functools.cache
def _crd_validator(kind: str) -> jsonschema.protocols.Validator:
    # libyaml's loader: each CRD is ~20,000 lines, 10 s for the pure-Python one on a busy core.
    crd = yaml.load((KUBERAY_CRDS / CRD_FILES[kind]).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    # OpenAPI v3.0 schemas are JSON Schema draft 4 with extensions (x-kubernetes-*), which it ignores.
    return jsonschema.Draft4Validator(_reject_unknown(version["schema"]["openAPIV3Schema"]))


@functools.cache
def _k8s_validator(definition: str, version: str) -> jsonschema.protocols.Validator:
    """Kubernetes' own schema of one type, the strict variant (additionalProperties: false throughout)."""
    path = f"kubernetes-json-schema/v{version}-local-strict/_definitions.json"
    definitions = kubernetes_validate.utils.schema_contents(path, version)
    registry = Resource.from_contents(definitions) @ Registry()
    return jsonschema.Draft202012Validator({"$ref": f"{definitions['$id']}#/$defs/{definition}"}, registry=registry)


def _pod_templates(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return _walk(doc, "template") + _walk(doc, "submitterPodTemplate")


def _errors(validator: jsonschema.protocols.Validator, instance: Any, where: str) -> list[str]:
    return [f"{where}.{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(instance)]


def _schema_problems(doc: dict[str, Any]) -> list[str]:
    """Every way `doc` breaks its schemas: the CRD (KubeRay kinds) or Kubernetes' type, its metadata,
    and each pod template inside it, in every Kubernetes version of K8S_VERSIONS."""
    kind = doc["kind"]
    problems = _errors(_crd_validator(kind), doc, kind) if kind in CRD_FILES else []
    for version in K8S_VERSIONS:
        if kind not in CRD_FILES:
            problems += _errors(_k8s_validator(K8S_DEFINITIONS[kind], version), doc, f"{kind} (k8s {version})")
        problems += _errors(_k8s_validator(OBJECT_META, version), doc["metadata"], f"metadata (k8s {version})")
        for template in _pod_templates(doc):
            problems += _errors(_k8s_validator(POD_TEMPLATE, version), template, f"pod template (k8s {version})")
    return problems


def _kube_doc_ids() -> list[str]:
    return [f"{d['kind']}/{d['metadata']['name']}" for d in _kube_docs()]


def _needs(doc: dict[str, Any]) -> None:
    if doc["kind"] in CRD_FILES and not KUBERAY_CRDS.is_dir():
        pytest.skip(f"KubeRay's CRDs are not at {KUBERAY_CRDS} (shared/schemas)")


def test_every_kubernetes_object_has_a_schema_here() -> None:
    kinds = {doc["kind"] for doc in _kube_docs()}
    assert kinds == {"RayJob", "RayCronJob", "RayCluster", "CronJob"}, kinds
    assert all(doc["apiVersion"] == "ray.io/v1" for doc in _kube_docs() if doc["kind"] in CRD_FILES)
    assert all(_pod_templates(doc) for doc in _kube_docs()), "every object here carries pod templates"


@pytest.mark.parametrize("doc", _kube_docs(), ids=_kube_doc_ids())
def test_manifest_is_valid_against_its_schemas(doc: dict[str, Any]) -> None:
    _needs(doc)
    assert _schema_problems(doc) == []


def _plant_in_spec(doc: dict[str, Any]) -> None:
    doc["spec"]["foo"] = 1


def _plant_in_metadata(doc: dict[str, Any]) -> None:
    doc["metadata"]["foo"] = 1


def _plant_in_a_container(doc: dict[str, Any]) -> None:
    _containers(doc)[-1]["foo"] = 1


def _plant_in_a_deletion_rule(doc: dict[str, Any]) -> None:
    for spec in _walk(doc, "deletionStrategy"):
        spec["deletionRules"][0]["condition"]["foo"] = 1


PLANTS: dict[str, Callable[[dict[str, Any]], None]] = {"spec": _plant_in_spec, "metadata": _plant_in_metadata, "container": _plant_in_a_container}


@pytest.mark.parametrize("plant", PLANTS)
@pytest.mark.parametrize("doc", _kube_docs(), ids=_kube_doc_ids())
def test_an_unknown_field_is_rejected(doc: dict[str, Any], plant: str) -> None:
    _needs(doc)
    planted = copy.deepcopy(doc)
    PLANTS[plant](planted)
    problems = _schema_problems(planted)
    assert problems and all("'foo'" in p for p in problems), problems
    if plant == "container":  # both the object's own schema and Kubernetes' PodTemplateSpec caught it
        assert any(p.startswith("pod template") for p in problems) and any(p.startswith(doc["kind"]) for p in problems), problems


@needs_crds
def test_an_unknown_field_in_a_deletion_rule_and_an_unknown_policy_are_rejected() -> None:
    for doc in _of_kind("RayJob") + _of_kind("RayCronJob"):
        planted = copy.deepcopy(doc)
        _plant_in_a_deletion_rule(planted)
        assert any("'foo'" in p for p in _schema_problems(planted)), doc["kind"]
        wrong = copy.deepcopy(doc)
        _walk(wrong, "deletionRules")[0][0]["policy"] = "DeleteWorker"
        assert any("'DeleteWorker' is not one of" in p for p in _schema_problems(wrong)), doc["kind"]
