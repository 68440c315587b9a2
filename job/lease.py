"""One driver writes a run: a lease in the run's folder, renewed while its driver lives and taken over
when it died, which also logs each attempt's start and wall time for the manifest. Storage-agnostic:
one small JSON read and written through a `Store`."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from job.spec import SpecError
from job.storage import Store

LEASE = "lease.json"
LEASE_TTL_S = 30.0  # a driver that stopped renewing this long ago is dead; it renews every third of it


class RunLease:
    """One driver writes a run: a JSON in the run's folder that its holder renews from a thread.

    A second driver finds it held and refuses; a holder that died (same host and its process gone, or
    silent for `LEASE_TTL_S`) is taken over, so a killed run is still resumed. The JSON also logs every
    attempt's start and wall time, which the manifest reports. S3 has no compare-and-swap here, so two
    drivers starting in the same second are told apart by reading the lease back after writing it."""

    def __init__(self, store: Store, name: str, run_id: str) -> None:
        self.store, self.rel, self.run_id = store, f"{name}/{run_id}/{LEASE}", run_id
        self.owner = uuid.uuid4().hex
        self.started = time.time()
        self.attempts: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_until_stopped, name="run-lease", daemon=True)

    def acquire(self, new_run: bool = False) -> None:
        """Take the lease (waiting out a holder that may be dead), or raise a one-line `SpecError`. A run id
        this driver just made (`new_run`) has no other writer to tell apart: no read-back wait."""
        held = self._read()
        while held and self._alive(held):
            seen = held.get("renewed_at")
            time.sleep(min(LEASE_TTL_S / 3 + 1, max(0.5, held["renewed_at"] + LEASE_TTL_S - time.time())))
            held = self._read()
            if held and held.get("renewed_at") != seen and not held.get("released"):
                raise SpecError(
                    [
                        f"{self.store.url(self.rel)}: run {self.run_id} is being written by another driver "
                        f"(got {held.get('host')} pid {held.get('pid')}). Wait for it to finish, or pass --new for a separate run"
                    ]
                )
        self.attempts = [*(held or {}).get("attempts", []), {"started_at": _iso(self.started), "wall_s": 0.0}]
        self._write()
        if not new_run:
            time.sleep(1.0)  # a driver that wrote at the same moment shows up now
        if (self._read() or {}).get("owner") != self.owner:
            raise SpecError(
                [
                    f"{self.store.url(self.rel)}: another driver took run {self.run_id} at the same moment. "
                    "Let it run, or pass --new for a separate run"
                ]
            )
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        self._write(released=True)

    def _alive(self, held: dict[str, Any]) -> bool:
        if held.get("released") or time.time() - held.get("renewed_at", 0) > LEASE_TTL_S:
            return False
        if held.get("host") == socket.gethostname():  # a restarted container has our host name and maybe our pid
            return held.get("pid") != os.getpid() and _process_exists(held.get("pid", 0))
        return True

    def _renew_until_stopped(self) -> None:
        while not self._stop.wait(LEASE_TTL_S / 3):
            with contextlib.suppress(SpecError):  # storage down for a while: the next renewal tries again
                self._write()

    def _write(self, released: bool = False) -> None:
        now = time.time()
        self.attempts[-1]["wall_s"] = round(now - self.started, 2)
        lease = {
            "owner": self.owner,
            "run_id": self.run_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "renewed_at": now,
            "released": released,
            "attempts": self.attempts,
        }
        self.store.write_bytes(self.rel, json.dumps(lease, indent=2).encode())

    def _read(self) -> dict[str, Any] | None:
        data = self.store.read_optional(self.rel)
        with contextlib.suppress(ValueError):
            return json.loads(data) if data else None
        return None


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid > 0


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")
