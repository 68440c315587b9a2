"""CIFAR-10 fetched, verified and cached once per node; synthetic CIFAR-format data; device-resident batches.

Images are kept as uint8 tensors, normalized on the trial's device and batched by permutation
indices. Must not use a DataLoader in the hot path.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from torch.nn import functional as F

from job.registry import CLASSES, DATASET_PLUGINS, DATASETS_GROUP
from job.spec import DataSpec, SpecError, UserError

# torchvision is imported only where the CIFAR-10 cache is built: importing it pulls in its models and
# ops, and with them torch._dynamo (a large share of a trial worker's start), which a sweep on a cached
# or synthetic dataset never uses.

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"  # torchvision's digest of the official archive
ARCHIVE = "cifar-10-python.tar.gz"
MEAN, STD = 0.5, 0.5  # the seed notebook's Normalize((0.5,)*3, (0.5,)*3)


@dataclass(frozen=True)
class Arrays:
    """Images as uint8 [N, 3, 32, 32] and labels as int64 [N], on the CPU."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


@dataclass(frozen=True)
class DeviceData:
    """Normalized float images [N, 3, 32, 32] and labels, resident on one device."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_arrays(spec: DataSpec, seed: int) -> Arrays:
    if spec.dataset == "synthetic":
        return synthetic_arrays(spec.synthetic_train, spec.synthetic_test, seed)
    if spec.dataset == "cifar10":
        return cifar10_arrays(spec)
    return plugin_arrays(spec, seed)


def prepare(spec: DataSpec) -> None:
    """Fetch, verify and cache the dataset on this node, so a bad source (or plugin) is one error before any trial."""
    if spec.dataset == "cifar10":
        cifar10_arrays(spec)
    elif spec.dataset != "synthetic":
        plugin_arrays(spec, seed=0)


def plugin_arrays(spec: DataSpec, seed: int) -> Arrays:
    """A plugin's dataset: its `sweep_job.datasets` entry point is `load(root: Path, seed: int)`, returning
    x_train, y_train, x_test, y_test (as attributes or keys; tensors or NumPy arrays), checked here
    against the layout trials use: uint8 images [N, 3, 32, 32], integer labels in [0, 10)."""
    point = DATASET_PLUGINS[spec.dataset]
    where = f"data.dataset: '{spec.dataset}' from entry point {DATASETS_GROUP}:{point.name} ({point.value})"
    try:
        got = point.load()(Path(spec.root).expanduser(), seed)
    except UserError:
        raise
    except Exception as err:  # a plugin can fail in any way; the user needs its name and the error, in one line
        raise SpecError([f"{where}: loading failed ({type(err).__name__}: {err}). Fix or uninstall the plugin"]) from None
    parts = {name: got.get(name) if isinstance(got, dict) else getattr(got, name, None) for name in Arrays.__dataclass_fields__}
    arrays = {name: torch.as_tensor(value) for name, value in parts.items() if value is not None}
    for split in ("train", "test"):
        x, y = arrays.get(f"x_{split}"), arrays.get(f"y_{split}")
        if x is None or y is None or x.dtype != torch.uint8 or x.shape[1:] != (3, 32, 32) or y.shape != x.shape[:1]:
            shapes = {k: (tuple(v.shape), str(v.dtype)) for k, v in arrays.items()}
            raise SpecError([f"{where}: x_{split} must be uint8 [N, 3, 32, 32] and y_{split} [N] labels (got {shapes}). Fix the plugin"])
        if y.is_floating_point() or len(y) < 2 or int(y.min()) < 0 or int(y.max()) >= CLASSES:
            raise SpecError([f"{where}: y_{split} must hold integer labels 0-{CLASSES - 1} (got {y.dtype}, {len(y)} labels). Fix the plugin"])
    return Arrays(**{k: v.long() if k.startswith("y") else v.contiguous() for k, v in arrays.items()})


def cifar10_arrays(spec: DataSpec) -> Arrays:
    """CIFAR-10 from the node's cache, building the cache once under a file lock; a damaged cache is rebuilt."""
    root = Path(spec.root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    key = spec.sha256[:16] if spec.sha256 else "official"
    cache = root / f"cifar10-{key}.pt"
    with FileLock(str(root / f"cifar10-{key}.lock")):
        if not cache.exists():
            _build_cache(spec, root, cache)
        try:
            return Arrays(**torch.load(cache, weights_only=True))
        except Exception as err:  # truncated zip, garbage, wrong keys: torch and pickle raise many types
            print(f"data: the cache {cache} is damaged ({type(err).__name__}); rebuilding it", flush=True)
            cache.unlink()
            _build_cache(spec, root, cache)
            return Arrays(**torch.load(cache, weights_only=True))


def _build_cache(spec: DataSpec, root: Path, cache: Path) -> None:
    """Fetch, verify, extract and convert in a scratch folder; only a finished cache is renamed in."""
    with tempfile.TemporaryDirectory(dir=root, prefix=".partial-") as scratch:
        tmp = Path(scratch)
        archive = tmp / ARCHIVE
        if spec.source:
            _fetch(spec.source, archive)
            _verify(archive, spec)
        else:
            _download_official(tmp)
        from torchvision.datasets.utils import extract_archive

        try:
            extract_archive(str(archive), str(tmp))
        except Exception as err:  # tarfile and gzip raise several unrelated types for a bad archive
            raise SpecError(
                [f"data.source: the archive cannot be extracted ({type(err).__name__}: {err}). Use an intact cifar-10-python.tar.gz"]
            ) from None
        try:
            train, test = _read_cifar10(tmp, train=True), _read_cifar10(tmp, train=False)
        except (RuntimeError, FileNotFoundError) as err:
            raise SpecError([f"data.source: not a CIFAR-10 archive ({err}) (got {spec.source}). Use cifar-10-python.tar.gz"]) from None
        tensors = {
            "x_train": torch.from_numpy(train.data).permute(0, 3, 1, 2).contiguous(),
            "y_train": torch.tensor(train.targets, dtype=torch.int64),
            "x_test": torch.from_numpy(test.data).permute(0, 3, 1, 2).contiguous(),
            "y_test": torch.tensor(test.targets, dtype=torch.int64),
        }
        torch.save(tensors, tmp / "cache.pt")
        os.replace(tmp / "cache.pt", cache)


def _read_cifar10(folder: Path, train: bool) -> Any:
    """torchvision's CIFAR-10 reader for an archive we verified ourselves by sha256.

    torchvision checks each batch file against the official release's md5 list, which a faithful
    mirror need not match byte for byte (see ../shared/data/README.md); our digest check replaces it.
    """
    from torchvision.datasets import CIFAR10

    class VerifiedCIFAR10(CIFAR10):
        def _check_integrity(self) -> bool:
            return (Path(self.root) / self.base_folder).is_dir()

    return VerifiedCIFAR10(str(folder), train=train)


def _fetch(source: str, dest: Path) -> None:
    if source.startswith("s3://"):
        from job.storage import fetch_object  # only s3 mirrors need boto3

        fetch_object(source, dest)
    elif source.startswith(("https://", "http://")):
        from torchvision.datasets.utils import download_url

        try:
            download_url(source, str(dest.parent), dest.name)
        except OSError as err:
            raise SpecError([f"data.source: download failed ({err}) (got {source}). Check the URL or use a local mirror"]) from None
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise SpecError([f"data.source: file not found (got {source}). Point it at cifar-10-python.tar.gz"])
        shutil.copyfile(path, dest)


def _verify(archive: Path, spec: DataSpec) -> None:
    digest = hashlib.sha256()
    with archive.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != spec.sha256:
        raise SpecError(
            [
                f"data.sha256: the archive at {spec.source} does not match (got {digest.hexdigest()}, expected {spec.sha256}). "
                "Fix data.source or data.sha256"
            ]
        )


def _download_official(folder: Path) -> None:
    from torchvision.datasets.utils import download_url

    try:
        download_url(CIFAR10_URL, str(folder), ARCHIVE, md5=CIFAR10_MD5)
    except (OSError, RuntimeError) as err:
        raise SpecError(
            [
                f"data: cannot download CIFAR-10 from {CIFAR10_URL} ({type(err).__name__}). "
                "Set data.source to a mirror of cifar-10-python.tar.gz and data.sha256 to its digest"
            ]
        ) from None


def synthetic_arrays(n_train: int, n_test: int, seed: int) -> Arrays:
    """Learnable CIFAR-format data: one smooth random pattern per class plus pixel noise."""
    gen = torch.Generator().manual_seed(seed)
    prototypes = F.interpolate(torch.rand(10, 3, 4, 4, generator=gen), size=(32, 32), mode="bilinear")

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, 10, (n,), generator=gen)
        noise = torch.rand(n, 3, 32, 32, generator=gen)
        # 8% signal: hard enough that accuracy climbs over epochs instead of hitting 100% at once.
        images = (0.08 * prototypes[labels] + 0.92 * noise) * 255
        return images.round().to(torch.uint8), labels

    x_train, y_train = split(n_train)
    x_test, y_test = split(n_test)
    return Arrays(x_train, y_train, x_test, y_test)


