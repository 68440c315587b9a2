"""job.spec: strict schema, one-line problems with dotted paths, overrides, per-trial resolution."""

from __future__ import annotations

import copy
import json
import pickle
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from job import cli
from job.spec import MAX_SPEC_BYTES, JobSpec, SpecError, UserError, json_schema, load_spec, parse_spec, resolve_trial

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
    pytest.param(
        spec_with(variants={"a": {"kind": "vit"}}), "variants.a.kind", ["unknown kind (got 'vit')", "'mlp', 'linear', 'cnn'"], id="bad-kind"
    ),
    pytest.param(
        spec_with(search={"space": {"optim.lrr": {"grid": [1e-3]}}}),
        "search.space.optim.lrr",
        ["not a field of the spec", "Did you mean 'optim.lr'?"],
        id="search-path",
    ),
    pytest.param(
        spec_with(search={"space": {"optim.lr": {"loguniform": [1e-2, 1e-4]}}}),
        "search.space.optim.lr",
        ["low must be below high", "(got [0.01, 0.0001])"],
        id="loguniform-low-above-high",
    ),
    pytest.param(
        spec_with(search={"space": {"optim.lr": {"loguniform": [0, 1e-2]}}}),
        "search.space.optim.lr.loguniform",
        ["low must be > 0"],
        id="loguniform-zero",
    ),
    pytest.param(spec_with(search={"space": {"optim.lr": {"normal": [0, 1]}}}), "search.space.optim.lr", ["a domain is one of"], id="unknown-domain"),
    pytest.param(spec_with(search={"metric": "acc"}), "search.metric", ["'test_acc'", "(got 'acc')"], id="bad-metric"),
    pytest.param(spec_with(data={"source": "/mirror/cifar.tar.gz"}), "data.sha256", ["required when data.source is set"], id="source-no-sha256"),
    pytest.param(
        spec_with(data={"source": "/m.tar.gz", "sha256": "abc"}), "data.sha256", ["should match pattern", "(got 'abc')"], id="sha256-not-hex"
    ),
    pytest.param(spec_with(name="Bad_Name"), "name", ["should match pattern", "(got 'Bad_Name')"], id="bad-name"),
    pytest.param({"variants": {"a": {}}}, "name", ["field required"], id="missing-name"),
    pytest.param(spec_with(variants={}), "variants", ["at least 1 item"], id="empty-variants"),
    pytest.param(spec_with(variants={"a b": {}}), "variants.a b", ["names use letters, digits"], id="bad-variant-name"),
    pytest.param(
        spec_with(search={"scheduler": {"kind": "asha", "grace": 3}}),
        "search.scheduler.grace",
        ["not a field of the spec", "Did you mean 'grace_period'?"],
        id="asha-bad-key",
    ),
    pytest.param(
        spec_with(search={"scheduler": {"kind": "asha", "grace_period": 0}}),
        "search.scheduler.grace_period",
        ["greater than or equal to 1", "(got 0)"],
        id="asha-grace-zero",
    ),
    pytest.param(
        spec_with(search={"scheduler": {"kind": "hyperband"}}), "search.scheduler.kind", ["unknown kind (got 'hyperband')"], id="bad-scheduler"
    ),
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
    raw = spec_with(
        search={
            "space": {"optim.lr": {"grid": [1e-3, 1e-2, 1e-1]}, "model.hidden": {"grid": [8, 16]}, "optim.weight_decay": {"uniform": [0.0, 0.1]}},
            "samples": 2,
        }
    )
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


# Hostile input (issue 9): every way a spec file or --set can go wrong is one printable line, fast.

