"""The search section of the spec: domains, schedulers, SearchSpec, and the optim section it searches.

Owns what search.space may set (SEARCHABLE) and the checks on the search alone; cross-section checks live in
job.spec's JobSpec. Must not import torch or ray.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, model_validator

from job import specerrors
from job.registry import MODEL_KINDS, Strict, searchable_fields
from job.results import METRIC_MODES
from job.specfile import dotted


def kind_or(default: str) -> Callable[[Any], str | None]:
    """Discriminator on `kind`, which may be left out and then means `default`."""

    def kind(value: Any) -> str | None:
        return value.get("kind", default) if isinstance(value, dict) else getattr(value, "kind", None)

    return kind


class OptimSpec(Strict):
    lr: float = Field(1.0e-4, gt=0.0, le=10.0, description="Adam learning rate")
    batch_size: int = Field(32, ge=2, le=65_536, description="training batch size (samples)")
    epochs: int = Field(50, ge=1, le=10_000, description="training epochs")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="Adam L2 weight decay")
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16 autocast on CUDA; the CPU always runs fp32")
    cuda_graph: bool = Field(True, description="on CUDA, capture the training step once as a CUDA graph and replay it")
    compile: bool = Field(
        False,
        description="fuse forward and loss with torch.compile (~1.6x per step on an H100, "
        "slower on the CPU; seconds of compiling per trial; needs a C compiler)",
    )


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
    Annotated[Grid, Tag("grid")] | Annotated[Choice, Tag("choice")] | Annotated[Uniform, Tag("uniform")] | Annotated[LogUniform, Tag("loguniform")],
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


class PbtSpec(Strict):
    """Population Based Training: every `interval` epochs the bottom `quantile_fraction` of trials copy a
    top trial's checkpoint and config (variant included), then perturb its continuous optim fields."""

    kind: Literal["pbt"] = "pbt"
    interval: int = Field(4, ge=1, le=10_000, description="epochs between perturbations (each one checkpoints)")
    quantile_fraction: float = Field(0.25, gt=0.0, le=0.5, description="the bottom fraction that copies the top fraction")
    resample_probability: float = Field(0.25, ge=0.0, le=1.0, description="chance a value is drawn anew, else scaled by 0.8 or 1.2")


class FifoSpec(Strict):
    kind: Literal["fifo"] = "fifo"


SchedulerSpec = Annotated[
    Annotated[FifoSpec, Tag("fifo")] | Annotated[AshaSpec, Tag("asha")] | Annotated[PbtSpec, Tag("pbt")], Discriminator(kind_or("fifo"))
]

# What search.space may set: the optimizer's fields and every kind's own fields (each variant must have
# the model fields searched: JobSpec._check_variants).
SEARCHABLE = sorted({f"optim.{k}" for k in OptimSpec.model_fields} | {p for spec in MODEL_KINDS.values() for p in searchable_fields(spec)})
SCHEDULERS: dict[str, type[Strict]] = {"fifo": FifoSpec, "asha": AshaSpec, "pbt": PbtSpec}


class SearchSpec(Strict):
    space: dict[str, Domain] = Field(default_factory=dict, description="dotted path -> domain, crossed with every variant")
    variants: dict[str, dict[str, Domain]] = Field(
        default_factory=dict, description="variant name -> its own domains, merged over `space` for that variant (e.g. model.dropout)"
    )
    samples: int = Field(1, ge=1, le=10_000, description="repeats of the whole space (random domains drawn anew)")
    scheduler: SchedulerSpec = Field(default_factory=FifoSpec)
    metric: Literal["test_acc", "test_loss", "train_acc", "train_loss"] = Field("test_acc", description="mode follows from it")
    algorithm: Literal["random", "optuna"] = Field(
        "random",
        description="random: grid points crossed, random domains drawn; optuna: TPE (pip install 'sweep-job[optuna]') "
        "learning from finished trials, `samples` trials per variant",
    )
    max_concurrent: int | None = Field(
        None,
        ge=1,
        le=10_000,
        description="trials at once (default: as many as resources fit); an optuna search learns from more finished trials with fewer",
    )
    time_budget_s: float | None = Field(
        None, gt=0, description="wall seconds for the whole sweep, across resumes: then running trials stop and the report shows what finished"
    )
    trial_timeout_s: float | None = Field(
        None, gt=0, description="training seconds per trial: it stops at its first epoch past that and counts as finished"
    )

    @model_validator(mode="after")
    def _check_space(self) -> SearchSpec:
        problems = []
        if self.algorithm == "optuna":
            problems += [
                f"{dotted(where)}: grid cannot be searched by search.algorithm optuna. Use {{choice: {domain.grid}}}"
                for where, _, domain in self.domains()
                if isinstance(domain, Grid)
            ]
            if not self.space and not any(self.variants.values()):
                problems.append("search.space: search.algorithm optuna needs at least one domain to search. Add one, or use search.algorithm random")
        if self.scheduler.kind == "pbt":
            if self.algorithm != "random":
                problems.append(
                    f"search.scheduler.kind: pbt makes its own configs as it goes (got search.algorithm "
                    f"{self.algorithm}). Use search.algorithm random"
                )
            if self.variants:
                problems.append("search.variants: pbt perturbs one space shared by every variant. Move the domains into search.space")
            if not self.perturbed():
                problems.append(
                    "search.space: search.scheduler pbt perturbs optim fields with uniform or loguniform "
                    "domains (got none). Add one, e.g. optim.lr: {loguniform: [1.0e-4, 1.0e-2]}"
                )
        for at, path, domain in self.domains():
            where = dotted(at)
            if path not in SEARCHABLE:
                problems.append(specerrors.not_a_field(where, path, SEARCHABLE))
            bounds = getattr(domain, "loguniform", None) or getattr(domain, "uniform", None)
            if bounds and not bounds[0] < bounds[1]:
                problems.append(f"{where}: low must be below high (got {list(bounds)}). Swap them")
            if isinstance(domain, LogUniform) and bounds[0] <= 0:
                problems.append(f"{where}.loguniform: low must be > 0 (got {bounds[0]}). Use a positive bound")
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @property
    def mode(self) -> Literal["min", "max"]:
        return METRIC_MODES[self.metric]

    def space_for(self, variant: str) -> dict[str, Domain]:
        """The variant's search space: the shared one with the variant's own domains over it."""
        return {**self.space, **self.variants.get(variant, {})}

    def domains(self) -> list[tuple[list[str], str, Domain]]:
        """Every domain the spec names, with where it is written: (location, dotted path, domain)."""
        shared = [(["search", "space", path], path, d) for path, d in self.space.items()]
        return shared + [(["search", "variants", v, path], path, d) for v, own in self.variants.items() for path, d in own.items()]

    def perturbed(self) -> dict[str, Uniform | LogUniform]:
        """What PBT may change in a running trial: continuous optim fields (the optimizer takes them as it is;
        a model field would need another network)."""
        return {p: d for p, d in self.space.items() if p.startswith("optim.") and isinstance(d, (Uniform, LogUniform))}
