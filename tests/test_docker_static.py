"""Static checks of the Docker files: the contracts `make test-docker` relies on, in milliseconds.

The real build and compose run are scripts/docker_e2e.sh; these catch a broken contract (layer
order, non-root user, loopback-only ports, undocumented variables) without Docker.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def dockerfile() -> list[str]:
    """Instructions of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def index_of(lines: list[str], pattern: str) -> int:
    found = [i for i, line in enumerate(lines) if re.search(pattern, line)]
    assert found, f"Dockerfile: no instruction matches {pattern!r}"
    return found[0]


def compose(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def test_dependencies_are_installed_before_the_code_is_copied() -> None:
    lines = dockerfile()
    torch = index_of(lines, r"^RUN .*pip install .*torch==\$\{TORCH_VERSION\}")
    deps = index_of(lines, r"^RUN .*pip install -r ")
    code = index_of(lines, r"^COPY job/")
    assert torch < deps < code, f"layer order torch={torch} deps={deps} code={code}: torch and deps must come before COPY job/"
    assert index_of(lines, r"^COPY pyproject.toml /tmp/deps/") < deps


def test_image_runs_sweep_as_uid_1000_with_bash_and_wget() -> None:
    lines = dockerfile()
    assert index_of(lines, r"useradd .*--uid 1000 .*sweep") < index_of(lines, r"^USER sweep$")
    assert lines[index_of(lines, r"^ENTRYPOINT")] == 'ENTRYPOINT ["sweep"]'
    assert lines[index_of(lines, r"^CMD")] == 'CMD ["run", "specs/cifar10.yaml"]'
    apt = lines[index_of(lines, r"apt-get install")]
    assert " bash " in apt and " wget " in apt, apt


def test_base_image_is_pinned_by_tag_and_digest_and_overridable() -> None:
    lines = dockerfile()
    arg = lines[index_of(lines, r"^ARG PYTHON_IMAGE=")]
    assert re.fullmatch(r"ARG PYTHON_IMAGE=python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", arg), arg
    assert lines[index_of(lines, r"^FROM ")] == "FROM ${PYTHON_IMAGE}"


def test_torch_pins_match_the_makefile_pair() -> None:
    lines = dockerfile()
    assert "ARG TORCH_VERSION=2.14.1" in lines and "ARG TORCHVISION_VERSION=0.29.1" in lines


def test_no_secret_is_a_build_input() -> None:
    for line in dockerfile():
        if line.startswith(("ARG", "ENV")):
            assert not re.search(r"SECRET|ACCESS_KEY|PASSWORD|TOKEN", line), f"Dockerfile: {line}"


def test_dockerignore_keeps_credentials_and_bulk_out_of_the_context() -> None:
    rules = [r.strip() for r in (ROOT / ".dockerignore").read_text().splitlines() if r.strip() and not r.startswith("#")]
    assert rules[0] == "*", "allow-list expected: '*' first, then the few paths the build needs"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "job", "specs"}, allowed


def test_job_service_waits_for_healthy_s3_and_gets_storage_from_env() -> None:
    services = compose("docker-compose.yml")["services"]
    job, s3 = services["job"], services["s3"]
    assert job["depends_on"] == {"s3": {"condition": "service_healthy"}}
    assert "healthcheck" in s3 and s3["image"].startswith("chrislusf/seaweedfs:")
    assert not s3["image"].endswith(":latest")
    env = job["environment"]
    assert env["AWS_ENDPOINT_URL"] == "http://s3:8333"
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"} <= set(env)
    assert job["command"] == ["run", "${SPEC:-specs/cifar10.yaml}", "--set", "storage.uri=${STORAGE_URI:-s3://sweeps}"]
    assert any(v.endswith(":/home/sweep/.cache/sweep-job") for v in job["volumes"]), job["volumes"]


def test_published_ports_are_loopback_only() -> None:
    for name in ("docker-compose.yml", "docker/compose.e2e.yml", "docker-compose.gpu.yml"):
        for service, spec in compose(name)["services"].items():
            for port in spec.get("ports", []):
                assert str(port).startswith("127.0.0.1:"), f"{name}: {service} publishes {port} beyond loopback"


def test_gpu_override_reserves_every_nvidia_gpu() -> None:
    job = compose("docker-compose.gpu.yml")["services"]["job"]
    devices = job["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]


def test_e2e_override_only_swaps_the_s3_service_image_and_command() -> None:
    override = compose("docker/compose.e2e.yml")
    assert set(override) == {"services"} and set(override["services"]) == {"s3"}
    assert set(override["services"]["s3"]) <= {"image", "entrypoint", "command", "healthcheck"}


def test_env_example_documents_every_compose_variable() -> None:
    text = "".join((ROOT / n).read_text() for n in ("docker-compose.yml", "docker-compose.gpu.yml"))
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text))
    documented = set(re.findall(r"^([A-Z_][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.M))
    assert used <= documented, f".env.example: missing {sorted(used - documented)}"


def test_ray_pin_matches_pyproject() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "ray[default,tune]==2.60.0" in deps, "the image installs pyproject's dependencies; KubeRay needs the exact Ray"
