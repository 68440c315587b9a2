"""One trial in plain PyTorch: device choice, the epoch loop, evaluation, checkpoint save and load.

Must not import Ray: this path runs on GPU machines that have torch alone.
"""

from __future__ import annotations

import json
import pickle
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from job.data import DeviceData, augment, batch_indices, device_data, load_arrays, to_device
from job.models import build_model
from job.results import EpochMetrics
from job.spec import SpecError, TrialSpec

EVAL_BATCH = 4096  # evaluation has no gradients: large batches cost nothing extra
WEIGHTS, TRIAL_JSON = "model.pt", "trial.json"
PRIVATE_ADAM_OPS = hasattr(torch, "_fused_adam_") and hasattr(torch, "_foreach_add_")  # what adam_step calls


def forward_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's mean loss (to step on) and [loss sum, correct count] (to add to the epoch's totals)."""
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    return loss, torch.stack([loss.detach() * len(y), (logits.argmax(1) == y).sum().to(loss.dtype)])


@dataclass
class TrainState:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    epoch: int = 0  # epochs completed
    graph: Any = None  # the captured CUDA-graph step, built on first use
    forward: Callable[..., tuple[torch.Tensor, torch.Tensor]] = forward_loss  # or its torch.compile'd form
    history: list[EpochMetrics] = field(default_factory=list)  # every epoch so far, also across resumes


def choose_device(threads: int | None = None, use_cuda: bool = True) -> torch.device:
    """CUDA when present (and wanted), else the CPU with `threads` intra-op threads (a trial's `cpus`)."""
    if threads:
        torch.set_num_threads(threads)
    return torch.device("cuda") if use_cuda and torch.cuda.is_available() else torch.device("cpu")


def new_state(trial: TrialSpec, device: torch.device) -> TrainState:
    torch.manual_seed(trial.seed)
    model = build_model(trial.model).to(device)
    if device.type == "cuda":  # NHWC convolutions run on tensor cores without transposes; Linear weights are left as they are
        model = model.to(memory_format=torch.channels_last)
    # The fused kernel does the whole Adam update in one pass; at batch 32 the update is about
    # half of each step, so this matters on the CPU as much as on CUDA.
    optimizer = torch.optim.Adam(
        model.parameters(),
        lr=trial.optim.lr,
        weight_decay=trial.optim.weight_decay,
        fused=True,
        capturable=device.type == "cuda",  # lets the step live inside a CUDA graph
    )
    state = TrainState(model, optimizer)
    if trial.optim.compile:
        # A reused Tune worker holds the previous trial's compiled graphs, whose recompiles count towards
        # Dynamo's limit: start from an empty cache, as a fresh process does.
        torch.compiler.reset()
        # Inductor fuses the elementwise work around the matrix products into a few kernels, which the
        # CUDA graph then captures; on CUDA autotuned matrix products help too (measured by
        # benchmarks/cuda_step_variants.py, numbers in the README). Compiling happens on first use.
        mode = "max-autotune-no-cudagraphs" if device.type == "cuda" else None  # the CUDA graph is ours
        state.forward = torch.compile(forward_loss, fullgraph=True, mode=mode)
    return state


def train_trial(trial: TrialSpec, device: torch.device, state: TrainState | None = None) -> Iterator[tuple[EpochMetrics, TrainState]]:
    """Train from `state` (or from scratch) to `trial.optim.epochs`, yielding after every epoch."""
    data = device_data(trial.data, trial.seed, device)
    state = state or new_state(trial, device)
    for epoch in range(state.epoch + 1, trial.optim.epochs + 1):
        # One generator per epoch, seeded by the epoch: a resumed trial sees the same batches.
        gen = torch.Generator().manual_seed(trial.seed * 1_000_003 + epoch)
        start = time.perf_counter()
        train_loss, train_acc = train_epoch(state, data, trial, gen)
        train_s = time.perf_counter() - start
        test_loss, test_acc = evaluate(state.model, data.x_test, data.y_test, _autocast(trial, device))
        state.epoch = epoch
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=train_loss,
            train_acc=train_acc,
            test_loss=test_loss,
            test_acc=test_acc,
            epoch_s=time.perf_counter() - start,
            samples_per_s=len(data.y_train) / train_s,
            device=device_name(device),
        )
        state.history.append(metrics)
        yield metrics, state


