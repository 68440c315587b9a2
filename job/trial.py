"""Tune's trainable: one trial on a Ray worker, resumed from its newest readable checkpoint (or from a
PBT donor's), reporting every epoch and checkpointing as `checkpoints.every` asks.

Kept apart from `sweep` so that a worker imports what a trial needs (torch, Ray Tune, the training loop
and storage), not the driver's report, plots and progress code.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import ray
from ray import tune

from job import search, storage, train
from job.results import NODE, NOTE, REPLAY, VARIANT, trial_config
from job.spec import JobSpec, UserError, resolve_trial


def run_trial(config: dict[str, Any], job_spec: JobSpec, gpus: float, tune_path: str, filesystem: Any) -> None:
    """Tune's trainable: rebuild a validated trial spec, resume from the newest good checkpoint, report each epoch."""
    config = trial_config(config)
    trial = resolve_trial(job_spec, config[VARIANT], {k: v for k, v in config.items() if k != VARIANT})
    device = train.choose_device(threads=max(1, int(job_spec.resources.cpus)), use_cuda=gpus > 0)
    node = ray.get_runtime_context().get_node_id()
    own = f"{tune_path}/{Path(tune.get_context().get_trial_dir()).name}"
    given = tune.get_checkpoint()
    if given is not None and not given.path.startswith(f"{own}/"):  # PBT's exploit: a donor's checkpoint
        with given.as_directory() as folder:
            state, _, _ = train.load_checkpoint(Path(folder), device)
        note = f"continues from {Path(given.path).parent.name} at epoch {state.epoch} with {_changed(config)}"
    else:
        # The trial's own folder, not tune.get_checkpoint(): Tune's state may predate the trial's newest
        # checkpoints (it saves every >= 10 s), or even its first one, as after a kill early in a run.
        state, note = _resume(own, filesystem, device)
    if state is not None and state.epoch >= trial.optim.epochs:  # it had finished before the restart
        tune.report({**state.history[-1].to_dict(), NODE: node, NOTE: note, REPLAY: True})
        return
    if state is not None:  # the optimizer's saved values are the old trial's after a PBT exploit: this trial's
        for group in state.optimizer.param_groups:
            group["lr"], group["weight_decay"] = trial.optim.lr, trial.optim.weight_decay
    for metrics, state in train.train_trial(trial, device, state):
        result = {**metrics.to_dict(), NODE: node, NOTE: note}
        if not search.checkpoint_due(job_spec, metrics.epoch) and metrics.epoch < trial.optim.epochs:
            tune.report(result)  # a retry retrains this epoch from the checkpoint before it, bit-identically
        else:
            with tempfile.TemporaryDirectory() as folder:
                train.save_checkpoint(Path(folder), state, trial, metrics)
                tune.report(result, checkpoint=tune.Checkpoint.from_directory(folder))
        note = ""


def _changed(config: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(config.items()))


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
