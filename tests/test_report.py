"""job.report and job.report_html on hand-built results: files written, PNG sizes and colours, ranking,
the page's header, tables, search plots and reproduce command, console tables. tests/test_browser.py
loads the page in a real browser."""

from __future__ import annotations

import base64
import csv
import dataclasses
import html
import io
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from job import report, report_html
from job.cli import build_parser
from job.results import Attempt, EpochMetrics, Manifest, SweepResult, TrialResult
from job.spec import load_spec, resolve_trial

WIDTH_PX, HEIGHT_PX = report.FIGURE_SIZE_PX
DARK_RED, DARK_BLUE = (0x8B, 0x00, 0x00), (0x00, 0x00, 0x8B)  # matplotlib's darkred and darkblue
SPEC = {
    "name": "cifar10-mlp",
    "optim": {"lr": 0.0001, "epochs": 3},
    "search": {"space": {"optim.lr": {"loguniform": [1e-4, 1e-2]}}, "metric": "test_acc"},
}
NODE_1, NODE_2 = "0dd19544" + "e" * 48, "7f3a9c21" + "b" * 48  # Ray node ids are 56 hex characters
MANIFEST = Manifest(
    "cifar10-mlp",
    "20260101T000000Z-beef",
    "test_acc",
    "max",
    SPEC,
    {"python": "3.11.7", "torch": "2.14.1", "ray": "2.60.0"},
    "b_00001",
    (),
    (Attempt("2026-01-01T00:00:00+00:00", 100.5), Attempt("2026-01-01T01:00:00+00:00", 20.5)),
)


def _epochs(accs: list[float], losses: list[float], device: str = "cpu") -> list[EpochMetrics]:
    return [
        EpochMetrics(
            epoch=i + 1,
            train_loss=loss - 0.1,
            train_acc=acc + 2,
            test_loss=loss,
            test_acc=acc,
            epoch_s=1.5,
            samples_per_s=1000.0 * (i + 1),
            device=device,
        )
        for i, (acc, loss) in enumerate(zip(accs, losses))
    ]


def _result(metric: str = "test_acc") -> SweepResult:
    """Best by accuracy: b (peak 53) > a (51) > c (48); best by loss: c (1.2) < a (1.4) < b (1.6)."""
    trials = [
        TrialResult("a_00000", "basic", {"optim.lr": 0.001}, "TERMINATED", _epochs([40, 51, 50], [1.8, 1.4, 1.5]), NODE_1),
        TrialResult("b_00001", "batchnorm", {"optim.lr": 0.0001}, "TERMINATED", _epochs([45, 53, 52.5], [1.9, 1.6, 1.7], "cuda"), NODE_2),
        TrialResult("d_00003", "dropout", {"optim.lr": 0.01}, "ERROR", [], NODE_1),
        TrialResult("c_00002", "dropout", {"optim.lr": 0.0001}, "TERMINATED", _epochs([44, 48], [1.3, 1.2]), NODE_1),
    ]
    return SweepResult("cifar10-mlp", "20260101T000000Z-beef", metric, trials)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    """One render shared by the tests that only read it (a render draws four PNGs: about a second)."""
    out = tmp_path_factory.mktemp("report")
    return out, report.render(_result(), out, SPEC, MANIFEST)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _has_colour(image: np.ndarray, rgb: tuple[int, int, int], tolerance: int = 40) -> bool:
    pixels = (image[..., :3] * 255).astype(int)
    return bool((np.abs(pixels - np.array(rgb)).sum(axis=-1) < tolerance).any())


def test_render_writes_the_report_layout(rendered: tuple[Path, list[Path]]) -> None:
    out, paths = rendered
    expected = ["leaderboard.csv", "metrics.csv", "curves/b_00001.png", "curves/a_00000.png", "curves/c_00002.png", "compare.png", "report.html"]
    assert paths == [out / rel for rel in expected]
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)
    assert not (out / "curves" / "d_00003.png").exists()  # a trial that never reported has no curve


def test_every_png_decodes_at_the_documented_size(rendered: tuple[Path, list[Path]], tmp_path: Path) -> None:
    assert (WIDTH_PX, HEIGHT_PX) == (800, 500)
    paths = rendered[1]
    trend = report.render_trend([("20260101T000000Z-0001", 51.0), ("20260102T000000Z-0002", 53.0)], "test_acc", tmp_path / "t" / "trend.png")
    for png in [p for p in paths if p.suffix == ".png"] + [trend]:
        assert imread(png).shape[:2] == (HEIGHT_PX, WIDTH_PX), png


