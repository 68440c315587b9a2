"""job.storage against a real S3-protocol server (moto, on loopback) and a local folder: the same layout;
keys resolved, never carried; and endpoints that refuse, reset or never answer, named in one line."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import re
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import pyarrow.fs
import pytest

from job import catalog, cli, credentials, storage
from job.catalog import MANIFEST, RunInfo, split_sweep_uri
from job.credentials import StorageSettings
from job.results import Attempt, Manifest, TrialSummary
from job.spec import SpecError
from job.storage import Store

NAME, RUN, OLDER_RUN = "cifar10-mlp", "20260101T000000Z-beef", "20251231T000000Z-0001"
REPORT_FILES = {
    "leaderboard.csv": b"rank,trial_id\n1,a\n",
    "metrics.csv": b"trial_id,epoch\na,1\n",
    "curves/a_00000.png": b"\x89PNG fake curve",
    "best/trial.json": b'{"epoch": 3}',
    "report.html": b"<html></html>",
}


def _manifest(best_trial: str | None = "a_00000", run_id: str = RUN, **changes: Any) -> Manifest:
    """What outcome._manifest hands to commit_run: no files yet."""
    trial = TrialSummary("a_00000", "basic", {"optim.lr": 0.001}, "TERMINATED", "node-1", 3, {"test_acc": 41.5, "test_loss": 1.7}, "")
    made = Manifest(
        name=NAME,
        run_id=run_id,
        metric="test_acc",
        mode="max",
        spec={"name": NAME},
        versions={"python": "3.11"},
        best_trial=best_trial,
        trials=(trial,),
        attempts=(Attempt("2026-01-01T00:00:00+00:00", 12.5),),
    )
    return replace(made, **changes)


def _closed_port() -> int:
    with socket.socket() as sock:  # bound, never listening, closed on return: nothing answers there
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _s3_client(env: dict[str, str]) -> Any:
    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1")


def _report_dir(tmp_path: Path, files: dict[str, bytes] = REPORT_FILES) -> Path:
    folder = tmp_path / "report-src"
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return folder


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Store, Callable[[str], bytes | None], Callable[[str, bytes], None]]:
    """A checked store plus raw read/write of `<uri>/<rel>` that bypass job.storage, to verify the layout."""
    if request.param == "local":
        root = tmp_path / "store"
        store = Store(str(root), StorageSettings())

        def raw_put(rel: str, data: bytes) -> None:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)

        store.check()
        return store, lambda rel: (root / rel).read_bytes() if (root / rel).is_file() else None, raw_put
    env = request.getfixturevalue("s3_env")
    uri = request.getfixturevalue("bucket_uri")
    store = Store(uri, StorageSettings.from_env(env))
    store.check()
    client, bucket = _s3_client(env), uri.split("/")[2]

    def raw_get(rel: str) -> bytes | None:
        try:
            return client.get_object(Bucket=bucket, Key=f"prefix/{rel}")["Body"].read()
        except client.exceptions.NoSuchKey:
            return None

    return store, raw_get, lambda rel, data: client.put_object(Bucket=bucket, Key=f"prefix/{rel}", Body=data)


# --- settings -------------------------------------------------------------------------------------


def test_settings_endpoint_s3_variable_wins_and_region_falls_back() -> None:
    both = StorageSettings.from_env({"AWS_ENDPOINT_URL": "http://generic:1", "AWS_ENDPOINT_URL_S3": "http://s3-only:2"})
    assert both.endpoint_url == "http://s3-only:2"
    assert StorageSettings.from_env({"AWS_ENDPOINT_URL": "http://generic:1"}).endpoint_url == "http://generic:1"
    assert StorageSettings.from_env({"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "us-west-2"}).region == "eu-west-1"
    assert StorageSettings.from_env({"AWS_DEFAULT_REGION": "us-west-2"}).region == "us-west-2"
    assert StorageSettings.from_env({}).region == "us-east-1"
    assert StorageSettings.from_env({"AWS_REGION": ""}).region == "us-east-1"  # empty means unset


def test_settings_and_the_filesystem_carry_no_key() -> None:
    """Ray pickles the filesystem into tuner.pkl and its experiment state: keys are resolved on each node."""
    env = {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:1",
        "AWS_ACCESS_KEY_ID": "id-value",
        "AWS_SECRET_ACCESS_KEY": "s3cr3t-value",
        "AWS_SESSION_TOKEN": "t0ken-value",
    }
    settings = StorageSettings.from_env(env)
    store = Store("s3://bucket/p", settings)
    for blob in (repr(settings).encode(), repr(store).encode(), pickle.dumps(settings), pickle.dumps(store.fs)):
        assert not any(value.encode() in blob for value in ("id-value", "s3cr3t-value", "t0ken-value")), blob


# --- check ----------------------------------------------------------------------------------------


def _no_ambient_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def test_check_without_credentials_names_the_variables(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _no_ambient_credentials(monkeypatch, tmp_path)
    store = Store("s3://some-bucket/prefix", StorageSettings.from_env(os.environ))
    with pytest.raises(
        SpecError, match=r"^s3://some-bucket/prefix: no S3 credentials \(got AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY unset"
    ) as err:
        store.check()
    assert len(err.value.problems) == 1 and "\n" not in str(err.value)


def test_check_with_only_a_key_id_names_the_missing_secret(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _no_ambient_credentials(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "id")
    with pytest.raises(SpecError, match=r"incomplete S3 credentials \(got AWS_SECRET_ACCESS_KEY unset\)"):
        Store("s3://some-bucket/prefix", StorageSettings.from_env(os.environ)).check()


def test_check_fails_fast_on_an_unreachable_endpoint(s3_env: dict[str, str]) -> None:
    closed = f"http://127.0.0.1:{_closed_port()}"
    settings = StorageSettings.from_env({**s3_env, "AWS_ENDPOINT_URL": closed})
    started = time.monotonic()
    with pytest.raises(SpecError, match=rf"cannot reach the S3 endpoint .*\(got {closed}\)\. Start the S3 server") as err:
        Store("s3://some-bucket/prefix", settings).check()
    assert time.monotonic() - started < 15
    assert len(err.value.problems) == 1 and s3_env["AWS_SECRET_ACCESS_KEY"] not in str(err.value)


def test_a_malformed_endpoint_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match=r"^AWS_ENDPOINT_URL: not an http\(s\) URL \(got localhost:9000\)"):
        Store("s3://bucket/p", StorageSettings(endpoint_url="localhost:9000"))


def test_check_creates_the_bucket_and_is_idempotent(s3_env: dict[str, str], bucket_uri: str) -> None:
    client, bucket = _s3_client(s3_env), bucket_uri.split("/")[2]
    assert bucket not in [b["Name"] for b in client.list_buckets()["Buckets"]]
    store = Store(bucket_uri, StorageSettings.from_env(s3_env))
    store.check()
    store.check()
    assert bucket in [b["Name"] for b in client.list_buckets()["Buckets"]]


def test_check_on_an_unwritable_local_folder(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(SpecError, match=r"a-file/results: storage failed .*Check the folder"):
        Store(str(tmp_path / "a-file" / "results"), StorageSettings()).check()


def test_uris_that_are_not_storage() -> None:
    with pytest.raises(SpecError, match=r"^storage.uri: unsupported scheme 'gs'"):
        Store("gs://bucket/p", StorageSettings())
    with pytest.raises(SpecError, match=r"^storage.uri: not a valid bucket name \(got 'Bad_Bucket'\)"):
        Store("s3://Bad_Bucket/p", StorageSettings())


# --- commit and read back (local and S3 alike) ----------------------------------------------------


def test_commit_uploads_every_file_then_the_manifest_then_latest(backend: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, raw_get, _ = backend
    order: list[str] = []
    write = store._write
    monkeypatch.setattr(store, "_write", lambda rel, data: (order.append(rel), write(rel, data)))
    written = catalog.commit_run(store, NAME, RUN, _report_dir(tmp_path), _manifest())

    assert order[-2:] == [f"{NAME}/{RUN}/report/{MANIFEST}", f"{NAME}/latest.json"]
    assert sorted(order[:-2]) == sorted(f"{NAME}/{RUN}/report/{rel}" for rel in REPORT_FILES)
    manifest = json.loads(raw_get(f"{NAME}/{RUN}/report/{MANIFEST}"))
    assert manifest == json.loads(json.dumps(written.to_dict())) and manifest["metric"] == "test_acc" and manifest["committed_at"]
    assert manifest["schema_version"] == 2 and manifest["wall_s"] == 12.5 and manifest["attempts"][0]["wall_s"] == 12.5
    assert sorted(f["path"] for f in manifest["files"]) == sorted(f"report/{rel}" for rel in REPORT_FILES)
    for entry in manifest["files"]:
        data = raw_get(f"{NAME}/{RUN}/{entry['path']}")
        assert data == REPORT_FILES[entry["path"].removeprefix("report/")]
        assert entry["size"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
    latest = json.loads(raw_get(f"{NAME}/latest.json"))
    assert latest["run_id"] == RUN and latest["manifest"] == f"{RUN}/report/{MANIFEST}"
    assert catalog.runs(store, NAME) == [RunInfo(RUN, "committed", written)] and catalog.read_manifest(store, NAME, RUN) == written
    assert catalog.latest(store, NAME) == RUN


def test_a_crash_before_the_manifest_leaves_the_run_uncommitted(backend: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, raw_get, _ = backend
    write = store._write

    def dies_on_third_file(rel: str, data: Any) -> None:
        if rel.endswith("metrics.csv"):  # files upload sorted: best/, curves/, leaderboard.csv, metrics.csv
            raise KeyboardInterrupt("killed mid-upload")
        write(rel, data)

    monkeypatch.setattr(store, "_write", dies_on_third_file)
    with pytest.raises(KeyboardInterrupt):
        catalog.commit_run(store, NAME, RUN, _report_dir(tmp_path), _manifest())
    assert raw_get(f"{NAME}/{RUN}/report/leaderboard.csv") is not None  # some files did land
    assert not catalog.is_committed(store, NAME, RUN) and catalog.read_manifest(store, NAME, RUN) is None
    assert catalog.runs(store, NAME) == [RunInfo(RUN, "incomplete")]
    assert raw_get(f"{NAME}/latest.json") is None and catalog.latest(store, NAME) is None


def test_report_files_without_a_manifest_are_an_incomplete_run(backend: Any) -> None:
    store, _, raw_put = backend
    raw_put(f"{NAME}/{RUN}/report/leaderboard.csv", b"rank\n1\n")
    raw_put(f"{NAME}/{RUN}/tune/experiment_state.json", b"{}")
    assert store.run_ids(NAME) == [RUN]
    assert catalog.runs(store, NAME) == [RunInfo(RUN, "incomplete")]


def test_recommit_replaces_the_report_and_drops_stale_files(backend: Any, tmp_path: Path) -> None:
    store, raw_get, _ = backend
    catalog.commit_run(store, NAME, RUN, _report_dir(tmp_path / "first"), _manifest())
    second = {"leaderboard.csv": b"rank,trial_id\n1,b\n", "curves/b_00001.png": b"\x89PNG other"}
    resumed = (Attempt("2026-01-01T00:00:00+00:00", 12.5), Attempt("2026-01-01T01:00:00+00:00", 30.0))
    manifest = catalog.commit_run(store, NAME, RUN, _report_dir(tmp_path / "second", second), _manifest(attempts=resumed))
    assert [f.path for f in manifest.files] == ["report/curves/b_00001.png", "report/leaderboard.csv"]
    assert raw_get(f"{NAME}/{RUN}/report/curves/a_00000.png") is None
    assert raw_get(f"{NAME}/{RUN}/report/leaderboard.csv") == second["leaderboard.csv"]
    assert catalog.read_manifest(store, NAME, RUN).attempts == resumed and catalog.read_manifest(store, NAME, RUN).wall_s == 42.5


def test_latest_keeps_pointing_at_the_newest_run(backend: Any, tmp_path: Path) -> None:
    store, raw_get, _ = backend
    catalog.commit_run(store, NAME, RUN, _report_dir(tmp_path), _manifest())
    catalog.commit_run(store, NAME, OLDER_RUN, _report_dir(tmp_path), _manifest(run_id=OLDER_RUN))  # an older run resumed and finished late
    assert json.loads(raw_get(f"{NAME}/latest.json"))["run_id"] == RUN
    assert store.run_ids(NAME) == [OLDER_RUN, RUN]
    assert [r.status for r in catalog.runs(store, NAME)] == ["committed", "committed"]


def test_a_run_without_results_commits_but_leaves_latest_alone(backend: Any, tmp_path: Path) -> None:
    """latest.json points at the newest run that finished with results: a newer run whose every trial failed does not move it."""
    store, raw_get, raw_put = backend
    catalog.commit_run(store, NAME, OLDER_RUN, _report_dir(tmp_path), _manifest(run_id=OLDER_RUN))
    failed = catalog.commit_run(store, NAME, RUN, _report_dir(tmp_path), _manifest(best_trial=None))
    assert failed.best_trial is None and catalog.is_committed(store, NAME, RUN)
    assert json.loads(raw_get(f"{NAME}/latest.json"))["run_id"] == OLDER_RUN == catalog.latest(store, NAME)
    raw_put(f"{NAME}/latest.json", b'{"run_id": ')  # damaged: the next run with results rewrites it
    catalog.commit_run(store, NAME, RUN, _report_dir(tmp_path), _manifest())
    assert catalog.latest(store, NAME) == RUN


def test_download_a_folder_and_a_file_and_read_bytes(backend: Any, tmp_path: Path) -> None:
    store, _, _ = backend
    catalog.commit_run(store, NAME, RUN, _report_dir(tmp_path), _manifest())
    got = store.download(f"{NAME}/{RUN}/report/best", tmp_path / "best")
    assert got == [tmp_path / "best" / "trial.json"] and got[0].read_bytes() == REPORT_FILES["best/trial.json"]
    everything = store.download(f"{NAME}/{RUN}", tmp_path / "run")
    assert sorted(everything) == sorted(tmp_path / "run" / "report" / rel for rel in [*REPORT_FILES, MANIFEST])
    assert all(p.is_file() for p in everything)
    one = store.download(f"{NAME}/{RUN}/report/leaderboard.csv", tmp_path / "lb.csv")
    assert one == [tmp_path / "lb.csv"] and one[0].read_bytes() == REPORT_FILES["leaderboard.csv"]
    assert store.read_bytes(f"{NAME}/{RUN}/report/metrics.csv") == REPORT_FILES["metrics.csv"]
    with pytest.raises(SpecError, match=r"report/nothing: nothing stored there"):
        store.download(f"{NAME}/{RUN}/report/nothing", tmp_path / "x")
    with pytest.raises(SpecError, match=r"report/nothing.csv: no such file"):
        store.read_bytes(f"{NAME}/{RUN}/report/nothing.csv")


def test_s3_objects_carry_a_content_type_so_the_report_opens_in_a_browser(s3_env: dict[str, str], bucket_uri: str, tmp_path: Path) -> None:
    store = Store(bucket_uri, StorageSettings.from_env(s3_env))
    store.check()
    catalog.commit_run(store, NAME, RUN, _report_dir(tmp_path), _manifest())
    client, bucket = _s3_client(s3_env), bucket_uri.split("/")[2]
    types = {
        rel: client.head_object(Bucket=bucket, Key=f"prefix/{NAME}/{RUN}/report/{rel}")["ContentType"]
        for rel in ("report.html", "leaderboard.csv", "curves/a_00000.png", MANIFEST)
    }
    assert types == {"report.html": "text/html", "leaderboard.csv": "text/csv", "curves/a_00000.png": "image/png", MANIFEST: "application/json"}


def test_no_runs_under_an_unknown_name(backend: Any) -> None:
    store, _, _ = backend
    assert store.run_ids("never-ran") == [] and catalog.runs(store, "never-ran") == []


# --- where Ray Tune writes ------------------------------------------------------------------------


def test_tune_location_on_s3_is_a_working_pyarrow_filesystem(s3_env: dict[str, str], bucket_uri: str) -> None:
    store = Store(bucket_uri, StorageSettings.from_env(s3_env))
    store.check()
    path, fs = store.tune_location(NAME, RUN)
    bucket = bucket_uri.split("/")[2]
    assert path == f"{bucket}/prefix/{NAME}/{RUN}" and isinstance(fs, pyarrow.fs.S3FileSystem)
    with fs.open_output_stream(f"{path}/tune/experiment_state.json") as out:
        out.write(b'{"ok": true}')
    key = f"prefix/{NAME}/{RUN}/tune/experiment_state.json"
    assert _s3_client(s3_env).get_object(Bucket=bucket, Key=key)["Body"].read() == b'{"ok": true}'
    shipped = pickle.loads(pickle.dumps(fs))  # Ray ships the filesystem to every trial's process
    with shipped.open_input_stream(f"{path}/tune/experiment_state.json") as source:
        assert source.read() == b'{"ok": true}'
    assert store.url(f"{NAME}/{RUN}/tune") == f"s3://{bucket}/prefix/{NAME}/{RUN}/tune"


def test_tune_location_on_a_relative_local_folder_is_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = Store("results", StorageSettings())
    assert not store.is_s3
    assert store.tune_location(NAME, RUN) == (str(tmp_path.resolve() / "results" / NAME / RUN), None)
    assert store.url(f"{NAME}/{RUN}/report") == str(tmp_path.resolve() / "results" / NAME / RUN / "report")


def test_local_writes_are_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = Store(str(tmp_path / "store"), StorageSettings())
    catalog.commit_run(store, NAME, RUN, _report_dir(tmp_path), _manifest())
    assert not [p for p in (tmp_path / "store").rglob("*") if p.name.endswith(storage.PARTIAL)]

    def rename_fails(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(storage.os, "replace", rename_fails)
    with pytest.raises(SpecError, match=r"storage failed \(\[Errno 28\] No space left on device\)"):
        catalog.commit_run(store, NAME, OLDER_RUN, _report_dir(tmp_path), _manifest(run_id=OLDER_RUN))
    assert not (tmp_path / "store" / NAME / OLDER_RUN / "report" / "best" / "trial.json").exists()
    assert not [p for p in (tmp_path / "store").rglob("*") if p.name.endswith(storage.PARTIAL)]


# --- data mirrors and sweep URIs ------------------------------------------------------------------


def test_fetch_object_downloads_a_mirror(s3_env: dict[str, str], bucket_uri: str, tmp_path: Path) -> None:
    Store(bucket_uri, StorageSettings.from_env(s3_env)).check()
    bucket = bucket_uri.split("/")[2]
    _s3_client(s3_env).put_object(Bucket=bucket, Key="mirror/cifar-10-python.tar.gz", Body=b"archive bytes")
    storage.fetch_object(f"s3://{bucket}/mirror/cifar-10-python.tar.gz", tmp_path / "a.tar.gz")
    assert (tmp_path / "a.tar.gz").read_bytes() == b"archive bytes"
    with pytest.raises(SpecError, match=rf"s3://{bucket}/mirror/missing.tar.gz: nothing stored there"):
        storage.fetch_object(f"s3://{bucket}/mirror/missing.tar.gz", tmp_path / "b.tar.gz")
    with pytest.raises(SpecError, match=r"not an S3 object URI"):
        storage.fetch_object(f"s3://{bucket}", tmp_path / "c")


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://sweeps/cifar10/cifar10-mlp", ("s3://sweeps/cifar10", "cifar10-mlp")),
        ("s3://sweeps/cifar10-mlp/", ("s3://sweeps", "cifar10-mlp")),
        ("results/cifar10-mlp", ("results", "cifar10-mlp")),
        ("/abs/results/cifar10-mlp", ("/abs/results", "cifar10-mlp")),
        ("/cifar10-mlp", ("/", "cifar10-mlp")),
        ("cifar10-mlp", (".", "cifar10-mlp")),
    ],
)
def test_split_sweep_uri(uri: str, expected: tuple[str, str]) -> None:
    assert split_sweep_uri(uri) == expected


def test_split_sweep_uri_needs_a_name() -> None:
    with pytest.raises(SpecError, match=r"^s3://sweeps: no sweep name at the end\. Use <storage.uri>/<spec name>"):
        split_sweep_uri("s3://sweeps")


@pytest.mark.slow
def test_ray_tune_writes_its_experiment_folder_into_the_run_folder(s3_env: dict[str, str], bucket_uri: str) -> None:
    """The layout contract end to end: RunConfig(name="tune") lands at <uri>/<name>/<run_id>/tune on S3."""
    ray = pytest.importorskip("ray")
    from ray import tune

    store = Store(bucket_uri, StorageSettings.from_env(s3_env))
    store.check()
    path, fs = store.tune_location(NAME, RUN)

    def trainable(config: dict[str, Any]) -> None:
        tune.report({"test_acc": float(config["x"])})

    ours = not ray.is_initialized()  # leave a Ray runtime that another test started alone
    if ours:
        ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        run_config = tune.RunConfig(name="tune", storage_path=path, storage_filesystem=fs, verbose=0)
        grid = tune.Tuner(trainable, param_space={"x": tune.grid_search([1, 2])}, run_config=run_config).fit()
    finally:
        if ours:
            ray.shutdown()
    assert not grid.errors
    files = store.files(f"{NAME}/{RUN}/tune")
    assert any(re.fullmatch(rf"{NAME}/{RUN}/tune/experiment_state-.*\.json", f) for f in files), files
    assert sum(f.endswith("/result.json") for f in files) == 2
    assert store.run_ids(NAME) == [RUN] and not catalog.is_committed(store, NAME, RUN)
    assert tune.Tuner.can_restore(f"{path}/tune", storage_filesystem=fs)


# --- keys moved out of the environment ------------------------------------------------------------


class _Endpoint:
    """A TCP server on loopback that the test controls, on a thread: `behave(conn)` gets each connection."""

    def __init__(self, behave: Callable[[socket.socket], None]) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.behave, self.held = behave, []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)
            threading.Thread(target=self.behave, args=(conn,), daemon=True).start()

    def close(self) -> None:
        for conn in [self.sock, *self.held]:
            conn.close()


def _black_hole(conn: socket.socket) -> None:
    """Accepts and never answers (a wedged server, a firewall that swallows replies)."""


def _resetter(conn: socket.socket) -> None:
    """Accepts, then closes with RST (SO_LINGER 0): a proxy or load balancer with nothing behind it."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


