"""The only S3 code: settings from the AWS variables, the pyarrow filesystem for Ray and for our own reads
and writes (a local folder takes the same path), a boto3 probe that fails fast, and the run layout:
report upload, manifest commit, reading runs back. Must not import torch."""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import io
import json
import mimetypes
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal
from urllib.parse import urlparse

import boto3
import botocore.config
import botocore.exceptions
import pyarrow.fs

from job.results import FileEntry, Manifest
from job.spec import SpecError

MANIFEST = "manifest.json"
LATEST = "latest.json"
PARTIAL = ".partial"  # suffix of a local file still being written; never listed
DEFAULT_REGION = "us-east-1"  # what boto3 and pyarrow assume when no region is set
ATTEMPTS = 5  # pyarrow's AWS "standard" retry mode: backoff with jitter between tries
# pyarrow, for Ray and our uploads: the SDK's default 3 s without a byte (curl's low-speed limit on Linux)
# fails slow but working storage; 60 s lets a large upload's final answer come. Dead endpoints are the probe's.
CONNECT_TIMEOUT_S, REQUEST_TIMEOUT_S = 5.0, 60.0
# The probe runs first and must name a dead, resetting or silent endpoint in ~12 s (2 tries x 6 s)
# while answers that take 3-5 s still pass.
PROBE_TRIES, PROBE_CONNECT_TIMEOUT_S, PROBE_READ_TIMEOUT_S = 2, 3.0, 6.0
KEY_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")  # what Ray Tune copies
KEYS_PROFILE = "sweep-job"
BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")  # S3's naming rules, simplified


@dataclass(frozen=True)
class StorageSettings:
    """Where S3 is. No keys: they are resolved, never carried (boto3 and pyarrow each follow the AWS
    chain: environment, shared credentials file or profile, instance or pod role), so this and the
    filesystem built from it can be pickled, logged and shipped to Ray's workers."""

    endpoint_url: str | None = None
    region: str = DEFAULT_REGION

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> StorageSettings:
        env = {k: v for k, v in environ.items() if k.startswith("AWS_") and v}  # empty counts as unset
        return cls(
            endpoint_url=env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL"),
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or DEFAULT_REGION,
        )


KEYS_FOLDER = "sweep-job-keys-"  # + the driver's pid: its folder of keys


