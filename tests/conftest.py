"""Shared fixtures: a real S3-protocol server on loopback (moto's standalone server, a subprocess),
the AWS environment that points at it, and a fresh bucket URI per test."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

SERVER_START_TIMEOUT_S = 30.0  # moto imports every AWS service model on start: a few seconds on 2 cores
TEST_ENV = {"AWS_ACCESS_KEY_ID": "testing-key-id", "AWS_SECRET_ACCESS_KEY": "testing-secret-value", "AWS_REGION": "us-east-1"}
# A developer's own AWS settings must never reach a test (or a real account).
FOREIGN_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_SESSION_TOKEN", "AWS_PROFILE")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_answering(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"moto server exited with {server.returncode}:\n{log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # any HTTP answer, even an S3 error, means it is serving
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"moto server did not answer at {url} within {SERVER_START_TIMEOUT_S} s:\n{log.read_text()[-2000:]}")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's standalone S3 server on 127.0.0.1; yields its endpoint URL, e.g. http://127.0.0.1:PORT."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_answering(url, server, log)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture
def s3_env(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """os.environ pointing boto3 and our StorageSettings at the moto server; returns the variables set."""
    for name in FOREIGN_VARS:
        monkeypatch.delenv(name, raising=False)
    env = {"AWS_ENDPOINT_URL": s3_server, **TEST_ENV}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def bucket_uri(s3_env: dict[str, str]) -> str:
    """A storage URI in a bucket no other test uses (the bucket itself is not created)."""
    return f"s3://test-{uuid.uuid4().hex[:16]}/prefix"
