"""No secret persisted anywhere: a real `sweep run` with a canary secret key, then every place a run
writes (the bucket, Ray's session folder, HOME, the console) is searched for it, raw and base64."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import pytest
from conftest import FOREIGN_VARS, TEST_ENV

REPO = Path(__file__).resolve().parents[1]
SMOKE = str(REPO / "specs" / "smoke.yaml")

pytestmark = pytest.mark.slow


def _needles(secret: str) -> list[bytes]:
    """The secret, and its base64 at each of the three byte alignments it may sit at inside a larger
    encoded blob (the first and last four characters depend on the neighbours, so they are dropped)."""
    raw = secret.encode()
    return [raw] + [base64.b64encode(b"\0" * pad + raw)[4:-4] for pad in range(3)]


def _hits(blobs: dict[str, bytes], secret: str) -> list[str]:
    return [where for where, data in blobs.items() if any(needle in data for needle in _needles(secret))]


def _files(root: Path) -> dict[str, bytes]:
    found = {}
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and not path.is_socket():
            try:
                found[str(path)] = path.read_bytes()
            except OSError:  # a socket or a file Ray removed while we walked
                continue
    return found


def _objects(endpoint: str, bucket: str) -> dict[str, bytes]:
    s3 = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=TEST_ENV["AWS_ACCESS_KEY_ID"], aws_secret_access_key="any"
    )  # moto takes any key
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    keys = [obj["Key"] for page in pages for obj in page.get("Contents", [])]
    return {f"s3://{bucket}/{key}": s3.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}


@pytest.fixture
def ray_tmp() -> Path:
    """Ray's temp dir; short, because Ray's socket paths under it must stay under ~107 characters."""
    folder = Path(f"/tmp/rt-{uuid.uuid4().hex[:8]}")
    folder.mkdir(mode=0o700)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_a_run_persists_no_secret_anywhere(s3_server: str, tmp_path: Path, ray_tmp: Path) -> None:
    canary = f"canary-{uuid.uuid4().hex}"
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN_VARS and not k.startswith(("RAY_", "AWS_"))}
    env.update(
        TEST_ENV,
        AWS_SECRET_ACCESS_KEY=canary,
        AWS_ENDPOINT_URL=s3_server,
        HOME=str(home),
        RAY_TMPDIR=str(ray_tmp),
        PYTHONUNBUFFERED="1",
        RAY_USAGE_STATS_ENABLED="0",
    )
    bucket = f"secret-{uuid.uuid4().hex[:12]}"
    cmd = [sys.executable, "-m", "job", "run", SMOKE, "--set", f"storage.uri=s3://{bucket}/sweeps"]
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, timeout=300)
    assert done.returncode == 0, (done.stdout[-3000:] + done.stderr[-3000:]).decode(errors="replace")

    objects = _objects(s3_server, bucket)
    latest = json.loads(objects[f"s3://{bucket}/sweeps/smoke/latest.json"])
    manifest = json.loads(objects[f"s3://{bucket}/sweeps/smoke/{latest['manifest']}"])
    assert [t["status"] for t in manifest["trials"]] == ["TERMINATED"] * 6
    assert any("/tune/" in key for key in objects) and list(ray_tmp.glob("ray/session_*")), "the run wrote nowhere we search"

    places = {**objects, **_files(ray_tmp), **_files(home), "stdout": done.stdout, "stderr": done.stderr}
    assert len(places) > 50, sorted(places)  # the search did look somewhere
    hits = _hits(places, canary)
    assert not hits, "the secret was persisted in:\n" + "\n".join(hits)