def test_curves_use_the_seed_colours(rendered: tuple[Path, list[Path]]) -> None:
    curve = imread(rendered[0] / "curves" / "a_00000.png")
    assert _has_colour(curve, DARK_RED) and _has_colour(curve, DARK_BLUE)


@pytest.mark.parametrize(
    ("metric", "order", "best_column", "best_values"),
    [
        ("test_acc", ["b_00001", "a_00000", "c_00002", "d_00003"], "best_test_acc", ["53.0", "51.0", "48.0", ""]),
        ("test_loss", ["c_00002", "a_00000", "b_00001", "d_00003"], "best_test_loss", ["1.2", "1.4", "1.6", ""]),
        ("train_loss", ["c_00002", "a_00000", "b_00001", "d_00003"], "best_train_loss", ["1.1", "1.3", "1.5", ""]),
    ],
)
def test_leaderboard_is_best_first_by_the_metric(metric: str, order: list[str], best_column: str, best_values: list[str]) -> None:
    rows = report.leaderboard_rows(_result(metric))
    assert [r["trial_id"] for r in rows] == order
    assert [r["rank"] for r in rows] == [1, 2, 3, ""]  # the trial that never reported is unranked
    assert [f"{r[best_column]:.1f}" if r[best_column] != "" else "" for r in rows] == best_values


def test_leaderboard_csv_is_best_first(rendered: tuple[Path, list[Path]]) -> None:
    rows = _read_csv(rendered[0] / "leaderboard.csv")
    assert [(r["rank"], r["trial_id"]) for r in rows] == [("1", "b_00001"), ("2", "a_00000"), ("3", "c_00002"), ("", "d_00003")]


def test_leaderboard_row_contents(rendered: tuple[Path, list[Path]]) -> None:
    top = _read_csv(rendered[0] / "leaderboard.csv")[0]
    assert json.loads(top["params"]) == {"optim.lr": 0.0001}
    assert (top["variant"], top["status"], top["node"], top["epochs"], top["device"]) == ("batchnorm", "TERMINATED", NODE_2, "3", "cuda")  # whole
    assert float(top["best_test_acc"]) == 53 and float(top["best_test_loss"]) == 1.6 and top["best_epoch"] == "2"
    assert float(top["last_test_acc"]) == 52.5 and float(top["last_test_loss"]) == 1.7
    assert float(top["mean_samples_per_s"]) == 2000.0


def test_metrics_csv_is_long_format(rendered: tuple[Path, list[Path]]) -> None:
    rows = _read_csv(rendered[0] / "metrics.csv")
    assert list(rows[0]) == report.METRICS_COLUMNS
    assert len(rows) == 3 + 3 + 2
    b = [r for r in rows if r["trial_id"] == "b_00001"]
    assert [r["epoch"] for r in b] == ["1", "2", "3"] and [float(r["test_acc"]) for r in b] == [45, 53, 52.5]
    assert b[0]["variant"] == "batchnorm" and json.loads(b[0]["params"]) == {"optim.lr": 0.0001} and b[0]["device"] == "cuda"


def _page(rendered: tuple[Path, list[Path]]) -> str:
    return (rendered[0] / "report.html").read_text()


def test_report_html_is_self_contained(rendered: tuple[Path, list[Path]]) -> None:
    page = _page(rendered)
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 1 + 1 + 3  # compare.png, optim.lr's search plot, one curve per trial that reported
    assert imread(io.BytesIO(base64.b64decode(images[0])), format="png").shape[:2] == (HEIGHT_PX, WIDTH_PX)
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing fetched from anywhere else
    assert "&quot;lr&quot;: 0.0001" in page  # the spec, escaped, in a <pre>
    downloads = dict(re.findall(r'<a download="([^"]+)" href="data:application/octet-stream;base64,([^"]+)"', page))
    assert sorted(downloads) == ["leaderboard.csv", "metrics.csv", "spec.json"]
    assert base64.b64decode(downloads["leaderboard.csv"]) == (rendered[0] / "leaderboard.csv").read_bytes()
    assert json.loads(base64.b64decode(downloads["spec.json"])) == SPEC


