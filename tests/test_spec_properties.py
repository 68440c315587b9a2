"""job.spec against hostile input, property-based: mutated spec files and random `--set` overrides
are either accepted (and then every trial they define resolves) or refused with one printable line
per problem that names where; never another exception, and each input within a time and memory bound.

Run with `-s` to see how many inputs ran, the slowest one's time and the largest peak memory.
"""

from __future__ import annotations

import re
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic.fields import FieldInfo

from job.registry import MODEL_KINDS
from job.searchspec import SEARCHABLE, AshaSpec, OptimSpec
from job.spec import JobSpec, MLPSpec, SpecError, Strict, load_spec, parse_spec, resolve_trial

REPO = Path(__file__).resolve().parents[1]
SPEC_FILES = sorted((REPO / "specs").glob("*.yaml"))
SPEC_TEXTS = [p.read_text() for p in SPEC_FILES]
MAX_PEAK_BYTES = 200e6  # per input; a spec needs well under 10 MB
DEADLINE_MS = 2000  # per input; a spec loads in milliseconds
# Deterministic in CI: the same inputs on every run, no example database carried between runs.
PROPERTY = settings(
    max_examples=400, deadline=DEADLINE_MS, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]
)


def schema_paths() -> list[str]:
    """Every dotted path a user can set: the sections' fields, a variant's and a scheduler's fields."""
    paths = []
    for name, field in JobSpec.model_fields.items():
        paths.append(name)
        if isinstance(field.annotation, type) and issubclass(field.annotation, Strict):
            paths += [f"{name}.{key}" for key in field.annotation.model_fields]
    paths += [f"variants.basic.{key}" for key in MLPSpec.model_fields] + ["variants.new.kind", "variants.new"]
    paths += [f"search.scheduler.{key}" for key in AshaSpec.model_fields] + ["search.space"]
    return paths


PATHS = schema_paths()
# Pieces an attacker reaches for: tags, anchors, deep brackets, control characters, odd numbers.
FRAGMENTS = [
    "!!int ",
    "!!float x",
    "!!timestamp ",
    "!!bool maybe",
    "!!binary ",
    "!!python/object/apply:os.system [ls]",
    "!foo ",
    "&a ",
    "*a",
    "&a [*a]",
    "[" * 60,
    "]" * 5,
    "{a: " * 40,
    "- " * 40,
    "\x1b[2J",
    "\n",
    "\t",
    "\r",
    "\x00",
    "\x85",
    "\u2028",
    "\u202e",
    '"\\e[2J"',
    '"\\n"',
    ": ",
    "? ",
    "<<: ",
    "=",
    "null",
    "~",
    ".inf",
    "-.inf",
    ".nan",
    "1e999",
    "9" * 80,
    "1:" * 30 + "1",
    "1:" * 200 + "1.5",
    "2001-13-45",
    "0b_",
    "0x_",
    "'",
    '"',
    "#",
    "|\n  x\n",
    ">",
    "%YAML 1.1\n",
    "---\n",
    "...\n",
    "optim: {lr: 1}\n",
    "optim:\n  lr: -1\n",
    "yes",
    "on: 1\n",
    "[a]: b\n",
    "1: x\n",
    " ",
    "lr ",
    "k" * 5000,
]
LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from([0, 1, 2, 32, 0.5, 1.0, 1e-3, 1e-4, "fp32", "bf16", "mlp", "linear", "asha", "fifo", "test_acc", "results"]),
)
VALUES = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)
DOMAINS = st.one_of(
    st.fixed_dictionaries({"grid": st.lists(LEAVES, max_size=4)}),
    st.fixed_dictionaries({"choice": st.lists(LEAVES, max_size=4)}),
    st.fixed_dictionaries({"uniform": st.lists(st.floats() | st.integers(-5, 100), max_size=3)}),
    st.fixed_dictionaries({"loguniform": st.lists(st.floats() | st.integers(-5, 100), max_size=3)}),
    VALUES,
)
SPACES = st.dictionaries(st.sampled_from(SEARCHABLE) | st.text(max_size=12), DOMAINS, max_size=3)


