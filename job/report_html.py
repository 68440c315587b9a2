"""The page `report.html`: header (run, status, wall time, devices, versions), the best trial's
configuration and the command that retrains it, sortable tables, image grids, inline CSS and JS.
Builds markup from the records; no plotting, no file I/O, and nothing fetched: every image and
download is a data: URI, so the page opens straight from a bucket."""

from __future__ import annotations

import base64
import html
import json
import shlex
import statistics
from collections import Counter
from dataclasses import dataclass
from typing import Any

from job.results import METRIC_MODES, TEST_ACC, TEST_LOSS, Manifest, SweepResult, TrialResult

NODE_CHARS = 8  # Ray node ids are 56 hex characters; 8 tell a cluster's nodes apart, like a short git hash
SPEC_FILE = "spec.json"  # the run's validated spec, offered as a download; `sweep train` reads JSON as YAML


@dataclass(frozen=True)
class Pictures:
    """The PNGs the page embeds."""

    compare: bytes
    curves: dict[str, bytes]  # trial id -> its learning curves
    search: dict[str, bytes]  # searched dotted path -> best metric against it


Cell = tuple[str, float | None]  # (text shown, numeric sort key; None sorts by the text)

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1400px;padding:0 1em;color:#222}
h1{font-size:1.5em;margin:0 0 .3em} h2{font-size:1.15em;margin:1.6em 0 .5em;border-bottom:1px solid #ddd}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:.2em 1em;margin:0}
dl.facts dt{color:#666} dl.facts dd{margin:0}
.cols{display:flex;flex-wrap:wrap;gap:1em 3em} .cols>div{flex:1 1 420px;min-width:0}
table{border-collapse:collapse;font-size:13px;width:100%}
td,th{border-bottom:1px solid #e4e4ec;padding:3px 6px;text-align:right;white-space:nowrap}
td.t,th.t{text-align:left} th{background:#f3f3f8;cursor:pointer;user-select:none}
th[aria-sort=ascending]::after{content:" \\25B2"} th[aria-sort=descending]::after{content:" \\25BC"}
.scroll{overflow-x:auto}
code,pre{background:#f6f6f8;border-radius:4px} pre{padding:.8em;overflow-x:auto} pre.cmd{padding:.6em .8em;white-space:pre-wrap}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(380px,1fr));gap:1em}
figure{margin:0} figure img{width:100%;height:auto;display:block;border:1px solid #eee;cursor:zoom-in}
figure.big{grid-column:1/-1} figure.big img{cursor:zoom-out}
figcaption{font-size:12px;color:#555;overflow-wrap:anywhere} summary{cursor:pointer;margin-top:1.6em;font-weight:600} img.wide{max-width:900px;width:100%}
.searched{font-weight:600}
"""

# Click a header to sort by it (again to reverse); blanks stay last. Click a plot to enlarge it.
SCRIPT = """
document.querySelectorAll("table.sortable th").forEach(th => th.addEventListener("click", () => {
  const col = th.cellIndex, up = th.getAttribute("aria-sort") !== "ascending", body = th.closest("table").tBodies[0];
  th.parentNode.querySelectorAll("th").forEach(h => h.removeAttribute("aria-sort"));
  th.setAttribute("aria-sort", up ? "ascending" : "descending");
  const key = r => { const c = r.cells[col]; return c.dataset.v !== undefined ? Number(c.dataset.v) : c.textContent; };
  const rows = [...body.rows].sort((a, b) => {
    const x = key(a), y = key(b);
    if (x === "" || y === "") return (x === "") - (y === "");
    const d = typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y), undefined, {numeric: true});
    return up ? d : -d;
  });
  body.append(...rows);
}));
document.querySelectorAll(".grid figure").forEach(f => f.addEventListener("click", () => f.classList.toggle("big")));
"""


def html_page(result: SweepResult, spec: dict[str, Any], manifest: Manifest | None, pictures: Pictures, downloads: dict[str, bytes]) -> str:
    """The whole document; every value from the run is escaped here."""
    title = html.escape(f"{result.name} · {result.run_id}")
    best = result.best_trial()
    files = {SPEC_FILE: json.dumps(spec, indent=2).encode(), **downloads}
    command = reproduce_command(best) if best else "(no trial finished with a result)"
    search = [(f"{path}: best {result.metric} of each trial", png) for path, png in pictures.search.items()]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{title}</title><style>{STYLE}</style></head>
<body><h1>{title}</h1>
<div class="cols"><div>{_facts(header_facts(result, manifest))}</div>
<div><h2 style="margin-top:0">Best trial</h2>{_best(best, spec)}
<p>Retrain it with the run's spec ({_download(SPEC_FILE, files[SPEC_FILE])}):</p>
<pre class="cmd"><code id="reproduce">{html.escape(command)}</code></pre></div></div>
<h2>Variants, each by its best trial</h2>{_table(_variants(result), "variants")}
<h2>Leaderboard</h2>
<p>Click a column to sort it. Every column: {", ".join(_download(n, d) for n, d in downloads.items())}.</p>
<div class="scroll">{_table(_leaderboard(result), "leaderboard")}</div>
<h2>All trials</h2>{_img("compare", pictures.compare, "wide")}
<h2>Search: each trial's best {html.escape(result.metric)} against each searched hyperparameter</h2>
{_grid(search) if search else "<p>No hyperparameters were searched: each variant ran with the spec's values.</p>"}
<h2>Learning curves (click one to enlarge)</h2>{_grid([(_curve_caption(t, result.metric), pictures.curves[t.trial_id]) for t in result.ranked() if t.trial_id in pictures.curves])}
<details><summary>The run's spec ({SPEC_FILE})</summary><pre>{html.escape(files[SPEC_FILE].decode())}</pre></details>
<script>{SCRIPT}</script>
</body></html>
"""


def header_facts(result: SweepResult, manifest: Manifest | None) -> list[tuple[str, str]]:
    """(label, text) pairs for the header: what ran, how it ended, how long it took and on what."""
    statuses = Counter(t.status for t in result.trials)
    unfinished = len(result.trials) - statuses["TERMINATED"]
    facts = [
        ("sweep", result.name),
        ("run", result.run_id),
        (
            "status",
            f"ended early: {result.ended_by}"
            if result.ended_by
            else f"{unfinished} of {len(result.trials)} trials did not finish"
            if unfinished
            else "complete: every trial finished",
        ),
        ("trials", f"{len(result.trials)} (" + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())) + ")"),
        ("ranked by", f"best {result.metric} ({'higher' if result.mode == 'max' else 'lower'} is better)"),
    ]
    if manifest is None:
        return [*facts, ("devices", _devices(result)), ("wall time, versions", "not recorded (rendered without a manifest)")]
    resumed = f", {len(manifest.attempts)} attempts (resumed)" if len(manifest.attempts) > 1 else ""
    started = manifest.attempts[0].started_at if manifest.attempts else ""
    return [
        *facts,
        ("wall time", f"{duration_text(manifest.wall_s)}{resumed}" + (f", started {started}" if started else "")),
        ("devices", _devices(result)),
        ("versions", ", ".join(f"{name} {v}" for name, v in manifest.versions.items())),
    ]


def reproduce_command(trial: TrialResult, spec_file: str = SPEC_FILE) -> str:
    """`sweep train` with the trial's variant and search values: the spec's seed makes it the same trial.
    A `model.X` value is set on the variant (`variants.V.X`); other paths are spec paths already."""
    words = ["sweep", "train", spec_file, "--variant", trial.variant]
    for path, value in sorted(trial.params.items()):
        section, _, key = path.partition(".")
        words += ["--set", f"{f'variants.{trial.variant}.{key}' if section == 'model' else path}={_yaml_scalar(value)}"]
    return shlex.join(words)


def duration_text(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {s} s" if minutes else f"{seconds:.1f} s"


def cell_text(value: Any) -> str:
    """A value as a table shows it: floats to 4 significant digits, thousands grouped."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return str(value)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def searched_paths(result: SweepResult) -> list[str]:
    """Every dotted path some trial got a search value for (per-variant spaces differ)."""
    return sorted({path for t in result.trials for path in t.params})


def _yaml_scalar(value: Any) -> str:
    """`--set` parses its value as YAML, which reads `1e-05` as a string: floats keep a mantissa dot."""
    if isinstance(value, float):
        text = repr(value)
        mantissa, e, exponent = text.partition("e")
        return f"{mantissa}.0e{exponent}" if e and "." not in mantissa else text
    return json.dumps(value)


def _devices(result: SweepResult) -> str:
    devices = Counter(t.epochs[-1].device for t in result.trials if t.epochs)
    nodes = {t.node for t in result.trials if t.node}
    text = ", ".join(f"{d}: {n} trial{'s' * (n != 1)}" for d, n in devices.most_common()) or "none reported"
    return f"{text} on {len(nodes)} node{'s' * (len(nodes) != 1)}" if nodes else text


def _best(trial: TrialResult | None, spec: dict[str, Any]) -> str:
    """The trial's whole model and optimiser configuration; its search values in bold."""
    if trial is None:
        return "<p>No trial finished with a result.</p>"
    sections = {"model": dict(spec.get("variants", {}).get(trial.variant, {})), "optim": dict(spec.get("optim", {}))}
    for path, value in trial.params.items():
        section, _, key = path.partition(".")
        sections.setdefault(section, {})[key] = value
    rows = [("trial", trial.trial_id, False), ("variant", trial.variant, False)]
    rows += [(f"{s}.{k}", cell_text(v), f"{s}.{k}" in trial.params) for s, fields in sections.items() for k, v in fields.items()]
    items = "".join(f"<dt>{html.escape(p)}</dt><dd{' class=searched' if bold else ''}>{html.escape(v)}</dd>" for p, v, bold in rows)
    return f'<dl class="facts" id="best">{items}</dl>'


def _variants(result: SweepResult) -> tuple[list[tuple[str, str]], list[list[Cell]]]:
    columns = [
        ("variant", ""),
        ("trials", ""),
        ("finished", "status TERMINATED"),
        (f"best {result.metric}", ""),
        ("best trial", ""),
        ("its search values", ""),
    ]
    rows = []
    for variant in sorted({t.variant for t in result.trials}):
        mine = SweepResult(result.name, result.run_id, result.metric, [t for t in result.trials if t.variant == variant])
        top = mine.ranked()[0]
        value = top.best(result.metric)
        rows.append(
            [
                (variant, None),
                _num(len(mine.trials)),
                _num(sum(t.status == "TERMINATED" for t in mine.trials)),
                _num(value),
                (top.trial_id if value is not None else "", None),
                (_params(top.params), None),
            ]
        )
    return columns, rows


def _leaderboard(result: SweepResult) -> tuple[list[tuple[str, str]], list[list[Cell]]]:
    """The columns a reader compares on; node ids shortened so the table fits the page (the CSV has them whole)."""
    paths = searched_paths(result)
    metrics = list(dict.fromkeys([result.metric, TEST_ACC, TEST_LOSS]))
    columns = [("#", "rank by the sweep's metric"), ("trial", ""), ("variant", "")]
    columns += [(p.rpartition(".")[2], p) for p in paths]
    columns += [(f"best {m}", f"best {m} over the trial's epochs ({METRIC_MODES[m]})") for m in metrics]
    columns += [
        ("best epoch", f"epoch of the best {result.metric}"),
        ("epochs", ""),
        ("samples/s", "mean training samples per second"),
        ("status", ""),
        ("device", ""),
        ("node", "Ray node id, first characters"),
    ]
    rows = []
    for i, t in enumerate(result.ranked()):
        best = t.best(result.metric)
        rows.append(
            [
                _num(i + 1 if t.epochs else None),
                (t.trial_id, None),
                (t.variant, None),
                *[_num(t.params[p]) if is_number(t.params.get(p)) else (cell_text(t.params.get(p)), None) for p in paths],
                *[_num(t.best(m)) for m in metrics],
                _num(next((m.epoch for m in t.epochs if getattr(m, result.metric) == best), None)),
                _num(len(t.epochs)),
                _num(statistics.fmean(m.samples_per_s for m in t.epochs) if t.epochs else None),
                (t.status, None),
                (t.epochs[-1].device if t.epochs else "", None),
                (t.node[:NODE_CHARS], None),
            ]
        )
    return columns, rows


def _num(value: float | None) -> Cell:
    return ("", None) if value is None else (cell_text(value), float(value))


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={cell_text(v)}" for k, v in sorted(params.items()))


def _curve_caption(trial: TrialResult, metric: str) -> str:
    best = trial.best(metric)
    return f"{trial.trial_id} · {trial.variant} · {_params(trial.params) or 'spec values'} · best {metric} {cell_text(best)} · {trial.status}"


def _facts(facts: list[tuple[str, str]]) -> str:
    return '<dl class="facts" id="facts">' + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in facts) + "</dl>"


def _table(table: tuple[list[tuple[str, str]], list[list[Cell]]], name: str) -> str:
    """Numbers carry their exact value in data-v for the sort; text columns are left-aligned."""
    columns, rows = table
    numeric = [all(r[i][1] is not None or r[i][0] == "" for r in rows) for i in range(len(columns))]

    def cell(text: str, sort: float | None, num: bool) -> str:
        value = "" if sort is None else f' data-v="{sort!r}"'
        return f"<td{'' if num else ' class=t'}{value}>{html.escape(text)}</td>"

    head = "".join(f'<th{"" if n else " class=t"} title="{html.escape(tip)}">{html.escape(label)}</th>' for (label, tip), n in zip(columns, numeric))
    body = "".join("<tr>" + "".join(cell(text, sort, n) for (text, sort), n in zip(row, numeric)) + "</tr>\n" for row in rows)
    return f'<table id="{name}" class="sortable"><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>'


def _grid(images: list[tuple[str, bytes]]) -> str:
    figures = "".join(f"<figure>{_img(caption, png)}<figcaption>{html.escape(caption)}</figcaption></figure>\n" for caption, png in images)
    return f'<div class="grid">\n{figures}</div>'


def _img(caption: str, png: bytes, css: str = "") -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img{f" class={css}" if css else ""} alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'


def _download(name: str, data: bytes) -> str:
    uri = "data:application/octet-stream;base64," + base64.b64encode(data).decode("ascii")
    return f'<a download="{html.escape(name)}" href="{uri}">{html.escape(name)}</a>'