def move_env_keys_to_file(environ: MutableMapping[str, str]) -> Path | None:
    """Move S3 keys from the environment into a private shared-credentials file. Call it before Ray
    starts and before any Store is built: the SDK behind pyarrow fixes the profile it reads when a
    filesystem is built, so one built earlier would find neither the keys nor the file.

    Ray Tune copies AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and the session tokens from the driver's
    environment into every trial's runtime_env, which Ray logs in plain text. Moved to a file, the keys
    reach the local Ray (started with the driver's environment) only as AWS_SHARED_CREDENTIALS_FILE and
    AWS_PROFILE, which boto3 and pyarrow's SDK both read; remote nodes resolve their own keys. The file
    is 0600 in a fresh 0700 folder, in /dev/shm when there is one (memory: the key never reaches a disk,
    as in the environment it came from) and never under Ray's temp dir, and is removed at exit (a
    SIGKILL leaves it until reboot, readable only by this user). Returns the file, or None when the
    environment holds no complete key pair (then nothing changes, and `check` names what is missing)."""
    if not environ.get("AWS_ACCESS_KEY_ID") or not environ.get("AWS_SECRET_ACCESS_KEY"):
        return None
    keys = {name: environ.pop(name) for name in KEY_VARS if name in environ}
    token = keys.get("AWS_SESSION_TOKEN") or keys.get("AWS_SECURITY_TOKEN")  # the same token under its legacy name
    lines = [
        f"aws_access_key_id = {keys['AWS_ACCESS_KEY_ID']}",
        f"aws_secret_access_key = {keys['AWS_SECRET_ACCESS_KEY']}",
        *([f"aws_session_token = {token}"] if token else []),
    ]
    parent = Path("/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir())
    _remove_orphaned_keys(parent)
    folder = Path(tempfile.mkdtemp(prefix=f"{KEYS_FOLDER}{os.getpid()}-", dir=parent))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    path = folder / "credentials"
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
        out.write("\n".join([f"[{KEYS_PROFILE}]", *lines, ""]))
    environ.update(AWS_SHARED_CREDENTIALS_FILE=str(path), AWS_PROFILE=KEYS_PROFILE)
    return path


def _remove_orphaned_keys(parent: Path) -> None:
    """A SIGKILLed driver runs no atexit: the next one removes key folders whose process is gone."""
    for folder in parent.glob(f"{KEYS_FOLDER}*-*"):
        pid = folder.name.removeprefix(KEYS_FOLDER).split("-")[0]
        if pid.isdigit() and folder.stat().st_uid == os.getuid() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(folder, ignore_errors=True)


def _probe_client(settings: StorageSettings, session: boto3.Session) -> Any:
    """boto3 for check(): short timeouts and one retry, so a dead or silent endpoint fails in seconds."""
    style = {"s3": {"addressing_style": "path"}} if settings.endpoint_url else {}  # non-AWS: no per-bucket DNS
    retries = {"mode": "standard", "total_max_attempts": PROBE_TRIES}  # botocore's "max_attempts" would count retries only
    config = botocore.config.Config(retries=retries, connect_timeout=PROBE_CONNECT_TIMEOUT_S, read_timeout=PROBE_READ_TIMEOUT_S, **style)
    return session.client("s3", endpoint_url=settings.endpoint_url, region_name=settings.region, config=config)


def _arrow_s3(settings: StorageSettings) -> pyarrow.fs.S3FileSystem:
    """pyarrow ignores AWS_ENDPOINT_URL, so the filesystem is built from the same settings as boto3; it
    resolves keys itself on every node (a pickled S3FileSystem without explicit keys carries none)."""
    kwargs: dict[str, Any] = {
        "region": settings.region,
        "retry_strategy": pyarrow.fs.AwsStandardS3RetryStrategy(max_attempts=ATTEMPTS),
        "connect_timeout": CONNECT_TIMEOUT_S,
        "request_timeout": REQUEST_TIMEOUT_S,
    }
    if settings.endpoint_url:
        endpoint = urlparse(settings.endpoint_url)
        if endpoint.scheme not in ("http", "https") or not endpoint.netloc:
            raise SpecError([f"AWS_ENDPOINT_URL: not an http(s) URL (got {settings.endpoint_url}). Use e.g. http://127.0.0.1:8333"])
        kwargs.update(endpoint_override=endpoint.netloc, scheme=endpoint.scheme)
    return pyarrow.fs.S3FileSystem(**kwargs)


def _check_credentials(uri: str, session: boto3.Session) -> None:
    """Some credentials resolve (their values stay inside boto3), or one-line `SpecError` naming what is unset."""
    try:
        found = session.get_credentials()
    except botocore.exceptions.PartialCredentialsError as err:  # e.g. AWS_ACCESS_KEY_ID without its secret
        raise SpecError(
            [
                f"{uri}: incomplete S3 credentials (got {err.kwargs['cred_var']} unset). "
                "Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (see .env.example)"
            ]
        ) from None
    if found is None:
        raise SpecError(
            [
                f"{uri}: no S3 credentials (got AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY unset, no profile or role). "
                "Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (see .env.example)"
            ]
        )


def _ensure_bucket(uri: str, bucket: str, settings: StorageSettings, create: bool) -> None:
    """Credentials present, endpoint answering, bucket there (created when missing and `create`), or one-line `SpecError`."""
    session = boto3.Session()  # fresh, not boto3's cached default: it reads the environment as it is now
    _check_credentials(uri, session)
    probe, endpoint = _probe_client(settings, session), settings.endpoint_url or "AWS S3"
    where = {} if settings.region == DEFAULT_REGION else {"CreateBucketConfiguration": {"LocationConstraint": settings.region}}
    try:
        try:
            probe.head_bucket(Bucket=bucket)
        except botocore.exceptions.ClientError as err:
            if err.response["Error"]["Code"] not in ("404", "NoSuchBucket"):
                raise
            if not create:
                raise SpecError(
                    [f"{uri}: no such bucket (got {bucket} on {endpoint}). Check the URI: <storage.uri>/<spec name> of a sweep that ran"]
                ) from None
            probe.create_bucket(Bucket=bucket, **where)
    except probe.exceptions.BucketAlreadyOwnedByYou:
        pass  # another job created it between our probe and now
    except botocore.exceptions.ClientError as err:
        raise SpecError([f"{uri}: S3 refused access ({err}) (got {endpoint}). Check the credentials and the bucket's permissions"]) from None
    except botocore.exceptions.BotoCoreError as err:  # refused, reset, timed out, or not speaking S3: every one is the endpoint's
        raise SpecError(
            [
                f"{uri}: cannot reach the S3 endpoint ({type(err).__name__}) (got {endpoint}). "
                "Start the S3 server or set AWS_ENDPOINT_URL to where it answers"
            ]
        ) from None


@dataclass(frozen=True)
class RunInfo:
    """A run in a listing: committed (its manifest read), incomplete (no manifest) or corrupt (and why)."""

    run_id: str
    status: Literal["committed", "incomplete", "corrupt"]
    manifest: Manifest | None = None
    problem: str = ""


def _fs_errors(method: Callable[..., Any]) -> Callable[..., Any]:
    """pyarrow raises OSError for every storage failure; say which store failed, in one line."""

    @functools.wraps(method)
    def wrapper(self: Store, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except OSError as err:
            fix = "Check AWS_ENDPOINT_URL, the credentials and the bucket's permissions" if self.is_s3 else "Check the folder and its permissions"
            raise SpecError([f"{self.uri}: storage failed ({' '.join(str(err).split())}). {fix}"]) from None

    return wrapper


class Store:
    """One storage root: `s3://bucket/prefix` or a local folder (relative paths resolved to absolute)."""

    def __init__(self, uri: str, settings: StorageSettings) -> None:
        parsed = urlparse(uri)
        self.is_s3 = parsed.scheme == "s3"
        self.settings = settings
        self.fs: pyarrow.fs.FileSystem
        if self.is_s3:
            if not BUCKET_NAME.match(parsed.netloc):
                raise SpecError(
                    [
                        f"storage.uri: not a valid bucket name (got '{parsed.netloc}'). "
                        "Use s3://bucket/prefix with a bucket of lowercase letters, digits, '.' and '-'"
                    ]
                )
            self.bucket, self.base = parsed.netloc, f"{parsed.netloc}/{parsed.path.strip('/')}".rstrip("/")
            self.uri, self.fs = f"s3://{self.base}", _arrow_s3(settings)
        elif parsed.scheme in ("", "file"):
            self.base = str(Path(uri.removeprefix("file://")).expanduser().resolve())
            self.uri, self.fs = self.base, pyarrow.fs.LocalFileSystem()
        else:
            raise SpecError([f"storage.uri: unsupported scheme '{parsed.scheme}' (got {uri}). Use s3://bucket/prefix or a local folder"])

    def __repr__(self) -> str:
        return f"Store({self.uri!r})"

    def check(self, create: bool = True) -> None:
        """Fail fast, before any trial starts: credentials, endpoint, bucket (created when missing and
        `create`; readers pass False and get a local folder unchecked, since they write nothing)."""
        if self.is_s3:
            return _ensure_bucket(self.uri, self.bucket, self.settings, create)
        if not create:
            return None
        self._write(".write-test", b"")
        self._delete([".write-test"])

    def tune_location(self, name: str, run_id: str) -> tuple[str, pyarrow.fs.FileSystem | None]:
        """`RunConfig(storage_path, storage_filesystem)`; with `name="tune"` Tune lands in the run folder."""
        return self._path(f"{name}/{run_id}"), self.fs if self.is_s3 else None

    def url(self, rel: str) -> str:
        return ("s3://" if self.is_s3 else "") + self._path(rel)

    def run_ids(self, name: str) -> list[str]:
        """Oldest first: run ids start with their UTC start time."""
        return sorted(self._dirs(name))

    def is_committed(self, name: str, run_id: str) -> bool:
        return self._read(f"{name}/{run_id}/report/{MANIFEST}") is not None

    def read_manifest(self, name: str, run_id: str) -> Manifest | None:
        """None for a run without one (incomplete); a damaged one is a one-line `SpecError` naming it."""
        rel = f"{name}/{run_id}/report/{MANIFEST}"
        data = self._read(rel)
        return None if data is None else self._parse_manifest(rel, data)

    def latest(self, name: str) -> str | None:
        """The run latest.json points at (the newest that finished with results); None when there is none."""
        rel = f"{name}/{LATEST}"
        data = self._read(rel)
        fix = "Pick a run with --run; the next run with results rewrites it"
        return None if data is None else _parse(_pointed_run_id, data, self.url(rel), fix)

    def runs(self, name: str) -> list[RunInfo]:
        """One row per run, oldest first; a run without a manifest is incomplete and never read further."""
        return [self._run_info(name, run_id) for run_id in self.run_ids(name)]

    def _run_info(self, name: str, run_id: str) -> RunInfo:
        rel = f"{name}/{run_id}/report/{MANIFEST}"
        data = self._read(rel)  # a storage failure is not a corrupt run: it propagates
        if data is None:
            return RunInfo(run_id, "incomplete")
        try:
            return RunInfo(run_id, "committed", self._parse_manifest(rel, data))
        except SpecError as err:
            return RunInfo(run_id, "corrupt", problem=err.problems[0])

    def _parse_manifest(self, rel: str, data: bytes) -> Manifest:
        return _parse(Manifest.from_dict, data, self.url(rel), "The run is corrupt or was cut short: rerun the sweep, or pick another --run")

    def verify_run(self, name: str, run_id: str, manifest: Manifest) -> list[str]:
        """Every file the manifest lists, read back and hashed: one line per file that is missing or differs."""
        problems = []
        for entry in manifest.files:
            rel = f"{name}/{run_id}/{entry.path}"
            if wrong := entry.mismatch(*self._digest(rel)):
                problems.append(f"{self.url(rel)}: {wrong}")
        return problems

    def download_verified(self, name: str, run_id: str, manifest: Manifest, under: str, dest: Path) -> list[Path]:
        """The run's folder `under` (e.g. report/best) into `dest`, every file checked against the manifest:
        one that differs, is missing or is not listed is refused, and the files downloaded are removed."""
        got = self.download(f"{name}/{run_id}/{under}", dest)
        found = {f"{under}/{path.relative_to(dest).as_posix()}": path for path in got}
        problems = []
        for rel, entry in manifest.entries(under).items():
            local = found.pop(rel, None)
            if wrong := entry.mismatch(*(_digest_file(local) if local else (None, ""))):
                problems.append(f"{self.url(f'{name}/{run_id}/{rel}')}: {wrong}")
        problems += [
            f"{self.url(f'{name}/{run_id}/{rel}')}: not listed in the manifest (got {path.stat().st_size} bytes)"
            for rel, path in sorted(found.items())
        ]
        if problems:
            for path in got:
                path.unlink(missing_ok=True)
            raise SpecError(
                [f"{line}. Refused, and removed from {dest}: the run changed after it committed; rerun it or pick another --run" for line in problems]
            )
        return got

    def commit_run(self, name: str, run_id: str, report_dir: Path, manifest: Manifest) -> Manifest:
        """Upload the report, then the manifest (last: it vouches for every file), then latest.json, which
        moves only for a run with results (`manifest.best_trial`): a run whose every trial failed keeps it."""
        report = f"{name}/{run_id}/report"
        files = {p.relative_to(report_dir).as_posix(): p for p in sorted(report_dir.rglob("*")) if p.is_file()}
        assert MANIFEST not in files, f"{report_dir} already holds a {MANIFEST}; commit_run writes it"
        self._delete([f"{report}/{MANIFEST}"])  # uncommit first: an old manifest must not vouch for new files
        self._delete(sorted(set(self._files(report)) - {f"{report}/{rel}" for rel in files}))
        entries = []
        for rel, path in files.items():
            entries.append(FileEntry(f"report/{rel}", *_digest_file(path)))
            self._write(f"{report}/{rel}", path)
        now = datetime.now(UTC).isoformat(timespec="seconds")
        written = replace(manifest, files=tuple(entries), committed_at=now)
        self._write(f"{report}/{MANIFEST}", json.dumps(written.to_dict(), indent=2).encode())
        if written.best_trial is not None:
            self._point_latest(name, run_id, written)
        return written

    def _point_latest(self, name: str, run_id: str, manifest: Manifest) -> None:
        try:
            if (self.latest(name) or "") > run_id:
                return  # an older run finished late (a resume): latest keeps pointing at the newest
        except SpecError:
            pass  # a damaged pointer: ours to rewrite
        pointer = {
            "run_id": run_id,
            "manifest": f"{run_id}/report/{MANIFEST}",
            "committed_at": manifest.committed_at,
            "metric": manifest.metric,
            "best_trial": manifest.best_trial,
        }
        self._write(f"{name}/{LATEST}", json.dumps(pointer, indent=2).encode())

    @_fs_errors
    def download(self, rel: str, dest: Path) -> list[Path]:
        """Copy the file at `rel` to `dest`, or every file under the folder `rel` into `dest/`."""
        rel = rel.strip("/")
        kind = self.fs.get_file_info(self._path(rel)).type
        keys = self._files(rel) if kind == pyarrow.fs.FileType.Directory else []
        if kind != pyarrow.fs.FileType.File and not keys:
            raise SpecError([f"{self.url(rel)}: nothing stored there (got no file or folder). Check the URI and the run id"])
        (dest if keys else dest.parent).mkdir(parents=True, exist_ok=True)  # copy_files makes only the subfolders
        pyarrow.fs.copy_files(self._path(rel), str(dest), source_filesystem=self.fs, destination_filesystem=pyarrow.fs.LocalFileSystem())
        return [dest / key[len(rel) + 1 :] for key in keys] if keys else [dest]

    def read_bytes(self, rel: str) -> bytes:
        data = self._read(rel.strip("/"))
        if data is None:
            raise SpecError([f"{self.url(rel)}: no such file (got nothing there). Check the path with 'sweep results'"])
        return data

    def read_optional(self, rel: str) -> bytes | None:
        return self._read(rel.strip("/"))

    def write_bytes(self, rel: str, data: bytes) -> None:
        self._write(rel.strip("/"), data)

    def _path(self, rel: str) -> str:
        return f"{self.base}/{rel.strip('/')}".rstrip("/")

    @_fs_errors
    def _write(self, rel: str, data: bytes | Path) -> None:
        """An S3 object appears whole when its upload completes; a local file is renamed into place."""
        path = self._path(rel)
        if not self.is_s3:
            return _write_atomic(Path(path), data)
        metadata = {"Content-Type": mimetypes.guess_type(path)[0] or "application/octet-stream"}  # so report.html opens in a browser
        with self.fs.open_output_stream(path, metadata=metadata) as out, _stream(data) as source:
            out.upload(source)

    @_fs_errors
    def _digest(self, rel: str) -> tuple[int | None, str]:
        """(size, sha256) of the stored file, streamed; (None, "") when it is not there."""
        with contextlib.suppress(FileNotFoundError), self.fs.open_input_stream(self._path(rel)) as source:
            return _digest_stream(source, 8 << 20)  # each read is one ranged GET: few and large
        return None, ""

    @_fs_errors
    def _read(self, rel: str) -> bytes | None:
        with contextlib.suppress(FileNotFoundError), self.fs.open_input_stream(self._path(rel)) as source:
            return source.read()
        return None

    @_fs_errors
    def _files(self, rel: str) -> list[str]:
        infos = self.fs.get_file_info(pyarrow.fs.FileSelector(self._path(rel), recursive=True, allow_not_found=True))
        found = (i.path for i in infos if i.type == pyarrow.fs.FileType.File and not i.path.endswith(PARTIAL))
        return sorted(path[len(self.base) + 1 :] for path in found)

    @_fs_errors
    def _dirs(self, rel: str) -> list[str]:
        infos = self.fs.get_file_info(pyarrow.fs.FileSelector(self._path(rel), recursive=False, allow_not_found=True))
        return [i.base_name for i in infos if i.type == pyarrow.fs.FileType.Directory]

    @_fs_errors
    def _delete(self, rels: list[str]) -> None:
        for rel in rels:
            with contextlib.suppress(FileNotFoundError):
                self.fs.delete_file(self._path(rel))


def fetch_object(uri: str, dest: Path) -> None:
    """Download `s3://bucket/key` to `dest` (a data mirror), with settings from the environment."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.path.strip("/"):
        raise SpecError([f"{uri}: not an S3 object URI (got no bucket or key). Use s3://bucket/path/to/file"])
    Store(f"s3://{parsed.netloc}", StorageSettings.from_env(os.environ)).download(parsed.path, dest)


def split_sweep_uri(uri: str) -> tuple[str, str]:
    """`<storage.uri>/<name>` -> (`<storage.uri>`, `<name>`), for s3:// URIs and local folders."""
    root, _, name = uri.rstrip("/").rpartition("/")
    if not name or root == "s3:/":
        raise SpecError([f"{uri}: no sweep name at the end. Use <storage.uri>/<spec name>, e.g. s3://sweeps/cifar10/cifar10-mlp-variants"])
    return root or ("/" if uri.startswith("/") else "."), name


def _write_atomic(path: Path, data: bytes | Path) -> None:
    """Write a hidden sibling, then rename: a reader never sees a half-written file."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}{PARTIAL}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tmp.open("wb") as out, _stream(data) as source:
            shutil.copyfileobj(source, out, 1 << 20)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _stream(data: bytes | Path) -> BinaryIO:
    return data.open("rb") if isinstance(data, Path) else io.BytesIO(data)


def _digest_file(path: Path) -> tuple[int, str]:
    with path.open("rb") as handle:
        return _digest_stream(handle)


def _digest_stream(source: Any, block_size: int = 1 << 20) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    for block in iter(lambda: source.read(block_size), b""):
        digest.update(block)
        size += len(block)
    return size, digest.hexdigest()


def _parse(build: Callable[[Any], Any], data: bytes, where: str, fix: str) -> Any:
    """JSON we wrote, read back: garbage, truncated, empty or of the wrong shape is one line naming the object."""
    try:
        return build(json.loads(data))
    except json.JSONDecodeError as err:
        problem = f"not JSON ({err.msg} at byte {err.pos})"
    except ValueError as err:  # not UTF-8, or the wrong shape (`build` names the field)
        problem = f"not valid ({' '.join(str(err).split())[:200]})"
    raise SpecError([f"{where}: {problem} (got {len(data)} bytes). {fix}"])


def _pointed_run_id(pointer: Any) -> str:
    run_id = pointer.get("run_id") if isinstance(pointer, dict) else None
    if not isinstance(run_id, str) or not run_id.strip(".") or "/" in run_id:
        raise ValueError(f"run_id is not a run folder's name (got {run_id!r})")
    return run_id


def uri_of(filesystem: pyarrow.fs.FileSystem | None, path: str) -> str:
    """Tune's paths carry no scheme; users copy them into `aws s3 cp`, so S3 ones get theirs back."""
    return f"s3://{path}" if filesystem is not None and filesystem.type_name == "s3" else path


def checkpoint_folders(filesystem: pyarrow.fs.FileSystem | None, trial_path: str, meta_name: str) -> list[tuple[str, dict[str, Any]]]:
    """A trial's checkpoint folders with their JSON (`meta_name`), newest epoch first; damaged ones are left out.

    Ordered by the epoch each JSON records, not by folder name: after a resume Tune numbers its folders
    from its last saved state, so a newer epoch can sit in a lower-numbered folder."""
    filesystem = filesystem or pyarrow.fs.LocalFileSystem()
    infos = filesystem.get_file_info(pyarrow.fs.FileSelector(trial_path, allow_not_found=True))
    found = []
    for info in infos:
        if info.type == pyarrow.fs.FileType.Directory and info.base_name.startswith("checkpoint_"):
            # A folder without its JSON is a cut upload; any other OSError is storage failing, which must
            # not pass for "no checkpoint" (a trial would start over, a report would miss epochs).
            with contextlib.suppress(FileNotFoundError, ValueError), filesystem.open_input_stream(f"{info.path}/{meta_name}") as source:
                meta = json.loads(source.read())
                found.append((info.path, meta))
    return sorted(found, key=lambda item: item[1].get("epoch", 0), reverse=True)


def delete_folders(filesystem: pyarrow.fs.FileSystem | None, paths: list[str]) -> None:
    filesystem = filesystem or pyarrow.fs.LocalFileSystem()
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            filesystem.delete_dir(path)