def flow(value: Any) -> str:
    """`value` as one line of YAML."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**9).removesuffix("\n...\n").strip()


YAML_VALUES = st.one_of(VALUES.map(flow), st.sampled_from(FRAGMENTS), st.text(max_size=20))


@st.composite
def structured_edit(draw: st.DrawFn, text: str) -> str:
    """Random values in random fields of the schema, and a random search space."""
    raw = yaml.safe_load(text)
    for path in draw(st.lists(st.sampled_from(PATHS), max_size=3)):
        *sections, field = path.split(".")
        node = raw
        for key in sections:
            node = node.setdefault(key, {}) if isinstance(node.get(key, {}), dict) else {}
        node[field] = draw(VALUES)
    if draw(st.booleans()):
        search = raw["search"] = raw["search"] if isinstance(raw.get("search"), dict) else {}
        search["space"] = draw(SPACES)
    return yaml.safe_dump(raw, sort_keys=False, default_flow_style=draw(st.sampled_from([None, True, False])), allow_unicode=draw(st.booleans()))


@st.composite
def text_edit(draw: st.DrawFn, text: str) -> str:
    """Insert, delete or replace characters, or repeat a line (which makes duplicate keys)."""
    at = draw(st.integers(0, len(text)))
    end = draw(st.integers(at, min(len(text), at + 30)))
    piece = draw(st.sampled_from(FRAGMENTS) | st.text(max_size=8) | VALUES.map(flow))
    op = draw(st.sampled_from(["insert", "delete", "replace", "repeat-line"]))
    if op == "repeat-line":
        lines = text.splitlines(keepends=True)
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(lines)))
        return "".join(lines)
    return text[:at] + ("" if op == "delete" else piece) + text[end if op != "insert" else at :]


@st.composite
def mutated_specs(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(SPEC_TEXTS))
    if draw(st.booleans()):
        text = draw(structured_edit(text))
    for _ in range(draw(st.integers(0 if text not in SPEC_TEXTS else 1, 4))):
        text = draw(text_edit(text))
    return text


OVERRIDES = st.lists(
    st.tuples(st.sampled_from(PATHS) | st.text(max_size=15), YAML_VALUES).map(lambda pv: f"{pv[0]}={pv[1]}") | st.text(max_size=20),
    min_size=1,
    max_size=3,
)

STATS: dict[str, Any] = {"inputs": 0, "accepted": 0, "slowest_s": 0.0, "peak_bytes": 0, "slowest": ""}


@pytest.fixture(scope="module", autouse=True)
def report_stats() -> Iterator[None]:
    yield
    print(
        f"\nspec property tests: {STATS['inputs']} inputs ({STATS['accepted']} accepted), slowest "
        f"{STATS['slowest_s'] * 1000:.1f} ms ({STATS['slowest'][:60]!r}...), largest peak {STATS['peak_bytes'] / 1e6:.2f} MB"
    )


def measured(load: Callable[[], JobSpec], label: str) -> JobSpec | SpecError:
    """`load()` or its SpecError, timed and with its peak of traced memory, both bounded."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        result: JobSpec | SpecError = load()
    except SpecError as err:
        result = err
    elapsed, peak = time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    STATS["inputs"] += 1
    STATS["accepted"] += isinstance(result, JobSpec)
    STATS["peak_bytes"] = max(STATS["peak_bytes"], peak)
    if elapsed > STATS["slowest_s"]:
        STATS["slowest_s"], STATS["slowest"] = elapsed, label
    assert peak < MAX_PEAK_BYTES, (peak, label)
    return result


# The start of a problem line: the file, an override, a section, an escaped (quoted) key, or a key in the input.
KNOWN_START = re.compile(r"^(--set[ :]|spec[:\[]|['\"]|(" + "|".join(JobSpec.model_fields) + r")[.:\[])")


def assert_accepted_or_one_line_each(result: JobSpec | SpecError, file: Path, source: str) -> None:
    """`source` is the input's text: a problem may start with a key the user wrote."""
    if isinstance(result, JobSpec):
        assert_trials_resolve(result)
        return
    assert result.problems
    for line in result.problems:
        assert line.isprintable() and len(line) < 600, line  # one line: no newline, no control character
        where, sep, what = line.partition(": ")
        assert sep and where and what, line
        head = re.split(r"[.\[:]", line, maxsplit=1)[0]
        named = line.startswith(f"{file}: ") or KNOWN_START.match(line) or head in source
        assert named, f"no dotted path or file name starts {line!r}"


