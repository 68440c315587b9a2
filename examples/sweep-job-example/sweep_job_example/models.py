"""`kind: lenet`: a LeNet-5-style conv net. One spec class, whose fields are validated, searchable
(`model.channels`, `model.hidden`) and in `sweep schema` like the built-in kinds' fields."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import nn

from job.registry import CLASSES, KindSpec


class LeNetSpec(KindSpec):
    """Two 5x5 conv + ReLU + 2x2 max-pool stages, then two hidden Linear layers (LeCun et al., 1998)."""

    kind: Literal["lenet"] = "lenet"
    channels: int = Field(6, ge=1, le=256, description="channels of the first conv; the second has twice as many")
    hidden: int = Field(120, ge=1, le=4096, description="units of the first hidden Linear; the second has 84")

    def build(self) -> nn.Module:
        c = self.channels
        return nn.Sequential(
            nn.Conv2d(3, c, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 32 -> 28 -> 14
            nn.Conv2d(c, 2 * c, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 14 -> 10 -> 5
            nn.Flatten(),
            nn.Linear(2 * c * 5 * 5, self.hidden),
            nn.ReLU(),
            nn.Linear(self.hidden, 84),
            nn.ReLU(),
            nn.Linear(84, CLASSES),
        )
