"""The built-in kinds' networks as plain `nn.Module`s, and `build_model` for any registered kind.

A kind's spec class (job.registry) calls its builder here. Must not know about Ray or about training.
"""

from __future__ import annotations

import torch
from torch import nn

from job.registry import CLASSES, CNNSpec, KindSpec, LinearSpec, MLPSpec
from job.specfile import SpecError

IN_FEATURES = 32 * 32 * 3  # CIFAR-10 images, flattened


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


ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU}


def conv_bn(in_channels: int, out_channels: int, activation: str) -> nn.Sequential:
    """3x3 convolution (no bias: batch norm's shift replaces it), batch norm, activation."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels), ACTIVATIONS[activation]())


class Residual(nn.Module):
    """`x + body(x)`: two conv_bn layers at constant width, the skip of a ResNet basic block."""

    def __init__(self, width: int, activation: str) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(width, width, activation), conv_bn(width, width, activation))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def build_cnn(spec: CNNSpec) -> nn.Sequential:
    """A ResNet-9-style net (Myrtle.ai's DAWNBench CIFAR-10 entry, which cifar10-airbench refines):
    a stem, then per stage conv_bn -> 2x2 max pool -> `blocks` Residuals, width doubling per stage;
    global max pooling and one Linear. Takes [N, 3, 32, 32] images."""
    layers: list[nn.Module] = [conv_bn(3, spec.width, spec.activation)]
    width = spec.width
    for stage in range(spec.stages):
        out = spec.width * 2**stage
        layers += [conv_bn(width, out, spec.activation), nn.MaxPool2d(2)]
        layers += [Residual(out, spec.activation) for _ in range(spec.blocks)]
        width = out
    layers += [nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(width, CLASSES)]
    return nn.Sequential(*layers)


def build_model(spec: KindSpec) -> nn.Module:
    """The network of any registered kind, built by its spec class; a plugin's must be an `nn.Module`."""
    model = spec.build()
    if not isinstance(model, nn.Module):
        raise SpecError(
            [
                f"model kind '{spec.kind}': {type(spec).__name__}.build() returned {type(model).__name__}, "
                "not a torch.nn.Module. Fix the plugin's build()"
            ]
        )
    return model
