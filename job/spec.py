"""The job spec: strict pydantic models of the YAML, `load_spec`, per-trial resolution, `SpecError`.

Parses once at the edge; everything below receives frozen, validated objects. Must not import
torch or ray.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, model_validator

from job.results import METRIC_MODES

MAX_SPEC_BYTES = 1_000_000  # a spec is a page of YAML; anything this large is a mistake


class SpecError(Exception):
    """A problem the user can fix (spec, file, data, storage), one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSpec(Strict):
    dataset: Literal["cifar10", "synthetic"] = Field("cifar10", description="cifar10, or synthetic CIFAR-format data made offline")
    root: str = Field("~/.cache/sweep-job", description="cache folder for the dataset, one per node")
    source: str | None = Field(None, description="mirror of cifar-10-python.tar.gz: local path, https:// or s3:// URL")
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="sha256 of the archive at `source` (hex)")
    synthetic_train: int = Field(5000, ge=10, le=200_000, description="synthetic training images")
    synthetic_test: int = Field(1000, ge=10, le=50_000, description="synthetic test images")

    @model_validator(mode="after")
    def _source_needs_digest(self) -> DataSpec:
        if self.source and not self.sha256:
            raise ValueError("data.sha256: required when data.source is set (got null). Add the archive's sha256 (sha256sum FILE)")
        return self


class MLPSpec(Strict):
    kind: Literal["mlp"] = "mlp"
    hidden: int = Field(128, ge=1, le=65_536, description="units per hidden layer")
    depth: int = Field(1, ge=1, le=16, description="number of hidden layers")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout probability after each hidden ReLU")
    batch_norm: bool = Field(False, description="BatchNorm1d between each hidden Linear and its ReLU")


class LinearSpec(Strict):
    """Multinomial logistic regression: a baseline with no hidden layer."""

    kind: Literal["linear"] = "linear"


def _kind_or(default: str) -> Callable[[Any], str | None]:
    """Discriminator on `kind`, which may be left out and then means `default`."""

    def kind(value: Any) -> str | None:
        return value.get("kind", default) if isinstance(value, dict) else getattr(value, "kind", None)

    return kind


_KIND_TAGS = {"mlp", "linear", "fifo", "asha"}
ModelSpec = Annotated[
    Union[Annotated[MLPSpec, Tag("mlp")], Annotated[LinearSpec, Tag("linear")]],
    Discriminator(_kind_or("mlp")),
]


class OptimSpec(Strict):
    lr: float = Field(1.0e-4, gt=0.0, le=10.0, description="Adam learning rate")
    batch_size: int = Field(32, ge=2, le=65_536, description="training batch size (samples)")
    epochs: int = Field(50, ge=1, le=10_000, description="training epochs")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="Adam L2 weight decay")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16 autocast on CUDA; the CPU always runs fp32")
    cuda_graph: bool = Field(True, description="on CUDA, capture the training step once as a CUDA graph and replay it")
    compile: bool = Field(False, description="fuse forward and loss with torch.compile (~1.6x per step on an H100, "
                          "slower on the CPU; seconds of compiling per trial; needs a C compiler)")


class Grid(Strict):
    grid: list[Any] = Field(min_length=1, description="every value is tried")


class Choice(Strict):
    choice: list[Any] = Field(min_length=1, description="one value drawn per sample")


class Uniform(Strict):
    uniform: tuple[float, float] = Field(description="[low, high]")


class LogUniform(Strict):
    loguniform: tuple[float, float] = Field(description="[low, high], both > 0")


_DOMAIN_TAGS = {"grid", "choice", "uniform", "loguniform"}


def _domain_kind(value: Any) -> str | None:
    if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in _DOMAIN_TAGS:
        return next(iter(value))
    return next((t for t in _DOMAIN_TAGS if hasattr(value, t)), None)


Domain = Annotated[
    Union[Annotated[Grid, Tag("grid")], Annotated[Choice, Tag("choice")], Annotated[Uniform, Tag("uniform")], Annotated[LogUniform, Tag("loguniform")]],
    Discriminator(
        _domain_kind,
        custom_error_type="domain",
        custom_error_message="a domain is one of {grid: [...]}, {choice: [...]}, {uniform: [low, high]}, {loguniform: [low, high]}",
    ),
]


class AshaSpec(Strict):
    kind: Literal["asha"] = "asha"
    grace_period: int = Field(5, ge=1, le=10_000, description="epochs before a trial can be stopped")
    reduction_factor: float = Field(3.0, gt=1.0, le=100.0, description="halving rate")


class FifoSpec(Strict):
    kind: Literal["fifo"] = "fifo"


SchedulerSpec = Annotated[
    Union[Annotated[FifoSpec, Tag("fifo")], Annotated[AshaSpec, Tag("asha")]], Discriminator(_kind_or("fifo"))
]

