"""`dataset: stripes`: ten classes of striped images, one stripe angle per class (0, 18, ..., 162 degrees),
each image with its own stripe width, phase, colours and noise. Drawn from the seed; nothing to download."""

from __future__ import annotations

import math
from pathlib import Path

import torch

TRAIN, TEST = 2000, 500


def load_stripes(root: Path, seed: int) -> dict[str, torch.Tensor]:
    """The layout every sweep-job dataset returns: uint8 images [N, 3, 32, 32] and labels [N] in 0-9.
    `root` is the spec's cache folder (data.root), unused here: the images are drawn, not fetched."""
    gen = torch.Generator().manual_seed(seed)
    x_train, y_train = _draw(TRAIN, gen)
    x_test, y_test = _draw(TEST, gen)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def _draw(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.randint(0, 10, (n,), generator=gen)
    angle = labels.float() * math.pi / 10
    period = 4 + 6 * torch.rand(n, generator=gen)  # pixels per stripe pair
    phase = 2 * math.pi * torch.rand(n, generator=gen)
    rows, cols = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    along = cols * torch.cos(angle)[:, None, None] + rows * torch.sin(angle)[:, None, None]
    wave = torch.sin(2 * math.pi * along / period[:, None, None] + phase[:, None, None])  # [n, 32, 32]
    low, high = torch.rand(n, 3, 1, 1, generator=gen), torch.rand(n, 3, 1, 1, generator=gen)
    images = low + (high - low) * (wave[:, None] + 1) / 2 + 0.15 * torch.randn(n, 3, 32, 32, generator=gen)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8), labels
