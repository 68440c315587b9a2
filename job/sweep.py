"""The only Ray Tune code: the Tuner built from the spec, the trainable adapter, resources, GPU
fallback, resume, clean stops, and collecting results for the report.

Must not parse YAML or read the environment: it receives a validated `JobSpec` and a `Store`.
"""

from __future__ import annotations

import logging
import platform
import secrets
import os
import signal
import tempfile
import threading
import time
from importlib.metadata import version
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import ray
from ray import tune

from job import data, lease, report, search, storage, train
from job.results import EPOCH, METRIC_MODES, Attempt, EpochMetrics, Manifest, SweepResult, TrialResult, TrialSummary, best_of
from job.search import VARIANT
from job.spec import JobSpec, SpecError, UserError, resolve_trial
from job.storage import Store

NODE = "node"
NOTE = "note"  # a line about where a resumed trial started, printed by the progress callback
REPLAY = "replay"  # set on the one result a trial that had already finished reports again after a restart
TERMINATED, ERROR = "TERMINATED", "ERROR"  # Tune's statuses of a finished and a failed trial
STOPPED = "STOPPED"  # ours: stopped, or never started, when the sweep's time budget ran out


class Interrupted(Exception):
    """SIGTERM or SIGINT stopped the sweep after Tune saved its state; the run resumes on a rerun."""

    def __init__(self, run_id: str, signum: int) -> None:
        super().__init__(run_id, signum)
        self.run_id, self.signum = run_id, signum


def run_sweep(job_spec: JobSpec, store: Store, fresh: bool = False, joins_cluster: bool = False) -> SweepResult:
    """Run (or resume) the sweep, then commit the report to storage; returns the results."""
    store.check()
    data.prepare(job_spec.data)  # a missing or corrupt dataset is one error here, not one per trial
    search.check(job_spec)
    _init_ray()
    gpus = _gpus_per_trial(job_spec, joins_cluster)
    _check_resources(job_spec, gpus, joins_cluster)
    run_id = None if fresh else _resumable_run(job_spec, store)
    resuming = run_id is not None
    run_id = run_id or new_run_id()
    writer = lease.RunLease(store, job_spec.name, run_id)
    writer.acquire()
    try:
        storage_path, filesystem = store.tune_location(job_spec.name, run_id)
        print(f"{'resuming' if resuming else 'starting'} run {run_id} -> {store.url(f'{job_spec.name}/{run_id}')}", flush=True)
        budget = job_spec.search.time_budget_s
        spent = sum(a["wall_s"] for a in writer.attempts[:-1])  # earlier attempts of this run
        grid, ended_by = _fit(job_spec, gpus, f"{storage_path}/tune", filesystem, run_id, None if budget is None else budget - spent)
        checkpoints = [storage.checkpoint_folders(r.filesystem, r.path, train.TRIAL_JSON) for r in grid]  # read once
        result = collect(job_spec, run_id, grid, checkpoints, ended_by)
        lost = _lost(grid, stopped_ok=bool(ended_by))
        if lost:  # storage went away for longer than the retries: no partial report; said below, the run is saved
            raise OSError(lost)
        if result.ended_by or any(t.status == TERMINATED for t in result.trials):
            _prune(job_spec, grid, checkpoints)
            _commit(job_spec, store, result, filesystem, [(a["started_at"], a["wall_s"]) for a in writer.attempts])
            print_summary(result, store.url(f"{job_spec.name}/{run_id}/report"))
        if result.ended_by:
            print(f"ended early: {result.ended_by}", flush=True)
        return result
    except (OSError, SpecError) as err:
        cause = err.problems[0] if isinstance(err, SpecError) else f"{store.uri}: storage failed ({' '.join(str(err).split())})"
        raise SpecError([f"{cause.rstrip('.')}. Run {run_id} is saved up to its last checkpoints; rerun the same command to resume"]) from None
    finally:
        writer.release()


