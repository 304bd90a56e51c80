"""Stochastic gradient descent with momentum and weight decay, and the learning-rate schedule
of the paper.

The paper's rule (§5), with momentum mu = 0.9, weight decay lambda = 0.0005, learning rate lr:

    v <- mu v - lambda lr w - lr dL/dw
    w <- w + v

PyTorch's rule, which this class follows so that learning rates carry over:

    u <- mu u + (dL/dw + lambda w)
    w <- w - lr u

They are the same update: substitute v = -lr u. With a constant lr they give identical weights
step for step (a test checks this). They differ only when lr changes: the paper's velocity keeps
the old lr inside it for a while, PyTorch's applies the new lr at once.
"""
import math
import numbers

from . import backend, dispatch
from .tensor import Tensor


class SGD:
    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0):
        self.params = list(params)
        if not self.params:
            raise ValueError("SGD: got an empty list of parameters")
        for index, p in enumerate(self.params):
            if not isinstance(p, Tensor):
                raise TypeError(f"SGD: parameter {index} is a {type(p).__name__}, not a Tensor")
        _check_hyperparameters("SGD", lr, momentum, weight_decay)
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.velocity = [None] * len(self.params)  # u for each parameter, made on first use

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self):
        """One update of every parameter that has a gradient, in place."""
        updates = []  # (w, grad, u) of every parameter to update; u is None without momentum
        for index, p in enumerate(self.params):
            if p.grad is None:
                continue
            u = None
            if self.momentum:
                u = self.velocity[index]
                if u is not None and backend.device_of(u) != p.device:  # model.to() since
                    u = self.velocity[index] = backend.to_device(u, p.device)
                if u is None:  # the first step: u = mu 0 + (grad + lambda w)
                    u = self.velocity[index] = backend.get_array_module(p.data).zeros_like(
                        p.data)
            updates.append((p.data, p.grad, u))
        if updates:  # a fast path may do them differently (minialex/dispatch.py)
            dispatch.fast_version(self, updates[0][0]).apply(updates)

    def apply(self, updates):
        for w, grad, u in updates:
            self.update(w, grad, u)

    def update(self, w, grad, u):
        """w, grad, u: a parameter, its gradient and its velocity (None without momentum)."""
        if self.weight_decay:
            grad = grad + self.weight_decay * w
        if u is not None:
            u *= self.momentum
            u += grad
            grad = u
        w -= self.lr * grad

    def state_dict(self):
        """The hyper-parameters and the velocities, for checkpoints."""
        return {"lr": self.lr, "momentum": self.momentum, "weight_decay": self.weight_decay,
                "velocity": {str(i): u for i, u in enumerate(self.velocity) if u is not None}}

    def load_state_dict(self, state):
        _check_hyperparameters("SGD.load_state_dict", state["lr"], state["momentum"],
                               state["weight_decay"])
        velocity = state["velocity"]
        for key, u in velocity.items():
            index = int(key)
            if index >= len(self.params) or tuple(u.shape) != tuple(self.params[index].shape):
                expected = tuple(self.params[index].shape) if index < len(self.params) else None
                raise ValueError(f"SGD.load_state_dict: velocity {key} has shape "
                                 f"{tuple(u.shape)}, but the parameter has shape {expected}")
        self.lr, self.momentum = state["lr"], state["momentum"]
        self.weight_decay = state["weight_decay"]
        self.velocity = [None] * len(self.params)
        for key, u in velocity.items():
            p = self.params[int(key)]
            self.velocity[int(key)] = backend.to_device(u, p.device).astype(p.dtype, copy=True)


def _check_hyperparameters(where, lr, momentum, weight_decay):
    """Finite numbers, not bools: one NaN would make every weight NaN at the first step."""
    for name, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{where}: {name} must be a number; got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{where}: {name} must be finite; got {name}={value!r}")
    if lr <= 0 or momentum < 0 or weight_decay < 0:
        raise ValueError(f"{where}: needs lr > 0, momentum >= 0, weight_decay >= 0; got "
                         f"lr={lr}, momentum={momentum}, weight_decay={weight_decay}")


class ReduceLROnPlateau:
    """Divide the learning rate by 10 when the validation loss stops improving (§5: "the
    heuristic ... was to divide the learning rate by 10 when the validation error rate stopped
    improving with the current learning rate").

    step(metric) after each epoch; after `patience` epochs without an improvement of more than
    `threshold` (relative), lr <- lr * factor.
    """

    def __init__(self, optimizer, factor=0.1, patience=2, threshold=1e-4, min_lr=0.0):
        self.optimizer, self.factor, self.patience = optimizer, factor, patience
        self.threshold, self.min_lr = threshold, min_lr
        self.best, self.bad_epochs = float("inf"), 0

    def step(self, metric):
        if metric < self.best * (1 - self.threshold):
            self.best, self.bad_epochs = metric, 0
            return False
        self.bad_epochs += 1
        if self.bad_epochs > self.patience:
            self.optimizer.lr = max(self.optimizer.lr * self.factor, self.min_lr)
            self.bad_epochs = 0
            return True
        return False

    def state_dict(self):
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state):
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]
