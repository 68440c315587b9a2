"""job.models: the registry's MLP is the seed notebook's Net, DropoutNet and BNNet, parameter for parameter;
the conv net has the documented shape; every registered kind builds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from job.models import CLASSES, IN_FEATURES, Residual, build_model
from job.registry import MODEL_KINDS, KindSpec
from job.spec import CNNSpec, LinearSpec, MLPSpec, SpecError, parse_spec

NOTEBOOK = Path(__file__).resolve().parents[2] / "shared" / "seed" / "cifar10_mlp_notebook.txt"


def seed_classes() -> dict[str, type[nn.Module]]:
    """Net, DropoutNet and BNNet as the seed notebook defines them, run from its own text: each
    `class` line and the indented or blank lines under it, with the sizes of its cell In [2]."""
    if not NOTEBOOK.is_file():
        pytest.skip(f"the seed notebook is not at {NOTEBOOK} (../shared beside the checkout)")
    blocks, block = [], None
    for line in NOTEBOOK.read_text(encoding="utf-8").splitlines():
        if line.startswith("class "):
            block = [line]
            blocks.append(block)
        elif block is not None and (not line.strip() or line.startswith(" ")):
            block.append(line)
        else:
            block = None
    namespace = {"nn": nn, "F": F, "input_size": 32 * 32 * 3, "hidden_size": 128, "output_size": 10}
    exec(compile("\n".join(line for b in blocks for line in b), str(NOTEBOOK), "exec"), namespace)
    return {name: namespace[name] for name in ("Net", "DropoutNet", "BNNet")}


SEED_VARIANTS = {  # as in specs/cifar10.yaml: the seed's class name, our spec
    "basic": ("Net", MLPSpec(hidden=128)),
    "dropout": ("DropoutNet", MLPSpec(hidden=128, dropout=0.5)),
    "batchnorm": ("BNNet", MLPSpec(hidden=128, batch_norm=True)),
}
LAYERS = {
    "basic": [nn.Flatten, nn.Linear, nn.ReLU, nn.Linear],
    "dropout": [nn.Flatten, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear],
    "batchnorm": [nn.Flatten, nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear],
}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def images(n: int = 16) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("variant", SEED_VARIANTS)
def test_parameter_count_equals_the_seed(variant: str) -> None:
    seed_name, spec = SEED_VARIANTS[variant]
    seed_cls = seed_classes()[seed_name]
    ours, theirs = build_model(spec), seed_cls()
    assert n_params(ours) == n_params(theirs)
    assert [tuple(p.shape) for p in ours.parameters()] == [tuple(p.shape) for p in theirs.parameters()]
    assert [tuple(b.shape) for b in ours.buffers()] == [tuple(b.shape) for b in theirs.buffers()]


def test_parameter_counts_are_the_documented_ones() -> None:
    assert n_params(build_model(MLPSpec(hidden=128))) == 3072 * 128 + 128 + 128 * 10 + 10 == 394_634
    assert n_params(build_model(MLPSpec(hidden=128, batch_norm=True))) == 394_634 + 256


@pytest.mark.parametrize("variant", SEED_VARIANTS)
def test_layer_order(variant: str) -> None:
    model = build_model(SEED_VARIANTS[variant][1])
    assert [type(m) for m in model.children()] == LAYERS[variant]
    dropout = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert [d.p for d in dropout] == ([0.5] if variant == "dropout" else [])
    bn = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    assert [(b.eps, b.momentum, b.affine) for b in bn] == ([(1e-5, 0.1, True)] if variant == "batchnorm" else [])


@pytest.mark.parametrize("variant", SEED_VARIANTS)
def test_seed_weights_give_identical_outputs(variant: str) -> None:
    seed_name, spec = SEED_VARIANTS[variant]
    seed_cls = seed_classes()[seed_name]
    torch.manual_seed(0)
    theirs, ours = seed_cls(), build_model(spec)
    with torch.no_grad():  # non-trivial batch-norm statistics, so eval mode really uses them
        for name, buf in theirs.named_buffers():
            if name.endswith("running_mean"):
                buf.normal_(0.0, 0.3)
            elif name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
    theirs_sd, ours_sd = theirs.state_dict(), ours.state_dict()
    assert len(theirs_sd) == len(ours_sd)
    mapped = {ours_key: theirs_sd[theirs_key] for ours_key, theirs_key in zip(ours_sd, theirs_sd)}
    ours.load_state_dict(mapped)  # strict: every name and shape lines up in order
    x = images()
    theirs.eval(), ours.eval()
    with torch.no_grad():
        expected, got = theirs(x), ours(x)
    assert got.shape == (16, CLASSES)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("variant", ["basic", "batchnorm"])
def test_seed_weights_give_identical_outputs_in_train_mode(variant: str) -> None:
    seed_name, spec = SEED_VARIANTS[variant]
    seed_cls = seed_classes()[seed_name]
    theirs, ours = seed_cls(), build_model(spec)
    ours.load_state_dict(dict(zip(ours.state_dict(), theirs.state_dict().values())))
    x = images()
    torch.testing.assert_close(ours.train()(x), theirs.train()(x), rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(5, 3, 32, 32), (5, 3072)])
def test_output_shape(shape: tuple[int, ...]) -> None:
    for _, spec in SEED_VARIANTS.values():
        model = build_model(spec).eval()
        assert model(torch.zeros(shape)).shape == (5, 10)


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_depth_adds_hidden_layers(depth: int) -> None:
    model = build_model(MLPSpec(hidden=64, depth=depth, batch_norm=True, dropout=0.25))
    kinds = [type(m) for m in model.children()]
    assert kinds == [nn.Flatten] + [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout] * depth + [nn.Linear]
    linear = [m for m in model.children() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(IN_FEATURES, 64)] + [(64, 64)] * (depth - 1) + [(64, 10)]
    hidden = IN_FEATURES * 64 + 64 + (depth - 1) * (64 * 64 + 64) + depth * 2 * 64
    assert n_params(model) == hidden + 64 * 10 + 10
    assert model.eval()(images(3)).shape == (3, 10)


def test_linear_kind() -> None:
    model = build_model(LinearSpec())
    assert [type(m) for m in model.children()] == [nn.Flatten, nn.Linear]
    assert n_params(model) == 3072 * 10 + 10
    assert model(images(4)).shape == (4, 10)


def test_every_registered_kind_builds_a_network_from_its_defaults() -> None:
    assert set(MODEL_KINDS) >= {"mlp", "linear", "cnn"}
    for tag, spec in MODEL_KINDS.items():
        model = build_model(spec()).eval()
        assert model(images(2)).shape == (2, CLASSES), tag
    job = parse_spec({"name": "t", "variants": {"m": {}, "l": {"kind": "linear"}, "c": {"kind": "cnn", "width": 8}}})
    assert isinstance(build_model(job.variants["m"])[1], nn.Linear)
    assert n_params(build_model(job.variants["l"])) == 30_730
    assert isinstance(build_model(job.variants["c"])[0][0], nn.Conv2d)


def test_a_kind_whose_build_is_not_a_module_is_one_user_error() -> None:
    class Broken(KindSpec):
        kind: str = "broken"

        def build(self) -> object:
            return "a network"

    with pytest.raises(SpecError, match=r"model kind 'broken': Broken.build\(\) returned str, not a torch.nn.Module"):
        build_model(Broken())


def conv_params(c_in: int, c_out: int) -> int:
    return c_in * c_out * 9 + 2 * c_out  # a 3x3 conv without bias, then batch norm's weight and bias


@pytest.mark.parametrize("width, stages, blocks", [(16, 3, 1), (8, 2, 0), (4, 4, 2)])
def test_cnn_shape_and_parameter_count(width: int, stages: int, blocks: int) -> None:
    model = build_model(CNNSpec(width=width, stages=stages, blocks=blocks))
    widths = [width * 2**s for s in range(stages)]
    expected = conv_params(3, width) + CLASSES * (widths[-1] + 1)
    for previous, w in zip([width] + widths, widths):
        expected += conv_params(previous, w) + blocks * 2 * conv_params(w, w)
    assert n_params(model) == expected
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == stages
    assert sum(isinstance(m, Residual) for m in model.modules()) == stages * blocks
    assert [m.num_features for m in model.modules() if isinstance(m, nn.BatchNorm2d)][-1] == widths[-1]
    x = images(3)
    assert model.eval()(x).shape == (3, CLASSES)
    side = 32
    for layer in model:  # each stage halves the image side, down to 32 / 2**stages before global pooling
        if isinstance(layer, nn.AdaptiveMaxPool2d):
            break
        x = layer(x)
        side = x.shape[-1]
    assert side == 32 // 2**stages and x.shape[1] == widths[-1]


def test_cnn_residual_adds_its_input() -> None:
    block = Residual(8, "relu").eval()
    x = torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(block(x), x + block.body(x))
    with torch.no_grad():
        for m in block.body.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.zero_(), m.bias.zero_()  # the body now outputs ReLU(0) = 0: the block is the identity
    torch.testing.assert_close(block(x), x)


@pytest.mark.parametrize("activation, cls", [("relu", nn.ReLU), ("gelu", nn.GELU)])
def test_cnn_activation(activation: str, cls: type[nn.Module]) -> None:
    model = build_model(CNNSpec(width=4, stages=1, blocks=1, activation=activation))
    acts = [type(m) for m in model.modules() if isinstance(m, (nn.ReLU, nn.GELU))]
    assert acts == [cls] * 4  # stem, stage, and the residual's two