def _fit(job_spec: JobSpec, gpus: float, path: str, filesystem: Any, run_id: str, budget_s: float | None) -> tuple[Any, str]:
    """Tune's fit, new or restored, and why it ended early ("" when every trial ran); SIGTERM and SIGINT
    stop it the way Tune's own SIGUSR1 does, and so does the end of `budget_s`, the sweep's time left.
    (Not Tune's `time_budget_s`: a restored Tuner would start that over with the budget whole.)"""
    _prepare_tracking(job_spec)  # here: a restored Tuner brings its pickled tracking callbacks, past _new_tuner
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, job_spec=job_spec, gpus=gpus, tune_path=path, filesystem=filesystem),
        {"cpu": job_spec.resources.cpus, "gpu": gpus},
    )
    if tune.Tuner.can_restore(path, storage_filesystem=filesystem):
        # The restored Tuner brings back its pickled callbacks: Progress counts the saved trials itself.
        tuner = tune.Tuner.restore(path, trainable, resume_errored=True, storage_filesystem=filesystem)
    else:
        progress = Progress(job_spec.trial_count(), job_spec.search.metric, _need(job_spec.resources.cpus, gpus))
        tuner = _new_tuner(job_spec, trainable, path, filesystem, progress)
    with _StopSignals(run_id, budget_s) as stop:
        grid = tuner.fit()
    if stop.signum is not None:
        raise Interrupted(run_id, stop.signum)
    budget = job_spec.search.time_budget_s
    return grid, f"search.time_budget_s ({budget:g} s) ran out" if stop.out_of_time else ""


class _StopSignals:
    """SIGTERM (docker stop, spot preemption) and SIGINT become Tune's SIGUSR1: trials stop, the
    experiment state is saved, and `fit` returns. Without this Ray's own SIGTERM handler exits the
    driver mid-call and the core worker aborts with a stack dump. A time budget ends the same way."""

    def __init__(self, run_id: str, budget_s: float | None = None) -> None:
        self.run_id, self.signum, self.budget_s = run_id, None, budget_s
        self.out_of_time = False
        self.done = threading.Event()

    def __enter__(self) -> _StopSignals:
        self.previous = {s: signal.signal(s, self._stop) for s in (signal.SIGTERM, signal.SIGINT)}
        if self.budget_s is not None:
            threading.Thread(target=self._budget, daemon=True, name="sweep-budget").start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.done.set()
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def _budget(self) -> None:
        if self.done.wait(max(self.budget_s, 0.0)):
            return
        while signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):  # Tune sets its handler as fit starts
            if self.done.wait(0.1):
                return
        if self.signum is None:
            self.out_of_time = True
            os.kill(os.getpid(), signal.SIGUSR1)

    def _stop(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            return  # one stop at a time: Tune is already saving
        self.signum = signum
        if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):
            raise Interrupted(self.run_id, signum)  # Tune's loop has not started: nothing to save yet
        signal.raise_signal(signal.SIGUSR1)


