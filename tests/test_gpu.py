"""The CUDA path: the CUDA-graph step trains exactly like the eager loop, bf16 autocast trains, and
checkpoints round-trip on the GPU. Skipped where there is no CUDA (every CI machine here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from job import train
from job.spec import parse_spec, resolve_trial

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def trial_with(**optim):
    job = parse_spec(
        {
            "name": "gpu",
            "variants": {"bn": {"batch_norm": True}, "do": {"dropout": 0.5}},
            "data": {"dataset": "synthetic", "synthetic_train": 4000, "synthetic_test": 1000},
            "optim": {"lr": 1e-3, "batch_size": 32, "epochs": 2, **optim},
        }
    )
    return resolve_trial(job, "bn", {})


def test_cuda_graph_step_trains_like_the_eager_loop() -> None:
    device = torch.device("cuda")
    graphed = list(train.train_trial(trial_with(cuda_graph=True), device))
    eager = list(train.train_trial(trial_with(cuda_graph=False), device))
    for (g, g_state), (e, e_state) in zip(graphed, eager):
        assert g.train_loss == pytest.approx(e.train_loss, rel=1e-3)
        assert g.test_acc == pytest.approx(e.test_acc, abs=0.5)
    for p, q in zip(graphed[-1][1].model.parameters(), eager[-1][1].model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4)


def test_compiled_forward_inside_the_cuda_graph_trains_like_the_eager_loop() -> None:
    device = torch.device("cuda")
    compiled = list(train.train_trial(trial_with(compile=True), device))
    eager = list(train.train_trial(trial_with(cuda_graph=False), device))
    assert compiled[-1][1].graph is not None and compiled[-1][1].forward is not train.forward_loss
    for (c, _), (e, _) in zip(compiled, eager, strict=True):
        assert c.train_loss == pytest.approx(e.train_loss, rel=1e-2)
        assert c.test_acc == pytest.approx(e.test_acc, abs=1.5)


def test_bf16_autocast_trains_well_above_chance() -> None:
    metrics = [m for m, _ in train.train_trial(trial_with(precision="bf16"), torch.device("cuda"))]
    assert metrics[-1].test_acc > 30 and metrics[-1].device != "cpu"


def test_checkpoint_round_trip_on_cuda(tmp_path: Path) -> None:
    device = torch.device("cuda")
    trial = trial_with()
    metrics, state = next(iter(train.train_trial(trial, device)))
    train.save_checkpoint(tmp_path, state, trial, metrics)
    _, loss, acc = train.evaluate_checkpoint(tmp_path, device)
    assert acc == pytest.approx(metrics.test_acc) and loss == pytest.approx(metrics.test_loss, rel=1e-4)
