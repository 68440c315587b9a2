"""The job spec: strict pydantic models of the YAML, `load_spec`, per-trial resolution, `SpecError`.

Parses once at the edge, refusing bad specs in one line per problem; everything below receives frozen,
validated objects. The model kinds come from job.registry, the search and optim sections from job.searchspec,
the YAML reading from job.specfile.
Must not import torch or ray.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from job import specerrors
from job.registry import BUILT_IN, DATASETS, MODEL_KINDS, CNNSpec, KindSpec, LinearSpec, MLPSpec, Strict, kind_tag
from job.searchspec import SCHEDULERS, Grid, OptimSpec, SearchSpec, kind_or
from job.specfile import MAX_SPEC_BYTES, SpecError, UserError, apply_override, as_mapping, dotted, read_yaml, short_repr, shown

__all__ = [  # defined in job.registry and job.specfile; the rest of the job and its tests import them from here
    "CNNSpec",
    "KindSpec",
    "LinearSpec",
    "MLPSpec",
    "Strict",
    "MAX_SPEC_BYTES",
    "SpecError",
    "UserError",
    "short_repr",
    "shown",
]

MAX_TRIALS = 10_000  # a sweep beyond this is a typo in a grid, not a plan: Tune would queue it for days


class DataSpec(Strict):
    dataset: Literal[DATASETS] = Field("cifar10", description="cifar10, synthetic (CIFAR-format data made offline), or a plugin's")
    root: str = Field("~/.cache/sweep-job", description="cache folder for the dataset, one per node")
    source: str | None = Field(None, description="mirror of cifar-10-python.tar.gz: local path, https:// or s3:// URL")
    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$", description="sha256 of the archive at `source` (hex)")
    synthetic_train: int = Field(5000, ge=10, le=200_000, description="synthetic training images")
    synthetic_test: int = Field(1000, ge=10, le=50_000, description="synthetic test images")
    augment: bool = Field(False, description="random crops and horizontal flips of each training batch, on the trial's device")
    crop_padding: int = Field(4, ge=0, le=16, description="pixels of reflected border a random crop may shift into (with augment)")

    @field_validator("sha256")
    @classmethod
    def _lowercase(cls, digest: str | None) -> str | None:
        """Tools print either case; compared with hashlib's lowercase hexdigest."""
        return digest.lower() if digest else digest

    @model_validator(mode="after")
    def _source_needs_digest(self) -> DataSpec:
        if self.source and not self.sha256:
            raise ValueError("data.sha256: required when data.source is set (got null). Add the archive's sha256 (sha256sum FILE)")
        return self


# Every registered kind, tagged by its `kind`; a variant without `kind` is the first built-in (mlp).
ModelSpec = Annotated[
    Union[tuple(Annotated[spec, Tag(tag)] for tag, spec in MODEL_KINDS.items())],  # noqa: UP007 (a union built from the registry)
    Discriminator(kind_or(kind_tag(BUILT_IN[0]))),
]


class ResourcesSpec(Strict):
    cpus: float = Field(1.0, gt=0.0, le=256.0, description="CPU cores per trial; also its torch thread count")
    gpus: float = Field(0.0, ge=0.0, le=8.0, description="GPUs per trial, fractional allowed")
    gpu_fallback: Literal["auto"] | bool = Field(
        "auto",
        description="when the cluster has no GPU: true runs GPU trials on the CPU, false makes them wait for GPU nodes "
        "(an autoscaler can add them); auto does the first on a Ray that `sweep run` starts itself, the second on a cluster it joins",
    )


class CheckpointsSpec(Strict):
    keep: int = Field(2, ge=1, le=100, description="best k checkpoints kept per trial, by search.metric")
    every: int = Field(
        1,
        ge=1,
        le=10_000,
        description="epochs between checkpoints (the last epoch always saves one); "
        "a retried or resumed trial retrains the epochs after its newest checkpoint",
    )


class FailuresSpec(Strict):
    max_retries: int = Field(2, ge=0, le=100, description="retries of a failed trial, from its latest checkpoint")


class StorageSpec(Strict):
    uri: str = Field("results", min_length=1, description="s3://bucket/prefix or a local folder; endpoint and keys from env")


# --- tracking: where teams already look (optional extras, Ray's own logger callbacks) --------------


class MLflowSpec(Strict):
    """One MLflow run per trial (`pip install 'sweep-job[mlflow]'`). Credentials come from the environment
    (MLFLOW_TRACKING_USERNAME / _PASSWORD / _TOKEN), never from here."""

    tracking_uri: str | None = Field(
        None,
        min_length=1,
        max_length=2048,
        description="http(s)://host:5000, sqlite:///path/mlflow.db (a path on the driver's node), databricks, ...; default: MLFLOW_TRACKING_URI",
    )
    experiment: str | None = Field(
        None, min_length=1, max_length=500, description="MLflow experiment, created when missing (default: the spec's name)"
    )

    @field_validator("tracking_uri")
    @classmethod
    def _no_credentials(cls, uri: str | None) -> str | None:
        if uri is not None and "@" in uri.partition("://")[2].partition("/")[0]:
            raise ValueError(
                "tracking.mlflow.tracking_uri: holds credentials (got '<user>:<secret>@...'). Put them in "
                "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"
            )
        return uri