def new_run_id() -> str:
    """Sortable by UTC start time; the suffix keeps two runs in one second apart."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + f"-{secrets.token_hex(2)}"


def _resumable_run(job_spec: JobSpec, store: Store) -> str | None:
    """The newest run that is unfinished: no manifest (a driver died or was stopped) or committed with
    failed trials (which a rerun retries from their checkpoints). A newer complete run ends the search."""
    for run_id in reversed(store.run_ids(job_spec.name)):
        try:
            manifest = store.read_manifest(job_spec.name, run_id)
        except UserError:
            continue  # a damaged manifest: that run cannot be resumed, an older one may
        if manifest is not None and all(t.status in (TERMINATED, STOPPED) for t in manifest.trials):
            return None
        storage_path, filesystem = store.tune_location(job_spec.name, run_id)
        if tune.Tuner.can_restore(f"{storage_path}/tune", storage_filesystem=filesystem):
            return run_id
        if manifest is None and store.read_optional(f"{job_spec.name}/{run_id}/{lease.LEASE}") is not None:
            return run_id  # its driver died before Tune saved anything: the run starts over under its id
    return None


def _init_ray() -> None:
    if not ray.is_initialized():
        # Joins the cluster when there is one (RAY_ADDRESS, or inside a Ray job), else starts a local one.
        ray.init(logging_level=logging.ERROR, log_to_driver=False, configure_logging=True)
    # Tune logs each failed trial's traceback; Progress prints one FAILED line naming its error.txt instead.
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)


def _gpus_per_trial(job_spec: JobSpec, joins_cluster: bool) -> float:
    """No GPU in sight: a laptop or a single container runs its trials on the CPU; a cluster's trials
    wait for GPU nodes, which its autoscaler starts on demand (falling back would start CPU work instead)."""
    wanted, fallback = job_spec.resources.gpus, job_spec.resources.gpu_fallback
    if wanted > 0 and ray.cluster_resources().get("GPU", 0) == 0 and (fallback is True or fallback == "auto" and not joins_cluster):
        print(f"no GPU in the Ray cluster: running trials on the CPU (resources.gpus {wanted:g} -> 0)", flush=True)
        return 0.0
    return wanted


def _check_resources(job_spec: JobSpec, gpus: float, joins_cluster: bool) -> None:
    """A trial no node can hold would wait forever: refused on a Ray we started, said on a cluster that may grow."""
    cpus = job_spec.resources.cpus
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if any(r.get("CPU", 0) >= cpus and r.get("GPU", 0) >= gpus for r in nodes):
        return
    need = _need(cpus, gpus)
    largest = max((f"{r.get('CPU', 0):g} CPUs, {r.get('GPU', 0):g} GPUs" for r in nodes), default="no nodes")
    if not joins_cluster:
        raise SpecError([f"resources: no node can hold a trial of {need} (got {largest} on this machine). "
                         "Lower resources.cpus or resources.gpus"])
    print(f"waiting: no node has {need} for a trial yet (largest: {largest}); trials start when the cluster adds one"
          + (" (resources.gpu_fallback: true runs them on the CPU instead)" if gpus else ""), flush=True)


def _need(cpus: float, gpus: float) -> str:
    return f"{cpus:g} CPUs" + (f" and {gpus:g} GPUs" if gpus else "")


def _new_tuner(job_spec: JobSpec, trainable: Any, path: str, filesystem: Any, progress: Progress) -> tune.Tuner:
    wanted = job_spec.search
    storage_path, name = path.rsplit("/", 1)
    run_config = tune.RunConfig(
        name=name,
        storage_path=storage_path,
        storage_filesystem=filesystem,
        # No num_to_keep: Tune deletes a checkpoint as soon as a better one arrives, but restores from the
        # state it saved up to ~10 s earlier, which may point at the deleted one. `_prune` keeps the best
        # k once the state no longer needs the others.
        checkpoint_config=tune.CheckpointConfig(checkpoint_score_attribute=wanted.metric, checkpoint_score_order=wanted.mode),
        failure_config=tune.FailureConfig(max_failures=job_spec.failures.max_retries),
        callbacks=[progress, *_tracking_callbacks(job_spec, path)],
        stop=search.trial_stop(job_spec),
        verbose=0,
    )
    tune_config = tune.TuneConfig(
        metric=wanted.metric, mode=wanted.mode, scheduler=search.scheduler(job_spec),
        search_alg=search.searcher(job_spec), max_concurrent_trials=wanted.max_concurrent,
        # Tune's samples repeat the whole space, variants included; an optuna searcher makes every trial itself.
        num_samples=job_spec.trial_count() if wanted.algorithm == "optuna" else wanted.samples,
        time_budget_s=wanted.time_budget_s,
        # A new worker per trial imports torch, Ray Tune and this job again: 3-20 s on 2 busy cores, against
        # trials of seconds. A reused worker runs the next trial in a fresh thread, with its data kept
        # (`data.device_data`); each trial seeds the global RNG itself (`train.new_state`).
        reuse_actors=True,
    )
    return tune.Tuner(trainable, param_space=search.param_space(job_spec), tune_config=tune_config, run_config=run_config)


WANDB_UPLOAD_TIMEOUT_S = 30  # an online run's last metrics take seconds; a stop waits this long at most


def _prepare_tracking(job_spec: JobSpec) -> None:
    """Before Tune starts or restores, in the driver: a tracker the spec names has its package (else one
    line saying how to install it), and W&B offline is said where Ray's callback looks for it."""
    import importlib.util
    import os

    tracking = job_spec.tracking
    missing = [name for name in ("mlflow", "wandb") if getattr(tracking, name) is not None and importlib.util.find_spec(name) is None]
    if missing:
        # Not a SpecError: run_sweep would call it a storage-side stop to resume from.
        raise UserError([f"tracking.{name}: the {name} package is not installed (got tracking.{name} set). "
                         f"pip install 'sweep-job[{name}]', or remove tracking.{name} from the spec" for name in missing])
    if tracking.wandb is not None and tracking.wandb.mode == "offline":
        os.environ["WANDB_MODE"] = "offline"  # Ray's callback asks for an API key unless this says offline; `mode` reaches wandb.init only


