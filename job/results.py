"""Plain records that cross process boundaries: per-epoch metrics, trial and sweep results.

Metric names are defined here once. Must not import anything heavy (no torch, no Ray).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

TRAIN_LOSS = "train_loss"
TRAIN_ACC = "train_acc"
TEST_LOSS = "test_loss"
TEST_ACC = "test_acc"
EPOCH_S = "epoch_s"
SAMPLES_PER_S = "samples_per_s"
EPOCH = "epoch"

# Which way is better for each metric a sweep may optimise; the spec's `search.metric` picks one.
METRIC_MODES: dict[str, Literal["min", "max"]] = {
    TEST_ACC: "max",
    TRAIN_ACC: "max",
    TEST_LOSS: "min",
    TRAIN_LOSS: "min",
}

MANIFEST_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class EpochMetrics:
    """One epoch of one trial. Accuracies are percent, like the seed notebook."""

    epoch: int  # 1-based: the number of epochs completed
    train_loss: float
    train_acc: float
    test_loss: float
    test_acc: float
    epoch_s: float  # wall time of the training pass plus the test pass
    samples_per_s: float  # training samples per second of the training pass
    device: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> EpochMetrics:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in row.items() if k in names})


def best_of(values: list[float], metric: str) -> float:
    """The best value of `metric` in `values` (max for accuracies, min for losses)."""
    return max(values) if METRIC_MODES[metric] == "max" else min(values)


@dataclass(frozen=True)
class TrialResult:
    trial_id: str
    variant: str
    params: dict[str, Any]  # the sampled search-space values, by dotted path
    status: str  # Ray Tune's: TERMINATED, ERROR, ...
    epochs: list[EpochMetrics] = field(default_factory=list)
    node: str = ""  # the node the trial last ran on
    checkpoint: str = ""  # path of its best checkpoint in storage, if any

    def best(self, metric: str) -> float | None:
        values = [getattr(m, metric) for m in self.epochs]
        return best_of(values, metric) if values else None


@dataclass(frozen=True)
class SweepResult:
    name: str
    run_id: str
    metric: str
    trials: list[TrialResult]

    @property
    def mode(self) -> Literal["min", "max"]:
        return METRIC_MODES[self.metric]

    def ranked(self) -> list[TrialResult]:
        """Trials best first; trials with no metrics last."""
        sign = -1.0 if self.mode == "max" else 1.0
        scored = [t for t in self.trials if t.best(self.metric) is not None]
        unscored = [t for t in self.trials if t.best(self.metric) is None]
        return sorted(scored, key=lambda t: sign * t.best(self.metric)) + unscored  # type: ignore[operator]

    def best_trial(self) -> TrialResult | None:
        ranked = self.ranked()
        return ranked[0] if ranked and ranked[0].epochs else None
