"""A short tour of minialex: build AlexNet, print its layers, take one training step, save and
load it, and check a gradient by finite differences. Runs on a CPU in a few seconds.

    python examples/demo.py
"""
import os
import tempfile

import numpy as np

import minialex as mx
import minialex.functional as F
from minialex import optim


def main():
    mx.random.manual_seed(0)
    model = mx.models.alexnet(variant="paper", num_classes=10)
    print(model.summary(input_shape=(3, 227, 227)))

    rng = np.random.default_rng(0)
    x = mx.tensor(rng.standard_normal((2, 3, 227, 227)).astype(np.float32))
    labels = np.array([1, 7])
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    for step in range(3):
        loss = F.cross_entropy(model(x), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        print(f"step {step}: loss {loss.item():.4f}")

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "alexnet.npz")
        mx.save(model.state_dict(), path)
        model.load_state_dict(mx.load(path))
        print(f"saved and loaded {path} ({os.path.getsize(path) / 2**20:.1f} MiB, no pickle)")

    # backward against finite differences, in float64, on a small convolution
    xs = mx.tensor(rng.standard_normal((1, 4, 7, 7)), requires_grad=True)
    w = mx.tensor(rng.standard_normal((6, 2, 3, 3)), requires_grad=True)
    ok = mx.gradcheck(lambda a, b: F.conv2d(a, b, stride=2, padding=1, groups=2), [xs, w])
    print("gradcheck of conv2d (groups=2, stride 2, padding 1):", "passed" if ok else "failed")


if __name__ == "__main__":
    main()
