"""GPU packing: K trials of the seed's batch-norm MLP on one GPU at once, each in its own process.

This is how Ray Tune runs trials with fractional GPUs (`resources.gpus: 0.25` puts four on one GPU):
separate OS processes, each with its own CUDA context, data copy and model. Here each of K processes
(multiprocessing, spawn) builds its trial through the job's own code (`load_spec` of specs/cifar10.yaml
with overrides, `resolve_trial` of variant `batchnorm`, `choose_device`, `train_trial`) on synthetic
CIFAR-format data, at the seed's batch size. Every process first trains one untimed epoch (CUDA init,
data on the device, CUDA-graph capture), then waits at a barrier; all K leave it together and train
`--epochs` more epochs, each with its test pass, as a trial in a sweep does.

Definitions, per (K, cuda_graph):
  per-process samples/s  training images one process went through in its timed epochs, over its own
                         wall time from the barrier to its last epoch's end (mean over the K; min beside it)
  aggregate samples/s    training images of all K processes over the wall time from the barrier to the
                         last process's end: what the GPU delivers to the whole sweep
  efficiency             aggregate / (K x the K=1 per-process rate with the same cuda_graph setting):
                         1.0 means K trials each ran as fast as one alone
  test_acc, wall_s       mean test accuracy after the last epoch (a sanity check); the row's whole wall
                         time, process starts and warm-up included

Usage: python benchmarks/gpu_packing.py [--device cuda|cpu] [--ks 1 2 4 8] [--epochs 3] [--train 50000] [--test 10000]
       [--graph both|on|off]   (on the CPU, cuda_graph changes nothing: smoke tests only)
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import queue
import threading
import time
from pathlib import Path
from typing import NamedTuple

import torch

from job.spec import load_spec, resolve_trial
from job.train import choose_device, train_trial

SPEC = Path(__file__).resolve().parents[1] / "specs" / "cifar10.yaml"
VARIANT = "batchnorm"
WARMUP_EPOCHS = 1  # untimed: CUDA context, data on the device, graph capture


class Timed(NamedTuple):
    """One process's timed epochs, on the machine-wide monotonic clock."""

    start: float
    end: float
    samples: int  # training images
    test_acc: float  # after its last epoch


def worker(args: argparse.Namespace, cuda_graph: bool, barrier: threading.Barrier, results: mp.Queue) -> None:
    """One trial: warm up, meet the others at the barrier, then time `args.epochs` epochs."""
    overrides = [
        "data.dataset=synthetic",
        f"data.synthetic_train={args.train}",
        f"data.synthetic_test={args.test}",
        f"optim.epochs={WARMUP_EPOCHS + args.epochs}",
        f"optim.cuda_graph={str(cuda_graph).lower()}",
    ]
    trial = resolve_trial(load_spec(args.spec, overrides), VARIANT, {})
    device = choose_device(threads=args.threads, use_cuda=args.device == "cuda")
    assert device.type == args.device, f"asked for {args.device}, got {device}"
    epochs = train_trial(trial, device)
    for _ in range(WARMUP_EPOCHS):
        next(epochs)  # each epoch ends in a host sync (its totals and test metrics are read back)
    barrier.wait()
    start = time.monotonic()  # CLOCK_MONOTONIC: one clock for all processes on this machine
    for metrics, _ in epochs:
        last = metrics
    results.put(Timed(start, time.monotonic(), args.epochs * args.train, last.test_acc))


def run_k(args: argparse.Namespace, k: int, cuda_graph: bool) -> list[Timed]:
    """Start K workers, wait for all of them; a worker that dies breaks the barrier for the others."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(k), ctx.Queue()
    procs = [ctx.Process(target=worker, args=(args, cuda_graph, barrier, results)) for _ in range(k)]
    for p in procs:
        p.start()
    rows: list[Timed] = []
    while len(rows) < k:
        if any(p.exitcode not in (None, 0) for p in procs):
            barrier.abort()
            for p in procs:
                p.join()
            raise SystemExit(f"K={k} cuda_graph={cuda_graph}: a worker failed (exit codes {[p.exitcode for p in procs]})")
        try:
            rows.append(results.get(timeout=1.0))
        except queue.Empty:  # nothing yet: check the workers again
            continue
    for p in procs:
        p.join()
    return rows


def summarize(rows: list[Timed]) -> tuple[float, float, float, float]:
    """Mean and min per-process samples/s, aggregate samples/s, and the mean final test accuracy."""
    rates = [r.samples / (r.end - r.start) for r in rows]
    aggregate = sum(r.samples for r in rows) / (max(r.end for r in rows) - min(r.start for r in rows))
    return sum(rates) / len(rows), min(rates), aggregate, sum(r.test_acc for r in rows) / len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8], help="trials per GPU to measure (include 1 for efficiency)")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per process, after one untimed")
    parser.add_argument("--train", type=int, default=50_000, help="synthetic training images (CIFAR-10's count)")
    parser.add_argument("--test", type=int, default=10_000, help="synthetic test images (CIFAR-10's count)")
    parser.add_argument("--graph", choices=["both", "on", "off"], default="both", help="optim.cuda_graph settings to measure")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (a trial's resources.cpus)")
    parser.add_argument("--spec", type=Path, default=SPEC)
    args = parser.parse_args()
    if args.epochs < 1 or min(args.ks) < 1:
        parser.error("--epochs and every --ks value must be at least 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here. Use --device cpu for a smoke test")
    batch = load_spec(args.spec).optim.batch_size
    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    print(
        f"packing: variant {VARIANT} of {args.spec.name}, batch {batch}, synthetic {args.train}/{args.test}, "
        f"{WARMUP_EPOCHS} untimed + {args.epochs} timed epochs per process, {args.threads} torch thread(s) each"
    )
    print(f"device: {args.device} ({gpu}); torch {torch.__version__}; python {platform.python_version()}; cpus {os.cpu_count()}")
    print(f"{'K':>3} {'cuda_graph':>10} {'per-process/s':>14} {'min/s':>10} {'aggregate/s':>12} {'efficiency':>10} {'test_acc':>8} {'wall_s':>7}")
    settings = {"both": [True, False], "on": [True], "off": [False]}[args.graph]
    for cuda_graph in settings:
        alone = None
        for k in args.ks:
            wall = time.monotonic()
            mean, low, aggregate, acc = summarize(run_k(args, k, cuda_graph))
            alone = mean if k == 1 else alone
            efficiency = f"{aggregate / (k * alone):10.2f}" if alone else f"{'-':>10}"
            print(
                f"{k:3d} {str(cuda_graph).lower():>10} {mean:14,.0f} {low:10,.0f} {aggregate:12,.0f} {efficiency} {acc:8.2f} {time.monotonic() - wall:7.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