SEARCHABLE = sorted(
    [f"optim.{k}" for k in OptimSpec.model_fields]
    + [f"model.{k}" for k in MLPSpec.model_fields if k != "kind"]
)


class SearchSpec(Strict):
    space: dict[str, Domain] = Field(default_factory=dict, description="dotted path -> domain, crossed with every variant")
    samples: int = Field(1, ge=1, le=10_000, description="repeats of the whole space (random domains drawn anew)")
    scheduler: SchedulerSpec = Field(default_factory=FifoSpec)
    metric: Literal["test_acc", "test_loss", "train_acc", "train_loss"] = Field("test_acc", description="mode follows from it")

    @model_validator(mode="after")
    def _check_space(self) -> SearchSpec:
        problems = []
        for path, domain in self.space.items():
            if path not in SEARCHABLE:
                hint = difflib.get_close_matches(path, SEARCHABLE, n=1)
                fix = f"Did you mean '{hint[0]}'?" if hint else f"Searchable: {', '.join(SEARCHABLE)}."
                problems.append(f"search.space.{path}: not a field of the spec. {fix}")
            bounds = getattr(domain, "loguniform", None) or getattr(domain, "uniform", None)
            if bounds and not bounds[0] < bounds[1]:
                problems.append(f"search.space.{path}: low must be below high (got {list(bounds)}). Swap them")
            if isinstance(domain, LogUniform) and bounds[0] <= 0:
                problems.append(f"search.space.{path}.loguniform: low must be > 0 (got {bounds[0]}). Use a positive bound")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @property
    def mode(self) -> Literal["min", "max"]:
        return METRIC_MODES[self.metric]


class ResourcesSpec(Strict):
    cpus: float = Field(1.0, gt=0.0, le=256.0, description="CPU cores per trial; also its torch thread count")
    gpus: float = Field(0.0, ge=0.0, le=8.0, description="GPUs per trial, fractional allowed")
    gpu_fallback: bool = Field(
        True, description="run on the CPU when the cluster has no GPU; false on autoscaling clusters whose GPU nodes start on demand"
    )


class CheckpointsSpec(Strict):
    keep: int = Field(2, ge=1, le=100, description="best k checkpoints kept per trial, by search.metric")


class FailuresSpec(Strict):
    max_retries: int = Field(2, ge=0, le=100, description="retries of a failed trial, from its latest checkpoint")


class StorageSpec(Strict):
    uri: str = Field("results", min_length=1, description="s3://bucket/prefix or a local folder; endpoint and keys from env")