def test_report_html_leaderboard_fits_and_sorts_by_exact_values(rendered: tuple[Path, list[Path]]) -> None:
    page = _page(rendered)
    table = page[page.index('<table id="leaderboard" class="sortable">') : page.index("</table>", page.index('id="leaderboard"'))]
    assert re.findall(r"<td class=t>([abcd]_\d+)</td>", table) == ["b_00001", "a_00000", "c_00002", "d_00003"]
    assert NODE_1 not in table and "<td class=t>0dd19544</td>" in table  # short node ids: the table fits the page
    assert '<th title="optim.lr">lr</th>' in table  # one column per searched field, short name, full path on hover
    assert re.search(r'<td data-v="53\.0">53</td>', table)  # the sort key is the exact value, the text is rounded
    assert "<tr><td></td><td class=t>d_00003</td>" in table  # the trial that never reported: no rank


def test_report_html_header(rendered: tuple[Path, list[Path]]) -> None:
    facts = dict(re.findall(r"<dt>([^<]+)</dt><dd>([^<]*)</dd>", _page(rendered)[: _page(rendered).index('id="best"')]))
    assert facts["run"] == "20260101T000000Z-beef" and facts["sweep"] == "cifar10-mlp"
    assert facts["status"] == "1 of 4 trials did not finish"
    assert facts["trials"] == "4 (1 ERROR, 3 TERMINATED)"
    assert facts["wall time"] == "2 min 1 s, 2 attempts (resumed), started 2026-01-01T00:00:00+00:00"
    assert facts["devices"] == "cpu: 2 trials, cuda: 1 trial on 2 nodes"
    assert facts["versions"] == "python 3.11.7, torch 2.14.1, ray 2.60.0"


def test_header_without_a_manifest_says_so() -> None:
    complete = SweepResult("s", "r", "test_acc", [t for t in _result().trials if t.status == "TERMINATED"])
    facts = dict(report_html.header_facts(complete, None))
    assert facts["status"] == "complete: every trial finished"
    assert facts["wall time, versions"] == "not recorded (rendered without a manifest)"
    budget = dataclasses.replace(complete, ended_by="search.time_budget_s (60 s) ran out: 2 of 6 trials finished")
    assert dict(report_html.header_facts(budget, None))["status"] == f"ended early: {budget.ended_by}"


def test_report_html_variants_by_their_best_trial(rendered: tuple[Path, list[Path]]) -> None:
    page = _page(rendered)
    table = page[page.index('<table id="variants"') : page.index('<table id="leaderboard"')]
    rows = [re.findall(r">([^<]*)</td>", row) for row in re.findall(r"<tr>(<td.*?)</tr>", table)]
    assert rows == [
        ["basic", "1", "1", "51", "a_00000", "optim.lr=0.001"],
        ["batchnorm", "1", "1", "53", "b_00001", "optim.lr=0.0001"],
        ["dropout", "2", "1", "48", "c_00002", "optim.lr=0.0001"],  # the failed d_00003 is not its best
    ]


@pytest.mark.parametrize("params", [{"optim.lr": 1e-05, "model.hidden": 48}, {"optim.lr": 0.0031415926535, "model.dropout": 0.25}])
def test_reproduce_command_retrains_the_same_trial(params: dict, tmp_path: Path) -> None:
    """The page's command, parsed by the real `sweep` parser with the page's spec.json, gives the trial's spec."""
    job = load_spec("specs/smoke.yaml")
    trial = TrialResult("x_00000", "dropout", params, "TERMINATED", _epochs([50], [1.0]))
    out = tmp_path / "report"
    report.render(SweepResult(job.name, "r", "test_acc", [trial]), out, job.model_dump(mode="json"))
    page = (out / "report.html").read_text()
    spec_json = re.search(r'<a download="spec.json" href="data:application/octet-stream;base64,([^"]+)"', page)[1]
    (tmp_path / "spec.json").write_bytes(base64.b64decode(spec_json))
    command = html.unescape(re.search(r'<code id="reproduce">([^<]+)</code>', page)[1])
    words = shlex.split(command)
    assert words[:5] == ["sweep", "train", "spec.json", "--variant", "dropout"]
    args = build_parser().parse_args(words[1:])
    again = resolve_trial(load_spec(tmp_path / args.spec, args.overrides), args.variant, {})
    swept = resolve_trial(job, "dropout", params)
    assert (again.model, again.optim, again.data, again.seed) == (swept.model, swept.optim, swept.data, swept.seed)
    assert again.optim.lr == params["optim.lr"]  # exact, not the 4 digits the tables show


