"""Where the CUDA step's time goes, and what would cut it: variants of the training step side by side.

Same data (synthetic, CIFAR-10's size, normalized on the device), model (batch-norm MLP, hidden 128),
batch 32 and fused capturable Adam; one training epoch each, best of `--repeats`, after warm-up:

  product    job.train.train_epoch as shipped: one CUDA graph per step, gather and totals outside it
  no-totals  in-graph below, without the loss/accuracy bookkeeping (what those kernels cost)
  in-graph   the gather inside the graph, indices read through a device-side step counter: one
             launch per step
  compiled   in-graph, with forward + loss + bookkeeping through torch.compile (Inductor fuses the
             elementwise work; its backward is captured in the same graph); and without bookkeeping

Usage: python benchmarks/cuda_step_variants.py [--repeats 2] [--skip-compile]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from epoch_throughput import BATCH, timed, trial_for  # this folder's other benchmark: its batch, trial and timer
from torch.nn import functional as F

from job import train as jobtrain
from job.data import DeviceData
from job.spec import DataSpec

N_TRAIN = 50_000
STEPS = N_TRAIN // BATCH
SYNTHETIC = DataSpec(dataset="synthetic")  # only names the dataset: the arrays are made below, on the device


def graphed(step: Callable[[], None]) -> torch.cuda.CUDAGraph:
    """Warm `step` up on a side stream, then capture it."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph


def in_graph_epoch(data: DeviceData, forward: Callable) -> Callable[[torch.Tensor], None]:
    """One graph per step whose gather reads batch `counter` of a device-side permutation."""
    device = data.x_train.device
    state = jobtrain.new_state(trial_for(SYNTHETIC), device)
    perm = torch.zeros(STEPS, BATCH, dtype=torch.long, device=device)
    counter = torch.zeros((), dtype=torch.long, device=device)
    totals = torch.zeros(2, device=device)

    def step() -> None:
        idx = perm.index_select(0, counter.view(1)).view(-1)
        x, y = data.x_train.index_select(0, idx), data.y_train.index_select(0, idx)
        loss, sums = forward(state.model, x, y)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        state.optimizer.step()
        if sums is not None:
            totals.add_(sums)
        counter.add_(1)

    graph = graphed(step)

    def epoch(order: torch.Tensor) -> None:
        perm.copy_(order[: STEPS * BATCH].view(STEPS, BATCH))
        counter.zero_()
        totals.zero_()
        for _ in range(STEPS):
            graph.replay()
        totals.tolist()

    return epoch


def forward_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    return loss, torch.stack([loss.detach() * len(y), (logits.argmax(1) == y).sum().float()])


def forward_only(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, None]:
    return F.cross_entropy(model(x), y), None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-compile", action="store_true")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune-no-cudagraphs")
    args = parser.parse_args()
    device = torch.device("cuda")
    torch.manual_seed(0)
    x = torch.randn(N_TRAIN, 3 * 32 * 32, device=device)
    y = torch.randint(0, 10, (N_TRAIN,), device=device)
    data = DeviceData(x, y, x[:1000], y[:1000])
    print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}; {STEPS} steps of {BATCH} per epoch", flush=True)
    order = lambda: torch.randperm(N_TRAIN, device=device)  # noqa: E731

    spec = trial_for(SYNTHETIC)
    state = jobtrain.new_state(spec, device)
    gen = torch.Generator().manual_seed(0)
    jobtrain.train_epoch(state, data, spec, gen)
    variants: dict[str, Callable[[], None]] = {"product": lambda: jobtrain.train_epoch(state, data, spec, gen)}
    builds = {"no-totals": lambda: in_graph_epoch(data, forward_only), "in-graph": lambda: in_graph_epoch(data, forward_loss)}
    if not args.skip_compile:
        compile = lambda fn: torch.compile(fn, fullgraph=True, mode=args.compile_mode)  # noqa: E731
        builds["compiled"] = lambda: in_graph_epoch(data, compile(forward_loss))
        builds["compiled-no-totals"] = lambda: in_graph_epoch(data, compile(forward_only))
    for name, build in builds.items():
        try:  # a report of what failed, not a crash: the other variants still print
            start = time.perf_counter()
            epoch = build()
            print(f"{name}: built and captured in {time.perf_counter() - start:.1f} s", flush=True)
            variants[name] = lambda epoch=epoch: epoch(order())
        except Exception as error:
            print(f"{name}: failed: {type(error).__name__}: {str(error).splitlines()[0][:300]}", flush=True)
    base = None
    for name, run in variants.items():
        run()
        seconds = min(timed(run, device) for _ in range(args.repeats))
        base = base or seconds
        print(f"{name:18s} {seconds:.3f} s/epoch  {seconds / STEPS * 1e6:6.1f} us/step  {base / seconds:.2f}x product", flush=True)


if __name__ == "__main__":
    main()
