"""job.models: the registry's MLP is the seed notebook's Net, DropoutNet and BNNet, parameter for parameter."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from job.models import CLASSES, IN_FEATURES, MODELS, build_model
from job.spec import LinearSpec, MLPSpec, parse_spec

# ---- The seed notebook's three classes, verbatim (cifar10_mlp_notebook.txt, In [2] and In [10]) ----
input_size = 32 * 32 * 3
hidden_size = 128
output_size = 10


class Net(nn.Module):
    def __init__(self):
        super(Net, self).__init__()
        self.fc1 = nn.Linear(input_size, hidden_size) # input, output
        self.fc2 = nn.Linear(hidden_size, output_size)

    def forward(self, x):
        x = x.view(-1, self.num_flat_features(x))
        x = F.relu(self.fc1(x))
        x = self.fc2(x)
        return x

    def num_flat_features(self, x):
        size = x.size()[1:]
        num_features = 1
        for s in size:
            num_features *= s
        return num_features


# Dropout
class DropoutNet(nn.Module):
    def __init__(self):
        super(DropoutNet, self).__init__()
        self.fc1 = nn.Linear(input_size, hidden_size) # input, output
        self.fc2 = nn.Linear(hidden_size, output_size)
        self.dropout = nn.Dropout(p=0.5)

    def forward(self, x):
        x = x.view(-1, self.num_flat_features(x))
        x = self.dropout(F.relu(self.fc1(x)))
        x = self.fc2(x)
        return x

    def num_flat_features(self, x):
        size = x.size()[1:]
        num_features = 1
        for s in size:
            num_features *= s
        return num_features

# Batch Normalization
class BNNet(nn.Module):
    def __init__(self):
        super(BNNet, self).__init__()
        self.linear1 = nn.Linear(input_size, hidden_size)
        self.bn1 = nn.BatchNorm1d(hidden_size)
        self.linear2 = nn.Linear(hidden_size, output_size)

    def forward(self, x):
        x = x.view(-1, self.num_flat_features(x))
        x = F.relu(self.bn1(self.linear1(x)))
        x = self.linear2(x)
        return x

    def num_flat_features(self, x):
        size = x.size()[1:]
        num_features = 1
        for s in size:
            num_features *= s
        return num_features
# ---- end of the seed's code ----

SEED_VARIANTS = {  # as in specs/cifar10.yaml
    "basic": (Net, MLPSpec(hidden=128)),
    "dropout": (DropoutNet, MLPSpec(hidden=128, dropout=0.5)),
    "batchnorm": (BNNet, MLPSpec(hidden=128, batch_norm=True)),
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
    seed_cls, spec = SEED_VARIANTS[variant]
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
    seed_cls, spec = SEED_VARIANTS[variant]
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
    seed_cls, spec = SEED_VARIANTS[variant]
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


def test_registry_matches_the_spec_kinds() -> None:
    assert set(MODELS) == {"mlp", "linear"}
    job = parse_spec({"name": "t", "variants": {"m": {}, "l": {"kind": "linear"}}})
    assert isinstance(build_model(job.variants["m"])[1], nn.Linear)
    assert n_params(build_model(job.variants["l"])) == 30_730
