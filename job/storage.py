"""The only S3 code: settings from the AWS variables, the pyarrow filesystem for Ray and for our own reads
and writes (a local folder takes the same path), a boto3 probe that fails fast, and the run layout:
report upload, manifest commit, reading runs back. Must not import torch."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import mimetypes
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Callable, Mapping
from urllib.parse import urlparse

import boto3
import botocore.config
import botocore.exceptions
import pyarrow.fs
from pydantic import SecretStr

from job.spec import SpecError

MANIFEST = "manifest.json"
LATEST = "latest.json"
PARTIAL = ".partial"  # suffix of a local file still being written; never listed
DEFAULT_REGION = "us-east-1"  # what boto3 and pyarrow assume when no region is set
ATTEMPTS = 5  # pyarrow's AWS "standard" retry mode: backoff with jitter between tries
PROBE_ATTEMPTS, PROBE_CONNECT_TIMEOUT_S = 2, 3.0  # check() must fail in seconds, not minutes, on a dead endpoint
BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")  # S3's naming rules, simplified


@dataclass(frozen=True)
class StorageSettings:
    """Endpoint, credentials and region for S3; secrets are `SecretStr`, so reprs show stars."""

    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    session_token: SecretStr | None = None  # temporary (STS) credentials only
    region: str = DEFAULT_REGION

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> StorageSettings:
        env = {k: v for k, v in environ.items() if k.startswith("AWS_") and v}  # empty counts as unset
        secret, token = env.get("AWS_SECRET_ACCESS_KEY"), env.get("AWS_SESSION_TOKEN")
        return cls(
            endpoint_url=env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL"),
            access_key_id=env.get("AWS_ACCESS_KEY_ID"),
            secret_access_key=SecretStr(secret) if secret else None,
            session_token=SecretStr(token) if token else None,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or DEFAULT_REGION,
        )


def _reveal(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value else None


def _probe_client(settings: StorageSettings) -> Any:
    """boto3 for check(): a short connect timeout and few retries, so a dead endpoint fails in seconds."""
    style = {"s3": {"addressing_style": "path"}} if settings.endpoint_url else {}  # non-AWS: no per-bucket DNS
    retries = {"mode": "standard", "max_attempts": PROBE_ATTEMPTS}
    config = botocore.config.Config(retries=retries, connect_timeout=PROBE_CONNECT_TIMEOUT_S, **style)
    return boto3.client("s3", endpoint_url=settings.endpoint_url, region_name=settings.region, config=config,
                        aws_access_key_id=settings.access_key_id, aws_secret_access_key=_reveal(settings.secret_access_key),
                        aws_session_token=_reveal(settings.session_token))


def _arrow_s3(settings: StorageSettings) -> pyarrow.fs.S3FileSystem:
    """pyarrow ignores AWS_ENDPOINT_URL, so the filesystem is built from the same settings as boto3."""
    kwargs: dict[str, Any] = {"region": settings.region, "retry_strategy": pyarrow.fs.AwsStandardS3RetryStrategy(max_attempts=ATTEMPTS)}
    if settings.endpoint_url:
        endpoint = urlparse(settings.endpoint_url)
        if endpoint.scheme not in ("http", "https") or not endpoint.netloc:
            raise SpecError([f"AWS_ENDPOINT_URL: not an http(s) URL (got {settings.endpoint_url}). Use e.g. http://127.0.0.1:8333"])
        kwargs.update(endpoint_override=endpoint.netloc, scheme=endpoint.scheme)
    if settings.access_key_id and settings.secret_access_key:  # else pyarrow follows the AWS chain (profile, role)
        kwargs.update(access_key=settings.access_key_id, secret_key=_reveal(settings.secret_access_key),
                      session_token=_reveal(settings.session_token))
    return pyarrow.fs.S3FileSystem(**kwargs)


def _ensure_bucket(uri: str, bucket: str, settings: StorageSettings) -> None:
    """Credentials present, endpoint answering, bucket there (created when missing), or one-line `SpecError`."""
    keys = {"AWS_ACCESS_KEY_ID": settings.access_key_id, "AWS_SECRET_ACCESS_KEY": settings.secret_access_key}
    if any(keys.values()) != all(keys.values()) or not any(keys.values()) and boto3.Session().get_credentials() is None:
        unset = " and ".join(k for k, v in keys.items() if not v)
        raise SpecError([f"{uri}: no S3 credentials (got {unset} unset). Set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (see .env.example)"])
    probe, endpoint = _probe_client(settings), settings.endpoint_url or "AWS S3"
    where = {} if settings.region == DEFAULT_REGION else {"CreateBucketConfiguration": {"LocationConstraint": settings.region}}
    try:
        try:
            probe.head_bucket(Bucket=bucket)
        except botocore.exceptions.ClientError as err:
            if err.response["Error"]["Code"] not in ("404", "NoSuchBucket"):
                raise
            probe.create_bucket(Bucket=bucket, **where)
    except probe.exceptions.BucketAlreadyOwnedByYou:
        pass  # another job created it between our probe and now
    except botocore.exceptions.ClientError as err:
        raise SpecError([f"{uri}: S3 refused access ({err}) (got {endpoint}). Check the credentials and the bucket's permissions"]) from None
    except botocore.exceptions.ConnectionError as err:
        raise SpecError([f"{uri}: cannot reach the S3 endpoint ({type(err).__name__}) (got {endpoint}). "
                         "Start the S3 server or set AWS_ENDPOINT_URL to where it listens"]) from None


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
                raise SpecError([f"storage.uri: not a valid bucket name (got '{parsed.netloc}'). "
                                 "Use s3://bucket/prefix with a bucket of lowercase letters, digits, '.' and '-'"])
            self.bucket, self.base = parsed.netloc, f"{parsed.netloc}/{parsed.path.strip('/')}".rstrip("/")
            self.uri, self.fs = f"s3://{self.base}", _arrow_s3(settings)
        elif parsed.scheme in ("", "file"):
            self.base = str(Path(uri.removeprefix("file://")).expanduser().resolve())
            self.uri, self.fs = self.base, pyarrow.fs.LocalFileSystem()
        else:
            raise SpecError([f"storage.uri: unsupported scheme '{parsed.scheme}' (got {uri}). Use s3://bucket/prefix or a local folder"])

    def __repr__(self) -> str:
        return f"Store({self.uri!r})"

    def check(self) -> None:
        """Fail fast, before any trial starts: credentials, endpoint, bucket (created when missing)."""
        if self.is_s3:
            return _ensure_bucket(self.uri, self.bucket, self.settings)
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

    def read_manifest(self, name: str, run_id: str) -> dict[str, Any] | None:
        data = self._read(f"{name}/{run_id}/report/{MANIFEST}")
        return None if data is None else json.loads(data)

    def runs(self, name: str) -> list[dict[str, Any]]:
        """One row per run, oldest first; a run without a manifest is incomplete and never read further."""
        manifests = {run_id: self.read_manifest(name, run_id) for run_id in self.run_ids(name)}
        return [{"run_id": run_id, "committed": m is not None, "manifest": m} for run_id, m in manifests.items()]

    def commit_run(self, name: str, run_id: str, report_dir: Path, manifest: dict[str, Any]) -> dict[str, Any]:
        """Upload the report, then the manifest (last: it vouches for every file), then latest.json."""
        report = f"{name}/{run_id}/report"
        files = {p.relative_to(report_dir).as_posix(): p for p in sorted(report_dir.rglob("*")) if p.is_file()}
        assert MANIFEST not in files, f"{report_dir} already holds a {MANIFEST}; commit_run writes it"
        self._delete([f"{report}/{MANIFEST}"])  # uncommit first: an old manifest must not vouch for new files
        self._delete(sorted(set(self._files(report)) - {f"{report}/{rel}" for rel in files}))
        entries = []
        for rel, path in files.items():
            entries.append({"path": f"report/{rel}", "size": path.stat().st_size, "sha256": _sha256(path)})
            self._write(f"{report}/{rel}", path)
        written = {**manifest, "files": entries, "committed_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        self._write(f"{report}/{MANIFEST}", json.dumps(written, indent=2).encode())
        self._point_latest(name, run_id, written)
        return written

    def _point_latest(self, name: str, run_id: str, manifest: dict[str, Any]) -> None:
        current = self._read(f"{name}/{LATEST}")
        if current is not None and json.loads(current).get("run_id", "") > run_id:
            return  # an older run finished late (a resume): latest keeps pointing at the newest
        pointer = {"run_id": run_id, "manifest": f"{run_id}/report/{MANIFEST}", "committed_at": manifest["committed_at"],
                   "metric": manifest.get("metric"), "best_trial": manifest.get("best_trial")}
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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