def train_epoch(state: TrainState, data: DeviceData, trial: TrialSpec, gen: torch.Generator) -> tuple[float, float]:
    """One pass over the training set; returns mean loss and accuracy (percent)."""
    device = data.x_train.device
    state.model.train()
    totals = torch.zeros(2, device=device)  # loss sum, correct count: kept on the device, no sync per step
    graph = _graph_for(state, trial, data) if device.type == "cuda" and trial.optim.cuda_graph else None
    seen = 0
    for idx in batch_indices(len(data.y_train), trial.optim.batch_size, gen, device):
        if graph is not None and len(idx) == trial.optim.batch_size:
            graph.run(idx, totals)
        else:
            _step(state, trial, data.x_train.index_select(0, idx), data.y_train.index_select(0, idx), totals)
        seen += len(idx)
    loss_sum, correct = totals.tolist()
    return loss_sum / seen, 100.0 * correct / seen


def _step(state: TrainState, trial: TrialSpec, x: torch.Tensor, y: torch.Tensor, totals: torch.Tensor) -> None:
    """Augment, forward, loss, backward, Adam; adds the batch's loss sum and correct count to `totals`."""
    if trial.data.augment:
        x = augment(x, trial.data.crop_padding)
    with _autocast(trial, x.device):
        loss, sums = state.forward(state.model, x, y)
    if x.device.type == "cpu":
        loss.backward()
        adam_step(state.optimizer)  # and drops the grads, as zero_grad(set_to_none=True) would
    else:
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        state.optimizer.step()
    totals += sums


def adam_step(optimizer: torch.optim.Optimizer) -> None:
    """`optimizer.step()` then `zero_grad(set_to_none=True)` of fused Adam, minus the wrappers' Python.

    On the CPU at batch 32 those wrappers (grad-mode and profiler hooks, state checks, regrouping)
    are a visible share of a step (benchmarks/epoch_throughput.py). This calls the kernel `Adam(fused=True)` calls and keeps the
    state entries `Adam` keeps, so results and checkpoints are bit-identical (tests/test_train.py).
    The ops are private: with a torch release that lacks them, this is the public two calls.
    """
    if not PRIVATE_ADAM_OPS:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return
    for group in optimizer.param_groups:
        params = [p for p in group["params"] if p.grad is not None]
        states = [optimizer.state[p] for p in params]
        for p, st in zip(params, states):
            if not st:  # Adam's own lazy initialization, for fused=True
                st["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        steps = [st["step"] for st in states]
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(
            params,
            [p.grad for p in params],
            [st["exp_avg"] for st in states],
            [st["exp_avg_sq"] for st in states],
            [],
            steps,
            amsgrad=False,
            lr=group["lr"],
            beta1=group["betas"][0],
            beta2=group["betas"][1],
            weight_decay=group["weight_decay"],
            eps=group["eps"],
            maximize=False,
        )
        for p in params:
            p.grad = None


class _GraphedStep:
    """The whole training step captured once as a CUDA graph, then replayed per batch.

    At batch 32 a step is a few dozen tiny kernels, so launch overhead dominates on a GPU; a replay
    launches them all at once (benchmarks/cuda_step_variants.py; numbers in the README). Fewer launches
    (the gather inside the graph, or a whole epoch as one graph) measured no faster: what is left is
    kernel time, which optim.compile cuts. Warm-up steps run on a copy of the state, which is then
    put back, so the graph changes no result: it trains the same steps as the eager loop.
    """

    def __init__(self, state: TrainState, trial: TrialSpec, data: DeviceData) -> None:
        device, batch = data.x_train.device, trial.optim.batch_size
        self.x = data.x_train[:batch].clone()
        self.y = data.y_train[:batch].clone()
        self.totals = torch.zeros(2, device=device)
        self.x_all, self.y_all = data.x_train, data.y_train
        saved = _snapshot(state)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):  # lets cuBLAS, autograd and Adam allocate before capture
                _step(state, trial, self.x, self.y, self.totals)
        torch.cuda.current_stream().wait_stream(side)
        _restore(state, saved)
        state.optimizer.zero_grad(set_to_none=True)  # grads are then allocated from the graph's pool
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            _step(state, trial, self.x, self.y, self.totals)

    def run(self, idx: torch.Tensor, totals: torch.Tensor) -> None:
        torch.index_select(self.x_all, 0, idx, out=self.x)
        torch.index_select(self.y_all, 0, idx, out=self.y)
        self.totals.zero_()
        self.graph.replay()
        totals += self.totals


