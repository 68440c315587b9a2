"""lease.RunLease: one driver writes a run; a dead one is taken over at once, a live one refuses the
second driver, and every attempt's wall time is kept. On a local folder: the lease logic is storage-agnostic."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from job.credentials import StorageSettings
from job.lease import LEASE, LEASE_TTL_S, RunLease
from job.spec import SpecError
from job.storage import Store


def lease_file(root: Path) -> Path:
    return root / "sweep" / "run1" / LEASE


def hold(root: Path, host: str, pid: int, age_s: float = 0.0, released: bool = False) -> None:
    path = lease_file(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    attempts = [{"started_at": "2026-12-01T00:00:00+00:00", "wall_s": 12.5}]
    path.write_text(
        json.dumps(
            {
                "owner": "other",
                "run_id": "run1",
                "host": host,
                "pid": pid,
                "renewed_at": time.time() - age_s,
                "released": released,
                "attempts": attempts,
            }
        )
    )


def new_lease(root: Path) -> RunLease:
    return RunLease(Store(str(root), StorageSettings()), "sweep", "run1")


def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    return int(done.stdout)


@pytest.mark.parametrize("case", ["same host, process gone", "silent past the TTL", "released"])
def test_a_dead_or_finished_holder_is_taken_over_at_once(tmp_path: Path, case: str) -> None:
    if case == "same host, process gone":
        hold(tmp_path, socket.gethostname(), dead_pid())
    elif case == "silent past the TTL":
        hold(tmp_path, "another-host", 1, age_s=LEASE_TTL_S + 1)
    else:
        hold(tmp_path, "another-host", 1, released=True)
    lease = new_lease(tmp_path)
    started = time.monotonic()
    lease.acquire()
    try:
        assert time.monotonic() - started < 5  # one read-back second, no waiting out the TTL
        written = json.loads(lease_file(tmp_path).read_text())
        assert written["owner"] == lease.owner and not written["released"]
        assert [a["wall_s"] for a in written["attempts"]][:1] == [12.5] and len(written["attempts"]) == 2
    finally:
        lease.release()
    assert json.loads(lease_file(tmp_path).read_text())["released"] is True


def test_a_live_holder_makes_the_second_driver_refuse_in_one_line(tmp_path: Path) -> None:
    hold(tmp_path, "another-host", 4242)
    stop = threading.Event()

    def renew() -> None:  # the other driver, alive: it renews more often than the TTL asks
        while not stop.wait(1.0):
            hold(tmp_path, "another-host", 4242)

    threading.Thread(target=renew, daemon=True).start()
    try:
        with pytest.raises(SpecError) as caught:
            new_lease(tmp_path).acquire()
    finally:
        stop.set()
    (line,) = caught.value.problems
    assert "run1 is being written by another driver" in line and "another-host" in line and "--new" in line
    assert json.loads(lease_file(tmp_path).read_text())["owner"] == "other"  # left alone


def test_our_own_live_process_on_this_host_counts_as_alive(tmp_path: Path) -> None:
    """A second `sweep run` on the same machine while the first runs: the first's pid exists."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        hold(tmp_path, socket.gethostname(), sleeper.pid)
        lease = new_lease(tmp_path)
        assert lease._alive(json.loads(lease_file(tmp_path).read_text()))
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not lease._alive(json.loads(lease_file(tmp_path).read_text()))


def test_a_resume_that_another_driver_took_in_the_same_second_refuses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two drivers resuming one run at once: the one whose lease was overwritten during the read-back wait refuses."""
    waits: list[float] = []

    def other_driver_writes(seconds: float) -> None:
        waits.append(seconds)
        hold(tmp_path, "another-host", 4242)

    monkeypatch.setattr("job.lease.time.sleep", other_driver_writes)
    with pytest.raises(SpecError) as caught:
        new_lease(tmp_path).acquire()
    assert waits == [1.0] and "another driver took run run1 at the same moment" in caught.value.problems[0]


def test_a_new_run_id_has_no_other_writer_to_wait_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The id was just made (random suffix): no read-back wait on the way to the first trial."""
    waits: list[float] = []
    monkeypatch.setattr("job.lease.time.sleep", waits.append)
    lease = new_lease(tmp_path)
    lease.acquire(new_run=True)
    lease.release()
    assert waits == [] and json.loads(lease_file(tmp_path).read_text())["owner"] == lease.owner
