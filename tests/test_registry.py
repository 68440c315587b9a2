"""job.registry: a model kind is one place. The union, the "did you mean" hints, the searchable fields and
the JSON schema follow from it, for the built-in kinds and for a kind a plugin adds through an entry point."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path
from typing import Any

import pytest

from job.registry import BUILT_IN, MODEL_KINDS, MODELS_GROUP, KindSpec, kind_tag
from job.searchspec import SEARCHABLE
from job.spec import SpecError, json_schema, parse_spec, resolve_trial

REPO = Path(__file__).resolve().parents[1]


def problems_of(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(SpecError) as err:
        parse_spec({"name": "t", **raw})
    return err.value.problems


def test_the_built_in_kinds_are_registered_by_their_tags() -> None:
    assert [kind_tag(spec) for spec in BUILT_IN] == ["mlp", "linear", "cnn"]
    assert {tag: spec for tag, spec in MODEL_KINDS.items() if spec in BUILT_IN} == {kind_tag(s): s for s in BUILT_IN}
    assert all(issubclass(spec, KindSpec) for spec in MODEL_KINDS.values())


def test_the_union_accepts_every_kind_and_defaults_to_mlp() -> None:
    job = parse_spec({"name": "t", "variants": {"a": {}, "b": {"kind": "linear"}, "c": {"kind": "cnn", "width": 8}}})
    assert [m.kind for m in job.variants.values()] == ["mlp", "linear", "cnn"]
    assert job.variants["c"] == MODEL_KINDS["cnn"](width=8)
    assert "unknown kind (got 'vit'). Use one of 'mlp', 'linear', 'cnn'" in problems_of({"variants": {"a": {"kind": "vit"}}})[0]


def test_the_schema_documents_every_kind_and_its_fields() -> None:
    schema = json_schema()
    variants = schema["properties"]["variants"]["additionalProperties"]
    refs = {option["$ref"].rsplit("/", 1)[-1] for option in variants["oneOf"]}
    assert refs == {spec.__name__ for spec in MODEL_KINDS.values()}
    cnn = schema["$defs"]["CNNSpec"]["properties"]
    assert cnn["kind"]["const"] == "cnn" and cnn["width"]["minimum"] == 4 and "each next stage doubles" in cnn["width"]["description"]
    assert schema["$defs"]["DataSpec"]["properties"]["augment"]["type"] == "boolean"


@pytest.mark.parametrize(
    "variants, line",
    [
        ({"mlp": {"kind": "mlp", "hiden": 3}}, "variants.mlp.hiden: not a field of the spec. Did you mean 'hidden'?"),
        (
            {"cnn": {"kind": "mlp", "widht": 3}},
            "variants.cnn.widht: not a field of the spec. Known fields: kind, hidden, depth, dropout, batch_norm.",
        ),
        ({"linear": {"kind": "cnn", "widht": 3}}, "variants.linear.widht: not a field of the spec. Did you mean 'width'?"),
        ({"asha": {"kind": "cnn", "width": 2}}, "variants.asha.width: input should be greater than or equal to 4 (got 2). Fix the value."),
        ({"grid": {"kind": "cnn", "blocks": 1.5}}, "variants.grid.blocks:"),
    ],
)
def test_error_locations_keep_the_users_variant_names(variants: dict[str, Any], line: str) -> None:
    (problem,) = problems_of({"variants": variants})
    assert problem.startswith(line), problem


def test_a_scheduler_field_is_still_found_under_its_tag() -> None:
    (problem,) = problems_of({"variants": {"a": {}}, "search": {"scheduler": {"kind": "asha", "grace": 2}}})
    assert problem == "search.scheduler.grace: not a field of the spec. Did you mean 'grace_period'?"


def test_every_kinds_fields_are_searchable() -> None:
    assert {"model.width", "model.stages", "model.blocks", "model.activation", "model.hidden", "optim.lr"} <= set(SEARCHABLE)
    job = parse_spec(
        {
            "name": "t",
            "variants": {"small": {"kind": "cnn", "width": 8}, "deep": {"kind": "cnn", "blocks": 2}},
            "search": {"space": {"model.width": {"grid": [8, 16]}, "model.activation": {"choice": ["relu", "gelu"]}}},
        }
    )
    trial = resolve_trial(job, "deep", {"model.width": 16, "model.activation": "relu"})
    assert (trial.model.width, trial.model.blocks, trial.model.activation) == (16, 2, "relu")
    assert job.trial_count() == 4


def test_a_searched_field_must_fit_every_variants_kind() -> None:
    (problem,) = problems_of({"variants": {"c": {"kind": "cnn"}, "m": {"kind": "mlp"}}, "search": {"space": {"model.width": {"grid": [8]}}}})
    assert problem.startswith("search.space.model.width: variant 'm' (mlp) has no such field")
    lines = problems_of({"variants": {"c": {"kind": "cnn"}}, "search": {"space": {"model.width": {"grid": [8, 2]}}}})
    assert lines == ["search.space.model.width.grid[1]: input should be greater than or equal to 4 (got 2). Use a value width accepts."]
    (hint,) = problems_of({"variants": {"c": {"kind": "cnn"}}, "search": {"space": {"model.widht": {"grid": [8]}}}})
    assert hint == "search.space.model.widht: not a field of the spec. Did you mean 'model.width'?"


# ---- a kind added in one place: a plugin's entry point, found by importlib.metadata on sys.path ----

PLUGIN = '''
    """A model kind from outside the job: one spec class whose build() returns the network."""
    from typing import Literal

    from pydantic import Field

    from job.registry import KindSpec


    class TinySpec(KindSpec):
        kind: Literal["tiny"] = "tiny"
        units: int = Field(16, ge=1, le=512, description="hidden units of the tiny plugin net")

        def build(self):
            from torch import nn

            return nn.Sequential(nn.Flatten(), nn.Linear(3072, self.units), nn.ReLU(), nn.Linear(self.units, 10))


    NOT_A_KIND = 42
'''


def install_plugin(folder: Path, entry_points: str) -> dict[str, str]:
    """A plugin as pip leaves it in site-packages (its module and a dist-info with entry_points.txt),
    on PYTHONPATH: importlib.metadata finds it exactly as it finds an installed package."""
    (folder / "tinykind.py").write_text(textwrap.dedent(PLUGIN))
    info = folder / "tinykind-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tinykind\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{MODELS_GROUP}]\n{entry_points}\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), str(REPO)])}


def sweep(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The CLI as a user runs it, from the checkout (`python -m` puts the working folder on sys.path)."""
    return subprocess.run([sys.executable, "-m", "job", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)


def test_a_kind_added_in_one_place_is_validated_searchable_in_the_schema_and_trains(tmp_path: Path) -> None:
    env = install_plugin(tmp_path, "tiny = tinykind:TinySpec")
    spec = tmp_path / "tiny.yaml"
    spec.write_text(
        "name: tiny\ndata: {dataset: synthetic, synthetic_train: 200, synthetic_test: 100}\n"
        "variants: {t: {kind: tiny, units: 8}}\noptim: {lr: 1.0e-3, batch_size: 32, epochs: 1}\n"
        "search: {space: {model.units: {grid: [8, 32]}}}\n"
    )
    ok = sweep(["validate", str(spec)], env)
    assert ok.returncode == 0 and "variant t: {'units': 8} (tiny)" in ok.stdout and "trials: 2" in ok.stdout, ok.stderr
    schema = json.loads(sweep(["schema"], env).stdout)
    assert schema["$defs"]["TinySpec"]["properties"]["units"]["description"] == "hidden units of the tiny plugin net"
    typo = sweep(["validate", str(spec), "--set", "variants.t.unist=3"], env)
    assert typo.returncode == 2 and typo.stderr.splitlines() == ["error: variants.t.unist: not a field of the spec. Did you mean 'units'?"], (
        typo.stderr
    )
    bad = sweep(["validate", str(spec), "--set", "search.space={model.units: {grid: [0]}}"], env)
    assert "error: search.space.model.units.grid[0]: input should be greater than or equal to 1 (got 0)" in bad.stderr
    trained = sweep(["train", str(spec), "--set", "data.root=" + str(tmp_path / "data")], env)
    assert trained.returncode == 0 and "epoch   1" in trained.stdout, trained.stderr
    without = sweep(["validate", str(spec)], {**os.environ, "PYTHONPATH": str(REPO)})
    assert without.returncode == 2 and "variants.t.kind: unknown kind (got 'tiny')" in without.stderr


@pytest.mark.parametrize(
    "entry, warning",
    [
        ("tiny = tinykind:NOT_A_KIND", "entry point sweep_job.models:tiny (tinykind:NOT_A_KIND): not a model kind (got 42)"),
        ("huge = tinykind:TinySpec", "entry point sweep_job.models:huge (tinykind:TinySpec): its name must be the spec's kind (got kind 'tiny')"),
        ("tiny = tinykind:Missing", "entry point sweep_job.models:tiny (tinykind:Missing): cannot be imported (AttributeError"),
        ("cnn = job.registry:MLPSpec", "entry point sweep_job.models:cnn (job.registry:MLPSpec): its name must be the spec's kind"),
    ],
)
def test_a_broken_plugin_costs_only_its_own_kind(tmp_path: Path, entry: str, warning: str) -> None:
    env = install_plugin(tmp_path, entry)
    result = sweep(["validate", str(REPO / "specs" / "cifar10-cnn.yaml")], env)
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith(f"warning: {warning}") and len(result.stderr.splitlines()) == 1, result.stderr


def test_a_plugin_may_not_replace_a_built_in_kind(tmp_path: Path) -> None:
    (tmp_path / "shadow.py").write_text(
        "from typing import Literal\nfrom job.registry import CNNSpec\n\nclass Shadow(CNNSpec):\n    kind: Literal['cnn'] = 'cnn'\n"
    )
    env = install_plugin(tmp_path, "cnn = shadow:Shadow")
    result = sweep(["schema"], env)
    assert result.returncode == 0 and "Shadow" not in result.stdout
    assert result.stderr.startswith("warning: entry point sweep_job.models:cnn (shadow:Shadow): kind 'cnn' is already defined by job.registry")


# ---- the example plugin, pip-installed into a fresh virtualenv, through a whole sweep ----

EXAMPLE = REPO / "examples" / "sweep-job-example"


def fresh_venv(folder: Path) -> Path:
    """A new virtualenv whose own site-packages holds only what is installed into it, which borrows the
    checkout's dependencies (torch, Ray, sweep-job itself) as a site dir: torch alone would take
    minutes to install again."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
    python = folder / "bin" / "python"
    own = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True, check=True
    ).stdout.strip()
    host = sysconfig.get_paths()["purelib"]
    Path(own, "_sweep_job_host.pth").write_text(f"import site; site.addsitedir({host!r})\n")
    return python


@pytest.mark.slow
def test_the_example_plugin_installed_with_pip_runs_a_sweep_of_its_model_on_its_dataset(tmp_path: Path) -> None:
    python = fresh_venv(tmp_path / "venv")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_", "PYTHONPATH"))}
    env.update(HOME=str(tmp_path), RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    spec = EXAMPLE / "stripes.yaml"

    def job(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([python, "-m", "job", *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)

    before = job("validate", str(spec))
    assert before.returncode == 2 and "data.dataset: input should be 'cifar10' or 'synthetic' (got 'stripes')" in before.stderr
    assert "variants.lenet.kind: unknown kind (got 'lenet')" in before.stderr
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-build-isolation", "--no-index", str(EXAMPLE)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr
    assert job("validate", str(spec)).returncode == 0
    results = tmp_path / "results"
    run = job("run", str(spec), "--set", f"storage.uri={results}", "--set", "optim.epochs=2")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    (board,) = results.glob("stripes-lenet/*/report/leaderboard.csv")
    with board.open() as f:
        rows = {row["variant"]: row for row in csv.DictReader(f)}
    assert set(rows) == {"lenet", "cnn"} and {r["status"] for r in rows.values()} == {"TERMINATED"}, rows
    assert all(float(r["best_test_acc"]) > 20.0 for r in rows.values()), rows  # chance is 10%; 25% and 39% seen after 2 epochs


DATASET_PLUGIN = """
    import numpy as np


    def arrays(n, images=None, labels=None):
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8) if images is None else images
        y = rng.integers(0, 10, n) if labels is None else labels
        return x, y


    def good(root, seed):
        (x, y), (xt, yt) = arrays(20), arrays(10)
        return {"x_train": x, "y_train": y, "x_test": xt, "y_test": yt, "root": str(root), "seed": seed}


    def floaty(root, seed):
        x, y = arrays(20)
        return {"x_train": x.astype("float32"), "y_train": y, "x_test": x, "y_test": y}


    def eleven(root, seed):
        x, y = arrays(20, labels=np.arange(20) % 11)
        return {"x_train": x, "y_train": y, "x_test": x, "y_test": y}


    def boom(root, seed):
        raise ValueError("no such bucket")
