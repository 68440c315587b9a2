"""What the console shows: one line per trial event while Tune runs (a Tune callback, restored with
the run), and the leaderboard at the end. Level 3."""

from __future__ import annotations

import time
from typing import Any

from ray import tune

from job import report, storage
from job.results import EPOCH, METRIC_MODES, NOTE, REPLAY, TERMINATED, SweepResult, best_of, trial_config


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
        self._say(f"start  {trial.trial_id} {trial_config(trial.config)}")

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
        self._say(f"FAILED {trial.trial_id}: see {storage.uri_of(trial.storage.storage_filesystem, trial.path)}/error.txt")

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A restored Tuner unpickles the callback saved with the run, maybe by an older version: keep
        only what the spec set, and count the saved trials afresh (`on_step_begin`)."""
        self.__init__(state["total"], state["metric"], state.get("need", ""))

    def _say(self, text: str) -> None:
        best = "-" if self.best is None else f"{self.best:.4g}"
        failed = f", {len(self.failed)} failed" if self.failed else ""
        print(f"[{len(self.done)}/{self.total} done{failed}, {len(self.running)} running, best {self.metric} {best}] {text}", flush=True)


def print_summary(result: SweepResult, where: str) -> None:
    rows = report.leaderboard_rows(result)
    columns = ["rank", "trial_id", "variant", "params", "status", "epochs", f"best_{result.metric}"]
    print(report.format_table(rows, [c for c in columns if not rows or c in rows[0]]))
    print(f"results: {where}")
