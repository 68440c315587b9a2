"""Runs a sweep with Ray Tune: the Tuner built from the spec, resources, GPU fallback, resume, clean
stops and budgets. `search` says what to try, `trial` is the trainable each worker runs, `outcome` turns
what `fit` left into a committed run, `progress` prints it.

Must not parse YAML or read the environment: it receives a validated `JobSpec` and a `Store`.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import threading
from datetime import UTC, datetime
from typing import Any

import ray
from ray import tune

from job import catalog, data, lease, outcome, progress, search, storage, tracking, train, trial
from job.results import STOPPED, TERMINATED, SweepResult
from job.spec import JobSpec, SpecError, UserError
from job.storage import Store


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
    started_ray = _init_ray(joins_cluster)
    gpus = _gpus_per_trial(job_spec, joins_cluster)
    _check_resources(job_spec, gpus, joins_cluster)
    run_id = None if fresh else _resumable_run(job_spec, store)
    resuming = run_id is not None
    run_id = run_id or new_run_id()
    writer = lease.RunLease(store, job_spec.name, run_id)
    stopping: threading.Thread | None = None
    writer.acquire(new_run=not resuming)
    try:
        storage_path, filesystem = store.tune_location(job_spec.name, run_id)
        print(f"{'resuming' if resuming else 'starting'} run {run_id} -> {store.url(f'{job_spec.name}/{run_id}')}", flush=True)
        budget = job_spec.search.time_budget_s
        spent = sum(a["wall_s"] for a in writer.attempts[:-1])  # earlier attempts of this run
        grid, ended_by = _fit(job_spec, gpus, f"{storage_path}/tune", filesystem, run_id, None if budget is None else budget - spent)
        checkpoints = [storage.checkpoint_folders(r.filesystem, r.path, train.TRIAL_JSON) for r in grid]  # read once
        if started_ray:  # Ray's shutdown mostly waits for its processes to exit: meanwhile the report is written
            stopping = threading.Thread(target=ray.shutdown, kwargs={"wait_for_processes": True}, name="ray-shutdown")
            stopping.start()
        result = outcome.collect(job_spec, run_id, grid, checkpoints, ended_by)
        lost = outcome.lost(grid, stopped_ok=bool(ended_by))
        if lost:  # storage went away for longer than the retries: no partial report; said below, the run is saved
            raise OSError(lost)
        if result.ended_by or any(t.status == TERMINATED for t in result.trials):
            outcome.prune(job_spec, grid, checkpoints)
            outcome.commit(job_spec, store, result, filesystem, [(a["started_at"], a["wall_s"]) for a in writer.attempts])
            progress.print_summary(result, store.url(f"{job_spec.name}/{run_id}/report"))
        if result.ended_by:
            print(f"ended early: {result.ended_by}", flush=True)
        return result
    except (OSError, SpecError) as err:
        cause = err.problems[0] if isinstance(err, SpecError) else f"{store.uri}: storage failed ({' '.join(str(err).split())})"
        raise SpecError([f"{cause.rstrip('.')}. Run {run_id} is saved up to its last checkpoints; rerun the same command to resume"]) from None
    finally:
        writer.release()
        if stopping is not None:
            stopping.join()


def _fit(job_spec: JobSpec, gpus: float, path: str, filesystem: Any, run_id: str, budget_s: float | None) -> tuple[Any, str]:
    """Tune's fit, new or restored, and why it ended early ("" when every trial ran); SIGTERM and SIGINT
    stop it the way Tune's own SIGUSR1 does, and so does the end of `budget_s`, the sweep's time left.
    (Not Tune's `time_budget_s`: a restored Tuner would start that over with the budget whole.)"""
    tracking.prepare(job_spec)  # here: a restored Tuner brings its pickled tracking callbacks, past _new_tuner
    trainable = tune.with_resources(
        tune.with_parameters(trial.run_trial, job_spec=job_spec, gpus=gpus, tune_path=path, filesystem=filesystem),
        {"cpu": job_spec.resources.cpus, "gpu": gpus},
    )
    if tune.Tuner.can_restore(path, storage_filesystem=filesystem):
        # The restored Tuner brings back its pickled callbacks: Progress counts the saved trials itself.
        tuner = tune.Tuner.restore(path, trainable, resume_errored=True, storage_filesystem=filesystem)
    else:
        console = progress.Progress(job_spec.trial_count(), job_spec.search.metric, _need(job_spec.resources.cpus, gpus))
        tuner = _new_tuner(job_spec, trainable, path, filesystem, console)
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
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + f"-{secrets.token_hex(2)}"


def _resumable_run(job_spec: JobSpec, store: Store) -> str | None:
    """The newest run that is unfinished: no manifest (a driver died or was stopped) or committed with
    failed trials (which a rerun retries from their checkpoints). A newer complete run ends the search."""
    for run_id in reversed(store.run_ids(job_spec.name)):
        try:
            manifest = catalog.read_manifest(store, job_spec.name, run_id)
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


def _init_ray(joins_cluster: bool) -> bool:
    """Connect to Ray; True when this call did (the sweep then stops it), False when the caller had.

    Joins the cluster that RAY_ADDRESS names (a Ray job has it set), else starts a Ray of its own even
    when `ray start` left one running on this machine, which `ray.init()` alone would join: GPU fallback
    and the resource checks go by `joins_cluster`, so which Ray the trials get must too. A local Ray
    starts without the dashboard (its processes cost a few CPU seconds per start)."""
    started = not ray.is_initialized()
    if started:
        address = None if joins_cluster else "local"
        ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False, configure_logging=True, include_dashboard=False)
    # Tune logs each failed trial's traceback; Progress prints one FAILED line naming its error.txt instead.
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    return started


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
        raise SpecError([f"resources: no node can hold a trial of {need} (got {largest} on this machine). Lower resources.cpus or resources.gpus"])
    print(
        f"waiting: no node has {need} for a trial yet (largest: {largest}); trials start when the cluster adds one"
        + (" (resources.gpu_fallback: true runs them on the CPU instead)" if gpus else ""),
        flush=True,
    )


def _need(cpus: float, gpus: float) -> str:
    return f"{cpus:g} CPUs" + (f" and {gpus:g} GPUs" if gpus else "")


def _new_tuner(job_spec: JobSpec, trainable: Any, path: str, filesystem: Any, console: progress.Progress) -> tune.Tuner:
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
        callbacks=[console, *tracking.callbacks(job_spec, path)],
        stop=search.trial_stop(job_spec),
        verbose=0,
    )
    tune_config = tune.TuneConfig(
        metric=wanted.metric,
        mode=wanted.mode,
        scheduler=search.scheduler(job_spec),
        search_alg=search.searcher(job_spec),
        max_concurrent_trials=wanted.max_concurrent,
        # Tune's samples repeat the whole space, variants included; an optuna searcher makes every trial itself.
        num_samples=job_spec.trial_count() if wanted.algorithm == "optuna" else wanted.samples,
        # A new worker per trial imports torch, Ray Tune and this job again, which takes longer than a short
        # trial (README, Sweep overhead). A reused worker runs the next trial in a fresh thread, with its data kept
        # (`data.device_data`); each trial seeds the global RNG itself (`train.new_state`).
        reuse_actors=True,
    )
    return tune.Tuner(trainable, param_space=search.param_space(job_spec), tune_config=tune_config, run_config=run_config)