def _tracking_callbacks(job_spec: JobSpec, tune_path: str) -> list[Any]:
    """Ray's own logger callbacks for the spec's `tracking`: one MLflow or W&B run per trial with its
    config (variant and searched values) as parameters and every epoch's metrics. Credentials stay in
    the environment, where MLflow and W&B read them."""
    tracking, run_id = job_spec.tracking, tune_path.rsplit("/", 2)[-2]  # <uri>/<name>/<run_id>/tune
    return ([_mlflow_logger(job_spec, run_id)] if tracking.mlflow else []) + ([_wandb_logger(job_spec, run_id)] if tracking.wandb else [])


def _mlflow_logger(job_spec: JobSpec, run_id: str) -> Any:
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # its INFO lines about database tables would interleave with progress
    spec = job_spec.tracking.mlflow
    # The optim settings no trial varies are the same for every run: tags; the searched ones are each run's params.
    fixed = {f"optim.{k}": str(v) for k, v in job_spec.optim.model_dump().items() if f"optim.{k}" not in job_spec.search.space}
    return MLflowLoggerCallback(tracking_uri=spec.tracking_uri, experiment_name=spec.experiment or job_spec.name,
                                tags={"sweep_job.name": job_spec.name, "sweep_job.run_id": run_id, **fixed})


def _wandb_logger(job_spec: JobSpec, run_id: str) -> Any:
    from ray.air.integrations.wandb import WandbLoggerCallback

    spec = job_spec.tracking.wandb
    # Absolute: the logging actor (on this node) works in the trial's staging folder, which Tune may upload
    # before W&B has finished writing there. Tune's default group is the experiment folder's name, `tune`
    # for every sweep: one group per run instead.
    folder = Path(spec.dir).expanduser().resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError([f"tracking.wandb.dir: cannot create it (got {folder}: {err.strerror}). Name a folder the driver can write"]) from None
    # upload_timeout: at the sweep's end Ray waits this long for runs still uploading. Ray's 30 min default
    # also holds up a stopped sweep, whose unfinished trials' runs never close.
    callback = WandbLoggerCallback(project=spec.project, group=f"{job_spec.name}/{run_id}", mode=spec.mode, dir=str(folder),
                                   upload_timeout=WANDB_UPLOAD_TIMEOUT_S)
    try:
        callback.setup()  # Tune calls it again; here a missing key is one line before any trial starts
    except ValueError:
        raise UserError(["tracking.wandb: no W&B API key (got mode online). Set WANDB_API_KEY or run `wandb login` "
                         "on the driver's node, or use tracking.wandb.mode: offline"]) from None
    return callback


def run_trial(config: dict[str, Any], job_spec: JobSpec, gpus: float, tune_path: str, filesystem: Any) -> None:
    """Tune's trainable: rebuild a validated trial spec, resume from the newest good checkpoint, report each epoch."""
    trial = resolve_trial(job_spec, config[VARIANT], {k: v for k, v in config.items() if k != VARIANT})
    device = train.choose_device(threads=max(1, int(job_spec.resources.cpus)), use_cuda=gpus > 0)
    node = ray.get_runtime_context().get_node_id()
    # The trial's own folder, not tune.get_checkpoint(): Tune's state may predate the trial's newest
    # checkpoints (it saves every >= 10 s), or even its first one, as after a kill early in a run.
    state, note = _resume(f"{tune_path}/{Path(tune.get_context().get_trial_dir()).name}", filesystem, device)
    if state is not None and state.epoch >= trial.optim.epochs:  # it had finished before the restart
        tune.report({**state.history[-1].to_dict(), NODE: node, NOTE: note, REPLAY: True})
        return
    every = job_spec.checkpoints.every
    for metrics, state in train.train_trial(trial, device, state):
        result = {**metrics.to_dict(), NODE: node, NOTE: note}
        if metrics.epoch % every and metrics.epoch < trial.optim.epochs:
            tune.report(result)  # a retry retrains this epoch from the checkpoint before it, bit-identically
        else:
            with tempfile.TemporaryDirectory() as folder:
                train.save_checkpoint(Path(folder), state, trial, metrics)
                tune.report(result, checkpoint=tune.Checkpoint.from_directory(folder))
        note = ""