def _graph_for(state: TrainState, trial: TrialSpec, data: DeviceData) -> _GraphedStep:
    if state.graph is None:
        state.graph = _GraphedStep(state, trial, data)
    return state.graph


def _snapshot(state: TrainState) -> dict[str, Any]:
    tensors = {**state.model.state_dict(), **{f"opt.{id(p)}.{k}": v for p, st in state.optimizer.state.items() for k, v in st.items()}}
    return {name: t.detach().clone() for name, t in tensors.items() if isinstance(t, torch.Tensor)}


def _restore(state: TrainState, saved: dict[str, Any]) -> None:
    """Put back the values taken by `_snapshot`, in place (the graph will hold these very tensors)."""
    with torch.no_grad():
        for name, tensor in state.model.state_dict().items():
            tensor.copy_(saved[name])
        for p, st in state.optimizer.state.items():
            for k, v in st.items():
                key = f"opt.{id(p)}.{k}"
                v.copy_(saved[key]) if key in saved else v.zero_()  # state created by the warm-up starts at zero


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, autocast: AbstractContextManager = nullcontext()) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (percent) in large batches, in eval mode."""
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.int64)
    for xb, yb in zip(x.split(EVAL_BATCH), y.split(EVAL_BATCH)):
        with autocast:
            logits = model(xb)
        loss_sum += F.cross_entropy(logits.float(), yb, reduction="sum")
        correct += (logits.argmax(1) == yb).sum()
    return loss_sum.item() / len(y), 100.0 * correct.item() / len(y)


def _autocast(trial: TrialSpec, device: torch.device) -> AbstractContextManager:
    if trial.optim.precision == "bf16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def save_checkpoint(folder: Path, state: TrainState, trial: TrialSpec, metrics: EpochMetrics) -> None:
    """Weights, optimizer and random state, plus a JSON that rebuilds the model with no sweep state
    and holds the trial's whole history (a resumed trial reports every epoch, whichever attempt ran it)."""
    folder.mkdir(parents=True, exist_ok=True)
    weights = {
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "epoch": state.epoch,
        # Dropout draws from the global generator: with it saved, a resumed trial is bit-identical.
        "rng": torch.get_rng_state(),
    }
    if metrics.device != "cpu":
        weights["cuda_rng"] = torch.cuda.get_rng_state()
    torch.save(weights, folder / WEIGHTS)
    meta = {
        "trial": trial.model_dump(mode="json"),
        "epoch": state.epoch,
        "metrics": metrics.to_dict(),
        "history": [m.to_dict() for m in state.history],
        "torch": torch.__version__,
    }
    (folder / TRIAL_JSON).write_text(json.dumps(meta, indent=2))


def load_checkpoint(folder: Path, device: torch.device) -> tuple[TrainState, TrialSpec, EpochMetrics]:
    """The saved state, ready to train on; an unreadable or inconsistent checkpoint is a `SpecError`."""
    try:
        meta = json.loads((folder / TRIAL_JSON).read_text())
        trial = TrialSpec.model_validate(meta["trial"])
        weights = torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True)
        state = new_state(trial, device)
        state.model.load_state_dict(weights["model"])
        state.optimizer.load_state_dict(weights["optimizer"])
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        raise SpecError(
            [f"{folder}: not a readable checkpoint ({type(err).__name__}). Use an intact folder from --checkpoint or --download-best"]
        ) from None
    if weights["epoch"] != meta["epoch"]:  # the weights and the JSON come from two different saves
        raise SpecError(
            [f"{folder}: {WEIGHTS} is from epoch {weights['epoch']} but {TRIAL_JSON} from epoch {meta['epoch']}. Use an intact checkpoint"]
        )
    state.epoch = weights["epoch"]
    state.history = [EpochMetrics.from_dict(row) for row in meta.get("history", [meta["metrics"]])]
    if "rng" in weights:
        torch.set_rng_state(weights["rng"])
    if "cuda_rng" in weights and device.type == "cuda":
        torch.cuda.set_rng_state(weights["cuda_rng"])
    return state, trial, EpochMetrics.from_dict(meta["metrics"])


def evaluate_checkpoint(folder: Path, device: torch.device) -> tuple[TrialSpec, float, float]:
    """Rebuild a checkpoint's model from its own JSON and score it on its test set."""
    state, trial, _ = load_checkpoint(folder, device)
    data = to_device(load_arrays(trial.data, trial.seed), device)
    loss, acc = evaluate(state.model, data.x_test, data.y_test, _autocast(trial, device))
    return trial, loss, acc
