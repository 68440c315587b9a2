"""The only S3 code: the pyarrow filesystem for Ray and for our own reads and writes (a local folder takes
the same path), a boto3 probe that fails fast, and Tune's checkpoint folders. What the files mean is
catalog.py's; where S3 is and whose keys, credentials.py's. Must not import torch."""

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
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlparse

import boto3
import botocore.config
import botocore.exceptions
import pyarrow.fs

from job.credentials import DEFAULT_REGION, StorageSettings
from job.spec import SpecError

PARTIAL = ".partial"  # suffix of a local file still being written; never listed
ATTEMPTS = 5  # pyarrow's AWS "standard" retry mode: backoff with jitter between tries
# pyarrow, for Ray and our uploads: the SDK's default 3 s without a byte (curl's low-speed limit on Linux)
# fails slow but working storage; 60 s lets a large upload's final answer come. Dead endpoints are the probe's.
CONNECT_TIMEOUT_S, REQUEST_TIMEOUT_S = 5.0, 60.0
# The probe runs first and must name a dead, resetting or silent endpoint in ~12 s (2 tries x 6 s)
# while answers that take 3-5 s still pass.
PROBE_TRIES, PROBE_CONNECT_TIMEOUT_S, PROBE_READ_TIMEOUT_S = 2, 3.0, 6.0
BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")  # S3's naming rules, simplified


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
        self.delete([".write-test"])

    def tune_location(self, name: str, run_id: str) -> tuple[str, pyarrow.fs.FileSystem | None]:
        """`RunConfig(storage_path, storage_filesystem)`; with `name="tune"` Tune lands in the run folder."""
        return self._path(f"{name}/{run_id}"), self.fs if self.is_s3 else None

    def url(self, rel: str) -> str:
        return ("s3://" if self.is_s3 else "") + self._path(rel)

    def run_ids(self, name: str) -> list[str]:
        """Oldest first: run ids start with their UTC start time."""
        return sorted(self._dirs(name))

    @_fs_errors
    def download(self, rel: str, dest: Path) -> list[Path]:
        """Copy the file at `rel` to `dest`, or every file under the folder `rel` into `dest/`."""
        rel = rel.strip("/")
        kind = self.fs.get_file_info(self._path(rel)).type
        keys = self.files(rel) if kind == pyarrow.fs.FileType.Directory else []
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

    def upload(self, rel: str, path: Path) -> None:
        self._write(rel.strip("/"), path)

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
    def digest(self, rel: str) -> tuple[int | None, str]:
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
    def files(self, rel: str) -> list[str]:
        infos = self.fs.get_file_info(pyarrow.fs.FileSelector(self._path(rel), recursive=True, allow_not_found=True))
        found = (i.path for i in infos if i.type == pyarrow.fs.FileType.File and not i.path.endswith(PARTIAL))
        return sorted(path[len(self.base) + 1 :] for path in found)

    @_fs_errors
    def _dirs(self, rel: str) -> list[str]:
        infos = self.fs.get_file_info(pyarrow.fs.FileSelector(self._path(rel), recursive=False, allow_not_found=True))
        return [i.base_name for i in infos if i.type == pyarrow.fs.FileType.Directory]

    @_fs_errors
    def delete(self, rels: list[str]) -> None:
        for rel in rels:
            with contextlib.suppress(FileNotFoundError):
                self.fs.delete_file(self._path(rel))


def fetch_object(uri: str, dest: Path) -> None:
    """Download `s3://bucket/key` to `dest` (a data mirror), with settings from the environment."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.path.strip("/"):
        raise SpecError([f"{uri}: not an S3 object URI (got no bucket or key). Use s3://bucket/path/to/file"])
    Store(f"s3://{parsed.netloc}", StorageSettings.from_env(os.environ)).download(parsed.path, dest)


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


def digest_file(path: Path) -> tuple[int, str]:
    """(size, sha256) of a local file, as `Store.digest` gives them of a stored one."""
    with path.open("rb") as handle:
        return _digest_stream(handle)


def _digest_stream(source: Any, block_size: int = 1 << 20) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    for block in iter(lambda: source.read(block_size), b""):
        digest.update(block)
        size += len(block)
    return size, digest.hexdigest()


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
