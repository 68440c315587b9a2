"""Search beyond the grid: Optuna's TPE per variant, time budgets and trial timeouts. The sweeps run on
the real local Ray against the loopback S3 server (the fixtures and helpers of test_faults)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections import Counter

import pytest
import torch
from faults import event
from test_faults import REPO, RUN_S, SLOW, SMOKE, assert_not_retrained, events, sweep_factory  # noqa: F401 (a fixture)

from job import search
from job.spec import load_spec

OPTUNA = ["search.algorithm=optuna", "search.space={optim.lr: {loguniform: [1.0e-4, 1.0e-2]}}"]
TWO_VARIANTS = "variants={basic: {hidden: 16}, batchnorm: {hidden: 16, batch_norm: true}}"


def validate(*sets: str) -> subprocess.CompletedProcess:
    args = [arg for item in sets for arg in ("--set", item)]
    return subprocess.run([sys.executable, "-m", "job", "validate", SMOKE, *args], cwd=REPO, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    "sets, wanted",
    [
        (
            ["search.algorithm=optuna"],
            "error: search.space.optim.lr: grid cannot be searched by search.algorithm optuna. Use {choice: [0.001, 0.003]}",
        ),
        (["search.algorithm=optuna", "search.space={}"], "error: search.space: search.algorithm optuna needs at least one domain"),
        (["search.time_budget_s=0"], "error: search.time_budget_s: "),
        (["search.algorithm=tpe"], "error: search.algorithm: "),
    ],
)
def test_search_settings_that_cannot_run_are_one_line(sets: list[str], wanted: str) -> None:
    done = validate(*sets)
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(wanted) and "Traceback" not in done.stderr, line


def test_optuna_gives_every_variant_the_same_number_of_trials_then_finishes() -> None:
    spec = load_spec(SMOKE, [*OPTUNA, "search.samples=4"])
    found = search.searcher(spec)
    configs = [found.suggest(f"t{i}") for i in range(12)]
    assert Counter(c[search.VARIANT] for c in configs) == {"basic": 4, "dropout": 4, "batchnorm": 4}
    assert found.suggest("t12") == found.FINISHED
    for i, config in enumerate(configs):
        found.on_trial_complete(f"t{i}", {"test_acc": 50.0 + i, "done": True})
    lrs = [c["optim.lr"] for c in configs if c[search.VARIANT] == "basic"]
    assert len(set(lrs)) == 4 and all(1e-4 <= lr <= 1e-2 for lr in lrs), lrs
    # Seeded alike, the variants start from the same points: a fair comparison.
    assert [c["optim.lr"] for c in configs if c[search.VARIANT] == "dropout"] == lrs


def test_a_missing_optuna_is_one_line_before_ray_starts(tmp_path) -> None:
    code = (
        "import sys; sys.modules['optuna'] = None; from job import cli; "
        f"sys.exit(cli.main(['run', {SMOKE!r}, '--set', 'storage.uri={tmp_path}', '--set', 'search.algorithm=optuna', "
        "'--set', 'search.space={optim.lr: {choice: [0.001]}}']))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line == ("error: search.algorithm: optuna is not installed here. Run pip install 'sweep-job[optuna]', or use search.algorithm random"), (
        line
    )
    assert "starting run" not in done.stdout


@pytest.mark.slow
def test_a_killed_optuna_sweep_resumes_with_what_it_had_learned(sweep_factory) -> None:
    """One trial at a time, killed after the first finishes: the rerun trains no finished trial again and
    its searchers go on from their saved state (started over, they would suggest their first point again)."""
    sets = [*SLOW, *OPTUNA, "search.samples=2", "search.max_concurrent=1", TWO_VARIANTS]
    sweep = sweep_factory(sets, epochs=3, trials=4, env={"TUNE_GLOBAL_CHECKPOINT_S": "1"})
    driver = sweep.start()
    _, run_id = sweep.run_id_of(driver)
    assert driver.wait_for(lambda line: (found := event(line)) is not None and found[0] == "done", RUN_S), driver.tail()
    sweep.wait_for_saved_state(run_id)
    driver.kill()
    finished = set(events(driver, "done"))
    rerun = sweep.start()
    assert sweep.run_id_of(rerun) == ("resuming", run_id), rerun.tail()
    assert sweep.finish(rerun) == 0, rerun.tail()
    assert_not_retrained(rerun, finished)
    manifest = sweep.assert_complete(run_id)
    by_variant: dict[str, list[float]] = {}
    for trial in manifest["trials"]:
        by_variant.setdefault(trial["variant"], []).append(trial["params"]["optim.lr"])
    assert {v: len(lrs) for v, lrs in by_variant.items()} == {"basic": 2, "batchnorm": 2}, by_variant
    assert all(len(set(lrs)) == 2 for lrs in by_variant.values()), f"a searcher suggested a point twice: {by_variant}"


@pytest.mark.slow
def test_a_time_budget_ends_the_run_with_a_complete_honest_report(sweep_factory) -> None:
    """18 trials one at a time, each stopped after 2 s of training; the sweep gets 30 s.
    Whether a trial is in flight when the budget runs out is timing: one may be STOPPED, or none."""
    sets = [*SLOW, "search.samples=3", "search.max_concurrent=1", "search.trial_timeout_s=2", "search.time_budget_s=30"]
    sweep = sweep_factory(sets, epochs=6, trials=18)
    driver = sweep.start()
    _, run_id = sweep.run_id_of(driver)
    assert sweep.finish(driver) == 0, driver.tail()
    manifest = json.loads(sweep.bucket.read(sweep.manifest_key(run_id)))
    statuses = Counter(t["status"] for t in manifest["trials"])
    # Trials Tune had not made yet (one at a time: it makes them as they start) are counted, not listed.
    ended = f"search.time_budget_s (30 s) ran out: {statuses['TERMINATED']} of 18 trials finished"
    assert manifest["ended_by"] == ended and f"ended early: {ended}" in driver.output, driver.tail()
    assert set(statuses) <= {"TERMINATED", "STOPPED"} and 0 < statuses["TERMINATED"] < 18, statuses
    assert all(t["epochs"] < 6 for t in manifest["trials"] if t["status"] == "STOPPED"), manifest["trials"]
    finished = [t for t in manifest["trials"] if t["status"] == "TERMINATED"]
    assert all(1 <= t["epochs"] < 6 for t in finished), finished  # the trial timeout, not the last epoch, ended them
    assert manifest["best_trial"] in {t["trial_id"] for t in finished}
    sweep.assert_any_manifest_verifies()
    shown = subprocess.run(
        [sys.executable, "-m", "job", "results", f"{sweep.uri}/smoke"], env=sweep.env, cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert shown.returncode == 0 and f"ended early: {ended}" in shown.stdout, shown.stdout + shown.stderr


@pytest.mark.slow
def test_pbt_exploits_with_the_new_values_applied_and_records_each_schedule(sweep_factory) -> None:
    """Six trials, the bottom half copying the top half every 2 epochs. An exploited trial goes on from its
    donor's checkpoint with its own new learning rate: every checkpoint's optimizer holds the rate of the
    config it was saved under (a copied optimizer state would keep the donor's)."""
    sets = [
        "data.synthetic_train=5000",
        "search.scheduler={kind: pbt, interval: 2, quantile_fraction: 0.5}",
        "search.space={optim.lr: {loguniform: [1.0e-5, 1.0e-1]}}",
        "search.samples=2",
    ]
    sweep = sweep_factory(sets, epochs=8, trials=6)
    driver = sweep.start()
    _, run_id = sweep.run_id_of(driver)
    assert sweep.finish(driver) == 0, driver.tail()
    manifest = sweep.assert_complete(run_id)
    exploited = [t for t in manifest["trials"] if len(t["schedule"]) > 1]
    assert exploited and "continues from" in driver.output, [t["schedule"] for t in manifest["trials"]]
    for trial in exploited:
        assert trial["schedule"][-1]["optim.lr"] == trial["params"]["optim.lr"] and trial["schedule"][-1]["variant"] == trial["variant"]
    checked = 0
    for key in sweep.bucket.keys(f"smoke/{run_id}/tune/"):
        if key.endswith("/model.pt"):
            weights = torch.load(io.BytesIO(sweep.bucket.read(key)), map_location="cpu", weights_only=True)
            meta = json.loads(sweep.bucket.read(key.replace("/model.pt", "/trial.json")))
            assert weights["optimizer"]["param_groups"][0]["lr"] == meta["trial"]["optim"]["lr"], key
            checked += 1
    assert checked >= 6
    board = sweep.bucket.read(f"smoke/{run_id}/report/leaderboard.csv").decode()
    assert "schedule" in board.splitlines()[0]


PER_VARIANT = "search.variants={dropout: {model.dropout: {grid: [0.2, 0.6]}}}"


def test_validate_shows_each_variants_own_space_and_the_exact_trial_count() -> None:
    done = validate(PER_VARIANT)
    assert done.returncode == 0, done.stderr
    assert "  search model.dropout for dropout only: {'grid': [0.2, 0.6]}" in done.stdout
    assert "  trials: 8 (basic 2, dropout 4, batchnorm 2)" in done.stdout, done.stdout  # the shared lr grid of 2, x2 for dropout


@pytest.mark.parametrize(
    "sets, wanted",
    [
        (["search.variants={wide: {model.dropout: {grid: [0.1]}}}"], "error: search.variants.wide: not a variant of the spec. Use one of"),
        (["search.variants={dropout: {model.dropout: {grid: [2.0]}}}"], "error: search.variants.dropout.model.dropout.grid[0]: input should be less"),
        (
            ["variants={lin: {kind: linear}, mlp: {kind: mlp}}", "search.variants={lin: {model.hidden: {grid: [8]}}}"],
            "error: search.variants.lin.model.hidden: variant 'lin' (linear) has no such field (got model.hidden)",
        ),
        ([PER_VARIANT, "search.scheduler={kind: pbt}", "search.space={optim.lr: {loguniform: [1.0e-4, 1.0e-2]}}"], "error: search.variants: pbt"),
    ],
)
def test_per_variant_spaces_that_cannot_run_are_one_line(sets: list[str], wanted: str) -> None:
    done = validate(*sets)
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(wanted), line


def test_optuna_searches_a_variants_own_fields_for_that_variant_only() -> None:
    spec = load_spec(SMOKE, [*OPTUNA, "search.samples=2", "search.variants={dropout: {model.dropout: {uniform: [0.1, 0.6]}}}"])
    found = search.searcher(spec)
    configs = [found.suggest(f"t{i}") for i in range(6)]
    assert all(("model.dropout" in c) == (c[search.VARIANT] == "dropout") for c in configs), configs
    assert all(0.1 <= c["model.dropout"] <= 0.6 for c in configs if "model.dropout" in c)


@pytest.mark.slow
def test_a_sweep_with_a_variants_own_space_trains_what_it_says(tmp_path) -> None:
    from test_sweep import run_sweep, sweep_env

    done = run_sweep(["run", SMOKE, "--set", f"storage.uri={tmp_path / 'out'}", "--set", PER_VARIANT], sweep_env(None, tmp_path))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (manifest_path,) = (tmp_path / "out" / "smoke").glob("*/report/manifest.json")
    trials = json.loads(manifest_path.read_text())["trials"]
    assert Counter(t["variant"] for t in trials) == {"basic": 2, "dropout": 4, "batchnorm": 2}
    assert sorted(t["params"].get("model.dropout") for t in trials if t["variant"] == "dropout") == [0.2, 0.2, 0.6, 0.6]
    assert all("model.dropout" not in t["params"] for t in trials if t["variant"] != "dropout")
    for trial in trials:  # what each trial trained: its checkpoint's own spec
        meta = json.loads((tmp_path / "out" / "smoke" / trial["checkpoint"].split("/smoke/", 1)[1] / "trial.json").read_text())
        wanted = trial["params"].get("model.dropout", 0.5 if trial["variant"] == "dropout" else 0.0)
        assert meta["trial"]["model"]["dropout"] == wanted and meta["trial"]["variant"] == trial["variant"], meta["trial"]
