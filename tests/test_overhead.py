"""Per-trial overhead cut without changing a result: Tune reuses trial workers (a later trial in a used
worker trains exactly as `train_trial` does in a fresh process), checkpoints every `checkpoints.every`
epochs plus the last, and a retried trial retrains the epochs after its newest checkpoint bit-identically."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from faults import Driver, epoch_of, event, trial_workers
from test_sweep import REPO, SMOKE, run_sweep, sweep_env

from job import outcome, train
from job.spec import JobSpec, SpecError, load_spec, parse_spec, resolve_trial

METRICS = ("train_loss", "train_acc", "test_loss", "test_acc")


def flags(sets: list[str]) -> list[str]:
    return [arg for item in sets for arg in ("--set", item)]


def reported(run: Path) -> dict[str, list[dict]]:
    """trial id -> every row of its Tune result.json (one per reported epoch, every attempt)."""
    rows = {}
    for path in (run / "tune").glob("*/result.json"):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        rows[lines[0]["trial_id"]] = lines
    return rows


def reference(job_spec: JobSpec, run: Path) -> dict[tuple[str, int], tuple[float, ...]]:
    """(trial id, epoch) -> the metrics `train_trial` gives in this process, one thread as in the sweep, for
    every trial of the run's report: what `sweep train` computes, with no Ray and no earlier trial."""
    manifest = json.loads((run / "report" / "manifest.json").read_text())
    expected = {}
    threads = torch.get_num_threads()
    try:
        device = train.choose_device(threads=1, use_cuda=False)
        for t in manifest["trials"]:
            trial = resolve_trial(job_spec, t["variant"], t["params"])
            for metrics, _ in train.train_trial(trial, device):
                expected[t["trial_id"], metrics.epoch] = tuple(getattr(metrics, m) for m in METRICS)
    finally:
        torch.set_num_threads(threads)
    return expected


def report_metrics(run: Path) -> dict[tuple[str, int], tuple[float, ...]]:
    """(trial id, epoch) -> metrics as the report's metrics.csv holds them (written with repr: exact)."""
    with (run / "report" / "metrics.csv").open() as handle:
        return {(r["trial_id"], int(r["epoch"])): tuple(float(r[m]) for m in METRICS) for r in csv.DictReader(handle)}


def only_run(out: Path) -> Path:
    (run,) = [p for p in (out / "smoke").iterdir() if p.is_dir()]
    return run


@pytest.mark.slow
def test_reused_workers_train_as_fresh_processes_and_checkpoint_every_n_epochs(tmp_path: Path) -> None:
    """Six trials (dropout among them: it draws from the global RNG) on two worker slots: some worker runs
    several, and every epoch of every trial equals a plain `train_trial` in this process, bit for bit."""
    out = tmp_path / "out"
    sets = [f"storage.uri={out}", "optim.epochs=3", "checkpoints.every=2"]
    done = run_sweep(["run", SMOKE, *flags(sets)], sweep_env(None, tmp_path))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = only_run(out)
    rows = reported(run)
    assert len(rows) == 6
    pids = [trial_rows[0]["pid"] for trial_rows in rows.values()]
    assert len(set(pids)) < len(pids), f"no worker ran two trials: {pids}"
    for trial_id, trial_rows in rows.items():
        saved = [r["epoch"] for r in trial_rows if r.get("checkpoint_dir_name")]
        assert saved == [2, 3], (trial_id, saved)  # every 2nd epoch, and always the last
    got = report_metrics(run)
    assert got == reference(load_spec(Path(SMOKE), sets), run)