"""
DATASET_POINTS = "\n".join(
    [
        "[sweep_job.datasets]",
        "good = dsplugin:good",
        "floaty = dsplugin:floaty",
        "eleven = dsplugin:eleven",
        "boom = dsplugin:boom",
        "cifar10 = dsplugin:good",
    ]
)
PROBE = """
from job import data
from job.spec import DataSpec, SpecError
for name in ("good", "floaty", "eleven", "boom"):
    try:
        arrays = data.load_arrays(DataSpec(dataset=name), seed=3)
        print(name, "ok", tuple(arrays.x_train.shape), arrays.y_train.dtype, tuple(arrays.x_test.shape))
    except SpecError as err:
        print(name, "|".join(err.problems))
"""


def test_a_plugin_dataset_is_loaded_in_the_trials_layout_or_refused_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "dsplugin.py").write_text(textwrap.dedent(DATASET_PLUGIN))
    info = tmp_path / "dsplugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: dsplugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(DATASET_POINTS + "\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    result = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("warning: entry point sweep_job.datasets:cifar10 (dsplugin:good): dataset 'cifar10' is already defined")
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert lines["good"] == "ok (20, 3, 32, 32) torch.int64 (10, 3, 32, 32)"
    where = "data.dataset: '{}' from entry point sweep_job.datasets:{} (dsplugin:{})"
    assert lines["floaty"].startswith(where.format(*["floaty"] * 3) + ": x_train must be uint8 [N, 3, 32, 32]")
    assert lines["eleven"].startswith(where.format(*["eleven"] * 3) + ": y_train must hold integer labels 0-9")
    assert lines["boom"] == where.format(*["boom"] * 3) + ": loading failed (ValueError: no such bucket). Fix or uninstall the plugin"
