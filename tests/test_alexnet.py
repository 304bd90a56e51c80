"""AlexNet: the variants' parameter counts and shapes, summary(), and a whole network checked
end to end against finite differences."""
import re

import numpy as np
import pytest

import minialex as mx
import minialex.functional as F
from minialex import nn, optim, random
from minialex.tensor import tensor

# From ALEXNET.md (counted by hand and by independent implementations), not from this code.
PARAMETERS = {"paper": 60_965_224, "seed": 62_378_344, "torchvision": 61_100_840}

# Seed 003's Keras table, row for row: (layer, output shape without the batch, parameters).
SEED_003_TABLE = [
    ("conv", (96, 55, 55), 34_944), ("pool", (96, 27, 27), 0),
    ("conv", (256, 27, 27), 614_656), ("pool", (256, 13, 13), 0),
    ("conv", (384, 13, 13), 885_120), ("conv", (384, 13, 13), 1_327_488),
    ("conv", (256, 13, 13), 884_992), ("pool", (256, 6, 6), 0),
    ("flatten", (9216,), 0), ("dense", (4096,), 37_752_832), ("dense", (4096,), 16_781_312),
    ("dense", (1000,), 4_097_000),
]


@pytest.mark.parametrize("variant", sorted(PARAMETERS))
def test_parameter_counts(variant):
    assert mx.models.alexnet(variant).num_parameters() == PARAMETERS[variant]


def parse_summary(text):
    rows = []
    for line in text.splitlines():
        match = re.match(r"(\w+)(?: \d+)? \(\w+\)\s+\(N, ([\d, ]+)\)\s+([\d,]+)$", line.strip())
        if match:
            shape = tuple(int(s) for s in match.group(2).split(","))
            rows.append((match.group(1), shape, int(match.group(3).replace(",", ""))))
    return rows


def test_seed_summary_reproduces_seed_003_row_for_row():
    text = mx.models.alexnet("seed").summary(input_shape=(3, 227, 227))
    assert parse_summary(text) == SEED_003_TABLE
    assert "Total params: 62,378,344" in text.splitlines()[-2]


def test_paper_summary_shows_lrn_and_the_total():
    text = mx.models.alexnet("paper").summary()
    rows = parse_summary(text)
    assert [kind for kind, _, _ in rows].count("lrn") == 2
    assert rows[-1] == ("dense", (1000,), 4_097_000)
    assert "Total params: 60,965,224" in text
    # the grouped convolutions hold half the weights of the single-tower ones
    assert ("conv", (256, 27, 27), 256 * 48 * 25 + 256) in rows


def test_show_all_lists_relu_and_dropout():
    text = mx.models.alexnet("paper").summary(show_all=True)
    assert len(re.findall(r"\(ReLU\)", text)) == 7 and len(re.findall(r"\(Dropout\)", text)) == 2


@pytest.mark.parametrize("variant", ["paper", "seed", "torchvision"])
def test_forward_shape_and_torchvision_names(variant):
    model = mx.models.alexnet(variant, num_classes=10, width=0.25)
    size = model.input_size
    y = model(tensor(np.zeros((2, 3, size, size), np.float32)))
    assert y.shape == (2, 10) and y.dtype == np.float32
    names = [name for name, _ in model.named_parameters()]
    assert names[0] == "features.0.weight" and names[-1].startswith("classifier.")


def test_torchvision_variant_uses_torchvision_parameter_names():
    names = [name for name, _ in mx.models.alexnet("torchvision").named_parameters()]
    expected = [f"features.{i}.{k}" for i in (0, 3, 6, 8, 10) for k in ("weight", "bias")]
    expected += [f"classifier.{i}.{k}" for i in (1, 4, 6) for k in ("weight", "bias")]
    assert names == expected


def test_paper_initialisation():
    random.manual_seed(0)
    model = mx.models.alexnet("paper", init="paper", width=0.5)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.classifier if isinstance(m, nn.Linear)]
    biases = [float(layer.bias.data[0]) for layer in convs + linears]
    assert biases == [0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0]  # §5
    assert linears[0].weight.data.std() == pytest.approx(0.01, rel=0.01)


def test_unknown_variant():
    with pytest.raises(ValueError, match=r"unknown variant 'vgg'.*paper"):
        mx.models.alexnet("vgg")


