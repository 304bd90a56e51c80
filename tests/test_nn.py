"""Modules: parameter discovery, state dicts, modes, initialisation."""
import math

import numpy as np
import pytest

from minialex import nn, random
from minialex.tensor import tensor


class TwoLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(4 * 5 * 5, 2))

    def forward(self, x):
        return self.head(self.conv(x))


def test_parameters_are_named_in_the_order_they_were_set():
    names = [name for name, _ in TwoLayers().named_parameters()]
    assert names == ["conv.weight", "conv.bias", "head.2.weight", "head.2.bias"]
    assert TwoLayers().num_parameters() == 4 * 3 * 9 + 4 + 100 * 2 + 2


def test_state_dict_round_trip_copies_values():
    source, target = TwoLayers(), TwoLayers()
    target.load_state_dict(source.state_dict())
    for (name, a), (_, b) in zip(source.named_parameters(), target.named_parameters()):
        np.testing.assert_array_equal(a.data, b.data, err_msg=name)
        assert a.data is not b.data  # copied, so training one does not move the other


def test_load_state_dict_lists_every_problem_and_loads_nothing():
    model = TwoLayers()
    before = {name: p.data.copy() for name, p in model.named_parameters()}
    state = {name: a.copy() for name, a in TwoLayers().state_dict().items()}
    del state["conv.bias"], state["head.2.bias"]
    state["extra.weight"] = np.zeros(3)
    state["head.2.weight"] = np.zeros((3, 100), np.float32)
    state["conv.weight"] = state["conv.weight"] + 1.0
    with pytest.raises(ValueError) as error:
        model.load_state_dict(state)
    message = str(error.value)
    for part in ["missing from the state dict: conv.bias, head.2.bias",
                 "unexpected in the state dict: extra.weight",
                 "head.2.weight: file has (3, 100), model has (2, 100)", "nothing was loaded"]:
        assert part in message
    for name, p in model.named_parameters():
        np.testing.assert_array_equal(p.data, before[name], err_msg=name)


def test_non_strict_load_returns_what_was_missing_and_unexpected():
    model = TwoLayers()
    state = dict(TwoLayers().state_dict())
    del state["conv.bias"]
    state["other"] = np.zeros(1)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert missing == ["conv.bias"] and unexpected == ["other"]


def test_train_and_eval_reach_every_layer():
    model = TwoLayers().eval()
    assert all(not m.training for m in model.modules())
    x = tensor(np.ones((2, 3, 5, 5), np.float32))
    np.testing.assert_array_equal(model(x).numpy(), model(x).numpy())  # dropout is off
    model.train()
    assert all(m.training for m in model.modules())


def test_pytorch_style_initialisation_bounds_and_spread():
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)): inside the bound, standard deviation bound/sqrt(3)."""
    random.manual_seed(0)
    conv = nn.Conv2d(64, 128, 3, groups=2)
    fan_in = 32 * 9
    bound = 1 / math.sqrt(fan_in)
    w = conv.weight.data
    assert w.dtype == np.float32 and np.abs(w).max() <= bound
    assert w.std() == pytest.approx(bound / math.sqrt(3), rel=0.02)
    assert nn.Linear(400, 10).weight.data.max() <= 1 / math.sqrt(400)


def test_manual_seed_makes_initialisation_repeatable():
    random.manual_seed(3)
    a = nn.Linear(5, 4).weight.data.copy()
    random.manual_seed(3)
    np.testing.assert_array_equal(a, nn.Linear(5, 4).weight.data)


def test_to_double_converts_every_parameter():
    model = TwoLayers().double()
    assert all(p.dtype == np.float64 for p in model.parameters())
    assert model(tensor(np.ones((1, 3, 5, 5)))).dtype == np.float64


def test_sequential_refuses_non_modules():
    with pytest.raises(TypeError, match="layer 1 is a function, not a Module"):
        nn.Sequential(nn.ReLU(), lambda x: x)


def test_conv2d_module_checks_groups():
    with pytest.raises(ValueError, match="divisible by groups=2"):
        nn.Conv2d(3, 4, 3, groups=2)


def test_linear_layer_fed_the_wrong_feature_size():
    with pytest.raises(ValueError, match=r"9216 features but weight expects 1024"):
        nn.Linear(1024, 8)(tensor(np.ones((2, 9216), np.float32)))


def test_zero_grad_clears_every_gradient():
    model = TwoLayers()
    model(tensor(np.ones((1, 3, 5, 5), np.float32))).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())
