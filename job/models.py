"""The model variants as plain `nn.Module`s and the registry keyed by the spec's `kind`.

Must not know about Ray or about training.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from job.spec import LinearSpec, MLPSpec, ModelSpec

IN_FEATURES = 32 * 32 * 3  # CIFAR-10 images, flattened
CLASSES = 10


def build_mlp(spec: MLPSpec) -> nn.Sequential:
    """The seed's Net, DropoutNet and BNNet in one: Linear -> [BatchNorm1d] -> ReLU -> [Dropout], then Linear.

    With depth=1 the parameter count equals the seed's (3072*128+128 + 128*10+10 = 394,634, plus
    256 for batch norm's weight and bias).
    """
    layers: list[nn.Module] = [nn.Flatten()]
    width = IN_FEATURES
    for _ in range(spec.depth):
        layers.append(nn.Linear(width, spec.hidden))
        if spec.batch_norm:
            layers.append(nn.BatchNorm1d(spec.hidden))
        layers.append(nn.ReLU())
        if spec.dropout > 0:
            layers.append(nn.Dropout(p=spec.dropout))
        width = spec.hidden
    layers.append(nn.Linear(width, CLASSES))
    return nn.Sequential(*layers)


def build_linear(spec: LinearSpec) -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), nn.Linear(IN_FEATURES, CLASSES))


MODELS: dict[str, Callable[..., nn.Module]] = {"mlp": build_mlp, "linear": build_linear}


def build_model(spec: ModelSpec) -> nn.Module:
    return MODELS[spec.kind](spec)
