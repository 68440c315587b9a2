"""Cluster submission: `sweep run` on a Ray cluster through the Ray Jobs API, logs streamed back.

The code lives in the cluster's image; only the validated spec travels with the job. Secrets never
travel: the cluster reads storage credentials from its own environment. Stopping `sweep submit`
(SIGTERM, SIGINT) stops its job, so a scheduler's deadline bounds GPU time. Must not import torch.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

import aiohttp
import requests
import yaml
from ray.exceptions import AuthenticationError
from ray.job_submission import JobStatus, JobSubmissionClient

from job.spec import JobSpec, SpecError, parse_spec

# An address that drops packets would otherwise hang for TCP's ~2 minute connect timeout.
CONNECT_TIMEOUT_S = 10
POLL_S = 2.0
# How long a stopped `sweep submit` waits to see its Ray job end: Ray SIGKILLs the driver 3 s after
# SIGTERM (RAY_JOB_STOP_WAIT_TIME_S), and Kubernetes gives a deleted pod 30 s before SIGKILL.
STOP_WAIT_S = 20.0
# Ray's job SDK logs every upload and every closed log socket at INFO, on loggers set to INFO.
CHATTY_LOGGERS = ("ray", "ray.dashboard.modules.dashboard_sdk", "ray.dashboard.modules.job.sdk")


def submit(job: JobSpec, address: str, wait: bool = True) -> int:
    """Submit the sweep; with `wait`, stream its logs and return 0 when it SUCCEEDED, else 1, or
    128 + the signal when SIGTERM or SIGINT stopped us (after stopping the job on the cluster)."""
    check_shared_storage(job.storage.uri)
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    address = dashboard_url(address)
    warn_local_source(job)
    client = connect(address)
    refuse_overlap(client, address, job.name)
    job_id = f"{job.name}-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(2)}"
    try:
        # From before the submission: a signal while it is in flight still stops what it started.
        with _stop_on_signals():
            send_job(client, address, job, job_id)
            if not wait:
                print(job_id, flush=True)
                _say(f"follow: ray job logs --address {address} --follow {job_id}")
                _say(f"stop:   ray job stop --address {address} {job_id}")
                return 0
            status, message = follow(client, address, job_id)
    except Stopped as stop:
        # A CronJob's activeDeadlineSeconds, a deleted pod or Ctrl-C: the GPUs must not outlive us.
        stop_job(client, address, job_id)
        return 128 + stop.signum
    _say(f"job {job_id} {status.value}" + (f": {message}" if message and status != JobStatus.SUCCEEDED else ""))
    _say(f"logs: ray job logs --address {address} {job_id}")
    return 0 if status == JobStatus.SUCCEEDED else 1


def send_job(client: JobSubmissionClient, address: str, job: JobSpec, job_id: str) -> None:
    with tempfile.TemporaryDirectory(prefix="sweep-submit-") as folder:
        spec_file = write_spec(job, Path(folder))
        # The working_dir holds the spec file alone: the job starts in it, the code comes from the image.
        client.submit_job(
            entrypoint=f"sweep run {spec_file.name}", submission_id=job_id, runtime_env={"working_dir": folder}, metadata={"sweep_name": job.name}
        )
    _say(f"submitted {job_id} to {address}: sweep run {spec_file.name}")


def check_shared_storage(uri: str) -> None:
    # A local folder would be a different disk on every node, and not the submitter's disk either.
    if not uri.startswith("s3://"):
        raise SpecError(
            [f"storage.uri: a Ray cluster needs shared storage (got {uri}). Use s3://bucket/prefix and set AWS_* variables on the cluster."]
        )


def dashboard_url(address: str) -> str:
    if not address.startswith(("http://", "https://")):
        raise SpecError([f"--address: expected the Ray dashboard's URL (got {address}). Use http://HEAD:8265."])
    return address.rstrip("/")


def warn_local_source(job: JobSpec) -> None:
    source = job.data.source
    if source and not source.startswith(("https://", "http://", "s3://")):
        _say(f"warning: data.source {source} is read on the cluster's nodes, not on this machine")


def connect(address: str) -> JobSubmissionClient:
    """A client for the cluster at `address`, or one SpecError line saying why there is none."""
    try:
        reply = requests.get(f"{address}/api/version", timeout=CONNECT_TIMEOUT_S)
    except requests.RequestException as err:
        raise _unreachable(address, type(err).__name__) from None
    if reply.status_code == 404:
        raise _unreachable(address, "HTTP 404 from /api/version: not a Ray dashboard")
    try:
        return JobSubmissionClient(address)
    except AuthenticationError as err:
        reason = err.message.splitlines()[0].rsplit(": ", 1)[-1]
        raise SpecError(
            [
                f"--address: the cluster refused the token ({reason}). "
                "Set RAY_AUTH_MODE=token and the cluster's token in ~/.ray/auth_token or RAY_AUTH_TOKEN."
            ]
        ) from None
    except ConnectionError as err:
        raise _unreachable(address, type(err).__name__) from None
    except RuntimeError as err:  # the Jobs API is missing or too old on that cluster
        raise SpecError([f"--address: {address} has no usable Jobs API ({err}). Run Ray 2.60.0 with ray[default] there."]) from None


def _unreachable(address: str, why: str) -> SpecError:
    return SpecError([f"--address: cannot reach the Ray dashboard at {address} ({why}). Start the cluster or fix the address."])


def refuse_overlap(client: JobSubmissionClient, address: str, name: str) -> None:
    # A starting `sweep run` resumes the newest uncommitted run of its name: a second one would
    # write into the run the first is still writing.
    for other in client.list_jobs():
        if (other.metadata or {}).get("sweep_name") == name and not other.status.is_terminal():
            raise SpecError(
                [
                    f"name: a sweep named {name} is still {other.status.value} on the cluster (got job {other.submission_id}). "
                    f"Wait for it, or stop it: ray job stop --address {address} {other.submission_id}."
                ]
            )


def write_spec(job: JobSpec, folder: Path) -> Path:
    """The spec as YAML, overrides applied, in a file named after the sweep."""
    text = yaml.safe_dump(job.model_dump(mode="json"), sort_keys=False)
    reread = parse_spec(yaml.safe_load(text))
    assert reread == job, f"the spec does not survive a YAML round trip: {reread!r} != {job!r}"
    path = folder / f"{job.name}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def follow(client: JobSubmissionClient, address: str, job_id: str) -> tuple[JobStatus, str]:
    """Stream the job's logs to stdout until it ends; its final status and message."""
    try:
        asyncio.run(_stream_logs(client, job_id))
    except (RuntimeError, aiohttp.ClientError) as err:  # the socket closed early: network or head restart
        _say(f"log stream lost ({type(err).__name__}); waiting for {job_id} to end")
    while True:
        try:
            info = client.get_job_info(job_id)
        except requests.RequestException as err:
            raise SpecError(
                [
                    f"--address: lost the Ray dashboard at {address} while {job_id} ran ({type(err).__name__}). "
                    f"Check it later: ray job status --address {address} {job_id}."
                ]
            ) from None
        if info.status.is_terminal():
            # Ray appends the tail of the logs to a failure message; they were streamed already.
            return info.status, (info.message or "").split(", last available logs")[0]
        time.sleep(POLL_S)


