"""The only Ray Tune code: the Tuner built from the spec, the trainable adapter, resources, GPU
fallback, resume, and collecting results for the report.

Must not parse YAML or read the environment: it receives a validated `JobSpec` and a `Store`.
"""

from __future__ import annotations

import logging
import platform
import secrets
import tempfile
import time
from importlib.metadata import version
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from job import report, train
from job.results import EPOCH, MANIFEST_SCHEMA_VERSION, METRIC_MODES, EpochMetrics, SweepResult, TrialResult, best_of
from job.spec import Choice, Grid, JobSpec, LogUniform, Uniform, resolve_trial
from job.storage import Store

VARIANT = "variant"  # the config key that selects the variant; every other key is a dotted spec path
NODE = "node"


def run_sweep(job_spec: JobSpec, store: Store, fresh: bool = False) -> SweepResult:
    """Run (or resume) the sweep, then commit the report to storage; returns the results."""
    store.check()
    run_id = _resumable_run(job_spec, store) if not fresh else None
    resuming = run_id is not None
    run_id = run_id or new_run_id()
    storage_path, filesystem = store.tune_location(job_spec.name, run_id)
    print(f"{'resuming' if resuming else 'starting'} run {run_id} -> {store.url(f'{job_spec.name}/{run_id}')}", flush=True)
    _init_ray()
    gpus = _gpus_per_trial(job_spec)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, job_spec=job_spec, gpus=gpus), {"cpu": job_spec.resources.cpus, "gpu": gpus}
    )
    progress = Progress(job_spec.trial_count(), job_spec.search.metric)
    if resuming:
        path = f"{storage_path}/tune"
        tuner = tune.Tuner.restore(path, trainable, resume_errored=True, storage_filesystem=filesystem)
    else:
        tuner = _new_tuner(job_spec, trainable, storage_path, filesystem, progress)
    started = time.perf_counter()
    grid = tuner.fit()
    result = collect(job_spec, run_id, grid)
    _commit(job_spec, store, result, filesystem, time.perf_counter() - started)
    print_summary(result, store.url(f"{job_spec.name}/{run_id}/report"))
    return result


def new_run_id() -> str:
    """Sortable by UTC start time; the suffix keeps two runs in one second apart."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + f"-{secrets.token_hex(2)}"


def _resumable_run(job_spec: JobSpec, store: Store) -> str | None:
    """The newest run that never committed and left Tune state behind: a driver that died."""
    for run_id in reversed(store.run_ids(job_spec.name)):
        if store.is_committed(job_spec.name, run_id):
            return None
        storage_path, filesystem = store.tune_location(job_spec.name, run_id)
        if tune.Tuner.can_restore(f"{storage_path}/tune", storage_filesystem=filesystem):
            return run_id
    return None


def _init_ray() -> None:
    if not ray.is_initialized():
        # Joins the cluster when there is one (RAY_ADDRESS, or inside a Ray job), else starts a local one.
        ray.init(logging_level=logging.ERROR, log_to_driver=False, configure_logging=True)


def _gpus_per_trial(job_spec: JobSpec) -> float:
    wanted = job_spec.resources.gpus
    if wanted > 0 and ray.cluster_resources().get("GPU", 0) == 0 and job_spec.resources.gpu_fallback:
        print(f"no GPU in the Ray cluster: running trials on the CPU (resources.gpus {wanted} -> 0)", flush=True)
        return 0.0
    return wanted


def _new_tuner(job_spec: JobSpec, trainable: Any, storage_path: str, filesystem: Any, progress: Progress) -> tune.Tuner:
    search = job_spec.search
    checkpoints = tune.CheckpointConfig(
        num_to_keep=job_spec.checkpoints.keep, checkpoint_score_attribute=search.metric, checkpoint_score_order=search.mode
    )
    run_config = tune.RunConfig(
        name="tune",
        storage_path=storage_path,
        storage_filesystem=filesystem,
        checkpoint_config=checkpoints,
        failure_config=tune.FailureConfig(max_failures=job_spec.failures.max_retries),
        callbacks=[progress],
        verbose=0,
    )
    tune_config = tune.TuneConfig(
        metric=search.metric, mode=search.mode, num_samples=search.samples, scheduler=_scheduler(job_spec)
    )
    return tune.Tuner(trainable, param_space=param_space(job_spec), tune_config=tune_config, run_config=run_config)


def param_space(job_spec: JobSpec) -> dict[str, Any]:
    """Every variant crossed with the search space; keys are the spec's dotted paths."""
    space: dict[str, Any] = {VARIANT: tune.grid_search(list(job_spec.variants))}
    for path, domain in job_spec.search.space.items():
        if isinstance(domain, Grid):
            space[path] = tune.grid_search(domain.grid)
        elif isinstance(domain, Choice):
            space[path] = tune.choice(domain.choice)
        elif isinstance(domain, Uniform):
            space[path] = tune.uniform(*domain.uniform)
        elif isinstance(domain, LogUniform):
            space[path] = tune.loguniform(*domain.loguniform)
    return space


