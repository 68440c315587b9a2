"""Where S3 is and whose keys reach it: settings from the standard AWS variables, and the keys moved out of
the environment before Ray copies them into logged runtime_envs. Must not import an S3 client or torch."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_REGION = "us-east-1"  # what boto3 and pyarrow assume when no region is set
KEY_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")  # what Ray Tune copies
KEYS_PROFILE = "sweep-job"
KEYS_FOLDER = "sweep-job-keys-"  # + the driver's pid: its folder of keys


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
