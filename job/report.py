"""Curves and tables from a sweep's results: leaderboard and metrics CSVs, per-trial, comparison and
search PNGs, the self-contained report.html (its markup in `report_html`), console tables, and the trend
across runs. The only matplotlib code (object API, Agg canvas, never pyplot). Must not read or write
outside its output folder."""

from __future__ import annotations

import csv
import io
import json
import re
import statistics
import textwrap
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from job import report_html
from job.report_html import cell_text, is_number, searched_paths
from job.results import EPOCH, EPOCH_S, SAMPLES_PER_S, TEST_ACC, TEST_LOSS, TRAIN_ACC, TRAIN_LOSS, Manifest, Regression, SweepResult, TrialResult

# Every PNG is FIGURE_SIZE_IN at DPI: 8 x 5 in at 100 dpi = 800 x 500 px (tests decode and check it).
FIGURE_SIZE_IN = (8.0, 5.0)
DPI = 100
FIGURE_SIZE_PX = (int(FIGURE_SIZE_IN[0] * DPI), int(FIGURE_SIZE_IN[1] * DPI))  # (width, height)
SEARCH_SIZE_IN = (6.0, 4.0)  # smaller: several sit side by side in the page's grid
MARKED_VALUES = 8  # a searched field with at most this many values gets a tick at each
ACC_COLOR, LOSS_COLOR, GRID_COLOR = "darkred", "darkblue", "lavender"  # the seed notebook's plot
CURVE_MARGINS = {"left": 0.085, "right": 0.91, "bottom": 0.1, "top": 0.9}  # room for both y labels and a two-line title
MARKERS_UP_TO = 10  # epochs; longer curves are plain lines like the seed's
TREND_LABELS = 12  # run ids written under the trend plot, at most; more would overlap
METRICS_COLUMNS = ["trial_id", "variant", "params", EPOCH, TRAIN_LOSS, TRAIN_ACC, TEST_LOSS, TEST_ACC, EPOCH_S, SAMPLES_PER_S, "device"]


def render(result: SweepResult, out: Path, spec: dict[str, Any], manifest: Manifest | None = None) -> list[Path]:
    """Write the run's report into `out`; returns the paths written (the layout in DESIGN.md). `manifest`
    (versions, attempts) fills the page's header; without it the header says what it lacks."""
    out.mkdir(parents=True, exist_ok=True)
    rows = leaderboard_rows(result)
    columns = list(_leaderboard_row(TrialResult("", "", {}, ""), "", result.metric))  # the header even with no trials
    columns += ["schedule"] if any(t.schedule for t in result.trials) else []
    written = [_write_csv(out / "leaderboard.csv", rows, columns)]
    written.append(_write_csv(out / "metrics.csv", _metrics_rows(result), METRICS_COLUMNS))
    curves = {t.trial_id: _save(_curve_figure(t), out / "curves" / f"{_file_name(t.trial_id)}.png") for t in result.ranked() if t.epochs}
    written += [*curves.values(), _save(_compare_figure(result), out / "compare.png")]
    page = out / "report.html"
    pictures = report_html.Pictures(
        compare=written[-1].read_bytes(),
        curves={tid: path.read_bytes() for tid, path in curves.items()},
        search={path: _png(fig) for path, fig in search_figures(result, spec).items()},
    )
    downloads = {p.name: p.read_bytes() for p in written[:2]}  # the CSVs, whole
    page.write_text(report_html.html_page(result, spec, manifest, pictures, downloads), encoding="utf-8")
    return [*written, page]


def leaderboard_rows(result: SweepResult) -> list[dict[str, Any]]:
    """One row per trial, best first by the sweep's metric; trials that never reported come last, unranked."""
    return [_leaderboard_row(t, i + 1 if t.epochs else "", result.metric) for i, t in enumerate(result.ranked())]


def _leaderboard_row(trial: TrialResult, rank: int | str, metric: str) -> dict[str, Any]:
    last = trial.epochs[-1] if trial.epochs else None
    row: dict[str, Any] = {
        "rank": rank,
        "trial_id": trial.trial_id,
        "variant": trial.variant,
        "params": _compact(trial.params),
        "status": trial.status,
        "node": trial.node,
        "epochs": len(trial.epochs),
    }
    for name in dict.fromkeys([TEST_ACC, TEST_LOSS, metric]):
        row[f"best_{name}"] = _blank(trial.best(name))
    best = trial.best(metric)
    row["best_epoch"] = next((m.epoch for m in trial.epochs if getattr(m, metric) == best), "")
    for name in (TRAIN_LOSS, TRAIN_ACC, TEST_LOSS, TEST_ACC):
        row[f"last_{name}"] = getattr(last, name) if last else ""
    row["mean_samples_per_s"] = statistics.fmean(m.samples_per_s for m in trial.epochs) if trial.epochs else ""
    row["device"] = last.device if last else ""
    if trial.schedule:  # PBT changed its config as it went
        row["schedule"] = " ".join(_compact(step) for step in trial.schedule)
    return row