def test_search_figures_per_field_and_variant() -> None:
    trials = [
        TrialResult("a", "basic", {"optim.lr": 1e-4, "model.hidden": 64, "model.batch_norm": True}, "TERMINATED", _epochs([40], [1.5])),
        TrialResult("b", "basic", {"optim.lr": 1e-2, "model.hidden": 128, "model.batch_norm": False}, "TERMINATED", _epochs([45], [1.4])),
        TrialResult("c", "wide", {"optim.lr": 1e-3, "model.hidden": 128, "model.batch_norm": False}, "TERMINATED", _epochs([50], [1.3])),
        TrialResult("d", "wide", {"optim.lr": 3e-3, "model.hidden": 64, "model.batch_norm": True}, "ERROR", []),  # no points
    ]
    spec = {"search": {"space": {"optim.lr": {"loguniform": [1e-4, 1e-2]}, "model.hidden": {"grid": [64, 128]}}}}
    figures = report.search_figures(SweepResult("s", "r", "test_acc", trials), spec)
    assert list(figures) == ["model.batch_norm", "model.hidden", "optim.lr"]
    lr = figures["optim.lr"].axes[0]
    assert (lr.get_xscale(), figures["model.hidden"].axes[0].get_xscale()) == ("log", "linear")
    points = [c.get_offsets().tolist() for c in lr.collections]
    assert points == [[[1e-4, 40], [1e-2, 45]], [[1e-3, 50]], [[1e-3, 50]]]  # basic, wide, the best trial's ring
    flags = figures["model.batch_norm"].axes[0]
    assert [t.get_text() for t in flags.get_xticklabels()] == ["False", "True"]  # categories, side by side per variant
    assert [c.get_offsets().tolist() for c in flags.collections][:2] == [[[0.875, 40], [-0.125, 45]], [[0.125, 50]]]


def test_log_axis_from_a_variants_own_space() -> None:
    spec = {
        "search": {
            "space": {"optim.weight_decay": {"uniform": [0.0, 0.1]}},
            "variants": {"d": {"model.dropout": {"loguniform": [0.01, 0.5]}}, "e": {"optim.lr": {"loguniform": [1e-4, 1e-2]}}},
        },
        "variants": {"d": {"kind": "mlp"}, "e": {"kind": "mlp"}},
    }
    assert report.log_uniform_paths(spec) == {"model.dropout", "optim.lr"}


def test_render_with_no_trials(tmp_path: Path) -> None:
    empty = SweepResult("cifar10-mlp", "20260101T000000Z-beef", "test_acc", [])
    paths = report.render(empty, tmp_path, SPEC)
    assert [p.name for p in paths] == ["leaderboard.csv", "metrics.csv", "compare.png", "report.html"]
    assert _read_csv(tmp_path / "leaderboard.csv") == []
    assert (tmp_path / "leaderboard.csv").read_text().startswith("rank,trial_id,variant,params,status,node,epochs,best_test_acc")


def test_format_table_aligns_and_blanks() -> None:
    rows = [
        {"trial_id": "a_00000", "best": 53.123456, "params": {"optim.lr": 0.001}, "speed": 21000.4},
        {"trial_id": "long_trial_name", "best": None},
    ]
    text = report.format_table(rows, ["trial_id", "best", "params", "speed"])
    assert text.splitlines() == [
        "trial_id          best  params               speed",
        "---------------  -----  ------------------  ------",
        'a_00000          53.12  {"optim.lr":0.001}  21,000',
        "long_trial_name",  # missing cells are blank, trailing spaces trimmed
    ]


def test_format_table_right_aligns_numbers() -> None:
    text = report.format_table([{"n": 5, "name": "x"}, {"n": 123, "name": "yy"}], ["n", "name"])
    assert text.splitlines() == ["  n  name", "---  ----", "  5  x", "123  yy"]


def test_render_trend_with_no_runs(tmp_path: Path) -> None:
    png = report.render_trend([], "test_loss", tmp_path / "trend.png")
    assert png == tmp_path / "trend.png" and imread(png).shape[:2] == (HEIGHT_PX, WIDTH_PX)
