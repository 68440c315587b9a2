"""Plain records that cross process boundaries: per-epoch metrics, trial and sweep results.

Metric names are defined here once. Must not import anything heavy (no torch, no Ray).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

TRAIN_LOSS = "train_loss"
TRAIN_ACC = "train_acc"
TEST_LOSS = "test_loss"
TEST_ACC = "test_acc"
EPOCH_S = "epoch_s"
SAMPLES_PER_S = "samples_per_s"
EPOCH = "epoch"
# Keys a trial's result carries besides its metrics, and the statuses a trial ends with.
VARIANT = "variant"  # the config key that selects the variant; every other config key is a dotted spec path
PER_VARIANT = "trial"  # with per-variant spaces Tune's config is {PER_VARIANT: {VARIANT: ..., path: value}}
NODE = "node"  # the Ray node the trial ran on
NOTE = "note"  # a line about where a resumed trial started, printed by the progress callback
REPLAY = "replay"  # set on the one result a trial that had already finished reports again after a restart
TERMINATED, ERROR = "TERMINATED", "ERROR"  # Tune's statuses of a finished and a failed trial
STOPPED = "STOPPED"  # ours: stopped, or never started, when the sweep's time budget ran out

# Which way is better for each metric a sweep may optimise; the spec's `search.metric` picks one.
METRIC_MODES: dict[str, Literal["min", "max"]] = {TEST_ACC: "max", TRAIN_ACC: "max", TEST_LOSS: "min", TRAIN_LOSS: "min"}

MANIFEST_SCHEMA_VERSION = 2  # 2: attempts (one per driver that ran the run), typed on read


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


def trial_config(config: dict[str, Any]) -> dict[str, Any]:
    """A trial's Tune config as {VARIANT: name, dotted path: value}, whichever form the sweep used."""
    return config.get(PER_VARIANT, config)


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
    error: str = ""  # a failed trial's error in one line, and where its full log is
    schedule: list[dict[str, Any]] = field(default_factory=list)  # PBT: {"epoch": from, **config} at each change

    def best(self, metric: str) -> float | None:
        values = [getattr(m, metric) for m in self.epochs]
        return best_of(values, metric) if values else None


@dataclass(frozen=True)
class SweepResult:
    name: str
    run_id: str
    metric: str
    trials: list[TrialResult]
    ended_by: str = ""  # why the sweep ended before every trial finished, e.g. its time budget ran out

    @property
    def mode(self) -> Literal["min", "max"]:
        return METRIC_MODES[self.metric]

    def ranked(self) -> list[TrialResult]:
        """Finished trials best first, then failed ones (whatever they scored), then trials with no metrics."""
        sign = -1.0 if self.mode == "max" else 1.0

        def key(t: TrialResult) -> tuple[bool, bool, float]:
            score = t.best(self.metric)
            return (t.status != "TERMINATED", score is None, 0.0 if score is None else sign * score)

        return sorted(self.trials, key=key)

    def best_trial(self) -> TrialResult | None:
        """The best finished trial: a failed one never provides the run's best checkpoint."""
        ranked = self.ranked()
        return ranked[0] if ranked and ranked[0].epochs and ranked[0].status == "TERMINATED" else None


@dataclass(frozen=True)
class Regression:
    """The newest committed run's best metric fell behind the best earlier run's by more than allowed."""

    run_id: str
    value: float
    baseline_run: str
    baseline: float
    worse_by: float  # in the metric's units, always positive
    allowed: float

    def line(self, metric: str) -> str:
        return (
            f"regression: run {self.run_id} best {metric} {self.value:g} is {self.worse_by:g} worse than "
            f"run {self.baseline_run}'s {self.baseline:g} (allowed {self.allowed:g})"
        )


def find_regression(points: list[tuple[str, float]], metric: str, allowed: float) -> Regression | None:
    """`points` are (run id, best value) of committed runs, oldest first: the last one against the best of
    the others. A change of exactly `allowed` is still fine; fewer than two runs compare nothing."""
    if len(points) < 2:
        return None
    *earlier, (run_id, value) = points
    baseline = best_of([v for _, v in earlier], metric)
    baseline_run = next(r for r, v in earlier if v == baseline)
    # Rounded: 42.3 - 41.3 is 1.0000000000000036 in floats, which must not fail an allowance of 1.
    worse_by = round(baseline - value if METRIC_MODES[metric] == "max" else value - baseline, 9)
    return Regression(run_id, value, baseline_run, baseline, worse_by, allowed) if worse_by > allowed else None


