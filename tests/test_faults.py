"""`sweep run` under faults: a killed driver (again and again), SIGTERM/SIGINT, a killed trial worker,
an S3 outage, a kill during the report commit, a second driver on a live run, and a corrupt newest
checkpoint. Each ends the same way: every trial TERMINATED with all its epochs, no finished trial
trained twice, no manifest while the run is incomplete, and `sweep results --verify` passes.

Every driver runs in its own session with its own RAY_TMPDIR (a local Ray each, no `ray stop`);
teardown SIGKILLs what each session started.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from faults import Driver, TcpProxy, epoch_of, event, trial_workers
from test_sweep import REPO, SMOKE, Bucket, sweep_env

pytestmark = [pytest.mark.slow, pytest.mark.faults]  # make test-faults; about 10 minutes here

START_S = 240  # from launch to the first line: imports, then the storage checks, on 2 busy cores
RUN_S = 540  # a whole driver attempt at most
SIGNAL_EXIT_S = 10  # the contract: a SIGTERM/SIGINT'd driver exits within 10 s
LEASE_S = 30  # the contract: a SIGKILLed driver's lease blocks a rerun for at most this
# ~1 s epochs on an idle 2-core machine (the smoke spec's take 0.03 s): kills land mid-epoch.
SLOW = ["data.synthetic_train=20000", "optim.batch_size=16"]
THREE_TRIALS = ["search.space={}"]  # the smoke spec's three variants, one learning rate
RUN_LINE = re.compile(r"(starting|resuming) run \S+ -> ")


class Sweep:
    """One sweep under test: its storage URI, `sweep run` arguments, environment and drivers."""

    def __init__(self, uri: str, endpoint: str, env: dict[str, str], sets: list[str], epochs: int, trials: int) -> None:
        self.uri, self.endpoint, self.env = uri, endpoint, env
        self.epochs, self.trials = epochs, trials
        self.overrides = [arg for item in [f"storage.uri={uri}", f"optim.epochs={epochs}", *sets] for arg in ("--set", item)]
        self.bucket = Bucket(uri, endpoint)
        self.drivers: list[Driver] = []
        self.t0 = time.monotonic()

    def say(self, text: str) -> None:
        """A line of the test's own story, with the seconds since it began (shown with -s)."""
        print(f"[{time.monotonic() - self.t0:5.0f} s] {text}", flush=True)

    def start(self, endpoint: str | None = None) -> Driver:
        env = {**self.env, "AWS_ENDPOINT_URL": endpoint or self.endpoint}
        driver = Driver([sys.executable, "-m", "job", "run", SMOKE, *self.overrides], env, REPO)
        self.drivers.append(driver)
        self.say(f"driver {len(self.drivers)} started (pid {driver.pid})")
        return driver

    def finish(self, driver: Driver) -> int:
        code = driver.finish(RUN_S)
        self.say(f"driver {self.drivers.index(driver) + 1} exited with {code}")
        return code

    def run_id_of(self, driver: Driver) -> tuple[str, str]:
        """("starting" or "resuming", run id) from the driver's run line."""
        found = driver.wait_for(lambda line: RUN_LINE.match(line) is not None, START_S)
        assert found, f"the driver printed no run line:\n{driver.tail()}"
        self.say(found[1])
        words = found[1].split()
        return words[0], words[2]

    def manifest_key(self, run_id: str) -> str:
        return f"smoke/{run_id}/report/manifest.json"

    def assert_uncommitted(self, run_id: str) -> None:
        assert self.manifest_key(run_id) not in self.bucket.keys(f"smoke/{run_id}/"), "an unfinished run must not look complete"
        assert "smoke/latest.json" not in self.bucket.keys("smoke/"), "latest.json points at an unfinished run"

    def assert_any_manifest_verifies(self) -> None:
        """No false commit: every manifest in the sweep vouches only for files that match it."""
        for key in self.bucket.keys("smoke/"):
            if key.endswith("/report/manifest.json"):
                self._assert_files_match(key.removesuffix("/report/manifest.json"), json.loads(self.bucket.read(key)))

    def _assert_files_match(self, run: str, manifest: dict) -> None:
        assert manifest["files"], manifest
        for entry in manifest["files"]:
            body = self.bucket.read(f"{run}/{entry['path']}")
            assert (len(body), hashlib.sha256(body).hexdigest()) == (entry["size"], entry["sha256"]), entry

    def assert_complete(self, run_id: str) -> dict:
        """The run committed: every trial TERMINATED with all its epochs, every file verifies (read
        back here and by `sweep results --verify`), latest.json points at it."""
        manifest = json.loads(self.bucket.read(self.manifest_key(run_id)))
        assert manifest["run_id"] == run_id
        trials = {t["trial_id"]: (t["status"], t["epochs"]) for t in manifest["trials"]}
        last = self.drivers[-1].tail() if self.drivers else ""
        assert len(manifest["trials"]) == self.trials and set(trials.values()) == {("TERMINATED", self.epochs)}, f"{trials}\n{last}"
        self._assert_files_match(f"smoke/{run_id}", manifest)
        assert json.loads(self.bucket.read("smoke/latest.json"))["run_id"] == run_id
        verify = subprocess.run(
            [sys.executable, "-m", "job", "results", f"{self.uri}/smoke", "--verify"],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert verify.returncode == 0, verify.stdout[-2000:] + verify.stderr[-2000:]
        return manifest

    def wait_for_saved_state(self, run_id: str) -> float:
        """Wait until Tune's experiment state in storage is one saved from now on; returns a time such
        that every result the driver printed before it is in that state. An upload in flight now may
        carry an older save, so two changes are waited for: Tune starts an upload only when the
        previous one has finished, so the second carries a save made after the first had landed."""

        def stored() -> dict[str, str]:
            keys = self.bucket.s3.list_objects_v2(Bucket=self.bucket.bucket, Prefix=f"{self.bucket.prefix}/smoke/{run_id}/tune/")
            return {o["Key"]: o["ETag"] for o in keys.get("Contents", []) if "/experiment_state" in o["Key"]}

        covered = time.monotonic()
        seen = stored()
        deadline = covered + RUN_S
        for change in range(2):
            while True:
                polled = time.monotonic()
                now = stored()
                if now != seen:
                    break
                covered = polled if change == 0 else covered  # the first upload had not landed at this poll
                assert time.monotonic() < deadline, "Tune's experiment state in storage never changed"
                time.sleep(0.2)
            seen = now
        self.say("Tune's experiment state was saved twice more")
        return covered

    def checkpoints(self, run_id: str, trial_id: str) -> dict[int, str]:
        """checkpoint index -> folder (relative to the storage URI) of one trial's stored checkpoints."""
        found = {}
        for key in self.bucket.keys(f"smoke/{run_id}/tune/"):
            parts = key.split("/")
            if len(parts) > 4 and f"_{trial_id}_" in f"{parts[3]}_" and parts[4].startswith("checkpoint_"):
                found[int(parts[4].removeprefix("checkpoint_"))] = "/".join(parts[:5])
        return found

    def results_rows(self, run_id: str, trial_id: str) -> list[dict]:
        """Every row of the trial's Tune result.json (one per reported epoch, every attempt)."""
        keys = [k for k in self.bucket.keys(f"smoke/{run_id}/tune/") if k.endswith("/result.json") and f"_{trial_id}_" in k]
        assert len(keys) == 1, keys
        return [json.loads(line) for line in self.bucket.read(keys[0]).decode().splitlines() if line.strip()]


@pytest.fixture
def sweep_factory(s3_server: str, tmp_path: Path) -> Iterator:
    """Makes Sweeps in a fresh bucket, each driver with RAY_TMPDIR=/tmp/rt-<hex> (Ray's socket paths must
    fit 107 bytes); kills whatever the drivers left running and removes their Ray folders."""
    made: list[Sweep] = []
    ray_tmp = Path(f"/tmp/rt-{uuid.uuid4().hex[:6]}")
    ray_tmp.mkdir()
    (tmp_path / "home").mkdir()

    def make(sets: list[str], epochs: int, trials: int, env: dict[str, str] | None = None) -> Sweep:
        env = {**sweep_env(s3_server, tmp_path / "home"), "RAY_TMPDIR": str(ray_tmp), **(env or {})}
        sweep = Sweep(f"s3://faults-{uuid.uuid4().hex[:12]}/sweeps", s3_server, env, sets, epochs, trials)
        made.append(sweep)
        return sweep

    try:
        yield make
    finally:
        for sweep in made:
            for driver in sweep.drivers:
                driver.kill()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def events(driver: Driver, kind: str) -> list[str]:
    """Trial ids of the driver's `kind` events, in order."""
    return [found[1] for line in driver.text_lines() if (found := event(line)) and found[0] == kind]


def events_in(text: str) -> list[tuple[str, str, int, int]]:
    return [found for line in text.splitlines() if (found := event(line))]


def assert_not_retrained(driver: Driver, finished: set[str]) -> None:
    again = sorted(t for t in finished if f"epoch  {t} " in driver.output)
    assert not again, f"finished trials trained again: {again}\n{driver.tail()}"


def test_driver_killed_again_and_again_still_finishes_the_same_run(sweep_factory) -> None:
    seed = int(os.environ.get("FAULTS_SEED", random.randrange(1 << 30)))
    print(f"kill offsets from seed {seed} (FAULTS_SEED={seed} repeats them)")
    rng = random.Random(seed)
    sweep = sweep_factory(SLOW, epochs=6, trials=6)
    finished: set[str] = set()
    run_id, killed_at = "", 0.0
    for attempt in range(2):  # two kills, then a driver that finishes
        driver = sweep.start()
        how, seen = sweep.run_id_of(driver)
        if attempt == 0:
            assert how == "starting", driver.tail()
            run_id = seen
        else:
            assert (how, seen) == ("resuming", run_id), driver.tail()
            # From the kill to the rerun's run line: its start-up (15-40 s on 2 busy cores) plus at
            # most the dead driver's lease.
            waited = next(at for at, line in driver.lines if RUN_LINE.match(line)) - killed_at
            sweep.say(f"attempt {attempt + 1}: resumed {waited:.1f} s after the kill")
            assert waited < LEASE_S + 60, f"the rerun waited {waited:.0f} s for a dead driver's lease"

        # Kill just after a trial finishes (for the first time) while others still train; an attempt
        # that finishes every trial without such a moment runs to the end instead.
        def newly_done(line: str) -> bool:
            found = event(line)
            return found is not None and found[0] == "done" and found[1] not in finished and found[2] < found[3]

        found = driver.wait_for(newly_done, RUN_S)
        if found is None:
            break
        offset = rng.uniform(0, 2)
        time.sleep(offset)
        driver.kill()
        killed_at = time.monotonic()
        assert_not_retrained(driver, finished)
        finished |= set(events(driver, "done"))
        sweep.say(f"attempt {attempt + 1}: killed {offset:.2f} s after `{found[1]}`; finished so far: {sorted(finished)}")
        sweep.assert_uncommitted(run_id)
    else:
        driver = sweep.start()
        assert sweep.run_id_of(driver) == ("resuming", run_id), driver.tail()
    code = sweep.finish(driver)
    assert code == 0, driver.tail()
    assert_not_retrained(driver, finished)
    manifest = sweep.assert_complete(run_id)
    assert len(manifest["attempts"]) == len(sweep.drivers), manifest["attempts"]


def test_sigterm_and_sigint_stop_cleanly_and_the_rerun_resumes(sweep_factory) -> None:
    sweep = sweep_factory([*SLOW, *THREE_TRIALS], epochs=4, trials=3)
    run_id = ""
    finished: set[str] = set()
    for sig, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        driver = sweep.start()
        how, seen = sweep.run_id_of(driver)
        run_id = run_id or seen
        assert seen == run_id and how == ("starting" if sig == signal.SIGTERM else "resuming"), driver.tail()
        assert driver.wait_for(lambda line: "] epoch " in line, RUN_S), driver.tail()
        os.kill(driver.pid, sig)  # the driver process only, as `kill` or Ctrl-C in its terminal would
        signalled = time.monotonic()
        try:
            driver.proc.wait(timeout=SIGNAL_EXIT_S * 6)
        except subprocess.TimeoutExpired:
            driver.kill()
            pytest.fail(f"{sig.name}: the driver was still running {SIGNAL_EXIT_S * 6} s later:\n{driver.tail()}")
        took = time.monotonic() - signalled
        exited = sweep.finish(driver)
        output = driver.output
        sweep.say(f"{sig.name}: exit {exited} after {took:.1f} s")
        assert exited == code, driver.tail()
        said = f"interrupted: run {run_id} saved; rerun the same command to resume"
        assert any(said in line for line in output.splitlines()), driver.tail()
        for crash in ("Traceback", "*** SIGABRT", "Aborted"):
            assert crash not in output, driver.tail()
        assert took <= SIGNAL_EXIT_S, f"{sig.name}: took {took:.1f} s to exit:\n{driver.tail()}"
        assert_not_retrained(driver, finished)
        finished |= set(events(driver, "done"))
        sweep.say(f"{sig.name}: {driver.leftovers} processes of its session were left running (killed)")
        sweep.assert_uncommitted(run_id)
    driver = sweep.start()
    assert sweep.run_id_of(driver) == ("resuming", run_id), driver.tail()
    assert sweep.finish(driver) == 0, driver.tail()
    assert_not_retrained(driver, finished)
    manifest = sweep.assert_complete(run_id)
    assert len(manifest["attempts"]) == 3, manifest["attempts"]


def test_a_killed_trial_worker_is_retried_from_its_checkpoint(sweep_factory) -> None:
    sweep = sweep_factory([*SLOW, *THREE_TRIALS], epochs=4, trials=3)
    driver = sweep.start()
    _, run_id = sweep.run_id_of(driver)
    found = driver.wait_for(lambda line: "] epoch " in line and epoch_of(line) == 1, RUN_S)
    assert found, driver.tail()
    trial_id = event(found[1])[1]
    workers = trial_workers(driver.pid)
    assert trial_id in workers, f"no worker process for {trial_id} among {workers}"
    time.sleep(0.3)  # into its second epoch
    assert f"done   {trial_id}" not in driver.output, "the trial finished before the kill"
    os.kill(workers[trial_id], signal.SIGKILL)
    sweep.say(f"killed {trial_id}'s worker (pid {workers[trial_id]}) after {len(driver.lines)} lines")
    assert sweep.finish(driver) == 0, driver.tail()
    sweep.assert_complete(run_id)
    rows = sweep.results_rows(run_id, trial_id)
    pids = list(dict.fromkeys(row["pid"] for row in rows))
    assert pids[0] == workers[trial_id] and len(pids) == 2, f"{trial_id} was not retried in a new worker: {pids}"
    resumed = [row["epoch"] for row in rows if row["pid"] == pids[1]]
    assert resumed[0] > 1 and resumed[-1] == sweep.epochs, f"{trial_id} did not resume from its checkpoint: {resumed}"


def test_a_storage_outage_loses_no_trial(sweep_factory, s3_server: str) -> None:
    sweep = sweep_factory([*SLOW, *THREE_TRIALS], epochs=6, trials=3)
    proxy = TcpProxy(s3_server)
    try:
        driver = sweep.start(proxy.url)
        _, run_id = sweep.run_id_of(driver)
        assert driver.wait_for(lambda line: "] epoch " in line, RUN_S), driver.tail()
        assert driver.proc.poll() is None, "the run ended before the outage"
        proxy.start_outage()
        sweep.say("outage begins")
        lines = len(driver.lines)
        time.sleep(30)
        proxy.end_outage()
        sweep.say(f"outage: {proxy.reset} connections reset, {len(driver.lines) - lines} lines printed meanwhile")
        assert proxy.reset > 0, "the outage cut no traffic"
        code = sweep.finish(driver)
        sweep.assert_any_manifest_verifies()
        if code == 2:
            said = [line for line in driver.text_lines() if run_id in line and "saved" in line and "rerun" in line]
            assert said, driver.tail()
            sweep.assert_uncommitted(run_id)
            driver = sweep.start(proxy.url)
            assert sweep.run_id_of(driver) == ("resuming", run_id), driver.tail()
            code = sweep.finish(driver)
        assert code == 0, driver.tail()
        sweep.assert_complete(run_id)
    finally:
        proxy.close()


def test_a_kill_during_the_report_commit_is_committed_by_the_rerun(sweep_factory, s3_server: str) -> None:
    sweep = sweep_factory(THREE_TRIALS, epochs=2, trials=3)
    proxy = TcpProxy(s3_server)  # slows the commit's uploads, so the kill lands between its first file and the manifest
    try:
        driver = sweep.start(proxy.url)
        _, run_id = sweep.run_id_of(driver)
        report = f"smoke/{run_id}/report/"
        assert driver.wait_for(lambda line: "[3/3 done" in line, RUN_S), driver.tail()
        before = set(sweep.bucket.keys(report))
        proxy.delay_s = 0.2
        deadline = time.monotonic() + RUN_S
        while not (set(sweep.bucket.keys(report)) - before):
            assert driver.proc.poll() is None and time.monotonic() < deadline, f"no report file appeared:\n{driver.tail()}"
            time.sleep(0.02)
        driver.kill()
        written = sorted(set(sweep.bucket.keys(report)) - before)
        sweep.say(f"killed with {len(written)} report files written: {written}")
        sweep.assert_uncommitted(run_id)
        proxy.delay_s = 0.0
        rerun = sweep.start(proxy.url)
        assert sweep.run_id_of(rerun) == ("resuming", run_id), rerun.tail()
        assert sweep.finish(rerun) == 0, rerun.tail()
        assert not events(rerun, "epoch") and not events(rerun, "start"), f"the rerun trained again:\n{rerun.tail()}"
        sweep.assert_complete(run_id)
    finally:
        proxy.close()


def test_a_second_driver_on_a_live_run_is_refused(sweep_factory) -> None:
    # Outlasts the second driver's start (Ray included) and its wait for a lease renewal: ~11 s + ~15 s.
    sweep = sweep_factory([*SLOW, *THREE_TRIALS], epochs=30, trials=3)
    first = sweep.start()
    _, run_id = sweep.run_id_of(first)
    assert first.wait_for(lambda line: "] epoch " in line, RUN_S), first.tail()
    second = subprocess.run(
        [sys.executable, "-m", "job", "run", SMOKE, *sweep.overrides], env=sweep.env, cwd=REPO, capture_output=True, text=True, timeout=RUN_S
    )
    assert first.proc.poll() is None, "the first run ended before the second driver was refused: make it longer"
    assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
    errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in second.stderr, second.stderr
    assert run_id in errors[0] and "another driver" in errors[0] and "--new" in errors[0], errors[0]
    assert "starting run" not in second.stdout and not events_in(second.stdout), second.stdout
    assert sweep.finish(first) == 0, first.tail()
    assert "FAILED" not in first.output, first.tail()
    sweep.assert_complete(run_id)
    assert {k.split("/")[1] for k in sweep.bucket.keys("smoke/") if k.count("/") > 1} == {run_id}, "a second run was started"


def test_a_corrupt_newest_checkpoint_falls_back_and_the_trial_finishes(sweep_factory) -> None:
    # Tune saves its experiment state every 10 s or more ("auto"); every 1 s here, so that the saved
    # state names a checkpoint of a trial that is still training when the kill lands, without epochs
    # long enough to outlast two 10 s periods. What the rerun does with the checkpoints is unchanged.
    sweep = sweep_factory([*SLOW, *THREE_TRIALS], epochs=6, trials=3, env={"TUNE_GLOBAL_CHECKPOINT_S": "1"})
    driver = sweep.start()
    _, run_id = sweep.run_id_of(driver)
    assert driver.wait_for(lambda line: "] epoch " in line and epoch_of(line) == 2, RUN_S), driver.tail()
    covered = sweep.wait_for_saved_state(run_id)
    driver.kill()
    finished = set(events(driver, "done"))
    saved = {event(line)[1] for at, line in driver.lines if at < covered and "] epoch " in line}
    training = sorted(saved - finished)
    assert training, f"every trial in Tune's saved state finished before the kill: make epochs longer\n{driver.tail()}"
    stored = {t: sweep.checkpoints(run_id, t) for t in training}
    trial_id = max(training, key=lambda t: len(stored[t]))  # one with a previous checkpoint to fall back to, if any
    checkpoints = stored[trial_id]
    assert checkpoints, f"{trial_id} stored no checkpoint"
    newest = checkpoints[max(checkpoints)]
    model = f"{sweep.bucket.prefix}/{newest}/model.pt"
    sweep.bucket.s3.put_object(Bucket=sweep.bucket.bucket, Key=model, Body=b"not a checkpoint" + os.urandom(512))
    sweep.say(f"corrupted {newest}/model.pt of {trial_id} (checkpoints {sorted(checkpoints)})")
    rerun = sweep.start()
    assert sweep.run_id_of(rerun) == ("resuming", run_id), rerun.tail()
    assert sweep.finish(rerun) == 0, rerun.tail()
    # A line about the bad checkpoint: naming it, or saying what is wrong with it (a plain "resumed from
    # checkpoint" note alone is not enough).
    bad = re.compile(rf"{newest.rsplit('/', 1)[1]}|unreadable|corrupt|damaged|invalid|broken|bad|skip", re.IGNORECASE)
    said = [line for line in rerun.text_lines() if "checkpoint" in line.lower() and trial_id in line and bad.search(line)]
    assert said, f"no line about {trial_id}'s bad checkpoint:\n{rerun.tail()}"
    sweep.say(f"the rerun said: {said[0]}")
    assert f"epoch  {trial_id} {sweep.epochs}:" in rerun.output, rerun.tail()
    assert_not_retrained(rerun, finished)
    sweep.assert_complete(run_id)