class JobSpec(Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", description="names the run's folder in storage")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    data: DataSpec = Field(default_factory=DataSpec)
    variants: dict[str, ModelSpec] = Field(min_length=1, description="variant name -> model")
    optim: OptimSpec = Field(default_factory=OptimSpec)
    search: SearchSpec = Field(default_factory=SearchSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    checkpoints: CheckpointsSpec = Field(default_factory=CheckpointsSpec)
    failures: FailuresSpec = Field(default_factory=FailuresSpec)
    storage: StorageSpec = Field(default_factory=StorageSpec)

    @model_validator(mode="after")
    def _check_variants(self) -> JobSpec:
        bad = [v for v in self.variants if not v.replace("-", "").replace("_", "").isalnum()]
        if bad:
            raise ValueError(f"variants.{bad[0]}: names use letters, digits, '-' and '_' (got '{bad[0]}'). Rename it")
        for path in self.search.space:
            key = path.removeprefix("model.")
            without = [name for name, m in self.variants.items() if key != path and key not in type(m).model_fields]
            if without:
                raise ValueError(
                    f"search.space.{path}: variant '{without[0]}' ({self.variants[without[0]].kind}) has no such field "
                    f"(got {path}). Search model fields only when every variant has them"
                )
        return self

    def trial_count(self) -> int:
        grids = [len(d.grid) for d in self.search.space.values() if isinstance(d, Grid)]
        return len(self.variants) * math.prod(grids) * self.search.samples


class TrialSpec(Strict):
    """Everything one trial needs, resolved: enough to rebuild its model with no sweep state."""

    name: str
    seed: int = Field(ge=0)
    variant: str
    model: ModelSpec
    optim: OptimSpec
    data: DataSpec
    params: dict[str, Any] = Field(default_factory=dict, description="the search values this trial got")


def resolve_trial(job: JobSpec, variant: str, params: dict[str, Any]) -> TrialSpec:
    """The trial spec for one variant and one point of the search space, validated again."""
    sections = {"model": job.variants[variant].model_dump(), "optim": job.optim.model_dump()}
    for path, value in params.items():
        section, key = path.split(".", 1)
        sections[section][key] = value
    raw = {"name": job.name, "seed": job.seed, "variant": variant, "data": job.data.model_dump(), "params": params, **sections}
    return _validated(TrialSpec, raw)


def load_spec(path: str | Path, overrides: list[str] = ()) -> JobSpec:
    """Read, override (`dotted.path=value`, value parsed as YAML) and validate a spec file."""
    raw = _read_yaml(Path(path))
    for item in overrides:
        _apply_override(raw, item)
    return parse_spec(raw)


def parse_spec(raw: Any) -> JobSpec:
    return _validated(JobSpec, _mapping(raw))


def _mapping(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise SpecError([f"spec: the top level must be a mapping of sections (got {type(raw).__name__}). Start with 'name: ...'"])
    return raw


def _read_yaml(path: Path) -> Any:
    try:
        size = path.stat().st_size
        if size > MAX_SPEC_BYTES:
            raise SpecError([f"{path}: file too large for a spec (got {size} bytes). Keep it under {MAX_SPEC_BYTES} bytes"])
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([f"{path}: file not found. Check the path (specs/cifar10.yaml is the default)"]) from None
    except IsADirectoryError:
        raise SpecError([f"{path}: is a folder, not a spec file. Name a .yaml file"]) from None
    except (PermissionError, UnicodeDecodeError) as err:
        raise SpecError([f"{path}: cannot be read ({type(err).__name__}). Check its permissions and encoding"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        problem = getattr(err, "problem", None) or "invalid YAML"
        raise SpecError([f"{path}: YAML syntax error at {where}: {problem}. Fix the YAML there"]) from None
    if raw is None:
        raise SpecError([f"{path}: the file is empty. Start from specs/smoke.yaml"])
    return raw


def _apply_override(raw: Any, item: str) -> None:
    path, sep, text = item.partition("=")
    if not sep or not path:
        raise SpecError([f"--set: expected dotted.path=value (got '{item}'). Example: --set optim.epochs=3"])
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise SpecError([f"--set {path}: the value is not valid YAML (got '{text}'). Quote it"]) from None
    *sections, field = path.split(".")
    node = _mapping(raw)
    for key in sections:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise SpecError([f"--set {path}: '{key}' is not a section (got {_short(node)}). Set a field inside a section"])
    node[field] = value


def _validated(model: type[BaseModel], raw: dict[str, Any]) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise SpecError(_problems(model, err)) from None


def _problems(model: type[BaseModel], err: ValidationError) -> list[str]:
    lines: list[str] = []
    for e in err.errors():
        loc = _clean_loc(e["loc"])
        path = ".".join(loc) or "spec"
        if e["type"] == "extra_forbidden":
            lines.append(f"{path}: not a field of the spec.{_did_you_mean(model, [str(p) for p in e['loc']])}")
        elif e["type"] == "union_tag_invalid":
            tags = e["ctx"]["expected_tags"]
            lines.append(f"{path}.kind: unknown kind (got {e['ctx']['tag']!r}). Use one of {tags}")
        elif e["type"] == "value_error":
            lines.extend(str(e["ctx"]["error"]).removesuffix(".").split("\n"))
        else:
            got = _short(e.get("input"))
            lines.append(f"{path}: {e['msg'][0].lower()}{e['msg'][1:]} (got {got}). Fix the value")
    return [line if line.endswith((".", "?")) else line + "." for line in dict.fromkeys(lines)]


def _clean_loc(loc: tuple[Any, ...]) -> list[str]:
    """Drop the union tags pydantic puts into error locations, keeping the user's own keys."""
    parts = [str(p) for p in loc]
    return [p for i, p in enumerate(parts) if p not in _KIND_TAGS and not (p in _DOMAIN_TAGS and parts[i + 1 : i + 2] == [p])]


def _did_you_mean(model: type[BaseModel], loc: list[str]) -> str:
    """A hint for an unknown key: its section is named by the key above it (a union tag for variants
    and schedulers, which pydantic puts into the location), or is `model` at the top level."""
    section = _SECTIONS.get(loc[-2]) if len(loc) > 1 else model
    fields = list(section.model_fields) if section else []
    hint = difflib.get_close_matches(loc[-1], fields, n=1, cutoff=0.5)
    if hint:
        return f" Did you mean '{hint[0]}'?"
    return f" Known fields: {', '.join(fields)}." if fields else " Remove it."


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# The key above an unknown one -> the model it belongs to. Unknown keys can only appear in these
# (extra="forbid"); a variant's own name is followed by its kind tag, so user names never land here.
_SECTIONS: dict[str, type[BaseModel]] = {
    **{name: f.annotation for name, f in JobSpec.model_fields.items() if isinstance(f.annotation, type) and issubclass(f.annotation, Strict)},
    "mlp": MLPSpec, "linear": LinearSpec, "fifo": FifoSpec, "asha": AshaSpec,
}


def json_schema() -> dict[str, Any]:
    return JobSpec.model_json_schema()