# --- the manifest: what a committed run vouches for -----------------------------------------------


@dataclass(frozen=True)
class FileEntry:
    """One report file as committed; `path` is relative to the run folder, e.g. `report/best/model.pt`."""

    path: str
    size: int  # bytes
    sha256: str

    def mismatch(self, size: int | None, sha256: str) -> str | None:
        """What differs between this entry and a file read back (`size` None: not there), or None."""
        if size is None:
            return "missing (got no file)"
        if size != self.size:
            return f"size differs from the manifest's {self.size} bytes (got {size})"
        if sha256 != self.sha256:
            return f"sha256 differs from the manifest's {self.sha256[:12]}... (got {sha256[:12]}...)"
        return None


@dataclass(frozen=True)
class Attempt:
    """One driver's go at the run: a resumed run has several."""

    started_at: str  # ISO 8601, UTC
    wall_s: float


@dataclass(frozen=True)
class TrialSummary:
    trial_id: str
    variant: str
    params: dict[str, Any]
    status: str
    node: str
    epochs: int
    best: dict[str, float | None]  # best value of every metric in METRIC_MODES
    checkpoint: str
    schedule: tuple[dict[str, Any], ...] = ()  # PBT: {"epoch": from, **config} each time its config changed


@dataclass(frozen=True)
class Manifest:
    """`report/manifest.json`, written last: the run is complete and every file in `files` is vouched for."""

    name: str
    run_id: str
    metric: str
    mode: str
    spec: dict[str, Any]
    versions: dict[str, str]
    best_trial: str | None  # None: no trial finished with a result
    trials: tuple[TrialSummary, ...]  # best first
    attempts: tuple[Attempt, ...]
    ended_by: str = ""  # why the run ended before every trial finished, e.g. its time budget ran out
    files: tuple[FileEntry, ...] = ()  # filled in by the commit
    committed_at: str = ""
    schema_version: int = MANIFEST_SCHEMA_VERSION

    @property
    def wall_s(self) -> float:
        return round(sum(a.wall_s for a in self.attempts), 2)

    def entries(self, under: str) -> dict[str, FileEntry]:
        return {f.path: f for f in self.files if f.path.startswith(under.rstrip("/") + "/")}

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "wall_s": self.wall_s}  # wall_s kept for readers of schema 1

    @classmethod
    def from_dict(cls, row: Any) -> Manifest:
        """Parsed JSON -> Manifest; ValueError names the first field that is missing or of the wrong type."""
        if isinstance(row, dict) and "attempts" not in row and isinstance(row.get("wall_s"), (int, float)):
            row = {**row, "attempts": [{"started_at": "", "wall_s": row["wall_s"]}]}  # schema 1: one total
        manifest = _load(cls, row, "manifest")
        if not 1 <= manifest.schema_version <= MANIFEST_SCHEMA_VERSION:
            raise ValueError(f"schema_version {manifest.schema_version} is not one this version reads (1..{MANIFEST_SCHEMA_VERSION})")
        return manifest


def _load(kind: Any, value: Any, where: str) -> Any:
    """`value` (parsed JSON) as `kind`: a dataclass, tuple[X, ...], dict[str, X], X | None, or a plain type."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise ValueError(f"{where} is not an object")
        hints, fields = typing.get_type_hints(kind), dataclasses.fields(kind)
        for f in fields:
            if f.name not in value and f.default is dataclasses.MISSING:
                raise ValueError(f"{where}.{f.name} is missing")
        return kind(**{f.name: _load(hints[f.name], value[f.name], f"{where}.{f.name}") for f in fields if f.name in value})
    if origin is tuple:
        return tuple(_load(args[0], item, f"{where}[{i}]") for i, item in enumerate(_checked(value, list, where)))
    if origin is dict:
        return {key: _load(args[1], item, f"{where}.{key}") for key, item in _checked(value, dict, where).items()}
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _load(next(a for a in args if a is not type(None)), value, where)
    if kind is Any:
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return _checked(value, kind, where)


def _checked(value: Any, kind: type, where: str) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ValueError(f"{where} should be {kind.__name__} (got {type(value).__name__})")
    return value