def _metrics_rows(result: SweepResult) -> list[dict[str, Any]]:
    """Long format: one row per trial and epoch."""
    return [{"trial_id": t.trial_id, "variant": t.variant, "params": _compact(t.params), **m.to_dict()} for t in result.ranked() for m in t.epochs]


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain-text table for the console: numbers right-aligned, missing cells blank."""
    cells = [[cell_text(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    numeric = [all(is_number(row.get(c)) or row.get(c) in (None, "") for row in rows) for c in columns]

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
        ax.axhline(
            bound, color=color, linestyle=":", label=f"allowed: {bound:g} (best earlier {regression.baseline:g}, run {regression.baseline_run})"
        )
        ax.plot(
            [len(points) - 1],
            [regression.value],
            color=color,
            marker="X",
            markersize=14,
            linestyle="",
            label=f"regression: {regression.worse_by:g} worse",
        )
        ax.legend(loc="best", fontsize=8)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    return _save(fig, out_png)


def _figure(layout: str | None = "constrained") -> tuple[Figure, Any]:
    fig = Figure(figsize=FIGURE_SIZE_IN, dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _curve_figure(trial: TrialResult) -> Figure:
    """The seed's twin-axis plot: test accuracy on the left (dark red), test loss on the right (dark blue)."""
    fig, acc_ax = _figure(layout=None)  # fixed margins: a layout engine took most of each curve's render time
    fig.subplots_adjust(**CURVE_MARGINS)
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
    colors = _variant_colors(result)
    best = result.best_trial()
    labelled: set[str] = set()
    for trial in result.ranked():
        if not trial.epochs:
            continue
        label = trial.variant if trial.variant not in labelled else "_nolegend_"
        labelled.add(trial.variant)
        width = 2.6 if best is not None and trial.trial_id == best.trial_id else 1.2
        ax.plot(
            [m.epoch for m in trial.epochs], [m.test_acc for m in trial.epochs], color=colors[trial.variant], linewidth=width, alpha=0.85, label=label
        )
    ax.set(xlabel="epoch", ylabel="test accuracy (%)")
    ax.set_title(f"{result.name} {result.run_id}: test accuracy" + (f" (best, thick: {best.trial_id})" if best else ""), fontsize=10)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(linestyle="--", color=GRID_COLOR)
    if labelled:
        ax.legend(title="variant")
    return fig


def search_figures(result: SweepResult, spec: dict[str, Any]) -> dict[str, Figure]:
    """Per searched hyperparameter: each trial's best metric against its value, one colour per variant
    (the compare plot's), the run's best trial ringed. Log-uniform fields get a log axis."""
    logs = log_uniform_paths(spec)
    return {path: _search_figure(result, path, path in logs) for path in searched_paths(result)}


def log_uniform_paths(spec: dict[str, Any]) -> set[str]:
    """Dotted paths drawn log-uniformly: in `search.space`, or in a variant's own (`search.variants`)."""
    search = spec.get("search", {})
    spaces = [search.get("space", {}), *search.get("variants", {}).values()]
    return {path for space in spaces for path, domain in space.items() if isinstance(domain, dict) and "loguniform" in domain}


def _search_figure(result: SweepResult, path: str, log: bool) -> Figure:
    fig = Figure(figsize=SEARCH_SIZE_IN, dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    trials = [t for t in result.trials if t.epochs and path in t.params]
    numeric = all(is_number(t.params[path]) for t in trials)
    labels = sorted({cell_text(t.params[path]) for t in trials}) if not numeric else []
    colors = _variant_colors(result)
    spread = 0.5 / max(1, len(colors))  # categorical values: variants side by side around each tick

    def x(trial: TrialResult) -> float:
        value = trial.params[path]
        return value if numeric else labels.index(cell_text(value)) + spread * (list(colors).index(trial.variant) - (len(colors) - 1) / 2)

    for variant, color in colors.items():
        mine = [t for t in trials if t.variant == variant]
        if mine:
            ax.scatter([x(t) for t in mine], [t.best(result.metric) for t in mine], color=color, s=40, alpha=0.85, label=variant)
    best = result.best_trial()
    if best is not None and best in trials:
        ax.scatter([x(best)], [best.best(result.metric)], s=220, facecolors="none", edgecolors="black", linewidths=1.5, label="best trial")
    if log and numeric and all(t.params[path] > 0 for t in trials):
        ax.set_xscale("log")
    if labels:
        ax.set_xticks(range(len(labels)), labels)
    elif ax.get_xscale() == "linear" and len({t.params[path] for t in trials}) <= MARKED_VALUES:
        ax.set_xticks(sorted({t.params[path] for t in trials}))  # a grid's few values, not round numbers between them
    ax.set(xlabel=path + (" (log scale)" if ax.get_xscale() == "log" else ""), ylabel=f"best {result.metric}")
    ax.grid(linestyle="--", color=GRID_COLOR)
    if trials:
        fig.legend(loc="outside right upper", fontsize=8, title="variant", title_fontsize=8)  # beside: never over a point
    return fig


def _variant_colors(result: SweepResult) -> dict[str, str]:
    return {v: f"C{i % 10}" for i, v in enumerate(sorted({t.variant for t in result.trials}))}


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buffer)
    return buffer.getvalue()


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


def _file_name(trial_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", trial_id)


def _params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={cell_text(v)}" for k, v in sorted(params.items())) or "(no search params)"


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _blank(value: float | None) -> float | str:
    return "" if value is None else value
