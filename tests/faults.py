"""Fault injection for the fault tests: a driver process whose output is read as it comes, killing
everything a driver started, finding a trial's worker process, and a TCP proxy in front of the S3
server that can cut or slow its traffic."""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

EVENT = re.compile(r"^\[(\d+)/(\d+) done, [^]]*\] (start|epoch|done|FAILED)\s+(\S+?):?(?:\s|$)")


def event(line: str) -> tuple[str, str, int, int] | None:
    """`[3/6 done, ...] epoch  abc_00001 2: ...` -> ("epoch", "abc_00001", 3, 6); None for other lines."""
    found = EVENT.match(line)
    return (found[3], found[4], int(found[1]), int(found[2])) if found else None


def epoch_of(line: str) -> int:
    return int(line.split("] epoch ", 1)[1].split()[1].rstrip(":"))


class Driver:
    """`sweep run` in its own session (so that it and the local Ray it starts can be killed together),
    stdout and stderr merged and read line by line on a thread, each line with its arrival time."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.started = time.monotonic()
        self.proc = subprocess.Popen(args, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines: list[tuple[float, str]] = []
        self.killed = False
        self.leftovers = 0
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append((time.monotonic(), line.rstrip("\n")))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def output(self) -> str:
        return "\n".join(text for _, text in list(self.lines))

    def text_lines(self) -> list[str]:
        return [text for _, text in list(self.lines)]

    def tail(self, chars: int = 4000) -> str:
        return self.output[-chars:]

    def wait_for(self, wanted: Callable[[str], bool], timeout_s: float, start: int = 0) -> tuple[int, str] | None:
        """The first line (index, text) from `start` on that `wanted` accepts; None when the driver's
        output ended without one. Fails after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        index = start
        with self._changed:
            while True:
                while index < len(self.lines):
                    if wanted(self.lines[index][1]):
                        return index, self.lines[index][1]
                    index += 1
                if not self._reader.is_alive():
                    return None
                left = deadline - time.monotonic()
                assert left > 0, f"no matching line within {timeout_s} s; output so far:\n{self.tail()}"
                self._changed.wait(min(left, 1.0))

    def finish(self, timeout_s: float, settle_s: float = 0.0) -> int:
        """Wait for the driver to exit by itself and its output to be read, then up to `settle_s` for what
        it left running to exit too (Ray's workers follow their raylet out within about a second), then
        kill the rest (counted in `leftovers`); returns its exit code."""
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the driver did not finish within {timeout_s} s; output so far:\n{self.tail()}") from None
        self._reader.join(timeout=30)
        deadline = time.monotonic() + settle_s
        while session_pids(self.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        self.leftovers = len(session_pids(self.proc.pid))
        self.kill()
        return code

    def kill(self) -> None:
        """SIGKILL the driver's process group and every other process of its session (Ray's workers
        make groups of their own), as if the machine running the driver had died. Also how a test
        removes whatever a driver that exited left behind; once only, as the session id is a pid that
        can be reused once the session is empty."""
        if self.killed:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        kill_session(self.proc.pid)
        self.killed = True
        self.proc.wait(timeout=30)
        self._reader.join(timeout=30)


def _stat(pid: int) -> list[str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()  # fields from the state on: state, ppid, pgrp, session


def session_pids(session: int) -> set[int]:
    """Live (not zombie) processes of this session, plus their descendants wherever they went."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) and fields[0] != "Z":
            table[int(entry)] = (int(fields[1]), int(fields[3]))
    pids = {pid for pid, (_, sid) in table.items() if sid == session}
    while more := {pid for pid, (parent, _) in table.items() if parent in pids} - pids:
        pids |= more
    return pids


def kill_session(session: int, timeout_s: float = 30.0) -> None:
    pids = session_pids(session)  # snapshot first: orphans get re-parented once their raylet dies
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout_s
    while session_pids(session) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not session_pids(session), f"processes of session {session} survived SIGKILL: {session_pids(session)}"


def trial_workers(session: int) -> dict[str, int]:
    """trial id -> pid of the Ray worker running it, among this session's processes. Tune runs each
    trial in an actor titled `ray::ImplicitFunc...` whose working directory is the trial's
    `.../working_dirs/run_trial_<trial id>_...`."""
    found = {}
    for pid in session_pids(session):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            continue
        if title.startswith("ray::ImplicitFunc") and (match := re.search(r"/working_dirs/run_trial_([0-9a-f]+_\d+)_", cwd)):
            found[match[1]] = pid
    return found


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target, with two faults the test switches on and off:
    an outage (open connections are reset and new ones accepted then reset at once) and a delay
    before each chunk sent to the target."""

    def __init__(self, target_url: str) -> None:
        parsed = urlparse(target_url)
        self.target = (parsed.hostname, parsed.port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.down = False
        self.delay_s = 0.0
        self.forwarded = 0  # connections forwarded
        self.reset = 0  # connections reset because of an outage (open ones cut, new ones refused)
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def start_outage(self) -> None:
        with self._lock:
            self.down = True
            cut = list(self._open)
            self.reset += len(cut) // 2
        for sock in cut:
            _abort(sock)

    def end_outage(self) -> None:
        with self._lock:
            self.down = False

    def close(self) -> None:
        self._closed = True
        self.listener.close()
        with self._lock:
            cut = list(self._open)
        for sock in cut:
            _abort(sock)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                down = self.down
                self.reset += down
            if down:
                _abort(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                _abort(client)
                continue
            with self._lock:
                self.forwarded += 1
                self._open |= {client, upstream}
            ends = [0]  # pumps of this pair that have ended: the second closes both sockets
            threading.Thread(target=self._pump, args=(client, upstream, True, ends), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False, ends), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, to_target: bool, ends: list[int]) -> None:
        """Copy one direction; an end of stream is passed on as such (FIN), anything else resets both."""
        try:
            while data := source.recv(65536):
                if to_target and self.delay_s:
                    time.sleep(self.delay_s)
                if self.down:
                    raise ConnectionResetError("outage")
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            _abort(source)
            _abort(sink)
        with self._lock:
            ends[0] += 1
            if ends[0] < 2:
                return
            self._open -= {source, sink}
        source.close()
        sink.close()


def _abort(sock: socket.socket) -> None:
    """Reset the connection (RST, not FIN) and wake any thread blocked on it."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
