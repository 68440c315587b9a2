"""Curves and tables from a sweep's results: leaderboard and metrics CSVs, per-trial and comparison
PNGs, a self-contained report.html, console tables, and the trend across runs. The only matplotlib
code (object API, Agg canvas, never pyplot). Must not read or write outside its output folder."""

from __future__ import annotations

import base64
import csv
import html
import json
import re
import statistics
import textwrap
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from job.results import EPOCH, EPOCH_S, SAMPLES_PER_S, TEST_ACC, TEST_LOSS, TRAIN_ACC, TRAIN_LOSS, Regression, SweepResult, TrialResult

# Every PNG is FIGURE_SIZE_IN at DPI: 8 x 5 in at 100 dpi = 800 x 500 px (tests decode and check it).
FIGURE_SIZE_IN = (8.0, 5.0)
DPI = 100
FIGURE_SIZE_PX = (int(FIGURE_SIZE_IN[0] * DPI), int(FIGURE_SIZE_IN[1] * DPI))  # (width, height)
ACC_COLOR, LOSS_COLOR, GRID_COLOR = "darkred", "darkblue", "lavender"  # the seed notebook's plot
MARKERS_UP_TO = 10  # epochs; longer curves are plain lines like the seed's
TREND_LABELS = 12  # run ids written under the trend plot, at most; more would overlap
METRICS_COLUMNS = ["trial_id", "variant", "params", EPOCH, TRAIN_LOSS, TRAIN_ACC, TEST_LOSS, TEST_ACC, EPOCH_S, SAMPLES_PER_S, "device"]


def render(result: SweepResult, out: Path, spec: dict[str, Any]) -> list[Path]:
    """Write the run's report into `out`; returns the paths written (the layout in DESIGN.md)."""
    out.mkdir(parents=True, exist_ok=True)
    rows = leaderboard_rows(result)
    columns = list(_leaderboard_row(TrialResult("", "", {}, ""), "", result.metric))  # the header even with no trials
    written = [_write_csv(out / "leaderboard.csv", rows, columns)]
    written.append(_write_csv(out / "metrics.csv", _metrics_rows(result), METRICS_COLUMNS))
    curves = {t.trial_id: _save(_curve_figure(t), out / "curves" / f"{_file_name(t.trial_id)}.png") for t in result.ranked() if t.epochs}
    written += [*curves.values(), _save(_compare_figure(result), out / "compare.png")]
    page = out / "report.html"
    page.write_text(_html(result, spec, rows, written[-1], curves), encoding="utf-8")
    return [*written, page]


def leaderboard_rows(result: SweepResult) -> list[dict[str, Any]]:
    """One row per trial, best first by the sweep's metric; trials that never reported come last, unranked."""
    return [_leaderboard_row(t, i + 1 if t.epochs else "", result.metric) for i, t in enumerate(result.ranked())]


def _leaderboard_row(trial: TrialResult, rank: int | str, metric: str) -> dict[str, Any]:
    last = trial.epochs[-1] if trial.epochs else None
    row: dict[str, Any] = {
        "rank": rank, "trial_id": trial.trial_id, "variant": trial.variant, "params": _compact(trial.params),
        "status": trial.status, "node": trial.node, "epochs": len(trial.epochs),
    }
    for name in dict.fromkeys([TEST_ACC, TEST_LOSS, metric]):
        row[f"best_{name}"] = _blank(trial.best(name))
    best = trial.best(metric)
    row["best_epoch"] = next((m.epoch for m in trial.epochs if getattr(m, metric) == best), "")
    for name in (TRAIN_LOSS, TRAIN_ACC, TEST_LOSS, TEST_ACC):
        row[f"last_{name}"] = getattr(last, name) if last else ""
    row["mean_samples_per_s"] = statistics.fmean(m.samples_per_s for m in trial.epochs) if trial.epochs else ""
    row["device"] = last.device if last else ""
    return row