class Stopped(BaseException):
    """SIGTERM or SIGINT arrived while submitting or following a job. A BaseException, like
    KeyboardInterrupt, so that no `except Exception` in Ray's SDK or asyncio swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum: int, frame: FrameType | None) -> None:
    raise Stopped(signum)


@contextmanager
def _stop_on_signals() -> Iterator[None]:
    previous = {sig: signal.signal(sig, _raise_stopped) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def stop_job(client: JobSubmissionClient, address: str, job_id: str) -> None:
    """Stop the Ray job and wait (STOP_WAIT_S at most) to see it end; one line says how it went."""
    try:
        client.stop_job(job_id)
        status = _wait_until_ended(client, job_id, STOP_WAIT_S)
    except (RuntimeError, requests.RequestException) as err:  # the dashboard is gone or refused
        _say(f"stopped: could not stop job {job_id} ({type(err).__name__}). Stop it: ray job stop --address {address} {job_id}")
        return
    if status.is_terminal():
        _say(f"stopped: job {job_id} {status.value.lower()} on the cluster")
    else:
        _say(
            f"stopped: asked the cluster to stop job {job_id}; still {status.value} after {STOP_WAIT_S:.0f} s. "
            f"Check: ray job status --address {address} {job_id}"
        )


def _wait_until_ended(client: JobSubmissionClient, job_id: str, timeout_s: float) -> JobStatus:
    deadline = time.monotonic() + timeout_s
    while not (status := client.get_job_info(job_id).status).is_terminal() and time.monotonic() < deadline:
        time.sleep(0.5)
    return status


async def _stream_logs(client: JobSubmissionClient, job_id: str) -> None:
    async for chunk in client.tail_job_logs(job_id):
        sys.stdout.write(chunk)
        sys.stdout.flush()


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