class _SlowProxy(_Endpoint):
    """Forwards to the S3 server, holding back each response `delay_s`; records what clients sent."""

    def __init__(self, upstream: str, delay_s: float) -> None:
        self.upstream, self.delay_s, self.sent = upstream.removeprefix("http://"), delay_s, bytearray()
        super().__init__(self._forward)

    def _forward(self, conn: socket.socket) -> None:
        host, port = self.upstream.split(":")
        upstream = socket.create_connection((host, int(port)))
        answered = threading.Event()  # cleared by each request, set once its response starts
        threading.Thread(target=self._pump, args=(upstream, conn, answered, True), daemon=True).start()
        self._pump(conn, upstream, answered, False)

    def _pump(self, source: socket.socket, sink: socket.socket, answered: threading.Event, is_response: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(1 << 16):
                if is_response and not answered.is_set():
                    time.sleep(self.delay_s)
                    answered.set()
                elif not is_response:
                    self.sent += data
                    answered.clear()
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def test_keys_move_from_the_environment_to_a_private_file(tmp_path: Path) -> None:
    environ = {
        "AWS_ACCESS_KEY_ID": "id-value",
        "AWS_SECRET_ACCESS_KEY": "s3cr3t-value",
        "AWS_SESSION_TOKEN": "t0ken-value",
        "AWS_SECURITY_TOKEN": "t0ken-value",
        "AWS_PROFILE": "someone-else",
        "AWS_REGION": "eu-west-1",
    }
    path = credentials.move_env_keys_to_file(environ)
    assert path is not None and environ == {"AWS_REGION": "eu-west-1", "AWS_SHARED_CREDENTIALS_FILE": str(path), "AWS_PROFILE": "sweep-job"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.read_text() == "[sweep-job]\naws_access_key_id = id-value\naws_secret_access_key = s3cr3t-value\naws_session_token = t0ken-value\n"
    assert credentials.move_env_keys_to_file(environ) is None  # a second call finds nothing to move
    legacy = {"AWS_ACCESS_KEY_ID": "id-value", "AWS_SECRET_ACCESS_KEY": "s3cr3t-value", "AWS_SECURITY_TOKEN": "old-t0ken"}
    assert credentials.move_env_keys_to_file(legacy).read_text().endswith("aws_session_token = old-t0ken\n") and "AWS_SECURITY_TOKEN" not in legacy
    half = {"AWS_ACCESS_KEY_ID": "id-value"}
    assert credentials.move_env_keys_to_file(half) is None and half == {"AWS_ACCESS_KEY_ID": "id-value"}  # check() names the missing secret


def test_boto3_and_pyarrow_sign_with_the_moved_keys(s3_env: dict[str, str], bucket_uri: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """pyarrow's C++ SDK and boto3 both read AWS_SHARED_CREDENTIALS_FILE and AWS_PROFILE: a proxy sees the key id in every signature."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "MOVEDKEYID123")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    environ = dict(os.environ)
    credentials.move_env_keys_to_file(environ)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", environ["AWS_SHARED_CREDENTIALS_FILE"])
    monkeypatch.setenv("AWS_PROFILE", environ["AWS_PROFILE"])
    proxy = _SlowProxy(s3_env["AWS_ENDPOINT_URL"], 0.0)
    try:
        store = Store(bucket_uri, StorageSettings(endpoint_url=proxy.url))
        store.check()  # boto3
        catalog.commit_run(store, NAME, RUN, _report_dir(tmp_path), _manifest())  # pyarrow
        assert catalog.read_manifest(store, NAME, RUN) is not None
        signed = re.findall(rb"Credential=([^/]*)/", bytes(proxy.sent))
        assert len(signed) > len(REPORT_FILES) and set(signed) == {b"MOVEDKEYID123"}
        assert b"User-Agent: Boto3" in proxy.sent and b"aws-sdk-cpp" in proxy.sent.lower()
    finally:
        proxy.close()


# --- endpoints that refuse, reset, never answer, or answer slowly ---------------------------------


@pytest.mark.parametrize("behave", [_black_hole, _resetter], ids=["black-hole", "resetter"])
def test_a_bad_endpoint_is_one_line_in_seconds(
    behave: Callable[[socket.socket], None], s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint = _Endpoint(behave)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint.url)
    try:
        started = time.monotonic()
        code = cli.main(["results", "s3://some-bucket/prefix/cifar10-mlp"])
        elapsed = time.monotonic() - started
    finally:
        endpoint.close()
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: s3://some-bucket/prefix: cannot reach the S3 endpoint"), err
    assert f"(got {endpoint.url})" in err and "Traceback" not in err
    assert elapsed < 30, elapsed  # not botocore's default 60 s read timeout x 5 tries


@pytest.mark.slow
def test_slow_but_working_storage_succeeds(
    s3_env: dict[str, str], bucket_uri: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every answer 3.5 s late (pyarrow's default would give up after 3 s without a byte) still passes: the
    probe, a commit with a multipart upload, and reading the run back. About 20 requests: a minute."""
    proxy = _SlowProxy(s3_env["AWS_ENDPOINT_URL"], 3.5)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    try:
        store = Store(bucket_uri, StorageSettings.from_env(os.environ))
        store.check()
        catalog.commit_run(store, NAME, RUN, _report_dir(tmp_path, {"best/model.pt": os.urandom(11 << 20)}), _manifest())  # > one 10 MiB part
        assert cli.main(["results", f"{bucket_uri}/{NAME}", "--verify"]) == 0
    finally:
        proxy.close()
    requests = bytes(proxy.sent).count(b" HTTP/1.1\r\n")
    assert requests >= 10, requests  # each one waited 3.5 s
    assert "verified: 1 files ok" in capsys.readouterr().out


def test_keys_left_by_a_killed_driver_are_removed_by_the_next(tmp_path: Path) -> None:
    """A SIGKILLed driver never runs its atexit: its key folder would stay in /dev/shm until a reboot."""
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    first = credentials.move_env_keys_to_file({"AWS_ACCESS_KEY_ID": "id-value", "AWS_SECRET_ACCESS_KEY": "s3cr3t-value"})
    orphan = first.parent.with_name(f"{credentials.KEYS_FOLDER}{gone.stdout.strip()}-test")
    first.parent.rename(orphan)
    live = credentials.move_env_keys_to_file({"AWS_ACCESS_KEY_ID": "id-value", "AWS_SECRET_ACCESS_KEY": "s3cr3t-value"})
    assert not orphan.exists() and live.is_file()  # ours (this pid) is kept