def to_device(arrays: Arrays, device: torch.device) -> DeviceData:
    """Move the uint8 images once, then normalize on the device itself."""

    def prepare(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device, non_blocking=True).float()
        return x.div_(255.0).sub_(MEAN).div_(STD)

    return DeviceData(prepare(arrays.x_train), arrays.y_train.to(device), prepare(arrays.x_test), arrays.y_test.to(device))


@functools.lru_cache(maxsize=1)
def device_data(spec: DataSpec, seed: int, device: torch.device) -> DeviceData:
    """`to_device(load_arrays(spec, seed), device)`, kept for the next trial in this process: Tune reuses
    a worker for trial after trial, which then skip the load and the copy. One entry, as a CIFAR-10 copy
    takes 0.74 GB of the device. Callers only read these tensors (slices, `index_select`), never write them."""
    return to_device(load_arrays(spec, seed), device)


def batch_indices(n: int, batch_size: int, gen: torch.Generator, device: torch.device) -> Iterator[torch.Tensor]:
    """A fresh permutation split into batches; a last batch of one sample is dropped (BatchNorm needs two)."""
    perm = torch.randperm(n, generator=gen).to(device)
    for idx in perm.split(batch_size):
        if len(idx) > 1:
            yield idx


def augment(x: torch.Tensor, padding: int) -> torch.Tensor:
    """A random crop of each image from its reflect-padded copy, mirrored left-right with probability 1/2.

    One gather on the images' own device, drawing from that device's global generator (which
    checkpoints save, and CUDA graphs can replay), with no host sync. The result is an NCHW view of
    NHWC memory, which is channels-last: what convolutions on CUDA prefer, and a no-op for an MLP.
    """
    n, _, height, width = x.shape
    padded = F.pad(x, (padding,) * 4, mode="reflect") if padding else x
    shifts = torch.randint(0, 2 * padding + 1, (2, n, 1), device=x.device)
    rows = shifts[0] + torch.arange(height, device=x.device)
    cols = shifts[1] + torch.arange(width, device=x.device)
    flip = torch.rand(n, 1, device=x.device) < 0.5
    cols = torch.where(flip, cols.flip(1), cols)  # a mirrored crop reads its columns right to left
    images = torch.arange(n, device=x.device)[:, None, None]
    return padded[images, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # [n, h, w, c] -> NCHW view
