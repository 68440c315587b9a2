"""Tracking where teams already look: Ray's own MLflow and W&B logger callbacks, one tracked run per
trial with its variant and searched values and every epoch's metrics. Optional extras
(`sweep-job[mlflow]`, `sweep-job[wandb]`); credentials stay in the environment. Level 3."""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Any

from job.spec import JobSpec, UserError

WANDB_UPLOAD_TIMEOUT_S = 30  # an online run's last metrics take seconds; a stop waits this long at most


def prepare(job_spec: JobSpec) -> None:
    """Before Tune starts or restores, in the driver: a tracker the spec names has its package (else one
    line saying how to install it), and W&B offline is said where Ray's callback looks for it."""
    tracking = job_spec.tracking
    missing = [name for name in ("mlflow", "wandb") if getattr(tracking, name) is not None and importlib.util.find_spec(name) is None]
    if missing:
        # Not a SpecError: run_sweep would call it a storage-side stop to resume from.
        raise UserError(
            [
                f"tracking.{name}: the {name} package is not installed (got tracking.{name} set). "
                f"pip install 'sweep-job[{name}]', or remove tracking.{name} from the spec"
                for name in missing
            ]
        )
    if tracking.wandb is not None and tracking.wandb.mode == "offline":
        os.environ["WANDB_MODE"] = "offline"  # Ray's callback asks for an API key unless this says offline; `mode` reaches wandb.init only


def callbacks(job_spec: JobSpec, tune_path: str) -> list[Any]:
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
    return MLflowLoggerCallback(
        tracking_uri=spec.tracking_uri,
        experiment_name=spec.experiment or job_spec.name,
        tags={"sweep_job.name": job_spec.name, "sweep_job.run_id": run_id, **fixed},
    )


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
    callback = WandbLoggerCallback(
        project=spec.project, group=f"{job_spec.name}/{run_id}", mode=spec.mode, dir=str(folder), upload_timeout=WANDB_UPLOAD_TIMEOUT_S
    )
    try:
        callback.setup()  # Tune calls it again; here a missing key is one line before any trial starts
    except ValueError:
        raise UserError(
            [
                "tracking.wandb: no W&B API key (got mode online). Set WANDB_API_KEY or run `wandb login` "
                "on the driver's node, or use tracking.wandb.mode: offline"
            ]
        ) from None
    return callback