def assert_trials_resolve(job: JobSpec) -> None:
    """Accepted means runnable: every variant with every grid and choice value and both range bounds."""
    for variant in job.variants:
        for path, domain in job.search.space.items():
            for value in next(v for v in domain.model_dump().values()):
                resolve_trial(job, variant, {path: value})


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile") / "spec.yaml"


@PROPERTY
@given(text=mutated_specs())
def test_mutated_spec_files_are_accepted_or_refused_in_one_line_each(spec_file: Path, text: str) -> None:
    spec_file.write_text(text, encoding="utf-8")
    assert_accepted_or_one_line_each(measured(lambda: load_spec(spec_file), text), spec_file, text)


@settings(PROPERTY, max_examples=300)
@given(base=st.sampled_from(SPEC_FILES), overrides=OVERRIDES)
def test_random_overrides_are_accepted_or_refused_in_one_line_each(base: Path, overrides: list[str]) -> None:
    assert_accepted_or_one_line_each(measured(lambda: load_spec(base, overrides), repr(overrides)), base, "\n".join(overrides))


def searchable_field(path: str) -> FieldInfo:
    section, key = path.split(".")
    return OptimSpec.model_fields[key] if section == "optim" else next(k.model_fields[key] for k in MODEL_KINDS.values() if key in k.model_fields)


def near_bounds(path: str) -> st.SearchStrategy[Any]:
    """Values of a searchable field's type, from a little outside its bounds to a little inside."""
    field = searchable_field(path)
    if field.annotation is bool:
        return st.booleans() | st.sampled_from([0, 1, 2, "yes", "maybe"])
    if get_origin(field.annotation) is Literal:
        return st.sampled_from([*get_args(field.annotation), "fp16"])
    bounds = {name: getattr(m, name) for m in field.metadata for name in ("ge", "gt", "le", "lt") if hasattr(m, name)}
    low, high = bounds.get("ge", bounds.get("gt")), bounds.get("le", bounds.get("lt"))
    if field.annotation is int:
        return st.integers(low - 2, min(high, low + 100) + 2) | st.sampled_from([high, high + 1])
    return st.floats(low - 0.1, high + 0.1) | st.sampled_from([low, high, float("nan"), float("inf")])


@st.composite
def search_spaces(draw: st.DrawFn) -> dict[str, Any]:
    """One or two searchable fields, each with a grid or choice of values or a range, near the field's bounds."""
    space = {}
    for path in draw(st.lists(st.sampled_from(SEARCHABLE), min_size=1, max_size=2, unique=True)):
        values = near_bounds(path)
        ranges = ["uniform", "loguniform"] if searchable_field(path).annotation is float else ["uniform"]  # refused elsewhere: rarely
        kind = draw(st.sampled_from(["grid", "choice"] * (1 if len(ranges) == 2 else 4) + ranges))
        size = (2, 2) if kind in ("uniform", "loguniform") else (1, 3)
        space[path] = {kind: draw(st.lists(values, min_size=size[0], max_size=size[1]))}
    return space


@settings(PROPERTY, max_examples=300)
@given(space=search_spaces())
def test_a_search_space_is_refused_or_every_trial_it_defines_resolves(space: dict[str, Any]) -> None:
    raw = {**yaml.safe_load(SPEC_TEXTS[-1]), "search": {"space": space}}
    assert_accepted_or_one_line_each(measured(lambda: parse_spec(raw), repr(space)), SPEC_FILES[-1], repr(space))


@pytest.mark.parametrize("text", SPEC_TEXTS, ids=[p.name for p in SPEC_FILES])
def test_the_shipped_specs_pass_the_same_checks(spec_file: Path, text: str) -> None:
    spec_file.write_text(text)
    result = measured(lambda: load_spec(spec_file), text)
    assert isinstance(result, JobSpec)
    assert_accepted_or_one_line_each(result, spec_file, text)