BASE = "name: t\nvariants: {a: {}}\n"
LAUGHS = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(f"{c}: &{c} [{','.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


def file_problems(tmp_path: Path, text: str, overrides: list[str] = ()) -> tuple[Path, list[str]]:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as err:
        load_spec(path, overrides)
    assert all("\n" not in p and p.isprintable() for p in err.value.problems), err.value.problems
    return path, err.value.problems


@pytest.mark.parametrize(
    "value",
    [
        "!!int abc",
        "!!float x",
        "!!timestamp x",
        "!!bool maybe",
        "!!binary eA==",
        "!!str 3",
        "!!python/object/apply:os.system [ls]",
        "!!python/name:os.system",
        "!foo x",
        "!<tag:x.org,2000:y> 1",
    ],
)
def test_yaml_type_tags_are_refused_with_their_position(tmp_path: Path, value: str) -> None:
    _, problems = file_problems(tmp_path, BASE + f"seed: {value}\n")
    assert_line(problems, "seed", "YAML type tags are not used in a spec", "at line 3, column 7", "Remove the tag")
    with pytest.raises(SpecError) as err:
        load_spec(SPECS / "smoke.yaml", [f"seed={value}"])
    assert_line(err.value.problems, "--set seed", "YAML type tags", "at line 1, column 1")


def test_a_tag_inside_a_section_names_its_dotted_path(tmp_path: Path) -> None:
    _, problems = file_problems(tmp_path, BASE + "search:\n  space: {optim.lr: {grid: [1, !!float x]}}\n")
    assert_line(problems, "search.space.optim.lr.grid[1]", "YAML type tags", "at line 4")


@pytest.mark.parametrize(
    "nested", ["[" * 10_000 + "]" * 10_000, "{a: " * 10_000 + "1" + "}" * 10_000, "\n" + "".join("  " * i + f"a{i}:\n" for i in range(1, 200))]
)
def test_deep_nesting_is_refused(tmp_path: Path, nested: str) -> None:
    _, problems = file_problems(tmp_path, BASE + f"seed: {nested}\n")
    (line,) = problems
    assert line.startswith("seed") and "nested deeper than 32 levels" in line


def test_billion_laughs_is_refused_at_once(tmp_path: Path) -> None:
    assert len(LAUGHS) < 700
    tracemalloc.start()
    start = time.perf_counter()
    path, problems = file_problems(tmp_path, BASE + LAUGHS)
    elapsed, peak = time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert elapsed < 0.5 and peak < 20e6, (elapsed, peak)
    assert_line(problems, "a", "YAML anchors and aliases are not used in a spec", "got &a at line 3, column 4")


@pytest.mark.parametrize("grid, path", [("&a [*a]", "search.space.optim.lr.grid"), ("[1, *a]", "search.space.optim.lr.grid[1]")])
def test_aliases_are_refused_even_self_referencing_grids(tmp_path: Path, grid: str, path: str) -> None:
    _, problems = file_problems(tmp_path, BASE + f"search: {{space: {{optim.lr: {{grid: {grid}}}}}}}\n")
    assert_line(problems, path, "YAML anchors and aliases")


def test_many_values_are_refused_quickly(tmp_path: Path) -> None:
    start = time.perf_counter()
    _, problems = file_problems(tmp_path, BASE + "search: {space: {optim.lr: {grid: [" + "0.1, " * 100_000 + "]}}}\n")
    assert time.perf_counter() - start < 2
    (line,) = problems
    assert line.startswith("search.space.optim.lr.grid[") and "more than 10000 values" in line


@pytest.mark.parametrize(
    "space, path, fragment",
    [
        ("{optim.lr: {grid: [-1]}}", "search.space.optim.lr.grid[0]", "greater than 0 (got -1)"),
        ("{optim.lr: {grid: [0.1, 0.2, 11]}}", "search.space.optim.lr.grid[2]", "less than or equal to 10 (got 11)"),
        ("{optim.batch_size: {grid: [0]}}", "search.space.optim.batch_size.grid[0]", "greater than or equal to 2 (got 0)"),
        ("{optim.epochs: {choice: [1, many]}}", "search.space.optim.epochs.choice[1]", "valid integer"),
        ("{optim.precision: {choice: [fp16]}}", "search.space.optim.precision.choice[0]", "'fp32' or 'bf16'"),
        ("{optim.lr: {uniform: [-1, 2]}}", "search.space.optim.lr.uniform[0]", "greater than 0 (got -1.0)"),
        ("{optim.weight_decay: {uniform: [0, 2]}}", "search.space.optim.weight_decay.uniform[1]", "less than or equal to 1"),
        ("{optim.lr: {loguniform: [1.0e-4, 20]}}", "search.space.optim.lr.loguniform[1]", "less than or equal to 10"),
        ("{optim.batch_size: {uniform: [2, 64]}}", "search.space.optim.batch_size.uniform", "not a float field"),
        ("{model.hidden: {grid: [64, 0]}}", "search.space.model.hidden.grid[1]", "greater than or equal to 1 (got 0)"),
        ("{model.dropout: {choice: [0.5, 1.0]}}", "search.space.model.dropout.choice[1]", "less than 1 (got 1.0)"),
        ("{model.batch_norm: {grid: [maybe]}}", "search.space.model.batch_norm.grid[0]", "valid boolean"),
    ],
)
def test_search_values_are_checked_against_their_field(tmp_path: Path, space: str, path: str, fragment: str) -> None:
    text = "name: t\nvariants: {a: {kind: mlp}, b: {kind: mlp, depth: 2}}\nsearch:\n  space: " + space + "\n"
    _, problems = file_problems(tmp_path, text)
    assert_line(problems, path, fragment, "Use a value" if "[" in path else "Use grid or choice")


def test_search_values_that_fit_pass() -> None:
    space = {
        "optim.lr": {"grid": [1e-3, "0.01"]},
        "optim.batch_size": {"choice": [32, 64.0]},
        "model.hidden": {"grid": [8]},
        "optim.weight_decay": {"uniform": [0.0, 1.0]},
        "optim.precision": {"grid": ["fp32", "bf16"]},
    }
    assert parse_spec(spec_with(search={"space": space})).trial_count() == 2 * 1 * 2


def test_only_a_few_bad_values_are_listed() -> None:
    problems = problems_of(spec_with(search={"space": {"optim.lr": {"grid": [-1] * 1000}}}))
    assert len(problems) == 3


@pytest.mark.parametrize(
    "key, shown",
    [
        ('"lr\\nerror: forged"', r"optim.'lr\nerror: forged'"),
        ('"\\e[2J"', r"optim.'\x1b[2J'"),
        ('"\\u202Elr"', r"optim.'\u202elr'"),
        ("\u043elr", r"optim.'\u043elr'"),
        ("k" * 1000, "optim.'kkkkkkkk"),
    ],
)
def test_keys_are_printed_escaped_and_short(tmp_path: Path, key: str, shown: str) -> None:
    _, problems = file_problems(tmp_path, BASE + f"optim: {{{key}: 1}}\n")
    (line,) = problems
    assert line.startswith(shown) and "not a field of the spec" in line and len(line) < 200


def test_a_key_with_a_trailing_space_says_so(tmp_path: Path) -> None:
    _, problems = file_problems(tmp_path, BASE + '"optim ": {lr: 1}\n')
    assert problems == ["'optim ': not a field of the spec (a key with a leading or trailing space). Did you mean 'optim'?"]
    assert_line(
        problems_of(spec_with(search={"space": {"optim.lr ": {"grid": [1e-3]}}})),
        "search.space.'optim.lr '",
        "leading or trailing space",
        "Did you mean 'optim.lr'?",
    )


def test_values_are_printed_escaped_and_short(tmp_path: Path) -> None:
    _, problems = file_problems(tmp_path, BASE + 'optim: {epochs: "\\e[2J' + "x" * 4000 + '"}\n')
    (line,) = problems
    assert line.startswith("optim.epochs: ") and r"(got '\x1b[2Jxxx" in line and len(line) < 250


@pytest.mark.parametrize(
    "text, path, first_line",
    [
        ("optim: {lr: 0.1}\noptim: {epochs: 3}\n", "optim", 3),
        ("optim:\n  lr: 0.1\n  epochs: 3\n  lr: 0.2\n", "optim.lr", 4),
        ("search: {space: {optim.lr: {grid: [1]}, optim.lr: {grid: [2]}}}\n", "search.space.optim.lr", 3),
    ],
)
def test_duplicate_keys_are_refused(tmp_path: Path, text: str, path: str, first_line: int) -> None:
    _, problems = file_problems(tmp_path, BASE + text)
    assert_line(problems, path, "duplicate key", f"the one at line {first_line}")


def test_uppercase_sha256_is_accepted_as_lowercase() -> None:
    digest = "AB" * 32
    assert parse_spec(spec_with(data={"source": "/m.tar.gz", "sha256": digest})).data.sha256 == digest.lower()


@pytest.mark.parametrize(
    "key, kind",
    [
        ("1", "int '1'"),
        ("null", "null"),
        ("on", "bool"),
        ("1.5", "float"),
        ("[a]", "a list or mapping"),
        ("{a: 1}", "a list or mapping"),
        ("<<", "merge"),
    ],
)
def test_non_string_keys_are_refused(tmp_path: Path, key: str, kind: str) -> None:
    path, problems = file_problems(tmp_path, BASE + f"{key}: x\n")
    assert_line(problems, str(path), "keys must be strings", f"(got {kind}", "line 3, column 1", "Quote the key")
    _, problems = file_problems(tmp_path, BASE + f"optim: {{{key}: x}}\n")
    assert_line(problems, "optim", "keys must be strings")


@pytest.mark.parametrize(
    "text, path, fragment",
    [
        ("seed: 1e999\n", "seed", "valid integer"),
        ("optim: {epochs: .inf}\n", "optim.epochs", "finite number"),
        ("optim: {lr: .nan}\n", "optim.lr", "(got nan)"),
        ("optim: {lr: -.inf}\n", "optim.lr", "greater than 0"),
        ("seed: " + "9" * 4000 + "\n", "seed", "(got 999"),
        ("seed: 2001-13-45\n", "{file}", "YAML cannot read this value (month must be in 1..12)"),
        ("seed: 0x_\n", "{file}", "YAML cannot read this value"),
        ("seed: " + "1:" * 200 + "1.5\n", "{file}", "YAML cannot read this value (int too large to convert to float)"),
        ("seed: " + "9" * 5000 + "\n", "seed", "a value longer than 4096 characters"),
        ("seed: a\x1bb\n", "{file}", "character #x001b is not allowed"),
    ],
)
def test_odd_values_are_one_line(tmp_path: Path, text: str, path: str, fragment: str) -> None:
    file, problems = file_problems(tmp_path, BASE + text)
    assert_line(problems, path.format(file=file), fragment)


@pytest.mark.parametrize("error", [SpecError(["a: one.", "b: two."]), UserError(["x: only."])])
def test_user_errors_pickle_intact(error: UserError) -> None:
    copy_ = pickle.loads(pickle.dumps(error))
    assert type(copy_) is type(error)
    assert copy_.problems == error.problems and isinstance(copy_.problems, list)
    assert str(copy_) == str(error)


def test_user_error_lines_are_printable() -> None:
    assert SpecError(["a: x\nerror: forged\x1b[2J"]).problems == [r"a: x\nerror: forged\x1b[2J"]


HOSTILE_FILES = {
    "type-tag": (BASE + "seed: !!int abc\n", "seed"),
    "python-tag": (BASE + "seed: !!python/object/apply:os.system [ls]\n", "seed"),
    "deep": (BASE + "seed: " + "[" * 10_000 + "]" * 10_000 + "\n", "seed"),
    "laughs": (BASE + LAUGHS, "a"),
    "grid-out-of-range": (BASE + "search: {space: {optim.lr: {grid: [-1]}}}\n", "search.space.optim.lr.grid[0]"),
    "newline-key": (BASE + 'optim: {"x\\nerror: forged": 1}\n', r"optim.'x\nerror: forged'"),
    "ansi-key": (BASE + '"\\e[2J": 1\n', r"'\x1b[2J'"),
    "duplicate": (BASE + "optim: {lr: 0.1}\noptim: {epochs: 3}\n", "optim"),
    "unhashable-key": (BASE + "[a]: b\n", "{file}"),
    "inf": (BASE + "optim: {epochs: .inf}\n", "optim.epochs"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_FILES))
def test_cli_reports_hostile_files_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    text, path = HOSTILE_FILES[name]
    spec = tmp_path / "spec.yaml"
    spec.write_text(text)
    assert cli.main(["validate", str(spec)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    (line,) = err.splitlines()
    assert line.startswith(f"error: {path.format(file=spec)}:") and line.isprintable()


@pytest.mark.parametrize(
    "override, path",
    [
        ("seed=!!int abc", "--set seed"),
        ("optim={lr: !!float x}", "--set optim"),
        ("optim.lr=[" * 50, "--set optim.lr"),
        ("a\x1b[2J=1", r"'a\x1b[2J'"),
    ],
)
def test_cli_reports_hostile_overrides_in_one_line(capsys: pytest.CaptureFixture[str], override: str, path: str) -> None:
    assert cli.main(["validate", str(SPECS / "smoke.yaml"), "--set", override]) == 2
    out, err = capsys.readouterr()
    (line,) = err.splitlines()
    assert line.startswith(f"error: {path}") and line.isprintable() and out == ""


def test_validate_shortens_a_large_grid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(BASE + "search: {space: {optim.lr: {grid: [" + "0.1, " * 5000 + ']}}}\nstorage: {uri: "\\e[2Jr"}\n')
    assert cli.main(["validate", str(spec)]) == 0
    out, _ = capsys.readouterr()
    assert "trials: 5000" in out and max(map(len, out.splitlines())) < 250
    assert r"storage: '\x1b[2Jr'" in out and "\x1b" not in out


def test_a_spec_with_too_many_trials_is_refused(tmp_path: Path) -> None:
    grids = {f"optim.{field}": {"grid": list(range(2, 103))} for field in ("batch_size", "epochs")}  # 101 x 101
    spec = tmp_path / "many.yaml"
    spec.write_text(json.dumps({"name": "many", "variants": {"a": {"hidden": 8}}, "search": {"space": grids}}))  # JSON is YAML
    with pytest.raises(SpecError) as caught:
        load_spec(spec)
    (line,) = caught.value.problems
    assert line.startswith("search: the spec defines 10,201 trials") and "under 10,000" in line


@pytest.mark.parametrize(
    "raw, line",
    [
        ({"tracking": {"mlflow": {"trackin_uri": "x"}}}, "tracking.mlflow.trackin_uri: not a field of the spec. Did you mean 'tracking_uri'?"),
        ({"optim": {"lrr": 1}}, "optim.lrr: not a field of the spec. Did you mean 'lr'?"),
        (
            {"variants": {"optim": {"kind": "mlp", "lrr": 1}}},
            "variants.optim.lrr: not a field of the spec. Known fields: kind, hidden, depth, dropout, batch_norm.",
        ),
    ],
)
def test_unknown_keys_are_looked_up_in_their_own_section(raw: dict[str, Any], line: str) -> None:
    """The hint follows the user's keys down the spec, through optional sections and past variant names."""
    assert problems_of({"name": "t", "variants": {"a": {}}, **raw}) == [line]
