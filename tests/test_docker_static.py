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
    assert lines[index_of(lines, r"^CMD")] == 'CMD ["run", "specs/cifar10.yaml"]'
    apt = lines[index_of(lines, r"apt-get install")]
    assert " bash " in apt and " wget " in apt, apt


def test_login_shells_find_the_virtualenv() -> None:
    """KubeRay runs `bash -lc 'ray start ...'`; Debian's /etc/profile resets PATH for login shells."""
    lines = dockerfile()
    run = lines[index_of(lines, r"/etc/profile\.d/")]
    assert 'export PATH="%s/bin:$PATH"' in run and '"$VIRTUAL_ENV"' in run, run


def test_sweep_runs_under_tini_which_signals_the_driver_alone() -> None:
    lines = dockerfile()
    assert " tini " in lines[index_of(lines, r"apt-get install")] + " "
    # No -g: SIGTERM goes to the sweep driver, which stops its Ray trials itself.
    assert lines[index_of(lines, r"^ENTRYPOINT")] == 'ENTRYPOINT ["tini", "-s", "--", "sweep"]'
    job = compose("docker-compose.yml")["services"]["job"]
    assert "init" not in job, "tini is in the image; compose's init would be a second one"


def test_base_image_is_pinned_by_tag_and_digest_and_overridable() -> None:
    lines = dockerfile()
    arg = lines[index_of(lines, r"^ARG PYTHON_IMAGE_DEFAULT=")]
    assert re.fullmatch(r"ARG PYTHON_IMAGE_DEFAULT=python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", arg), arg
    # An empty PYTHON_IMAGE (Compose v1 passes unset variables as empty build args) means the default.
    assert "ARG PYTHON_IMAGE=" in lines
    assert lines[index_of(lines, r"^FROM ")] == "FROM ${PYTHON_IMAGE:-$PYTHON_IMAGE_DEFAULT}"


def test_torch_pins_match_the_makefile_pair() -> None:
    lines = dockerfile()
    assert "ARG TORCH_VERSION=2.14.1" in lines and "ARG TORCHVISION_VERSION=0.29.1" in lines


def test_no_secret_is_a_build_input() -> None:
    for line in dockerfile():
        if line.startswith(("ARG", "ENV")):
            assert not re.search(r"SECRET|ACCESS_KEY|PASSWORD|TOKEN", line), f"Dockerfile: {line}"


def test_every_pip_install_from_an_index_gets_the_build_secrets() -> None:
    """Credentialed index URLs and pip.conf come in as BuildKit secrets, mounted for the RUN alone."""
    runs = [line for line in dockerfile() if line.startswith("RUN ") and re.search(r"pip install (?!--no-deps)", line)]
    assert len(runs) == 2, runs
    for run in runs:
        assert "--mount=type=secret,id=pip_conf " in run and "--mount=type=secret,id=pip_index_url " in run, run
        assert "PIP_CONFIG_FILE=/run/secrets/pip_conf" in run and "$(cat /run/secrets/pip_index_url)" in run, run
    assert not any(line.startswith("# syntax=") for line in (ROOT / "Dockerfile").read_text().splitlines()), (
        "a syntax line makes BuildKit fetch the frontend from Docker Hub; the built-in one has RUN --mount"
    )


def test_compose_passes_the_dockerfiles_source_args_and_v2_secrets() -> None:
    args = compose("docker-compose.yml")["services"]["job"]["build"]["args"]
    declared = {m for line in dockerfile() for m in re.findall(r"^ARG ((?:PYTHON_IMAGE|PIP_[A-Z_]+))=", line)}
    assert set(args) == declared == {"PYTHON_IMAGE", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_TRUSTED_HOST"}
    secrets = compose("docker/compose.build-secrets.yml")
    assert secrets["services"]["job"]["build"]["secrets"] == ["pip_index_url", "pip_conf"]
    assert set(secrets["secrets"]) == {"pip_index_url", "pip_conf"}


def test_compose_commands_work_without_env_file() -> None:
    """`${VAR:?}` fails every command, `down -v` included, when .env is missing: none in the base file."""
    text = (ROOT / "docker-compose.yml").read_text()
    assert ":?" not in text
    s3 = "\n".join(compose("docker-compose.yml")["services"]["s3"]["command"])
    assert 'if [ -z "$$S3_ACCESS_KEY" ] || [ -z "$$S3_SECRET_KEY" ]' in s3 and "exit 2" in s3


def test_data_mirror_override_adds_the_mount_and_the_source_to_the_same_command() -> None:
    base = compose("docker-compose.yml")["services"]["job"]
    mirror = compose("docker/compose.data-mirror.yml")["services"]["job"]
    assert mirror["command"][: len(base["command"])] == base["command"]
    assert mirror["command"][len(base["command"]) :] == [
        "--set",
        "data.source=${DATA_SOURCE:-/data/cifar-10-python.tar.gz}",
        "--set",
        "data.sha256=${DATA_SHA256:?set DATA_SHA256 in .env to the archive's sha256 (see .env.example)}",
    ]
    assert mirror["volumes"] == ["${DATA_DIR:-./data}:/data:ro"]


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
    assert env["AWS_SECRET_ACCESS_KEY"] == "${AWS_SECRET_ACCESS_KEY:-}", "from .env; checked by the job, not by interpolation"
    assert any(v.endswith(":/home/sweep/.cache/sweep-job") for v in job["volumes"]), job["volumes"]


def test_published_ports_are_loopback_only() -> None:
    for name in ("docker-compose.yml", "docker/compose.e2e.yml", "docker-compose.gpu.yml", "docker/compose.data-mirror.yml"):
        for service, spec in compose(name)["services"].items():
            for port in spec.get("ports", []):
                assert str(port).startswith("127.0.0.1:"), f"{name}: {service} publishes {port} beyond loopback"


def test_gpu_override_reserves_every_nvidia_gpu() -> None:
    job = compose("docker-compose.gpu.yml")["services"]["job"]
    devices = job["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]


def test_e2e_override_only_swaps_the_s3_service_and_the_build_network() -> None:
    override = compose("docker/compose.e2e.yml")
    assert set(override) == {"services"} and set(override["services"]) == {"s3", "job"}
    assert set(override["services"]["s3"]) <= {"image", "entrypoint", "command", "healthcheck"}
    assert override["services"]["job"] == {"build": {"network": "host"}}, "only the build network, for the loopback wheel server"


def test_env_example_documents_every_compose_variable() -> None:
    files = ("docker-compose.yml", "docker-compose.gpu.yml", "docker/compose.data-mirror.yml", "docker/compose.build-secrets.yml")
    used = {v for n in files for v in re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", (ROOT / n).read_text())}
    used |= set(compose("docker-compose.yml")["services"]["job"]["build"]["args"])
    # Optional ones are documented commented out (`#NAME=`): set means something, unset the default.
    documented = set(re.findall(r"^#?([A-Z_][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.M))
    assert used <= documented, f".env.example: missing {sorted(used - documented)}"


def test_ray_pin_matches_pyproject() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "ray[default,tune]==2.60.0" in deps, "the image installs pyproject's dependencies; KubeRay needs the exact Ray"