def _metrics_rows(result: SweepResult) -> list[dict[str, Any]]:
    """Long format: one row per trial and epoch."""
    return [
        {"trial_id": t.trial_id, "variant": t.variant, "params": _compact(t.params), **m.to_dict()}
        for t in result.ranked()
        for m in t.epochs
    ]


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain-text table for the console: numbers right-aligned, missing cells blank."""
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    numeric = [all(_is_number(row.get(c)) or row.get(c) in (None, "") for row in rows) for c in columns]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def render_trend(points: list[tuple[str, float]], metric: str, out_png: Path, regression: Regression | None = None) -> Path:
    """The best value of `metric` in each committed run, oldest first: the scheduled-sweep view. A
    regression (`--fail-if-worse`) marks the newest run and draws the bound it crossed."""
    fig, ax = _figure()
    ax.plot(range(len(points)), [v for _, v in points], color=ACC_COLOR, marker="o")
    ticks = range(0, len(points), max(1, len(points) // TREND_LABELS))
    ax.set_xticks(ticks, [points[i][0] for i in ticks], rotation=20, ha="right", fontsize=8)
    ax.set(xlabel="run", ylabel=metric, title=f"best {metric} per run")
    ax.grid(linestyle="--", color=GRID_COLOR)
    if not points:
        ax.text(0.5, 0.5, "no committed runs", ha="center", va="center", transform=ax.transAxes)
    if regression is not None:
        color = "darkorange"  # apart from the curve's dark red
        sign = -1.0 if regression.value < regression.baseline else 1.0  # below for accuracies, above for losses
        bound = regression.baseline + sign * regression.allowed
        ax.axhline(bound, color=color, linestyle=":", label=f"allowed: {bound:g} (best earlier {regression.baseline:g}, run {regression.baseline_run})")
        ax.plot([len(points) - 1], [regression.value], color=color, marker="X", markersize=14, linestyle="",
                label=f"regression: {regression.worse_by:g} worse")
        ax.legend(loc="best", fontsize=8)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    return _save(fig, out_png)


def _figure() -> tuple[Figure, Any]:
    fig = Figure(figsize=FIGURE_SIZE_IN, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _curve_figure(trial: TrialResult) -> Figure:
    """The seed's twin-axis plot: test accuracy on the left (dark red), test loss on the right (dark blue)."""
    fig, acc_ax = _figure()
    epochs = [m.epoch for m in trial.epochs]
    marker = "o" if len(epochs) <= MARKERS_UP_TO else None
    (acc,) = acc_ax.plot(epochs, [m.test_acc for m in trial.epochs], color=ACC_COLOR, marker=marker, label="test accuracy")
    acc_ax.set(xlabel="epoch", ylabel="test accuracy (%)")
    acc_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    acc_ax.grid(linestyle="--", color=GRID_COLOR)
    loss_ax = acc_ax.twinx()
    (loss,) = loss_ax.plot(epochs, [m.test_loss for m in trial.epochs], color=LOSS_COLOR, marker=marker, label="test loss")
    loss_ax.set_ylabel("test loss")  # no second grid: drawn on top, it would cut through the accuracy curve
    acc_ax.legend(handles=[acc, loss], loc="center right")
    acc_ax.set_title(textwrap.fill(f"{trial.variant}  {_params_text(trial.params)}  ({trial.trial_id})", 90), fontsize=10)
    return fig


def _compare_figure(result: SweepResult) -> Figure:
    """Every trial's test accuracy against epochs, one colour per variant; the best trial drawn thicker."""
    fig, ax = _figure()
    variants = sorted({t.variant for t in result.trials})
    colors = {v: f"C{i % 10}" for i, v in enumerate(variants)}
    best = result.best_trial()
    labelled: set[str] = set()
    for trial in result.ranked():
        if not trial.epochs:
            continue
        label = trial.variant if trial.variant not in labelled else "_nolegend_"
        labelled.add(trial.variant)
        width = 2.6 if best is not None and trial.trial_id == best.trial_id else 1.2
        ax.plot([m.epoch for m in trial.epochs], [m.test_acc for m in trial.epochs], color=colors[trial.variant], linewidth=width, alpha=0.85, label=label)
    ax.set(xlabel="epoch", ylabel="test accuracy (%)")
    ax.set_title(f"{result.name} {result.run_id}: test accuracy" + (f" (best, thick: {best.trial_id})" if best else ""), fontsize=10)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(linestyle="--", color=GRID_COLOR)
    if labelled:
        ax.legend(title="variant")
    return fig


def _save(fig: Figure, path: Path) -> Path:
    """Render at exactly FIGURE_SIZE_PX: the canvas's own print_png ignores any savefig bbox settings."""
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig).print_png(str(path))
    return path


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _html(result: SweepResult, spec: dict[str, Any], rows: list[dict[str, Any]], compare: Path, curves: dict[str, Path]) -> str:
    """One file with everything inline (images as data URIs): it opens straight from a bucket."""
    columns = list(rows[0]) if rows else []
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(r[c]))}</td>" for c in columns) + "</tr>\n" for r in rows)
    figures = "".join(f"<figure>{_img(p)}<figcaption>{html.escape(tid)}</figcaption></figure>\n" for tid, p in curves.items())
    title = html.escape(f"{result.name} {result.run_id}")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}} th{{background:#f3f3f8}} img{{max-width:100%}}
figure{{display:inline-block;margin:0 1em 1em 0}} pre{{background:#f6f6f6;padding:1em}}</style></head>
<body><h1>{title}</h1>
<p>{len(result.trials)} trials, ranked by best {html.escape(result.metric)} ({result.mode}).</p>
<h2>Leaderboard</h2>
<table id="leaderboard"><thead><tr>{head}</tr></thead><tbody>
{body}</tbody></table>
<h2>All trials</h2>
{_img(compare)}
<h2>Curves</h2>
{figures}<h2>Spec</h2>
<pre>{html.escape(json.dumps(spec, indent=2))}</pre>
</body></html>
"""


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _file_name(trial_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", trial_id)


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_cell(v)}" for k, v in sorted(params.items())) or "(no search params)"


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _blank(value: float | None) -> float | str:
    return "" if value is None else value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return _compact(value)
    return str(value)
