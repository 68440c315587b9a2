"""job.spec: strict schema, one-line problems with dotted paths, overrides, per-trial resolution."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from job.spec import MAX_SPEC_BYTES, JobSpec, SpecError, json_schema, load_spec, parse_spec, resolve_trial

REPO = Path(__file__).resolve().parents[1]
SPECS = REPO / "specs"
MINIMAL: dict[str, Any] = {"name": "t", "variants": {"a": {"kind": "mlp"}}}


def spec_with(**sections: Any) -> dict[str, Any]:
    return {**copy.deepcopy(MINIMAL), **sections}


def problems_of(raw: Any) -> list[str]:
    with pytest.raises(SpecError) as err:
        parse_spec(raw)
    return err.value.problems


def assert_line(problems: list[str], path: str, *fragments: str) -> str:
    """One problem line starts with `path:` and holds every fragment; returns it."""
    lines = [p for p in problems if p.startswith(f"{path}:")]
    assert lines, f"no problem starts with '{path}:' in {problems}"
    assert all(f in lines[0] for f in fragments), f"{fragments} not all in {lines[0]!r}"
    return lines[0]


BAD_SPECS = [
    pytest.param(spec_with(optim={"lrr": 1e-3}), "optim.lrr", ["not a field of the spec", "Did you mean 'lr'?"], id="unknown-key"),
    pytest.param(spec_with(optimm={}), "optimm", ["not a field of the spec", "Did you mean 'optim'?"], id="unknown-section"),
    pytest.param(spec_with(variants={"a": {"kind": "mlp", "hiden": 64}}), "variants.a.hiden", ["Did you mean 'hidden'?"], id="unknown-model-key"),
    pytest.param(spec_with(optim={"epochs": "many"}), "optim.epochs", ["valid integer", "(got 'many')"], id="wrong-type"),
    pytest.param(spec_with(optim=3), "optim", ["valid dictionary", "(got 3)"], id="section-not-mapping"),
    pytest.param(spec_with(optim={"lr": -1}), "optim.lr", ["greater than 0", "(got -1)"], id="lr-negative"),
    pytest.param(spec_with(optim={"batch_size": 1}), "optim.batch_size", ["greater than or equal to 2", "(got 1)"], id="batch-too-small"),
    pytest.param(spec_with(variants={"a": {"dropout": 1.0}}), "variants.a.dropout", ["less than 1", "(got 1.0)"], id="dropout-1"),
    pytest.param(spec_with(resources={"gpus": -0.5}), "resources.gpus", ["greater than or equal to 0"], id="gpus-negative"),
    pytest.param(spec_with(variants={"a": {"kind": "cnn"}}), "variants.a.kind", ["unknown kind (got 'cnn')", "'mlp', 'linear'"], id="bad-kind"),
    pytest.param(
        spec_with(search={"space": {"optim.lrr": {"grid": [1e-3]}}}),
        "search.space.optim.lrr", ["not a field of the spec", "Did you mean 'optim.lr'?"], id="search-path",
    ),
    pytest.param(
        spec_with(search={"space": {"optim.lr": {"loguniform": [1e-2, 1e-4]}}}),
        "search.space.optim.lr", ["low must be below high", "(got [0.01, 0.0001])"], id="loguniform-low-above-high",
    ),
    pytest.param(
        spec_with(search={"space": {"optim.lr": {"loguniform": [0, 1e-2]}}}),
        "search.space.optim.lr.loguniform", ["low must be > 0"], id="loguniform-zero",
    ),
    pytest.param(
        spec_with(search={"space": {"optim.lr": {"normal": [0, 1]}}}),
        "search.space.optim.lr", ["a domain is one of"], id="unknown-domain",
    ),
    pytest.param(spec_with(search={"metric": "acc"}), "search.metric", ["'test_acc'", "(got 'acc')"], id="bad-metric"),
    pytest.param(spec_with(data={"source": "/mirror/cifar.tar.gz"}), "data.sha256", ["required when data.source is set"], id="source-no-sha256"),
    pytest.param(spec_with(data={"source": "/m.tar.gz", "sha256": "abc"}), "data.sha256", ["should match pattern", "(got 'abc')"], id="sha256-not-hex"),
    pytest.param(spec_with(name="Bad_Name"), "name", ["should match pattern", "(got 'Bad_Name')"], id="bad-name"),
    pytest.param({"variants": {"a": {}}}, "name", ["field required"], id="missing-name"),
    pytest.param(spec_with(variants={}), "variants", ["at least 1 item"], id="empty-variants"),
    pytest.param(spec_with(variants={"a b": {}}), "variants.a b", ["names use letters, digits"], id="bad-variant-name"),
    pytest.param(
        spec_with(search={"scheduler": {"kind": "asha", "grace": 3}}),
        "search.scheduler.grace", ["not a field of the spec", "Did you mean 'grace_period'?"], id="asha-bad-key",
    ),
    pytest.param(
        spec_with(search={"scheduler": {"kind": "asha", "grace_period": 0}}),
        "search.scheduler.grace_period", ["greater than or equal to 1", "(got 0)"], id="asha-grace-zero",
    ),
    pytest.param(spec_with(search={"scheduler": {"kind": "hyperband"}}), "search.scheduler.kind", ["unknown kind (got 'hyperband')"], id="bad-scheduler"),
]


@pytest.mark.parametrize("raw, path, fragments", BAD_SPECS)
def test_bad_spec_names_its_dotted_path(raw: dict[str, Any], path: str, fragments: list[str]) -> None:
    line = assert_line(problems_of(raw), path, *fragments)
    assert "\n" not in line
    assert line.endswith((".", "?"))


def test_every_problem_is_reported_once_per_line() -> None:
    raw = spec_with(optim={"lr": 0, "epochs": 0}, name="UPPER")
    problems = problems_of(raw)
    assert sorted(p.split(":")[0] for p in problems) == ["name", "optim.epochs", "optim.lr"]


def test_did_you_mean_only_suggests_fields_of_the_chosen_kind() -> None:
    line = assert_line(problems_of(spec_with(variants={"a": {"kind": "linear", "hidden": 64}})), "variants.a.hidden")
    assert "Did you mean 'hidden'" not in line


def test_model_search_path_must_apply_to_every_variant() -> None:
    raw = spec_with(variants={"lin": {"kind": "linear"}}, search={"space": {"model.hidden": {"grid": [64, 128]}}})
    assert_line(problems_of(raw), "search.space.model.hidden")


@pytest.mark.parametrize("name", ["cifar10.yaml", "smoke.yaml"])
def test_shipped_specs_load(name: str) -> None:
    job = load_spec(SPECS / name)
    assert isinstance(job, JobSpec)
    assert set(job.variants) == {"basic", "dropout", "batchnorm"}


def test_cifar10_spec_is_the_seed_experiment() -> None:
    job = load_spec(SPECS / "cifar10.yaml")
    assert job.trial_count() == 3
    assert (job.optim.lr, job.optim.batch_size, job.optim.epochs) == (1e-4, 32, 50)
    assert job.data.dataset == "cifar10"
    basic, dropout, bn = job.variants["basic"], job.variants["dropout"], job.variants["batchnorm"]
    assert (basic.hidden, basic.depth, basic.dropout, basic.batch_norm) == (128, 1, 0.0, False)
    assert (dropout.hidden, dropout.dropout, dropout.batch_norm) == (128, 0.5, False)
    assert (bn.hidden, bn.dropout, bn.batch_norm) == (128, 0.0, True)
    assert job.search.metric == "test_acc" and job.search.mode == "max"


def test_smoke_spec_crosses_variants_with_the_grid() -> None:
    assert load_spec(SPECS / "smoke.yaml").trial_count() == 3 * 2


def test_trial_count_multiplies_grids_and_samples() -> None:
    raw = spec_with(search={"space": {"optim.lr": {"grid": [1e-3, 1e-2, 1e-1]}, "model.hidden": {"grid": [8, 16]},
                                      "optim.weight_decay": {"uniform": [0.0, 0.1]}}, "samples": 2})
    assert parse_spec(raw).trial_count() == 1 * 3 * 2 * 2


def test_set_overrides_a_field() -> None:
    job = load_spec(SPECS / "cifar10.yaml", ["optim.epochs=3", "data.root=/tmp/x", "variants.basic.hidden=64"])
    assert job.optim.epochs == 3
    assert job.data.root == "/tmp/x"
    assert job.variants["basic"].hidden == 64
    assert job.optim.lr == 1e-4  # untouched fields keep the file's values


def test_set_value_is_parsed_as_yaml() -> None:
    job = load_spec(SPECS / "smoke.yaml", ["optim.lr=3e-3", "search.space={}", "variants.basic.batch_norm=true"])
    assert job.optim.lr == pytest.approx(3e-3)
    assert job.search.space == {}
    assert job.variants["basic"].batch_norm is True


def test_set_creates_a_missing_section() -> None:
    job = load_spec(SPECS / "cifar10.yaml", ["search.scheduler.kind=asha"])
    assert job.search.scheduler.kind == "asha"


@pytest.mark.parametrize(
    "override, path, fragment",
    [
        ("optim.epochs=0", "optim.epochs", "greater than or equal to 1"),
        ("optim.epochs", "--set", "expected dotted.path=value (got 'optim.epochs')"),
        ("=3", "--set", "expected dotted.path=value"),
        ("optim.epochs=[1", "--set optim.epochs", "YAML syntax error at line 1, column 3"),
        ("optim.lr.x=1", "--set optim.lr.x", "'lr' is not a section"),
        ("optim.lrr=1", "optim.lrr", "Did you mean 'lr'?"),
    ],
)
def test_bad_override(override: str, path: str, fragment: str) -> None:
    with pytest.raises(SpecError) as err:
        load_spec(SPECS / "cifar10.yaml", [override])
    assert_line(err.value.problems, path, fragment)


def test_override_through_a_scalar_names_the_scalar() -> None:
    with pytest.raises(SpecError) as err:
        load_spec(SPECS / "cifar10.yaml", ["optim.lr.x.y=1"])
    assert_line(err.value.problems, "--set optim.lr.x.y", "'lr' is not a section")


def test_override_on_a_non_mapping_file_is_a_spec_error(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(SpecError) as err:
        load_spec(path, ["name=x"])
    assert_line(err.value.problems, "spec", "must be a mapping")


def test_resolve_trial_applies_params() -> None:
    job = load_spec(SPECS / "smoke.yaml")
    trial = resolve_trial(job, "batchnorm", {"optim.lr": 0.01, "model.hidden": 16, "model.depth": 2})
    assert trial.variant == "batchnorm"
    assert trial.optim.lr == 0.01 and trial.optim.batch_size == job.optim.batch_size
    assert (trial.model.hidden, trial.model.depth, trial.model.batch_norm) == (16, 2, True)
    assert trial.params == {"optim.lr": 0.01, "model.hidden": 16, "model.depth": 2}
    assert trial.data == job.data and trial.seed == job.seed and trial.name == job.name
    assert job.variants["batchnorm"].hidden == 32 and job.optim.lr == 1e-3  # the job itself is unchanged


def test_resolve_trial_validates_again() -> None:
    job = load_spec(SPECS / "smoke.yaml")
    with pytest.raises(SpecError) as err:
        resolve_trial(job, "basic", {"model.hidden": -1})
    assert_line(err.value.problems, "model.hidden", "greater than or equal to 1", "(got -1)")


def test_specs_are_frozen() -> None:
    job = load_spec(SPECS / "smoke.yaml")
    with pytest.raises(Exception, match="frozen"):
        job.optim.lr = 1.0  # type: ignore[misc]


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as err:
        load_spec(tmp_path / "nope.yaml")
    assert err.value.problems == [f"{tmp_path / 'nope.yaml'}: file not found. Check the path (specs/cifar10.yaml is the default)"]


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as err:
        load_spec(tmp_path)
    assert_line(err.value.problems, str(tmp_path), "is a folder, not a spec file")


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nvariants:\n  a: {kind: mlp\noptim: {lr: 1}\n")
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert_line(err.value.problems, str(path), "YAML syntax error at line 4, column 6")


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert err.value.problems == [f"{path}: the file is empty. Start from specs/smoke.yaml"]


def test_oversized_file(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("name: x\nvariants: {a: {}}\n" + ("#" * 79 + "\n") * (MAX_SPEC_BYTES // 80 + 1))
    size = path.stat().st_size
    assert size > 1_000_000
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert_line(err.value.problems, str(path), f"file too large for a spec (got {size} bytes)")


@pytest.mark.parametrize("text, kind", [("- a\n- b\n", "list"), ("just a string\n", "str"), ("42\n", "int")])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, kind: str) -> None:
    path = tmp_path / "top.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert_line(err.value.problems, "spec", f"the top level must be a mapping of sections (got {kind})")


def test_json_schema_has_every_section() -> None:
    schema = json_schema()
    sections = {"name", "seed", "data", "variants", "optim", "search", "resources", "checkpoints", "failures", "storage"}
    assert sections <= set(schema["properties"])
    assert schema["required"] == ["name", "variants"]
    assert schema.get("additionalProperties") is False
    lr = schema["$defs"]["OptimSpec"]["properties"]["lr"]
    assert lr["exclusiveMinimum"] == 0.0 and lr["description"]