def _scheduler(job_spec: JobSpec) -> Any:
    scheduler = job_spec.search.scheduler
    if scheduler.kind == "asha":
        return ASHAScheduler(
            time_attr=EPOCH, max_t=job_spec.optim.epochs, grace_period=scheduler.grace_period,
            reduction_factor=scheduler.reduction_factor,
        )
    return FIFOScheduler()


def run_trial(config: dict[str, Any], job_spec: JobSpec, gpus: float) -> None:
    """Tune's trainable: rebuild a validated trial spec, resume from Tune's checkpoint, report each epoch."""
    trial = resolve_trial(job_spec, config[VARIANT], {k: v for k, v in config.items() if k != VARIANT})
    device = train.choose_device(threads=max(1, int(job_spec.resources.cpus)), use_cuda=gpus > 0)
    node = ray.get_runtime_context().get_node_id()
    state = None
    checkpoint = tune.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as folder:
            state, _, _ = train.load_checkpoint(Path(folder), device)
    for metrics, state in train.train_trial(trial, device, state):
        with tempfile.TemporaryDirectory() as folder:
            train.save_checkpoint(Path(folder), state, trial, metrics)
            tune.report({**metrics.to_dict(), NODE: node}, checkpoint=tune.Checkpoint.from_directory(folder))


def collect(job_spec: JobSpec, run_id: str, grid: Any) -> SweepResult:
    """Turn Tune's ResultGrid into plain records (one per trial, every epoch it reported)."""
    trials = []
    for result in grid:
        history = result.metrics_dataframe
        rows = [] if history is None else history.drop_duplicates(EPOCH, keep="last").to_dict("records")
        metrics = result.metrics or {}
        config = result.config or {}
        best = result.get_best_checkpoint(job_spec.search.metric, job_spec.search.mode) if rows else None
        trials.append(TrialResult(
            trial_id=metrics.get("trial_id", Path(result.path).name),
            variant=config.get(VARIANT, "?"),
            params={k: v for k, v in config.items() if k != VARIANT},
            status="ERROR" if result.error else "TERMINATED",
            epochs=[EpochMetrics.from_dict(row) for row in rows],
            node=str(metrics.get(NODE, "")),
            checkpoint=best.path if best else "",
        ))
    return SweepResult(job_spec.name, run_id, job_spec.search.metric, trials)


def _commit(job_spec: JobSpec, store: Store, result: SweepResult, filesystem: Any, wall_s: float) -> None:
    """Render the report, add the best checkpoint, and commit it: the manifest goes last."""
    best = result.best_trial()
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch)
        report.render(result, out, job_spec.model_dump(mode="json"))
        if best is not None and best.checkpoint:
            tune.Checkpoint(best.checkpoint, filesystem).to_directory(str(out / "best"))
        store.commit_run(job_spec.name, result.run_id, out, _manifest(job_spec, result, wall_s))


def _manifest(job_spec: JobSpec, result: SweepResult, wall_s: float) -> dict[str, Any]:
    best = result.best_trial()
    return {
        "schema_version": MANIFEST_SCHEMA_VERSION,
        "name": job_spec.name,
        "run_id": result.run_id,
        "metric": result.metric,
        "mode": result.mode,
        "wall_s": round(wall_s, 2),
        "spec": job_spec.model_dump(mode="json"),
        "versions": {"python": platform.python_version(), **{dist: version(dist) for dist in ("sweep-job", "torch", "ray", "pyarrow", "boto3")}},
        "best_trial": best.trial_id if best else None,
        "trials": [
            {
                "trial_id": t.trial_id, "variant": t.variant, "params": t.params, "status": t.status, "node": t.node,
                "epochs": len(t.epochs), "best": {m: t.best(m) for m in METRIC_MODES},
                "checkpoint": t.checkpoint,
            }
            for t in result.ranked()
        ],
    }


class Progress(tune.Callback):
    """One line per trial event instead of Ray's tables: running, done, best so far."""

    def __init__(self, total: int, metric: str) -> None:
        self.total, self.metric = total, metric
        self.running: set[str] = set()
        self.done = 0
        self.best: float | None = None

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.add(trial.trial_id)
        self._say(f"start  {trial.trial_id} {trial.config}")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        value = result.get(self.metric)
        if value is not None:
            self.best = value if self.best is None else best_of([self.best, value], self.metric)
        self._say(
            f"epoch  {trial.trial_id} {result.get(EPOCH)}: {self.metric} {value:.4g} "
            f"({result.get('samples_per_s', 0):,.0f} samples/s, {result.get('device')})"
        )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.discard(trial.trial_id)
        self.done += 1
        self._say(f"done   {trial.trial_id}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.running.discard(trial.trial_id)
        self.done += 1
        self._say(f"FAILED {trial.trial_id}: see {trial.path}/error.txt")

    def _say(self, text: str) -> None:
        best = "-" if self.best is None else f"{self.best:.4g}"
        print(f"[{self.done}/{self.total} done, {len(self.running)} running, best {self.metric} {best}] {text}", flush=True)


def print_summary(result: SweepResult, where: str) -> None:
    rows = report.leaderboard_rows(result)
    columns = ["rank", "trial_id", "variant", "params", "status", "epochs", f"best_{result.metric}"]
    print(report.format_table(rows, [c for c in columns if not rows or c in rows[0]]))
    print(f"results: {where}")
