"""`sweep submit` without a cluster: what is refused, how fast, and in which words; and, on the real
local cluster of test_cluster.py, that stopping `sweep submit` stops its job.

The other real cluster runs are in test_cluster.py. Here the far end is otherwise nothing at all (a
closed port) or a tiny HTTP server on loopback that answers like a dashboard that refuses us.
"""

from __future__ import annotations

import http.server
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_cluster import Cluster, _api, _submit, cluster  # noqa: F401 (cluster: the fixture, a real two-node Ray)

from job import submit
from job.spec import SpecError, load_spec

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "specs" / "smoke.yaml"
S3_SMOKE = ["storage.uri=s3://bucket/prefix"]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _refusing_server(status: int, body: str) -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.end_headers()
            self.wfile.write(body.encode())

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def unauthorized_dashboard() -> Iterator[str]:
    yield from _refusing_server(401, "Unauthorized: Missing authentication token")


@pytest.fixture
def not_a_dashboard() -> Iterator[str]:
    yield from _refusing_server(404, "no such page")


def test_local_storage_is_refused_before_anything_is_contacted(monkeypatch: pytest.MonkeyPatch) -> None:
    def contacted(*args: object, **kwargs: object) -> None:
        raise AssertionError("submit contacted the cluster before checking storage")

    monkeypatch.setattr(submit.requests, "get", contacted)
    monkeypatch.setattr(submit, "JobSubmissionClient", contacted)
    job = load_spec(SMOKE, ["storage.uri=results"])
    with pytest.raises(SpecError) as err:
        submit.submit(job, "http://127.0.0.1:8265")
    assert err.value.problems == [
        "storage.uri: a Ray cluster needs shared storage (got results). Use s3://bucket/prefix and set AWS_* variables on the cluster."
    ]


def test_unreachable_address_is_one_line_within_seconds() -> None:
    address = f"http://127.0.0.1:{_closed_port()}"  # nothing listens there
    started = time.monotonic()
    with pytest.raises(SpecError) as err:
        submit.submit(load_spec(SMOKE, S3_SMOKE), address)
    assert time.monotonic() - started < 10
    assert err.value.problems == [f"--address: cannot reach the Ray dashboard at {address} (ConnectionError). Start the cluster or fix the address."]


def test_address_without_scheme_is_refused() -> None:
    with pytest.raises(SpecError, match=r"--address: expected the Ray dashboard's URL \(got 127.0.0.1:8265\)"):
        submit.submit(load_spec(SMOKE, S3_SMOKE), "127.0.0.1:8265")


def test_an_http_server_that_is_not_ray_is_named(not_a_dashboard: str) -> None:
    with pytest.raises(SpecError, match=r"HTTP 404 from /api/version: not a Ray dashboard"):
        submit.submit(load_spec(SMOKE, S3_SMOKE), not_a_dashboard)


def test_a_refused_token_says_how_to_send_one(unauthorized_dashboard: str) -> None:
    with pytest.raises(SpecError) as err:
        submit.submit(load_spec(SMOKE, S3_SMOKE), unauthorized_dashboard)
    assert err.value.problems == [
        "--address: the cluster refused the token (Missing authentication token). "
        "Set RAY_AUTH_MODE=token and the cluster's token in ~/.ray/auth_token or RAY_AUTH_TOKEN."
    ]


def test_the_spec_travels_with_overrides_applied(tmp_path: Path) -> None:
    job = load_spec(SMOKE, [*S3_SMOKE, "optim.epochs=3", "search.scheduler={kind: asha, grace_period: 1}"])
    path = submit.write_spec(job, tmp_path)
    assert path.name == "smoke.yaml"
    assert load_spec(path) == job
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smoke.yaml"]  # the upload holds no code


def test_submit_does_not_import_torch() -> None:
    code = "import sys, job.submit; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "optim.lrr=0.1"], "error: optim.lrr: not a field of the spec. Did you mean 'lr'?"),
        ([], "error: storage.uri: a Ray cluster needs shared storage (got results)."),
        (["--set", "storage.uri=s3://bucket/prefix"], "error: --address: cannot reach the Ray dashboard at http://127.0.0.1:1 (ConnectionError)."),
    ],
    ids=["invalid-spec", "local-storage", "unreachable"],
)
def test_cli_refusals_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    command = [sys.executable, "-m", "job", "submit", "--address", "http://127.0.0.1:1", str(SMOKE), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(message) and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def _status(cluster: Cluster, job_id: str) -> str:
    return _api(cluster, f"/api/jobs/{job_id}")["status"]


def _wait_for_status(cluster: Cluster, job_id: str, wanted: set[str], timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while (status := _status(cluster, job_id)) not in wanted:
        assert time.monotonic() < deadline, f"{job_id} still {status}, not {wanted}, after {timeout_s} s"
        time.sleep(0.5)
    return status


@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_stopping_submit_stops_its_job_on_the_cluster(cluster: Cluster, bucket_uri: str, sig: int, code: int) -> None:
    """A CronJob's activeDeadlineSeconds ends the submitter with SIGTERM, Ctrl-C with SIGINT: the Ray job ends too."""
    # Epochs of ~1 s (batch 16 on 20,000 images) x 50: the sweep would run for minutes.
    slow = [f"storage.uri={bucket_uri}", "search.space={}", "optim.epochs=50", "data.synthetic_train=20000", "optim.batch_size=16"]
    sweep = _submit(cluster, slow)
    job_id = ""
    try:
        assert sweep.stdout is not None
        for line in sweep.stdout:  # stderr too: `submitted <id> to <address>: ...` comes first
            if line.startswith("submitted "):
                job_id = line.split()[1]
                break
        assert job_id, "no `submitted` line"
        _wait_for_status(cluster, job_id, {"RUNNING"}, timeout_s=120)
        sweep.send_signal(sig)
        output, _ = sweep.communicate(timeout=60)
        print(output)  # what the CronJob's log shows (with -s)
        assert sweep.returncode == code, output
        assert f"stopped: job {job_id} stopped on the cluster" in output.splitlines(), output
        assert "Traceback" not in output, output
        assert _status(cluster, job_id) == "STOPPED"
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.communicate()
        if job_id and _status(cluster, job_id) not in {"STOPPED", "SUCCEEDED", "FAILED"}:
            _api(cluster, f"/api/jobs/{job_id}/stop", method="POST")
            _wait_for_status(cluster, job_id, {"STOPPED", "SUCCEEDED", "FAILED"}, timeout_s=60)
