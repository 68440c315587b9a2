"""What a finished `fit` leaves, turned into plain records and a committed run: each trial's status and
history, what cannot be committed yet (storage failed), which checkpoints are kept, and the report
with its manifest. Level 3: reads Tune's ResultGrid, writes through the Store."""

from __future__ import annotations

import platform
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

from ray import tune

from job import catalog, report, storage
from job.results import (
    EPOCH,
    ERROR,
    METRIC_MODES,
    NODE,
    STOPPED,
    TERMINATED,
    VARIANT,
    Attempt,
    EpochMetrics,
    Manifest,
    SweepResult,
    TrialResult,
    TrialSummary,
    trial_config,
)
from job.spec import JobSpec, UserError
from job.storage import Store


def collect(job_spec: JobSpec, run_id: str, grid: Any, checkpoints: list[list[tuple[str, dict[str, Any]]]], ended_by: str = "") -> SweepResult:
    """Plain records, one per trial, with every epoch it reported (see `_history`); `checkpoints` are each
    trial's `storage.checkpoint_folders`, in the grid's order. When the sweep `ended_by` a budget, trials
    it stopped (or never started) are STOPPED, not failed."""
    trials = []
    metric, mode = job_spec.search.metric, job_spec.search.mode
    # A trial that never reported has no config in its Result; Tune's own trial records have it.
    tune_trials = getattr(getattr(grid, "_experiment_analysis", None), "trials", None) or [None] * len(checkpoints)
    for result, folders, tune_trial in zip(grid, checkpoints, tune_trials):
        rows = _history(result, folders[0][1] if folders else {})
        scored = [(meta["metrics"][metric], path) for path, meta in folders if metric in meta.get("metrics", {})]
        best = (max if mode == "max" else min)(scored)[1] if scored else ""
        metrics = result.metrics or {}
        config = trial_config(result.config or getattr(tune_trial, "config", None) or {})
        trained = bool(rows) and rows[-1][EPOCH] >= config.get("optim.epochs", job_spec.optim.epochs)
        status = _status(result, ended_by, trained)
        trials.append(
            TrialResult(
                trial_id=metrics.get("trial_id", getattr(tune_trial, "trial_id", Path(result.path).name)),
                variant=config.get(VARIANT, "?"),
                params={k: v for k, v in config.items() if k != VARIANT},
                status=status,
                epochs=[EpochMetrics.from_dict(row) for row in rows],
                node=str(metrics.get(NODE, "")),
                checkpoint=best,
                error=_error_line(result) if status == ERROR else "",
                schedule=_schedule(folders) if job_spec.search.scheduler.kind == "pbt" else [],
            )
        )
    if ended_by:  # trials Tune had not yet made are not in the grid: count against the spec
        ended_by = f"{ended_by}: {sum(t.status == TERMINATED for t in trials)} of {job_spec.trial_count()} trials finished"
    return SweepResult(job_spec.name, run_id, job_spec.search.metric, trials, ended_by)


def _status(result: Any, ended_by: str, trained: bool) -> str:
    """TERMINATED when Tune marked the trial done, or when the budget's stop beat its last epoch's `done`
    (`trained`: it has all its epochs); STOPPED when the budget ended it; else ERROR."""
    if finished(result):
        return TERMINATED
    if ended_by and result.error is None:
        return TERMINATED if trained else STOPPED
    return ERROR


def finished(result: Any) -> bool:
    """Tune sets `done` on a trial's last result when its function returned or the scheduler stopped it.
    Not `result.error is None`: Tune reads the error back from storage, and an error whose file never
    got there (storage down when the trial failed) reads as no error at all."""
    return bool((result.metrics or {}).get("done")) and result.error is None


def lost(grid: Any, stopped_ok: bool = False) -> str | None:
    """Why the run cannot be committed yet though it may be resumed: a trial failed on storage, or failed
    with an error Tune could not read back (its error file never reached storage), or one stopped
    unfinished without a budget to explain it (`stopped_ok`: the sweep's time budget ran out)."""
    for result in grid:
        err = getattr(result.error, "cause", None) or result.error
        if isinstance(err, OSError):
            return str(err)
    unread = grid.num_errors - sum(1 for result in grid if result.error is not None)
    if unread:
        return f"{unread} failed trials' error logs did not reach storage"
    stopped = [result for result in grid if result.error is None and not finished(result)]
    if stopped and not stopped_ok:
        return f"trial {Path(stopped[0].path).name} stopped unfinished and its error log did not reach storage"
    return None


