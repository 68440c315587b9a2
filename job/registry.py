"""Model kinds and datasets in one place. A kind is one spec class (fields, bounds, docs) whose `build()`
returns its network; the built-in kinds and those plugins add through `sweep_job.models` entry points are
collected in `MODEL_KINDS`, from which job.spec derives everything else. Datasets are names here (the
built-in two and the `sweep_job.datasets` entry points), loaded by job.data. Must not import torch or ray.
"""

from __future__ import annotations

import sys
from abc import abstractmethod
from importlib import metadata
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from job.specfile import SpecError

MODELS_GROUP = "sweep_job.models"  # entry points: name = kind, value = "package.module:SpecClass"
DATASETS_GROUP = "sweep_job.datasets"  # entry points: name = data.dataset, value = "package.module:load" (job.data)
BUILT_IN_DATASETS = ("cifar10", "synthetic")
CLASSES = 10  # every dataset has CIFAR-10's ten classes, and every kind's network ends in ten logits


class Strict(BaseModel):
    """The base of every spec section: unknown keys are refused, values are frozen once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class KindSpec(Strict):
    """The base of a model kind's spec: a literal `kind` tag, the kind's own fields, and `build`.

    A kind's fields are searchable as `model.<field>` and appear in the JSON schema with their
    descriptions; `build` returns a fresh `torch.nn.Module` taking [N, 3, 32, 32] images to 10 logits.
    A plugin's `build` may import torch at the top of its module; the built-in kinds import it lazily,
    so reading a spec never does.
    """

    kind: str

    @abstractmethod
    def build(self) -> Any:
        """The kind's network; a class without its own `build` is abstract and no kind."""


class MLPSpec(KindSpec):
    """The seed's MLPs: Linear -> [BatchNorm1d] -> ReLU -> [Dropout], `depth` times, then Linear."""

    kind: Literal["mlp"] = "mlp"
    hidden: int = Field(128, ge=1, le=65_536, description="units per hidden layer")
    depth: int = Field(1, ge=1, le=16, description="number of hidden layers")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout probability after each hidden ReLU")
    batch_norm: bool = Field(False, description="BatchNorm1d between each hidden Linear and its ReLU")

    def build(self) -> Any:
        from job.models import build_mlp  # torch loads when a network is built, never when a spec is read

        return build_mlp(self)


class LinearSpec(KindSpec):
    """Multinomial logistic regression: a baseline with no hidden layer."""

    kind: Literal["linear"] = "linear"

    def build(self) -> Any:
        from job.models import build_linear

        return build_linear(self)


class CNNSpec(KindSpec):
    """A small ResNet-style conv net: a stem, then `stages` of conv, batch norm, activation and 2x2 max
    pooling, each followed by `blocks` residual blocks; global max pooling and one linear layer."""

    kind: Literal["cnn"] = "cnn"
    width: int = Field(32, ge=4, le=1024, description="channels of the stem and the first stage; each next stage doubles them")
    stages: int = Field(3, ge=1, le=5, description="stages, each halving the image side (32 -> 16 -> 8 -> 4 with 3)")
    blocks: int = Field(1, ge=0, le=8, description="residual blocks (two 3x3 convs and a skip) after each stage's pooling")
    activation: Literal["relu", "gelu"] = Field("gelu", description="the nonlinearity after every batch norm")

    def build(self) -> Any:
        from job.models import build_cnn

        return build_cnn(self)


BUILT_IN: tuple[type[KindSpec], ...] = (MLPSpec, LinearSpec, CNNSpec)  # the first is the default kind


def kind_tag(spec: type[KindSpec]) -> str:
    """The literal of a kind's `kind` field: its name in specs, the union's tag and the registry's key."""
    return spec.model_fields["kind"].default


def collect_kinds(built_in: tuple[type[KindSpec], ...], group: str = MODELS_GROUP) -> tuple[dict[str, type[KindSpec]], list[str]]:
    """Kind tag -> spec class: the built-in kinds, then each plugin's that loads and fits, and a line per
    plugin left out. A broken plugin costs only its own kind (a spec naming it is then an unknown kind),
    never the tool: this runs on import, before the CLI can turn an error into one line."""
    kinds = {kind_tag(spec): spec for spec in built_in}
    problems = []
    for point in sorted(metadata.entry_points(group=group), key=lambda p: p.name):
        where = f"entry point {group}:{point.name} ({point.value})"
        try:
            spec = point.load()
        except Exception as err:  # a plugin's import can fail in any way; the user needs its name, not our traceback
            problems.append(f"{where}: cannot be imported ({type(err).__name__}: {err}). Fix or uninstall the plugin; its kind is left out.")
            continue
        if not (isinstance(spec, type) and issubclass(spec, KindSpec)) or spec.__abstractmethods__:
            problems.append(f"{where}: not a model kind (got {spec!r}). Point it at a job.registry.KindSpec subclass with a build().")
        elif kind_tag(spec) != point.name:
            problems.append(f"{where}: its name must be the spec's kind (got kind '{kind_tag(spec)}'). Rename one.")
        elif point.name in kinds:
            problems.append(f"{where}: kind '{point.name}' is already defined by {kinds[point.name].__module__}. Rename the plugin's kind.")
        else:
            kinds[point.name] = spec
    return kinds, problems


def dataset_plugins(group: str = DATASETS_GROUP) -> tuple[dict[str, metadata.EntryPoint], list[str]]:
    """Dataset name -> its entry point, not yet loaded: reading a spec needs only the names, so a dataset
    plugin's imports (torch, its own) wait until job.data loads it, in the driver before any trial."""
    points: dict[str, metadata.EntryPoint] = {}
    problems = []
    for point in sorted(metadata.entry_points(group=group), key=lambda p: p.name):
        if point.name in BUILT_IN_DATASETS or point.name in points:
            problems.append(
                f"entry point {group}:{point.name} ({point.value}): dataset '{point.name}' is already defined. Rename the plugin's dataset."
            )
        else:
            points[point.name] = point
    return points, problems


MODEL_KINDS, _KIND_PROBLEMS = collect_kinds(BUILT_IN)
DATASET_PLUGINS, _DATASET_PROBLEMS = dataset_plugins()
DATASETS = (*BUILT_IN_DATASETS, *DATASET_PLUGINS)  # what data.dataset accepts
PLUGIN_PROBLEMS = _KIND_PROBLEMS + _DATASET_PROBLEMS
for _line in PLUGIN_PROBLEMS:
    print(f"warning: {SpecError([_line]).problems[0]}", file=sys.stderr)  # printable, as every user-facing line


def searchable_fields(spec: type[KindSpec]) -> list[str]:
    """The fields of a kind that `search.space` may set, as `model.<field>`."""
    return [f"model.{name}" for name in spec.model_fields if name != "kind"]