class TinyAlexNet(nn.Module):
    """AlexNet's structure at toy size: grouped conv, ReLU, LRN, overlapping max-pool, dropout,
    fully connected layers and the fused loss."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, stride=2), nn.ReLU(), nn.LocalResponseNorm(3, 5e-2, 0.75, 2.0),
            nn.MaxPool2d(3, stride=2),                      # (N, 4, 2, 2) from 11x11
            nn.Conv2d(4, 6, 3, padding=1, groups=2), nn.ReLU(),
            nn.MaxPool2d(2, stride=1))                      # (N, 6, 1, 1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.ReLU(),
                                        nn.Dropout(0.5), nn.Linear(5, 3))

    def forward(self, x):
        return self.classifier(self.features(x))


def test_whole_network_gradients_match_finite_differences():
    random.manual_seed(1)
    model = TinyAlexNet().double()
    rng = np.random.default_rng(2)
    x = tensor(rng.standard_normal((2, 3, 11, 11)), requires_grad=True)
    labels = np.array([0, 2])
    params = model.parameters()

    def loss_of(x, *weights):
        random.manual_seed(7)  # the same dropout mask at every evaluation
        return F.cross_entropy(model(x), labels)

    assert mx.gradcheck(loss_of, [x, *params], atol=1e-6, rtol=1e-4)


def test_the_readme_example_runs(tmp_path):
    x = mx.tensor(np.random.default_rng(0).standard_normal((2, 3, 227, 227)).astype(np.float32))
    model = mx.models.alexnet(variant="paper", num_classes=10)
    assert "Total params" in model.summary(input_shape=(3, 227, 227))
    loss = F.cross_entropy(model(x), np.array([1, 7]))
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    before = model.classifier[-1].weight.data.copy()
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert not np.array_equal(before, model.classifier[-1].weight.data)
    path = tmp_path / "alexnet.npz"
    mx.save(model.state_dict(), path)
    fresh = mx.models.alexnet(variant="paper", num_classes=10)
    fresh.load_state_dict(mx.load(path))
    for (name, a), (_, b) in zip(model.named_parameters(), fresh.named_parameters()):
        np.testing.assert_array_equal(a.data, b.data, err_msg=name)


def test_sgd_steps_fit_a_fixed_batch():
    """Training works at all: SGD memorises one small batch of the AlexNet-shaped network."""
    random.manual_seed(0)
    model = TinyAlexNet().eval()  # no dropout: the same function at every step
    rng = np.random.default_rng(0)
    x = tensor(rng.standard_normal((6, 3, 11, 11)).astype(np.float32))
    labels = np.array([0, 1, 2, 0, 1, 2])
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(60):
        loss = F.cross_entropy(model(x), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0], losses


def test_a_training_step_stays_in_float32(monkeypatch):
    """Every op's output in a paper-AlexNet step is float32: no silent float64 temporaries.
    (Backward refuses a gradient whose dtype differs from its input's, so grads are covered.)"""
    dtypes = set()
    original_call = mx.Function.__call__

    def recording_call(self, *inputs):
        output = original_call(self, *inputs)
        dtypes.add((type(self).__name__, str(output.dtype)))
        return output

    monkeypatch.setattr(mx.Function, "__call__", recording_call)
    model = mx.models.alexnet("paper", num_classes=5, width=0.125)
    x = tensor(np.random.default_rng(0).standard_normal((2, 3, 227, 227)).astype(np.float32))
    loss = F.cross_entropy(model(x), np.array([0, 4]))
    loss.backward()
    optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4).step()
    assert {dtype for _, dtype in dtypes} == {"float32"}, sorted(dtypes)
    assert len({name for name, _ in dtypes}) >= 7  # conv, relu, lrn, pool, flatten, ...
    assert all(p.dtype == np.float32 and p.grad.dtype == np.float32 for p in model.parameters())


def test_kaiming_initialisation():
    """He et al.: N(0, 2 / fan_in) before a ReLU, N(0, 1 / fan_in) for the last layer; biases 0."""
    random.manual_seed(0)
    model = mx.models.alexnet("seed", init="kaiming", width=0.5)
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for index, layer in enumerate(layers):
        fan_in = layer.weight.size // layer.weight.shape[0]
        gain = 1.0 if index == len(layers) - 1 else 2.0
        assert layer.weight.data.std() == pytest.approx(np.sqrt(gain / fan_in), rel=0.05)
        assert not layer.bias.data.any()


@pytest.mark.parametrize("variant", ["paper", "seed", "torchvision"])
def test_dropout_argument_sets_every_dropout_layer(variant):
    model = mx.models.alexnet(variant, num_classes=10, width=0.0625, dropout=0.2)
    probabilities = [m.p for m in model.modules() if isinstance(m, nn.Dropout)]
    assert probabilities == [0.2, 0.2]
    # dropout 0 in training mode is the identity: two passes give the same logits
    model = mx.models.alexnet(variant, num_classes=10, width=0.0625, dropout=0.0).train()
    x = tensor(np.random.default_rng(0).standard_normal((2, 3, model.input_size,
                                                         model.input_size), dtype=np.float32))
    np.testing.assert_array_equal(model(x).numpy(), model(x).numpy())
    with pytest.raises(ValueError, match="dropout must be in"):
        mx.models.alexnet(variant, dropout=1.0)
