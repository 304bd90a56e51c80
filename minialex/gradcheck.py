"""Numerical gradient checks: is backward the derivative of forward?

For a function f of tensors, we check the analytic gradient that backward() computes against
central differences in float64:

    dL/dx_i  ~  (L(x + eps e_i) - L(x - eps e_i)) / (2 eps),     L = sum(f(x) * r)

where r is a fixed random tensor shaped like the output, so every output element counts (a
plain sum would hide errors that cancel). The error of central differences is O(eps^2), which
is why the inputs must be float64: in float32 the rounding error, ~1e-7 / eps, swamps it.

Checking every element costs two forward passes per element. For large inputs (a 60M-weight
layer) we check along random directions d instead (chainer's `check_backward` does this):

    <dL/dx, d>  ~  (L(x + eps d) - L(x - eps d)) / (2 eps)

which costs two forward passes per direction and still catches a wrong gradient in any element
with probability 1.
"""
import numpy as np

from .backend import as_numpy, get_array_module
from .tensor import Tensor

# Inputs with more elements than this are checked along random directions, not element-wise.
ELEMENTWISE_LIMIT = 4096


class GradcheckError(AssertionError):
    """The analytic and numerical gradients disagree."""


def _loss(fn, inputs, weights):
    """L = sum(f(inputs) * weights), as a Python float in float64."""
    out = fn(*inputs)
    out_data = out.data if isinstance(out, Tensor) else out
    return float(as_numpy((out_data * weights).sum()))


def _numerical_directional(fn, inputs, x, direction, weights, eps):
    """(L(x + eps d) - L(x - eps d)) / (2 eps), restoring x afterwards."""
    original = x.data.copy()
    try:
        x.data = original + eps * direction
        plus = _loss(fn, inputs, weights)
        x.data = original - eps * direction
        minus = _loss(fn, inputs, weights)
    finally:
        x.data = original
    return (plus - minus) / (2 * eps)


def numerical_grad(fn, inputs, x, weights, eps=1e-6):
    """dL/dx element by element with central differences, L = sum(fn(*inputs) * weights)."""
    xp = get_array_module(x.data)
    grad = np.zeros(x.shape)
    flat_direction = xp.zeros(x.size, dtype=x.dtype)
    for i in range(x.size):
        flat_direction[i] = 1.0
        grad.flat[i] = _numerical_directional(
            fn, inputs, x, flat_direction.reshape(x.shape), weights, eps)
        flat_direction[i] = 0.0
    return grad


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, directions=3, seed=0,
              elementwise_limit=ELEMENTWISE_LIMIT):
    """Check the gradients of `fn(*inputs)` for every input that requires a gradient.

    fn:         a deterministic function of Tensors returning a Tensor (fix any randomness,
                such as dropout's mask, inside fn)
    inputs:     Tensors; those with requires_grad=True are checked; they must be float64
    directions: how many random directions to try for inputs above `elementwise_limit`
    Returns True, or raises GradcheckError naming the input and the worst disagreement.
    """
    checked = [x for x in inputs if isinstance(x, Tensor) and x.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input has requires_grad=True, so there is nothing "
                         "to check")
    for x in checked:
        if x.dtype != np.float64:
            raise TypeError(f"gradcheck: inputs must be float64 for finite differences to be "
                            f"accurate; got {x.dtype} for an input of shape {x.shape}")
    rng = np.random.default_rng(seed)

    out = fn(*inputs)
    xp = get_array_module(out.data)
    weights = xp.asarray(rng.standard_normal(out.shape))
    for x in checked:
        x.grad = None
    (out * Tensor(weights)).sum().backward()

    for position, x in enumerate(inputs):
        if not (isinstance(x, Tensor) and x.requires_grad):
            continue
        analytic = np.zeros(x.shape) if x.grad is None else as_numpy(x.grad)
        label = f"input {position} of shape {tuple(x.shape)}"
        if x.size <= elementwise_limit:
            numerical = numerical_grad(fn, inputs, x, weights, eps)
            _compare(analytic, numerical, atol, rtol, label)
        else:
            for _ in range(directions):
                direction = rng.standard_normal(x.shape)
                expected = _numerical_directional(fn, inputs, x, xp.asarray(direction),
                                                  weights, eps)
                got = float((analytic * direction).sum())
                _compare(np.array([got]), np.array([expected]), atol, rtol,
                         label + " (along a random direction)")
    return True


def _compare(analytic, numerical, atol, rtol, label):
    error = np.abs(analytic - numerical)
    bound = atol + rtol * np.abs(numerical)
    if np.all(error <= bound):
        return
    worst = np.unravel_index(np.argmax(error - bound), error.shape)
    raise GradcheckError(
        f"gradcheck failed for {label}: {int((error > bound).sum())} of {error.size} elements "
        f"disagree; worst at index {tuple(int(i) for i in worst)}: backward gave "
        f"{analytic[worst]:.8g}, finite differences {numerical[worst]:.8g}")
