"""Verified reads against a real S3-protocol server (moto): `sweep results --verify` and `--download-best`
check every file against the run's manifest, and a damaged manifest or latest.json is one line, never a
traceback. Runs are built with `catalog.commit_run` directly: no Ray."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import boto3
import pytest

from job import catalog, cli
from job.catalog import MANIFEST
from job.credentials import StorageSettings
from job.results import Attempt, Manifest, TrialSummary
from job.storage import Store

NAME, RUN, OLDER_RUN = "smoke", "20260102T000000Z-beef", "20260101T000000Z-0001"
REPORT = {
    "leaderboard.csv": b"rank,trial_id,best_test_acc\n1,a_00000,41.5\n",
    "metrics.csv": b"trial_id,epoch,test_acc\na_00000,1,41.5\n",
    "best/model.pt": bytes(range(256)) * 64,
    "best/trial.json": b'{"epoch": 3}',
}


class Run:
    """One committed run in a fresh bucket, plus raw boto3 access to tamper with it."""

    def __init__(self, env: dict[str, str], uri: str, tmp_path: Path) -> None:
        self.uri, self.sweep = uri, f"{uri}/{NAME}"
        self.bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        self.prefix = f"{prefix}/{NAME}"
        self.s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1")
        self.store = Store(uri, StorageSettings.from_env(env))
        self.store.check()
        self.tmp = tmp_path
        self.manifest = self.commit(RUN)

    def commit(self, run_id: str) -> Manifest:
        folder = self.tmp / f"report-{run_id}"
        for rel, data in REPORT.items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (folder / rel).write_bytes(data)
        trial = TrialSummary("a_00000", "basic", {"optim.lr": 0.001}, "TERMINATED", "node", 3, {"test_acc": 41.5, "test_loss": 1.7}, "")
        manifest = Manifest(
            name=NAME,
            run_id=run_id,
            metric="test_acc",
            mode="max",
            spec={"name": NAME},
            versions={},
            best_trial="a_00000",
            trials=(trial,),
            attempts=(Attempt("2026-01-02T00:00:00+00:00", 5.0),),
        )
        return catalog.commit_run(self.store, NAME, run_id, folder, manifest)

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}"

    def read(self, rel: str) -> bytes:
        return self.s3.get_object(Bucket=self.bucket, Key=self.key(rel))["Body"].read()

    def put(self, rel: str, data: bytes) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=self.key(rel), Body=data)

    def flip_byte(self, rel: str) -> None:
        data = bytearray(self.read(rel))
        data[len(data) // 2] ^= 0x01
        self.put(rel, bytes(data))


@pytest.fixture
def run(s3_env: dict[str, str], bucket_uri: str, tmp_path: Path) -> Run:
    return Run(s3_env, bucket_uri, tmp_path)


def _results(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["results", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _one_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


# --- --verify ---------------------------------------------------------------------------------------


def test_an_untouched_run_verifies(run: Run, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _results(capsys, run.sweep, "--verify")
    assert code == 0 and f"verified: {len(REPORT)} files ok" in out and not err


@pytest.mark.parametrize(
    ("rel", "tamper", "what"),
    [
        ("report/best/model.pt", "flip", r"sha256 differs from the manifest's [0-9a-f]{12}\.\.\. \(got [0-9a-f]{12}\.\.\.\)"),
        ("report/leaderboard.csv", "flip", r"sha256 differs"),
        ("report/metrics.csv", "delete", r"missing \(got no file\)"),
        ("report/best/trial.json", "append", r"size differs from the manifest's 12 bytes \(got 13\)"),
    ],
)
def test_verify_names_each_bad_file(run: Run, capsys: pytest.CaptureFixture[str], rel: str, tamper: str, what: str) -> None:
    path = f"{RUN}/{rel}"
    if tamper == "flip":
        run.flip_byte(path)
    elif tamper == "delete":
        run.s3.delete_object(Bucket=run.bucket, Key=run.key(path))
    else:
        run.put(path, run.read(path) + b" ")
    code, out, _ = _results(capsys, run.sweep, "--verify")
    bad = [line for line in out.splitlines() if line.startswith("bad: ")]
    assert code == 1 and len(bad) == 1, out
    assert bad[0].startswith(f"bad: {run.sweep}/{path}: ")
    assert re.search(what, bad[0]), bad[0]
    assert f"verified: {len(REPORT) - 1} files ok, 1 bad" in out


def test_verify_picks_the_run_named_by_run(run: Run, capsys: pytest.CaptureFixture[str]) -> None:
    run.commit(OLDER_RUN)
    run.flip_byte(f"{OLDER_RUN}/report/leaderboard.csv")
    assert _results(capsys, run.sweep, "--verify")[0] == 0  # the default is the newest
    code, out, _ = _results(capsys, run.sweep, "--verify", "--run", OLDER_RUN)
    assert code == 1 and f"bad: {run.sweep}/{OLDER_RUN}/report/leaderboard.csv: sha256 differs" in out


# --- --download-best --------------------------------------------------------------------------------


def test_download_best_gets_the_verified_checkpoint(run: Run, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = _results(capsys, run.sweep, "--download-best", str(tmp_path / "best"))
    assert code == 0 and "best checkpoint (a_00000)" in out
    assert (tmp_path / "best/model.pt").read_bytes() == REPORT["best/model.pt"]
    assert (tmp_path / "best/trial.json").read_bytes() == REPORT["best/trial.json"]


@pytest.mark.parametrize(
    ("tamper", "what"),
    [
        ("flip", "report/best/model.pt: sha256 differs from the manifest's"),
        ("extra", "report/best/extra.bin: not listed in the manifest (got 4 bytes)"),
    ],
)
def test_a_tampered_checkpoint_is_refused_and_removed(run: Run, capsys: pytest.CaptureFixture[str], tmp_path: Path, tamper: str, what: str) -> None:
    if tamper == "flip":
        run.flip_byte(f"{RUN}/report/best/model.pt")
    else:
        run.put(f"{RUN}/report/best/extra.bin", b"evil")
    dest = tmp_path / "best"
    code, _, err = _results(capsys, run.sweep, "--download-best", str(dest))
    line = _one_error(err)
    assert code == 2 and f"{run.sweep}/{RUN}/{what}" in line and f"removed from {dest}" in line, line
    assert not [p for p in dest.rglob("*") if p.is_file()]


# --- damaged manifests and pointers -----------------------------------------------------------------


def _valid_manifest(run: Run) -> dict[str, Any]:
    return json.loads(run.read(f"{RUN}/report/{MANIFEST}"))


@pytest.mark.parametrize(
    ("damage", "what"),
    [
        (lambda m: b"\x89PNG\r\n\x1a\n garbage", r"not JSON|not valid"),
        (lambda m: b"", r"not JSON \(Expecting value at byte 0\) \(got 0 bytes\)"),
        (lambda m: json.dumps(m).encode()[:100], r"not JSON \(.* at byte \d+\) \(got 100 bytes\)"),
        (lambda m: b"[1, 2]", r"not valid \(manifest is not an object\)"),
        (lambda m: json.dumps({**m, "trials": "all of them"}).encode(), r"not valid \(manifest.trials should be list \(got str\)\)"),
        (lambda m: json.dumps({**m, "files": [{"path": "report/x", "size": "12"}]}).encode(), r"manifest.files\[0\].sha256 is missing"),
        (lambda m: json.dumps({k: v for k, v in m.items() if k != "best_trial"}).encode(), r"manifest.best_trial is missing"),
        (lambda m: json.dumps({**m, "schema_version": 99}).encode(), r"schema_version 99 is not one this version reads"),
    ],
    ids=["garbage", "empty", "truncated", "a-list", "trials-a-string", "file-without-digest", "no-best-trial", "future-schema"],
)
def test_a_damaged_manifest_is_one_line(run: Run, capsys: pytest.CaptureFixture[str], damage: Any, what: str) -> None:
    run.put(f"{RUN}/report/{MANIFEST}", damage(_valid_manifest(run)))
    code, out, err = _results(capsys, run.sweep)
    line = _one_error(err)
    assert code == 2 and line.startswith(f"error: {run.sweep}/{RUN}/report/{MANIFEST}: "), line
    assert re.search(what, line), line
    assert line.endswith("The run is corrupt or was cut short: rerun the sweep, or pick another --run")
    assert f"{RUN}  corrupt" in out  # the listing still printed, with the run marked


def test_the_listing_survives_a_corrupt_run(run: Run, capsys: pytest.CaptureFixture[str]) -> None:
    run.commit(OLDER_RUN)
    run.put(f"{OLDER_RUN}/report/{MANIFEST}", b"{")
    code, out, err = _results(capsys, run.sweep)
    assert code == 0 and not err
    assert f"{OLDER_RUN}  corrupt" in out and f"{RUN}  committed" in out and "leaderboard of " + RUN in out
    code, _, err = _results(capsys, run.sweep, "--run", OLDER_RUN)
    assert code == 2 and f"{OLDER_RUN}/report/{MANIFEST}: not JSON" in _one_error(err)


@pytest.mark.parametrize("pointer", [b"", b"{nope", b"[]", b'{"run_id": 7}', b'{"run_id": "../../elsewhere"}'])
def test_a_damaged_latest_pointer_is_one_line(run: Run, capsys: pytest.CaptureFixture[str], pointer: bytes) -> None:
    run.put("latest.json", pointer)
    code, _, err = _results(capsys, run.sweep)
    line = _one_error(err)
    assert code == 2 and line.startswith(f"error: {run.sweep}/latest.json: "), line
    assert line.endswith("Pick a run with --run; the next run with results rewrites it")
    assert _results(capsys, run.sweep, "--run", RUN)[0] == 0


# --- the record itself ------------------------------------------------------------------------------


def test_the_manifest_round_trips_and_reads_schema_1(run: Run) -> None:
    stored = _valid_manifest(run)
    assert Manifest.from_dict(stored) == run.manifest == catalog.read_manifest(run.store, NAME, RUN)
    assert stored["schema_version"] == 2 and stored["wall_s"] == 5.0
    assert sorted(f["path"] for f in stored["files"]) == sorted(f"report/{rel}" for rel in REPORT)
    old = {k: v for k, v in stored.items() if k != "attempts"} | {"schema_version": 1, "wall_s": 7.25}
    assert Manifest.from_dict(old).attempts == (Attempt("", 7.25),) and Manifest.from_dict(old).wall_s == 7.25
