"""`tracking:` through Ray's own logger callbacks, on a real local Ray: one smoke sweep with a real MLflow
store (a local SQLite file) and W&B in offline mode leaves one MLflow run per trial, with its variant,
searched values and every epoch's metrics, and one W&B run folder per trial. A tracker whose package is
missing, or W&B online without a key, is one line before any trial starts."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import FOREIGN_VARS

from job import tracking
from job.spec import SpecError, UserError, parse_spec

REPO = Path(__file__).resolve().parents[1]
HAS_WANDB = importlib.util.find_spec("wandb") is not None
SPEC = {
    "name": "tracked",
    "seed": 0,
    "data": {"dataset": "synthetic", "synthetic_train": 500, "synthetic_test": 200},
    "variants": {"basic": {"kind": "mlp", "hidden": 16}},
    "optim": {"lr": 1.0e-3, "batch_size": 64, "epochs": 2},
    "search": {"space": {"optim.lr": {"grid": [1.0e-3, 3.0e-3]}}, "metric": "test_acc"},
    "resources": {"cpus": 1, "gpus": 0},
    "checkpoints": {"keep": 1},
    "failures": {"max_retries": 0},
}


@pytest.fixture(scope="module")
def tracked(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One sweep of 2 trials x 2 epochs, tracked to MLflow (SQLite) and, when installed, W&B offline."""
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed: pip install '.[mlflow]'")
    tmp = tmp_path_factory.mktemp("tracked")
    tracking = {"mlflow": {"tracking_uri": f"sqlite:///{tmp}/mlflow.db", "experiment": "smoke-tracking"}}
    if HAS_WANDB:
        tracking["wandb"] = {"project": "sweep-job-test", "mode": "offline", "dir": str(tmp / "wandb-runs")}
    spec = tmp / "spec.yaml"
    spec.write_text(yaml.safe_dump({**SPEC, "storage": {"uri": str(tmp / "store")}, "tracking": tracking}))
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN_VARS and not k.startswith(("RAY_", "WANDB_", "MLFLOW_"))}
    env.update(PYTHONUNBUFFERED="1", RAY_USAGE_STATS_ENABLED="0", HOME=str(tmp / "home"))
    done = subprocess.run([sys.executable, "-m", "job", "run", str(spec)], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    run = tmp / "store" / "tracked"
    manifest = json.loads((run / json.loads((run / "latest.json").read_text())["manifest"]).read_text())
    metrics = list(csv.DictReader(io.StringIO((run / manifest["run_id"] / "report" / "metrics.csv").read_text())))
    return {"tmp": tmp, "manifest": manifest, "metrics": metrics, "out": done.stdout + done.stderr}


@pytest.mark.slow
def test_mlflow_holds_one_run_per_trial_with_its_params_and_every_epochs_metrics(tracked: dict) -> None:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tracked['tmp']}/mlflow.db")
    experiment = client.get_experiment_by_name("smoke-tracking")
    runs = client.search_runs([experiment.experiment_id])
    trials = tracked["manifest"]["trials"]
    assert len(runs) == len(trials) == 2
    for trial in trials:
        (run,) = [r for r in runs if r.data.tags["trial_name"].endswith(trial["trial_id"])]  # Tune names it <trainable>_<trial id>
        assert run.info.status == "FINISHED"
        assert run.data.params == {"variant": trial["variant"], "optim.lr": str(trial["params"]["optim.lr"])}
        tags = run.data.tags
        assert tags["sweep_job.run_id"] == tracked["manifest"]["run_id"] and tags["optim.epochs"] == "2" and "optim.lr" not in tags
        expected = [(int(r["epoch"]), float(r["test_acc"])) for r in tracked["metrics"] if r["trial_id"] == trial["trial_id"]]
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "test_acc"))
        assert history == sorted(expected) and len(history) == 2
        assert {"train_loss", "train_acc", "test_loss", "epoch_s", "samples_per_s"} <= set(run.data.metrics)
    assert "mlflow.store.db.utils" not in tracked["out"], "MLflow's INFO lines reach the sweep's output"


@pytest.mark.slow
@pytest.mark.skipif(not HAS_WANDB, reason="the wandb extra is not installed: pip install '.[wandb]'")
def test_wandb_offline_leaves_one_run_folder_per_trial(tracked: dict) -> None:
    folders = sorted((tracked["tmp"] / "wandb-runs" / "wandb").glob("offline-run-*"))
    trial_ids = sorted(t["trial_id"] for t in tracked["manifest"]["trials"])
    assert sorted(f.name.rsplit("-", 1)[-1] for f in folders) == trial_ids, folders
    for folder in folders:
        (log,) = folder.glob("run-*.wandb")  # what `wandb sync` uploads
        assert log.stat().st_size > 0


def _job(tracking: dict) -> object:
    return parse_spec({**SPEC, "tracking": tracking})


@pytest.mark.parametrize("name", ["mlflow", "wandb"])
def test_a_tracker_without_its_package_is_one_line_saying_how_to_install_it(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    job = _job({"mlflow": {"tracking_uri": "sqlite:///unused.db"}} if name == "mlflow" else {"wandb": {"project": "p"}})
    monkeypatch.setitem(sys.modules, name, None)  # what an environment without the extra looks like to an import
    with pytest.raises(UserError) as caught:
        tracking.prepare(job)
    assert caught.value.problems == [
        f"tracking.{name}: the {name} package is not installed (got tracking.{name} set). "
        f"pip install 'sweep-job[{name}]', or remove tracking.{name} from the spec"
    ]


@pytest.mark.skipif(not HAS_WANDB, reason="the wandb extra is not installed: pip install '.[wandb]'")
def test_wandb_online_without_a_key_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_SETUP_API_KEY_HOOK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc from a `wandb login`
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    job = _job({"wandb": {"project": "p", "dir": str(tmp_path)}})
    with pytest.raises(UserError, match=r"^tracking.wandb: no W&B API key \(got mode online\). Set WANDB_API_KEY"):
        tracking.callbacks(job, "results/tracked/20260101T000000Z-0001/tune")


@pytest.mark.skipif(not HAS_WANDB, reason="the wandb extra is not installed: pip install '.[wandb]'")
def test_a_wandb_dir_the_driver_cannot_create_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    job = _job({"wandb": {"project": "p", "mode": "offline", "dir": str(tmp_path / "file" / "runs")}})
    with pytest.raises(UserError, match=r"^tracking.wandb.dir: cannot create it \(got .*/file/runs: Not a directory\)"):
        tracking.callbacks(job, "results/tracked/20260101T000000Z-0001/tune")


def test_tracking_spec_refuses_credentials_in_the_uri_and_misspelt_keys() -> None:
    with pytest.raises(SpecError) as caught:
        _job({"mlflow": {"tracking_uri": "https://me:hunter2@mlflow.example.com"}})
    assert caught.value.problems[0].startswith("tracking.mlflow.tracking_uri: holds credentials") and "hunter2" not in str(caught.value)
    with pytest.raises(SpecError, match="tracking.wandb.mode: input should be 'online' or 'offline'"):
        _job({"wandb": {"project": "p", "mode": "disabled"}})
    with pytest.raises(SpecError, match="tracking.mlfow: not a field of the spec. Did you mean 'mlflow'"):
        _job({"mlfow": {}})