class WandbSpec(Strict):
    """One W&B run per trial (`pip install 'sweep-job[wandb]'`), grouped by sweep run. The API key comes
    from WANDB_API_KEY, never from here."""

    project: str = Field(min_length=1, max_length=128, description="W&B project")
    mode: Literal["online", "offline"] = Field(
        "online", description="offline: no account needed; upload later with `wandb sync <dir>/wandb/offline-run-*`"
    )
    dir: str = Field(
        "~",
        min_length=1,
        max_length=1024,
        description="folder on the driver's node where W&B writes its run "
        "folders (<dir>/wandb/...); a relative one is from where `sweep run` starts (the image's /app is read-only)",
    )


class TrackingSpec(Strict):
    mlflow: MLflowSpec | None = Field(None, description="log every trial to MLflow")
    wandb: WandbSpec | None = Field(None, description="log every trial to Weights & Biases")


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
    tracking: TrackingSpec = Field(default_factory=TrackingSpec, description="experiment trackers each trial logs to")

    @model_validator(mode="after")
    def _check_variants(self) -> JobSpec:
        bad = [v for v in self.variants if not v.replace("-", "").replace("_", "").isalnum()]
        if bad:
            raise ValueError(f"{dotted(['variants', bad[0]])}: names use letters, digits, '-' and '_' (got {short_repr(bad[0])}). Rename it")
        for path in self.search.space:
            key = path.removeprefix("model.")
            without = [name for name, m in self.variants.items() if key != path and key not in type(m).model_fields]
            if without:
                raise ValueError(
                    f"{dotted(['search', 'space', path])}: variant '{without[0]}' ({self.variants[without[0]].kind}) has no such field "
                    f"(got {path}). Search model fields only when every variant has them, or under search.variants.{without[0]}"
                )
        empty = [v for v in self.variants if not self.search.space_for(v)]
        if self.search.algorithm == "optuna" and empty:
            raise ValueError(f"{dotted(['search', 'variants', empty[0]])}: search.algorithm optuna needs a domain for every variant. Add one")
        for name, own in self.search.variants.items():
            if name not in self.variants:
                raise ValueError(f"{dotted(['search', 'variants', name])}: not a variant of the spec. Use one of {list(self.variants)}")
            model = self.variants[name]
            for path in own:
                if path.startswith("model.") and path.removeprefix("model.") not in type(model).model_fields:
                    raise ValueError(
                        f"{dotted(['search', 'variants', name, path])}: variant '{name}' ({model.kind}) has no such field (got {path}). "
                        f"Known fields: {', '.join(f'model.{k}' for k in type(model).model_fields if k != 'kind')}"
                    )
        if self.trial_count() > MAX_TRIALS:
            raise ValueError(
                f"search: the spec defines {self.trial_count():,} trials (got variants x grids x samples). "
                f"Keep it under {MAX_TRIALS:,}: fewer grid values, variants or samples"
            )
        return self

    @model_validator(mode="after")
    def _check_search_values(self) -> JobSpec:
        """Every grid and choice value and both range bounds must suit the field they set, for every
        variant: checked here, or each trial fails at run time when its spec is validated."""
        problems: list[str] = []
        for at, path, domain in self.search.domains():
            section, key = path.split(".", 1)
            owners = [self.variants[at[2]]] if at[1] == "variants" and at[2] in self.variants else self.variants.values()
            models = {OptimSpec} if section == "optim" else {type(m) for m in owners}
            for model in sorted(models, key=lambda m: m.__name__):
                problems += specerrors.bad_values(dotted(at), domain, model, key)[:3]  # a few say enough
        if problems:
            raise ValueError("\n".join(dict.fromkeys(problems)))
        return self

    def trial_count(self) -> int:
        return sum(self.trials_per_variant().values())

    def trials_per_variant(self) -> dict[str, int]:
        """Per variant, its space's grid points (one for none) times `samples`."""
        grids = {v: [len(d.grid) for d in self.search.space_for(v).values() if isinstance(d, Grid)] for v in self.variants}
        return {v: math.prod(sizes) * self.search.samples for v, sizes in grids.items()}


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
    raw = read_yaml(Path(path))
    for item in overrides:
        apply_override(raw, item)
    return parse_spec(raw)


def parse_spec(raw: Any) -> JobSpec:
    return _validated(JobSpec, as_mapping(raw))


def _validated(model: type[BaseModel], raw: dict[str, Any]) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise SpecError(specerrors.problems(model, err, SCHEDULERS)) from None


def json_schema() -> dict[str, Any]:
    return JobSpec.model_json_schema()
