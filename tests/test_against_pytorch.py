"""An extra, optional check: the paper network agrees with PyTorch's layers on the same weights.

PyTorch is never a dependency of minialex; without it this file is skipped, and the gradient
checks elsewhere remain the proof. With it, logits, loss and every gradient must agree to
float64 rounding.
"""
import numpy as np
import pytest

import minialex as mx
import minialex.functional as F
from minialex import random
from minialex.tensor import tensor

torch = pytest.importorskip("torch")


def torch_paper_alexnet(c1, c2, c3, c4, c5, hidden, classes):
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(3, c1, 11, 4), nn.ReLU(), nn.LocalResponseNorm(5, 5e-4, 0.75, 2.0),
        nn.MaxPool2d(3, 2), nn.Conv2d(c1, c2, 5, padding=2, groups=2), nn.ReLU(),
        nn.LocalResponseNorm(5, 5e-4, 0.75, 2.0), nn.MaxPool2d(3, 2),
        nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(), nn.Conv2d(c3, c4, 3, padding=1, groups=2),
        nn.ReLU(), nn.Conv2d(c4, c5, 3, padding=1, groups=2), nn.ReLU(), nn.MaxPool2d(3, 2),
        nn.Flatten(), nn.Linear(c5 * 36, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
        nn.ReLU(), nn.Linear(hidden, classes)).double()


def test_paper_alexnet_matches_pytorch():
    random.manual_seed(0)
    model = mx.models.alexnet("paper", num_classes=4, width=0.125).double().eval()
    reference = torch_paper_alexnet(12, 32, 48, 48, 32, 512, 4).eval()
    with torch.no_grad():
        for p, q in zip(model.parameters(), reference.parameters()):
            assert tuple(p.shape) == tuple(q.shape)
            q.copy_(torch.from_numpy(p.data))
    x = np.random.default_rng(0).standard_normal((3, 3, 227, 227))
    labels = np.array([0, 3, 1])
    loss = F.cross_entropy(model(tensor(x)), labels)
    loss.backward()
    torch_loss = torch.nn.functional.cross_entropy(reference(torch.from_numpy(x)),
                                                   torch.from_numpy(labels))
    torch_loss.backward()
    assert loss.item() == pytest.approx(torch_loss.item(), rel=1e-12)
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        np.testing.assert_allclose(p.grad, q.grad.numpy(), rtol=1e-9, atol=1e-15, err_msg=name)
