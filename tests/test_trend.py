"""`sweep results --trend --fail-if-worse X`: a scheduled sweep's regression is exit 3 and one line, the
trend plot marks it, anything else is exit 0. Runs are really committed (`catalog.commit_run`) to a local
folder, and once to the loopback S3 server; no Ray."""

from __future__ import annotations

from pathlib import Path

import pytest
from matplotlib.image import imread

from job import catalog, cli
from job.credentials import StorageSettings
from job.results import Attempt, Manifest, TrialSummary, find_regression
from job.storage import Store

NAME = "nightly"
CURVE_RGB = (0x8B / 255, 0.0, 0.0)  # darkred: the trend's line
MARK_RGB = (1.0, 0x8C / 255, 0.0)  # darkorange: the regression marker


def commit(store: Store, tmp: Path, run_id: str, best: float, metric: str = "test_acc") -> None:
    """One committed run whose best trial scored `best` on `metric`."""
    folder = tmp / f"report-{run_id}"
    (folder / "leaderboard.csv").parent.mkdir(parents=True, exist_ok=True)
    (folder / "leaderboard.csv").write_text(f"rank,trial_id,best_{metric}\n1,a_00000,{best}\n")
    trial = TrialSummary("a_00000", "basic", {"optim.lr": 0.001}, "TERMINATED", "node", 3, {metric: best}, "")
    mode = "max" if metric.endswith("acc") else "min"
    manifest = Manifest(
        name=NAME,
        run_id=run_id,
        metric=metric,
        mode=mode,
        spec={"name": NAME},
        versions={},
        best_trial="a_00000",
        trials=(trial,),
        attempts=(Attempt("2026-01-01T00:00:00+00:00", 5.0),),
    )
    catalog.commit_run(store, NAME, run_id, folder, manifest)


def runs(store: Store, tmp: Path, bests: list[float], metric: str = "test_acc") -> None:
    for day, best in enumerate(bests, start=1):
        commit(store, tmp, f"202601{day:02d}T030000Z-{day:04x}", best, metric)


@pytest.fixture
def local(tmp_path: Path) -> tuple[Store, str]:
    root = tmp_path / "sweeps"
    return Store(str(root), StorageSettings.from_env({})), f"{root}/{NAME}"


def results(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(["results", *args])
    out, err = capsys.readouterr()
    return code, out, err


def pixels_of(png: Path, rgb: tuple[float, float, float]) -> int:
    image = imread(png)[:, :, :3]
    return int((abs(image - rgb).max(axis=2) < 0.02).sum())


def test_a_drop_beyond_the_allowance_exits_3_with_one_line_and_the_plot_marks_it(local, tmp_path, capsys) -> None:
    store, uri = local
    runs(store, tmp_path, [41.0, 43.5, 42.0, 40.9])  # best earlier 43.5 (day 2); the newest is 2.6 below it
    png = tmp_path / "trend.png"
    code, out, err = results(capsys, uri, "--trend", str(png), "--fail-if-worse", "2.5")
    assert code == 3, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0] == (
        "error: regression: run 20260104T030000Z-0004 best test_acc 40.9 is 2.6 worse than run 20260102T030000Z-0002's 43.5 (allowed 2.5)"
    )
    assert "leaderboard of 20260104T030000Z-0004" in out  # the usual report still prints, for the job's log
    assert pixels_of(png, MARK_RGB) > 100, "the trend plot does not mark the regression"


def test_within_the_allowance_or_better_exits_0_and_the_plot_has_no_mark(local, tmp_path, capsys) -> None:
    store, uri = local
    runs(store, tmp_path, [41.0, 43.5, 42.0])
    png = tmp_path / "trend.png"
    code, out, err = results(capsys, uri, "--trend", str(png), "--fail-if-worse", "1.5")  # exactly 1.5 worse: allowed
    assert code == 0, out + err
    assert "fail-if-worse: run 20260103T030000Z-0003 best test_acc 42 is within 1.5 of the best earlier run" in out
    assert pixels_of(png, CURVE_RGB) > 100 and pixels_of(png, MARK_RGB) == 0
    commit(store, tmp_path, "20260104T030000Z-0004", 44.0)
    assert results(capsys, uri, "--trend", str(png), "--fail-if-worse", "0")[0] == 0


def test_a_loss_is_worse_when_it_rises(local, tmp_path, capsys) -> None:
    store, uri = local
    runs(store, tmp_path, [1.20, 1.10, 1.31], metric="test_loss")
    code, _, err = results(capsys, uri, "--fail-if-worse", "0.2")
    assert code == 3 and "best test_loss 1.31 is 0.21 worse than run 20260102T030000Z-0002's 1.1" in err
    assert results(capsys, uri, "--fail-if-worse", "0.25")[0] == 0


def test_one_run_compares_nothing_and_runs_of_another_metric_are_left_out(local, tmp_path, capsys) -> None:
    store, uri = local
    commit(store, tmp_path, "20260101T030000Z-0001", 1.5, metric="test_loss")  # not comparable with accuracy
    code, out, _ = results(capsys, uri, "--fail-if-worse", "0")
    assert code == 0 and "fail-if-worse: 1 committed run(s) with test_loss: nothing to compare yet" in out
    commit(store, tmp_path, "20260102T030000Z-0002", 40.0)
    code, out, _ = results(capsys, uri, "--fail-if-worse", "0")
    assert code == 0 and "1 committed run(s) with test_acc" in out


@pytest.mark.parametrize("value", ["-1", "one", "nan", "inf"])
def test_a_bad_allowance_is_one_line_before_storage_is_read(value: str, capsys) -> None:
    code, _, err = results(capsys, "s3://no-such-endpoint-is-asked/x/nightly", "--fail-if-worse", value)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: --fail-if-worse: not a number >= 0"), err


def test_find_regression_compares_against_the_best_earlier_run_not_the_previous_one() -> None:
    points = [("a", 50.0), ("b", 45.0), ("c", 46.0)]
    regression = find_regression(points, "test_acc", 3.0)
    assert regression is not None and (regression.baseline_run, regression.worse_by) == ("a", 4.0)
    assert find_regression([("a", 42.3), ("b", 41.3)], "test_acc", 1.0) is None  # 1.0000000000000036 in floats


def test_a_regression_in_the_loopback_s3_bucket_exits_3(s3_env, bucket_uri, tmp_path, capsys) -> None:
    store = Store(bucket_uri, StorageSettings.from_env(s3_env))
    store.check()
    runs(store, tmp_path, [45.0, 41.0])
    code, _, err = results(capsys, f"{bucket_uri}/{NAME}", "--trend", str(tmp_path / "t.png"), "--fail-if-worse", "1")
    assert code == 3 and err.count("\n") == 1 and "is 4 worse than run 20260101T030000Z-0001's 45" in err, err
    assert results(capsys, f"{bucket_uri}/{NAME}", "--fail-if-worse", "4")[0] == 0