@pytest.mark.slow
def test_a_killed_trial_retrains_the_epochs_after_its_newest_checkpoint_bit_identically(tmp_path: Path) -> None:
    """checkpoints.every 2, the trial's worker killed after epoch 3 (checkpoint at 2): the retry resumes at
    epoch 2, retrains 3 to 5, and the report has all five epochs, equal to an uninterrupted run's."""
    out = tmp_path / "out"
    ray_tmp = Path(f"/tmp/rt-{uuid.uuid4().hex[:6]}")  # Ray's socket paths must fit 107 bytes
    env = {**sweep_env(None, tmp_path), "RAY_TMPDIR": str(ray_tmp)}
    # ~2 s epochs on an idle 2-core machine: the kill lands in epoch 4, before its checkpoint.
    sets = [
        f"storage.uri={out}",
        "optim.epochs=5",
        "checkpoints.every=2",
        "search.space={}",
        "variants={dropout: {hidden: 32, dropout: 0.5}}",
        "data.synthetic_train=40000",
        "optim.batch_size=16",
    ]
    driver = Driver([sys.executable, "-m", "job", "run", SMOKE, *flags(sets)], env, REPO)
    try:
        found = driver.wait_for(lambda line: (e := event(line)) is not None and e[0] == "epoch" and epoch_of(line) == 3, 400)
        assert found, driver.tail()
        trial_id = event(found[1])[1]
        workers = trial_workers(driver.pid)
        assert trial_id in workers, f"no worker process for {trial_id} among {workers}"
        os.kill(workers[trial_id], signal.SIGKILL)
        assert driver.finish(400, settle_s=15) == 0, driver.tail()
        # The driver exits without Python's teardown once the run is committed, after stopping its Ray: the
        # trial workers follow their raylet out within about a second; nothing may stay.
        assert driver.leftovers == 0, f"{driver.leftovers} processes of the sweep's Ray were still running 15 s after it exited"
    finally:
        driver.kill()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    after = driver.output.split(found[1], 1)[1]
    assert "resumed at epoch 2 from checkpoint" in after, driver.tail()
    assert [epoch_of(line) for line in after.splitlines() if "] epoch " in line] == [3, 4, 5], driver.tail()  # 3 again
    got = report_metrics(only_run(out))
    assert sorted(epoch for _, epoch in got) == [1, 2, 3, 4, 5]
    assert got == reference(load_spec(Path(SMOKE), sets), only_run(out))


def grid_result(history: list[dict], reported_rows: list[dict] | None) -> SimpleNamespace:
    frame = None if reported_rows is None else pd.DataFrame(reported_rows)
    return SimpleNamespace(metrics=(reported_rows or history)[-1], metrics_dataframe=frame)


def row(epoch: int, acc: float) -> dict:
    return {
        "epoch": epoch,
        "train_loss": 1.0,
        "train_acc": acc,
        "test_loss": 1.0,
        "test_acc": acc,
        "epoch_s": 0.1,
        "samples_per_s": 1.0,
        "device": "cpu",
    }


def test_history_adds_the_epochs_reported_after_the_newest_checkpoint() -> None:
    """An ASHA-stopped trial under checkpoints.every 2: checkpoint at 2, stopped after epoch 3."""
    saved = [row(1, 10.0), row(2, 20.0)]
    tune_rows = [{**row(1, 10.0), "pid": 7}, {**row(2, 20.0), "pid": 7}, {**row(3, 30.0), "pid": 7}]
    got = outcome._history(grid_result(saved, tune_rows), {"history": saved})
    assert [r["epoch"] for r in got] == [1, 2, 3] and got[-1]["test_acc"] == 30.0


class Covered:
    """A trial whose newest checkpoint covers its last report: Tune's results must not be read back."""

    metrics = row(2, 20.0)

    @property
    def metrics_dataframe(self) -> None:
        raise AssertionError("read Tune's results back though the checkpoint covers every epoch")


def test_history_keeps_the_last_report_of_a_retrained_epoch_and_skips_reading_when_covered() -> None:
    saved = [row(1, 10.0), row(2, 20.0)]
    tune_rows = [row(1, 10.0), row(2, 20.0), row(3, 29.0), row(3, 30.0), row(4, 40.0)]
    got = outcome._history(grid_result(saved, tune_rows), {"history": saved})
    assert [(r["epoch"], r["test_acc"]) for r in got] == [(1, 10.0), (2, 20.0), (3, 30.0), (4, 40.0)]
    assert outcome._history(Covered(), {"history": saved}) == saved
    assert [r["epoch"] for r in outcome._history(grid_result([], tune_rows[:2]), {})] == [1, 2]  # never checkpointed


@pytest.mark.parametrize("every", [0, -1])
def test_checkpoints_every_is_at_least_one(every: int) -> None:
    raw = {"name": "t", "variants": {"basic": {}}, "checkpoints": {"every": every}}
    with pytest.raises(SpecError, match="checkpoints.every"):
        parse_spec(raw)
    assert parse_spec({**raw, "checkpoints": {}}).checkpoints.every == 1