def _resume(trial_path: str, filesystem: Any, device: Any) -> tuple[train.TrainState | None, str]:
    """The newest readable checkpoint in the trial's folder, which may be newer than the one Tune's saved
    state names; damaged ones are skipped, and the note says so. A new trial finds none and says nothing."""
    skipped = []
    for path, meta in storage.checkpoint_folders(filesystem, trial_path, train.TRIAL_JSON):
        try:
            with tune.Checkpoint(path, filesystem).as_directory() as folder:
                state, _, _ = train.load_checkpoint(Path(folder), device)
        except (UserError, FileNotFoundError):  # damaged or cut short; storage failing raises (the trial retries)
            skipped.append(path.rsplit("/", 1)[-1])
            continue
        unreadable = f" ({', '.join(skipped)} unreadable)" if skipped else ""
        return state, f"resumed at epoch {state.epoch} from checkpoint {path.rsplit('/', 1)[-1]}{unreadable}"
    return None, f"no readable checkpoint ({', '.join(skipped)} unreadable): starting over" if skipped else ""


def collect(job_spec: JobSpec, run_id: str, grid: Any, checkpoints: list[list[tuple[str, dict[str, Any]]]],
            ended_by: str = "") -> SweepResult:
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
        config = result.config or getattr(tune_trial, "config", None) or {}
        # The budget's stop can beat the last epoch's `done`: a trial with all its epochs has finished.
        trained = bool(rows) and rows[-1][EPOCH] >= config.get("optim.epochs", job_spec.optim.epochs)
        status = TERMINATED if _finished(result) or (ended_by and trained and result.error is None) else _unfinished(result, ended_by)
        trials.append(TrialResult(
            trial_id=metrics.get("trial_id", getattr(tune_trial, "trial_id", Path(result.path).name)),
            variant=config.get(VARIANT, "?"),
            params={k: v for k, v in config.items() if k != VARIANT},
            status=status,
            epochs=[EpochMetrics.from_dict(row) for row in rows],
            node=str(metrics.get(NODE, "")),
            checkpoint=best,
            error=_error_line(result) if status == ERROR else "",
        ))
    if ended_by:  # trials Tune had not yet made are not in the grid: count against the spec
        ended_by = f"{ended_by}: {sum(t.status == TERMINATED for t in trials)} of {job_spec.trial_count()} trials finished"
    return SweepResult(job_spec.name, run_id, job_spec.search.metric, trials, ended_by)


def _unfinished(result: Any, ended_by: str) -> str:
    return STOPPED if ended_by and result.error is None else ERROR


def _finished(result: Any) -> bool:
    """Tune sets `done` on a trial's last result when its function returned or the scheduler stopped it.
    Not `result.error is None`: Tune reads the error back from storage, and an error whose file never
    got there (storage down when the trial failed) reads as no error at all."""
    return bool((result.metrics or {}).get("done")) and result.error is None


def _lost(grid: Any, stopped_ok: bool = False) -> str | None:
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
    stopped = [result for result in grid if result.error is None and not _finished(result)]
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
    return f"{text.strip()} (full log: {_url(result.filesystem, result.path)}/error.txt)"


def _url(filesystem: Any, path: str) -> str:
    """Tune's paths carry no scheme; users copy them into `aws s3 cp`, so S3 ones get theirs back."""
    return f"s3://{path}" if filesystem is not None and filesystem.type_name == "s3" else path


def _prune(job_spec: JobSpec, grid: Any, checkpoints: list[list[tuple[str, dict[str, Any]]]]) -> None:
    """Keep each finished trial's best k checkpoints and its newest; failed trials keep all, to resume from."""
    metric, keep = job_spec.search.metric, job_spec.checkpoints.keep
    sign = -1.0 if job_spec.search.mode == "max" else 1.0
    for result, folders in zip(grid, checkpoints):
        if not _finished(result):
            continue
        ranked = sorted(folders, key=lambda item: sign * item[1].get("metrics", {}).get(metric, -sign * float("inf")))
        kept = {path for path, _ in ranked[:keep]} | {path for path, _ in folders[:1]}
        storage.delete_folders(result.filesystem, [path for path, _ in folders if path not in kept])


