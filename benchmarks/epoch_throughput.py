"""One training epoch plus the test pass: the seed notebook's pipeline against ours, same data, model and batch.

(a) seed: torchvision CIFAR10 -> PIL -> ToTensor + Normalize -> DataLoader(batch 32, 2 workers, shuffle),
    plain Adam, the notebook's loop verbatim (zero_grad, backward, step; `.item()` per test batch).
(b) ours: job.data.load_arrays + to_device once, then job.train.train_epoch + job.train.evaluate.
Both train the batch-norm variant (hidden 128) with lr 1e-4 at batch 32, in one process. Warm-up is not
timed; the one-time data preparation of each is printed apart. Usage:

    python benchmarks/epoch_throughput.py [--device cpu|cuda] [--epochs 1] [--repeats 1] [--synthetic] [--compile]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
import torch.optim as optim
import torchvision
import torchvision.transforms as transforms
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from job import data as jobdata
from job import train as jobtrain
from job.models import build_model
from job.spec import DataSpec, TrialSpec, parse_spec, resolve_trial

MIRROR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar-10-python.tar.gz"
BATCH, LR, HIDDEN = 32, 1e-4, 128  # the seed notebook's
SEED_TRANSFORM = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
WARMUP_BATCHES = 50


class MirrorCIFAR10(torchvision.datasets.CIFAR10):
    """The seed's dataset class on the mirror, whose batch files differ from the official md5 list (we checked its sha256)."""

    def _check_integrity(self) -> bool:
        return (Path(self.root) / self.base_folder).is_dir()


class PILArrays(Dataset):
    """Synthetic uint8 arrays served the way torchvision's CIFAR10 serves images: HWC -> PIL -> transform."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x.permute(0, 2, 3, 1).contiguous().numpy(), y.tolist()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return SEED_TRANSFORM(Image.fromarray(self.x[i])), self.y[i]


def trial_for(data: DataSpec, compile: bool = False) -> TrialSpec:
    raw = {
        "name": "bench",
        "variants": {"batchnorm": {"kind": "mlp", "hidden": HIDDEN, "batch_norm": True}},
        "optim": {"lr": LR, "batch_size": BATCH, "epochs": 1, "compile": compile},
        "data": data.model_dump(),
    }
    return resolve_trial(parse_spec(raw), "batchnorm", {})


def data_spec(args: argparse.Namespace) -> DataSpec:
    if args.synthetic or not args.mirror.is_file():
        return DataSpec(dataset="synthetic", synthetic_train=args.samples, synthetic_test=args.samples // 5)
    digest = args.mirror.with_name(args.mirror.name + ".sha256").read_text().split()[0]
    return DataSpec(root=str(args.cache), source=str(args.mirror), sha256=digest)


def seed_datasets(spec: DataSpec, arrays: jobdata.Arrays, cache: Path) -> tuple[Dataset, Dataset]:
    if spec.dataset == "synthetic":
        return PILArrays(arrays.x_train, arrays.y_train), PILArrays(arrays.x_test, arrays.y_test)
    root = cache / f"seed-{spec.sha256[:16]}"
    if not (root / "cifar-10-batches-py").is_dir():  # extracted once; load_arrays has verified the archive's sha256
        assert hashlib.sha256(Path(spec.source).read_bytes()).hexdigest() == spec.sha256
        cache.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(dir=cache, prefix=".partial-"))
        with tarfile.open(spec.source) as tar:
            tar.extractall(scratch, filter="data")
        os.replace(scratch, root)
    return (MirrorCIFAR10(str(root), train=True, transform=SEED_TRANSFORM), MirrorCIFAR10(str(root), train=False, transform=SEED_TRANSFORM))


def seed_epoch(
    net: nn.Module, optimizer: optim.Optimizer, trainloader: DataLoader, testloader: DataLoader, device: torch.device, limit: int | None = None
) -> float:
    """The notebook's epoch, verbatim but for `limit` (warm-up only); returns its test accuracy."""
    criterion = nn.CrossEntropyLoss()
    net.train()
    for i, (x, y) in enumerate(trainloader):
        if limit is not None and i >= limit:
            break
        inputs, labels = x.to(device), y.to(device)
        optimizer.zero_grad()
        outputs = net(inputs)
        loss = criterion(outputs, labels)
        loss.backward()
        optimizer.step()
    total_label, correct, test_loss = 0, 0, 0
    net.eval()
    with torch.no_grad():
        for i, (x, y) in enumerate(testloader):
            if limit is not None and i >= limit // 5:
                break
            images, labels = x.to(device), y.to(device)
            outputs = net(images)
            loss = criterion(outputs, labels)
            test_loss += loss.item()
            _, predicted = torch.max(outputs, 1)
            correct += (predicted == labels).sum().item()
            total_label += labels.size(0)
    return 100 * correct / total_label


def timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench_seed(spec: DataSpec, arrays: jobdata.Arrays, args: argparse.Namespace, device: torch.device) -> tuple[float, float]:
    trainset, testset = seed_datasets(spec, arrays, args.cache)
    trainloader = DataLoader(trainset, batch_size=BATCH, shuffle=True, num_workers=args.workers)
    testloader = DataLoader(testset, batch_size=BATCH, shuffle=False, num_workers=args.workers)
    torch.manual_seed(0)
    net = build_model(trial_for(spec).model).to(device)
    optimizer = optim.Adam(net.parameters(), lr=LR)
    seed_epoch(net, optimizer, trainloader, testloader, device, limit=WARMUP_BATCHES)
    acc = 0.0

    def epochs() -> None:
        nonlocal acc
        for _ in range(args.epochs):
            acc = seed_epoch(net, optimizer, trainloader, testloader, device)

    return min(timed(epochs, device) for _ in range(args.repeats)) / args.epochs, acc


def bench_ours(spec: DataSpec, arrays: jobdata.Arrays, args: argparse.Namespace, device: torch.device) -> tuple[float, float, float]:
    trial = trial_for(spec, args.compile)
    prep_s = timed(lambda: jobdata.to_device(arrays, device), device)
    data = jobdata.to_device(arrays, device)
    state = jobtrain.new_state(trial, device)
    gen = torch.Generator().manual_seed(0)
    jobtrain.train_epoch(state, data, trial, gen)  # warm-up: allocator, kernels, and the CUDA graph on a GPU
    jobtrain.evaluate(state.model, data.x_test, data.y_test)
    acc = 0.0

    def epochs() -> None:
        nonlocal acc
        for _ in range(args.epochs):
            jobtrain.train_epoch(state, data, trial, gen)
            acc = jobtrain.evaluate(state.model, data.x_test, data.y_test)[1]

    return min(timed(epochs, device) for _ in range(args.repeats)) / args.epochs, acc, prep_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs per repeat")
    parser.add_argument("--repeats", type=int, default=1, help="best of N")
    parser.add_argument("--workers", type=int, default=2, help="the seed's DataLoader num_workers")
    parser.add_argument("--compile", action="store_true", help="ours with optim.compile (for CUDA; compiling is warm-up, untimed)")
    parser.add_argument("--synthetic", action="store_true", help="synthetic CIFAR-format data even when the mirror is present")
    parser.add_argument("--samples", type=int, default=50_000, help="synthetic training images (CIFAR-10's count; test: a fifth)")
    parser.add_argument("--mirror", type=Path, default=MIRROR, help="cifar-10-python.tar.gz with its .sha256 beside it")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "sweep-job", help="where the data is cached once")
    args = parser.parse_args()
    device = torch.device(args.device)
    spec = data_spec(args)
    load_s = timed(lambda: jobdata.load_arrays(spec, seed=0), torch.device("cpu"))
    arrays = jobdata.load_arrays(spec, seed=0)
    source = f"synthetic ({spec.synthetic_train}/{spec.synthetic_test})" if spec.dataset == "synthetic" else f"CIFAR-10 mirror {spec.source}"
    name = jobtrain.device_name(device) if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(
        f"data: {source}; model: mlp hidden {HIDDEN} + batch norm; batch {BATCH}; epochs {args.epochs}; best of {args.repeats}"
        f"{'; ours with optim.compile' if args.compile else ''}"
    )
    print(
        f"device: {device} ({name}); torch {torch.__version__}; torchvision {torchvision.__version__}; "
        f"threads {torch.get_num_threads()}; cpus {os.cpu_count()}; python {platform.python_version()}"
    )
    n = len(arrays.y_train)
    ours_s, ours_acc, prep_s = bench_ours(spec, arrays, args, device)
    print(
        f"(b) ours: {ours_s:.2f} s/epoch, {n / ours_s:,.0f} samples/s, test_acc {ours_acc:.2f}% "
        f"(once per trial, untimed above: load {load_s:.2f} s, to_device {prep_s:.2f} s)",
        flush=True,
    )
    seed_s, seed_acc = bench_seed(spec, arrays, args, device)
    print(f"(a) seed: {seed_s:.2f} s/epoch, {n / seed_s:,.0f} samples/s, test_acc {seed_acc:.2f}%")
    print(f"seed_samples_per_s = {n / seed_s:.0f}  ours_samples_per_s = {n / ours_s:.0f}  ratio b/a = {seed_s / ours_s:.1f}x")


if __name__ == "__main__":
    main()