def _history(result: Any, newest: dict[str, Any]) -> list[dict[str, Any]]:
    """The newest checkpoint's history (complete across resumes), then the epochs reported after it from
    Tune's results: those of `checkpoints.every` > 1 that no checkpoint covers, e.g. where ASHA stopped
    the trial; all of them for a trial that never checkpointed."""
    rows = newest.get("history", [])
    saved = rows[-1][EPOCH] if rows else 0
    if (result.metrics or {}).get(EPOCH, 0) <= saved:
        return rows  # nothing after the checkpoint: no need to read the results back from storage
    frame = result.metrics_dataframe
    if frame is None:
        return rows
    later = frame[frame[EPOCH] > saved].drop_duplicates(EPOCH, keep="last")  # a retry reports retrained epochs again
    return rows + later.sort_values(EPOCH).to_dict("records")


def _schedule(folders: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """PBT changes a trial's variant and values as it goes. Each checkpoint records the ones it trained
    with: each change, from the first epoch after the checkpoint before it."""
    steps: list[dict[str, Any]] = []
    previous = 0
    for _, meta in reversed(folders):  # oldest epoch first
        trial = meta.get("trial", {})
        config = {VARIANT: trial.get(VARIANT), **trial.get("params", {})}
        if not steps or config != {k: v for k, v in steps[-1].items() if k != EPOCH}:
            steps.append({EPOCH: previous + 1, **config})
        previous = meta.get(EPOCH, previous)
    return steps


def _error_line(result: Any) -> str:
    """A trial's error in one line: a user error's own words (they pickle intact), else its type and first line."""
    err = getattr(result.error, "cause", None) or result.error
    if isinstance(err, UserError):
        text = "; ".join(err.problems)
    elif err is None:
        text = "stopped unfinished; its error log did not reach storage"
    else:
        lines = [line for line in str(err).splitlines() if line.strip()]
        text = f"{type(err).__name__}: {lines[0] if lines else ''}"
    return f"{text.strip()} (full log: {storage.uri_of(result.filesystem, result.path)}/error.txt)"


def prune(job_spec: JobSpec, grid: Any, checkpoints: list[list[tuple[str, dict[str, Any]]]]) -> None:
    """Keep each finished trial's best k checkpoints and its newest; failed trials keep all, to resume from."""
    metric, keep = job_spec.search.metric, job_spec.checkpoints.keep
    sign = -1.0 if job_spec.search.mode == "max" else 1.0
    for result, folders in zip(grid, checkpoints):
        if not finished(result):
            continue
        ranked = sorted(folders, key=lambda item: sign * item[1].get("metrics", {}).get(metric, -sign * float("inf")))
        kept = {path for path, _ in ranked[:keep]} | {path for path, _ in folders[:1]}
        storage.delete_folders(result.filesystem, [path for path, _ in folders if path not in kept])


def commit(job_spec: JobSpec, store: Store, result: SweepResult, filesystem: Any, attempts: list[tuple[str, float]]) -> Manifest:
    """Render the report, add the best checkpoint, and commit it: the manifest goes last. `attempts` is
    (started_at ISO 8601 UTC, wall_s) per driver that ran the run."""
    best = result.best_trial()
    manifest = _manifest(job_spec, result, attempts)  # its versions and wall time head the report page
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch)
        report.render(result, out, manifest.spec, manifest)
        if best is not None and best.checkpoint:
            tune.Checkpoint(best.checkpoint, filesystem).to_directory(str(out / "best"))
        return catalog.commit_run(store, job_spec.name, result.run_id, out, manifest)


def _manifest(job_spec: JobSpec, result: SweepResult, attempts: list[tuple[str, float]]) -> Manifest:
    """The manifest before the commit adds its files; `best_trial` None (no trial finished with results)
    keeps latest.json where it is."""
    best = result.best_trial()
    return Manifest(
        name=job_spec.name,
        run_id=result.run_id,
        metric=result.metric,
        mode=result.mode,
        spec=job_spec.model_dump(mode="json"),
        versions={"python": platform.python_version(), **{dist: version(dist) for dist in ("sweep-job", "torch", "ray", "pyarrow", "boto3")}},
        best_trial=best.trial_id if best else None,
        trials=tuple(
            TrialSummary(
                trial_id=t.trial_id,
                variant=t.variant,
                params=t.params,
                status=t.status,
                node=t.node,
                epochs=len(t.epochs),
                best={m: t.best(m) for m in METRIC_MODES},
                checkpoint=t.checkpoint,
                schedule=tuple(t.schedule),
            )
            for t in result.ranked()
        ),
        attempts=tuple(Attempt(started_at, round(wall_s, 2)) for started_at, wall_s in attempts),
        ended_by=result.ended_by,
    )
