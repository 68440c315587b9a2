"""The module map of DESIGN.md and STYLE.md, enforced on the source: imports point down only."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

JOB = Path(__file__).resolve().parents[1] / "job"

LEVELS = {
    "specfile": 0,
    "registry": 0,
    "specerrors": 0,
    "spec": 0,
    "searchspec": 0,
    "results": 0,
    "credentials": 0,
    "data": 1,
    "models": 1,
    "storage": 1,
    "report_html": 0,
    "report": 1,
    "lease": 2,
    "catalog": 2,
    "train": 2,
    "search": 3,
    "outcome": 3,
    "progress": 3,
    "tracking": 3,
    "submit": 3,
    "trial": 3,
    "sweep": 4,
    "cli": 5,
}
ENTRY = {"__init__", "__main__"}
# (importer, imported) pairs allowed against the levels, and why
EXCEPTIONS = {
    ("data", "storage"),  # s3:// mirrors of CIFAR-10 need the S3 client; imported inside a function
    ("spec", "results"),  # the metric names and their modes are defined once, in results (which imports nothing)
    # Level 0 in three layers: specfile (errors, YAML) <- registry (model kinds) <- spec (the sections)
    ("spec", "specfile"),
    ("spec", "registry"),
    ("registry", "specfile"),
    ("spec", "specerrors"),  # a fourth layer: specerrors (pydantic's errors as lines) <- spec
    ("spec", "searchspec"),  # a fifth layer: searchspec (the search and optim sections) <- spec, which holds them in JobSpec
    ("searchspec", "specfile"),  # the search section names its problems at dotted paths
    ("searchspec", "registry"),  # Strict, and each kind's searchable fields for SEARCHABLE
    ("searchspec", "specerrors"),  # "did you mean" for a search path that is not a field
    ("searchspec", "results"),  # search.metric's mode comes from the metric names defined once in results
    ("specerrors", "registry"),
    ("specerrors", "specfile"),
    ("registry", "models"),  # a built-in kind's build() calls its builder; imported inside build(), so reading a spec loads no torch
    ("trial", "search"),  # the trainable asks search.checkpoint_due when the spec wants a checkpoint; both serve sweep
    ("report_html", "results"),  # the page's markup is built from the plain records; report.py draws the PNGs
}
# third-party roots -> the only modules that may import them
CONFINED = {
    "ray": {"sweep", "search", "outcome", "progress", "tracking", "submit", "trial"},
    "boto3": {"storage"},
    "botocore": {"storage"},
    "pyarrow": {"storage"},
    "matplotlib": {"report"},
}
NO_TORCH = {
    "specerrors",
    "specfile",
    "registry",
    "spec",
    "searchspec",
    "results",
    "credentials",
    "storage",
    "catalog",
    "report",
    "report_html",
    "lease",
    "search",
    "outcome",
    "progress",
    "tracking",
    "submit",
}


def source(module: str) -> ast.Module:
    path = JOB / f"{module}.py"
    if not path.is_file():
        pytest.skip(f"job/{module}.py does not exist yet")
    return ast.parse(path.read_text(), filename=str(path))


def imports(tree: ast.Module) -> list[tuple[str, bool]]:
    """Every imported module (dotted, absolute), and whether the import sits at the module's top level."""
    top = {id(node) for node in tree.body}
    found: list[tuple[str, bool]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ("job" + (f".{node.module}" if node.module else "")) if node.level else node.module or ""
            found.append((base, id(node) in top))
            if base == "job":  # `from job import train` imports job.train
                found += [(f"job.{alias.name}", id(node) in top) for alias in node.names if (JOB / f"{alias.name}.py").is_file()]
    return found


def job_imports(module: str) -> set[str]:
    return {name.split(".")[1] for name, _ in imports(source(module)) if name.startswith("job.")}


def roots(module: str) -> set[str]:
    return {name.split(".")[0] for name, _ in imports(source(module))}


def test_every_module_is_on_the_map() -> None:
    modules = {p.stem for p in JOB.glob("*.py")}
    assert modules - set(LEVELS) - ENTRY == set(), "place new modules in DESIGN.md's map and in LEVELS"
    assert not [p for p in JOB.iterdir() if p.is_dir() and p.name != "__pycache__"], "job/ is flat: one module per responsibility"


@pytest.mark.parametrize("name", ["utils", "common", "helpers", "util", "misc"])
def test_no_grab_bag_modules(name: str) -> None:
    assert not list(JOB.rglob(f"{name}.py")), f"job/{name}.py: a function with no obvious home means the map is wrong"


@pytest.mark.parametrize("module", sorted(LEVELS) + ["__init__", "__main__"])
def test_module_has_a_docstring(module: str) -> None:
    doc = ast.get_docstring(source(module))
    assert doc and doc.strip(), f"job/{module}.py has no docstring saying what it owns"


@pytest.mark.parametrize("module", sorted(LEVELS))
def test_imports_point_down(module: str) -> None:
    wrong = {
        other for other in job_imports(module) if other not in ENTRY and (module, other) not in EXCEPTIONS and LEVELS.get(other, 99) >= LEVELS[module]
    }
    assert not wrong, f"job/{module}.py (level {LEVELS[module]}) imports {sorted(wrong)} at the same or a higher level"


def test_data_imports_storage_only_lazily() -> None:
    storage = [top for name, top in imports(source("data")) if name == "job.storage"]
    assert storage, "data.py no longer reads s3:// mirrors through job.storage: drop the exception"
    assert not any(storage), "data.py must import job.storage inside the function that needs it"


def test_registry_imports_models_only_lazily() -> None:
    models = [top for name, top in imports(source("registry")) if name == "job.models"]
    assert models, "the built-in kinds no longer build through job.models: drop the exception"
    assert not any(models), "registry.py must import job.models inside build(), or reading a spec imports torch"


def test_reading_a_spec_imports_no_torch() -> None:
    code = "import sys, job.spec; job.spec.load_spec('specs/cifar10-cnn.yaml'); print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ray')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=JOB.parent, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_trial_worker_loads_no_driver_code() -> None:
    """Tune's workers import `job.trial` for the trainable: plots, reports and the driver's progress code
    would only lengthen every worker's start (README, Sweep overhead)."""
    code = "import sys, job.trial; print(sorted(m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'job')))"
    out = subprocess.run([sys.executable, "-c", code], cwd=JOB.parent, capture_output=True, text=True, check=True).stdout
    loaded = set(eval(out))  # noqa: S307 (our own subprocess's printed list)
    assert not loaded & {"job.report", "job.report_html", "job.outcome", "job.progress", "job.lease", "job.tracking", "job.sweep", "matplotlib"}
    assert {"job.trial", "job.train", "job.storage"} <= loaded


@pytest.mark.parametrize("module", sorted(LEVELS) + ["__init__"])
def test_cli_is_imported_by_nothing(module: str) -> None:
    assert "cli" not in job_imports(module), f"job/{module}.py imports job.cli"


def test_main_runs_the_cli() -> None:
    assert job_imports("__main__") == {"cli"}


@pytest.mark.parametrize("library", sorted(CONFINED))
def test_third_party_is_confined(library: str) -> None:
    users = {m for m in sorted(LEVELS) + sorted(ENTRY) if (JOB / f"{m}.py").is_file() and library in roots(m)}
    assert users <= CONFINED[library], f"{library} is imported by {sorted(users - CONFINED[library])}"


@pytest.mark.parametrize("module", sorted(NO_TORCH))
def test_no_torch(module: str) -> None:
    heavy = roots(module) & {"torch", "torchvision"}
    assert not heavy, f"job/{module}.py imports {sorted(heavy)}"


@pytest.mark.parametrize("module", ["train", "data", "models"])
def test_below_sweep_never_imports_ray(module: str) -> None:
    assert "ray" not in roots(module)  # the single-trial path runs on GPU machines with torch alone


def test_the_checker_sees_every_import_form(tmp_path: Path) -> None:
    tree = ast.parse(
        "import ray\nfrom job.spec import X\nfrom job import train, data\nfrom . import models\nfrom .results import Y\n"
        "def f():\n    import boto3.session\n    from job.storage import fetch_object\n"
    )
    found = imports(tree)
    assert ("ray", True) in found and ("boto3.session", False) in found
    assert {n for n, _ in found if n.startswith("job.")} >= {"job.spec", "job.train", "job.data", "job.models", "job.results", "job.storage"}
    assert ("job.storage", False) in found