def _commit(job_spec: JobSpec, store: Store, result: SweepResult, filesystem: Any, attempts: list[tuple[str, float]]) -> Manifest:
    """Render the report, add the best checkpoint, and commit it: the manifest goes last. `attempts` is
    (started_at ISO 8601 UTC, wall_s) per driver that ran the run."""
    best = result.best_trial()
    manifest = _manifest(job_spec, result, attempts)  # its versions and wall time head the report page
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch)
        report.render(result, out, manifest.spec, manifest)
        if best is not None and best.checkpoint:
            tune.Checkpoint(best.checkpoint, filesystem).to_directory(str(out / "best"))
        return store.commit_run(job_spec.name, result.run_id, out, manifest)


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
            TrialSummary(trial_id=t.trial_id, variant=t.variant, params=t.params, status=t.status, node=t.node,
                         epochs=len(t.epochs), best={m: t.best(m) for m in METRIC_MODES}, checkpoint=t.checkpoint)
            for t in result.ranked()
        ),
        attempts=tuple(Attempt(started_at, round(wall_s, 2)) for started_at, wall_s in attempts),
        ended_by=result.ended_by,
    )


class Progress(tune.Callback):
    """One line per trial event instead of Ray's tables: done, failed, running, best so far.

    After a restart the counts and the best start from the trials Tune saved, not from zero."""

    WAIT_NOTE_S = 60.0  # how often a sweep with nothing running says what it waits for

    def __init__(self, total: int, metric: str, need: str = "") -> None:
        self.total, self.metric, self.need = total, metric, need
        self.idle_since: float | None = None
        self.said_at = 0.0
        self.done: set[str] = set()
        self.failed: set[str] = set()
        self.running: set[str] = set()
        self.best: float | None = None
        self.counted = False

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if self.counted:
            return
        self.counted = True
        self.done = {t.trial_id for t in trials if t.status == TERMINATED}
        mode = METRIC_MODES[self.metric]
        seen = [t.metric_analysis[self.metric][mode] for t in trials if self.metric in t.metric_analysis]
        self.best = best_of(seen, self.metric) if seen else None

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        """Trials pending and none running: the cluster lacks the resources (an autoscaler may be adding them)."""
        waiting = any(t.status == "PENDING" for t in trials) and not any(t.status == "RUNNING" for t in trials)
        now = time.monotonic()
        self.idle_since = (self.idle_since or now) if waiting else None
        if self.idle_since is not None and now - self.idle_since >= self.WAIT_NOTE_S and now - self.said_at >= self.WAIT_NOTE_S:
            self.said_at = now
            self._say(f"waiting {now - self.idle_since:.0f} s for a node with {self.need or 'room'} for a trial")

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.add(trial.trial_id)
        self._say(f"start  {trial.trial_id} {trial.config}")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        value = result.get(self.metric)
        if value is not None:
            self.best = value if self.best is None else best_of([self.best, value], self.metric)
        if result.get(NOTE):
            self._say(f"note   {trial.trial_id}: {result[NOTE]}")
        if not result.get(REPLAY):
            self._say(
                f"epoch  {trial.trial_id} {result.get(EPOCH)}: {self.metric} {value:.4g} "
                f"({result.get('samples_per_s', 0):,.0f} samples/s, {result.get('device')})"
            )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.discard(trial.trial_id)
        self.done.add(trial.trial_id)
        self._say(f"done   {trial.trial_id}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.discard(trial.trial_id)
        self.failed.add(trial.trial_id)
        self._say(f"FAILED {trial.trial_id}: see {_url(trial.storage.storage_filesystem, trial.path)}/error.txt")

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A restored Tuner unpickles the callback saved with the run, maybe by an older version: keep
        only what the spec set, and count the saved trials afresh (`on_step_begin`)."""
        self.__init__(state["total"], state["metric"], state.get("need", ""))

    def _say(self, text: str) -> None:
        best = "-" if self.best is None else f"{self.best:.4g}"
        failed = f", {len(self.failed)} failed" if self.failed else ""
        print(f"[{len(self.done)}/{self.total} done{failed}, {len(self.running)} running, best {self.metric} {best}] {text}",
              flush=True)


def print_summary(result: SweepResult, where: str) -> None:
    rows = report.leaderboard_rows(result)
    columns = ["rank", "trial_id", "variant", "params", "status", "epochs", f"best_{result.metric}"]
    print(report.format_table(rows, [c for c in columns if not rows or c in rows[0]]))
    print(f"results: {where}")
