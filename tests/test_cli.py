"""The `sweep` command through its real entry points, as a user runs it: output lines and exit codes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SMOKE, CIFAR = "specs/smoke.yaml", "specs/cifar10.yaml"


def sweep(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "job", *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def assert_user_error(result: subprocess.CompletedProcess[str], *paths: str) -> list[str]:
    """Exit 2, no traceback, and one `error: <path>: ...` line per expected path, in order."""
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == len(paths), result.stderr
    for line, path in zip(errors, paths):
        assert line.startswith(f"error: {path}:"), (line, path)
    return errors


def test_validate_summarises_the_seed_spec() -> None:
    result = sweep("validate", CIFAR)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"{CIFAR}: ok: cifar10-mlp-variants"
    assert "trials: 3" in result.stdout
    assert re.search(r"variant batchnorm: .*'batch_norm': True.* \(mlp\)", result.stdout)
    assert "metric: test_acc (max), scheduler: fifo" in result.stdout
    assert result.stderr == ""


def test_validate_with_overrides_counts_the_grid() -> None:
    result = sweep("validate", CIFAR, "--set", "search.space={model.hidden: {grid: [64, 128, 256]}}", "--set", "optim.epochs=3")
    assert result.returncode == 0, result.stderr
    assert "trials: 9" in result.stdout and "'epochs': 3" in result.stdout


def test_console_script() -> None:
    script = Path(sys.executable).with_name("sweep")
    assert script.is_file(), "the `sweep` console script is not installed (pip install -e .)"
    result = subprocess.run([str(script), "validate", SMOKE], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "trials: 6" in result.stdout


@pytest.mark.parametrize(
    "content, override, path, fragment",
    [
        (None, None, "{missing}", "file not found"),
        ("name: x\nvariants:\n  a: {kind: mlp\noptim: {lr: 1}\n", None, "{file}", "YAML syntax error at line 4"),
        ("", None, "{file}", "the file is empty"),
        ("name: x\nvariants: {a: {}}\noptim: {epochs: many}\n", None, "optim.epochs", "(got 'many')"),
        ("name: x\nvariants: {a: {}}\noptim: {lrr: 0.1}\n", None, "optim.lrr", "Did you mean 'lr'?"),
        ("- a\n", None, "spec", "the top level must be a mapping"),
        ("name: x\nvariants: {a: {}}\n", "optim.epochs", "--set", "expected dotted.path=value"),
        ("name: x\nvariants: {a: {}}\n", "optim.lr=-1", "optim.lr", "greater than 0"),
    ],
    ids=["missing", "yaml-error", "empty", "wrong-type", "unknown-key", "not-a-mapping", "set-no-value", "set-out-of-range"],
)
def test_validate_reports_user_errors(tmp_path: Path, content: str | None, override: str | None, path: str, fragment: str) -> None:
    spec = tmp_path / "spec.yaml"
    if content is not None:
        spec.write_text(content)
    args = ["validate", spec] + (["--set", override] if override else [])
    (line,) = assert_user_error(sweep(*args), path.format(missing=spec, file=spec))
    assert fragment in line


def test_every_problem_gets_its_own_line(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: Bad\nvariants: {a: {kind: vit}}\noptim: {lr: 0, epochs: 0}\n")
    result = sweep("validate", spec)
    lines = assert_user_error(result, "name", "variants.a.kind", "optim.lr", "optim.epochs")
    assert result.stdout == ""
    assert all(line.count("error:") == 1 for line in lines)


def test_schema_prints_json_schema() -> None:
    result = sweep("schema")
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert {"name", "data", "variants", "optim", "search", "resources", "checkpoints", "failures", "storage"} <= set(schema["properties"])
    assert schema["title"] == "JobSpec"


def test_train_then_evaluate_the_checkpoint(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    result = sweep("train", SMOKE, "--variant", "batchnorm", "--set", "optim.epochs=2", "--checkpoint", ckpt)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "device: cpu (cpu)"
    epochs = [line for line in result.stdout.splitlines() if line.startswith("epoch")]
    assert len(epochs) == 2, result.stdout
    fields = [re.match(r"epoch +(\d+) .*test_acc +([\d.]+) ", line) for line in epochs]
    assert [int(m.group(1)) for m in fields] == [1, 2]
    last_acc = float(fields[-1].group(2))
    assert last_acc > 20.0  # twice chance: smoke.yaml's tiny model learns its synthetic data
    assert sorted(p.name for p in ckpt.iterdir()) == ["model.pt", "trial.json"]
    assert json.loads((ckpt / "trial.json").read_text())["epoch"] == 2

    evaluated = sweep("train", "--evaluate", ckpt)
    assert evaluated.returncode == 0, evaluated.stderr
    m = re.search(r"^batchnorm \{\}: test_loss ([\d.]+) test_acc ([\d.]+)%$", evaluated.stdout, re.MULTILINE)
    assert m, evaluated.stdout
    assert float(m.group(2)) == pytest.approx(last_acc, abs=0.01)

    weights = ckpt / "model.pt"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated, as an interrupted copy leaves it
    (line,) = assert_user_error(sweep("train", "--evaluate", ckpt), str(ckpt))
    assert "not a readable checkpoint" in line


def test_train_unknown_variant_lists_the_names() -> None:
    (line,) = assert_user_error(sweep("train", SMOKE, "--variant", "resnet"), "--variant")
    assert line == "error: --variant: no such variant (got 'resnet'). Choose one of basic, dropout, batchnorm"


def test_train_without_a_spec() -> None:
    assert_user_error(sweep("train"), "spec")


def test_evaluate_a_missing_folder(tmp_path: Path) -> None:
    (line,) = assert_user_error(sweep("train", "--evaluate", tmp_path / "nope"), "--evaluate")
    assert "not a checkpoint folder" in line


def test_evaluate_a_folder_without_a_checkpoint(tmp_path: Path) -> None:
    assert_user_error(sweep("train", "--evaluate", tmp_path), "--evaluate")


def test_unknown_verb_is_a_usage_error() -> None:
    result = sweep("frobnicate")
    assert result.returncode == 2
    assert "invalid choice: 'frobnicate'" in result.stderr and "Traceback" not in result.stderr
