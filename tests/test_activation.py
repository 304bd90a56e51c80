"""ReLU: forward against a loop over every element, backward against finite differences."""
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from minialex.functions.activation import relu
from minialex.gradcheck import gradcheck
from minialex.tensor import tensor

shapes = st.lists(st.integers(1, 4), min_size=1, max_size=4).map(tuple)
seeds = st.integers(0, 2**32 - 1)
dtypes = st.sampled_from([np.float32, np.float64])


def relu_naive(x):
    y = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        y[index] = x[index] if x[index] > 0 else 0.0
    return y


def relu_grad_naive(x, gy):
    gx = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        gx[index] = gy[index] if x[index] > 0 else 0.0
    return gx


@given(shape=shapes, seed=seeds, dtype=dtypes)
def test_forward_matches_loop(shape, seed, dtype):
    x = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    y = relu(tensor(x))
    assert y.dtype == dtype
    np.testing.assert_array_equal(y.numpy(), relu_naive(x))


@given(shape=shapes, seed=seeds, dtype=dtypes)
def test_backward_matches_loop(shape, seed, dtype):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    gy = rng.standard_normal(shape).astype(dtype)
    xt = tensor(x, requires_grad=True)
    relu(xt).backward(gy)
    assert xt.grad.dtype == dtype
    np.testing.assert_array_equal(xt.grad, relu_grad_naive(x, gy))


@given(shape=shapes, seed=seeds)
def test_gradcheck(shape, seed):
    rng = np.random.default_rng(seed)
    # keep every value at least 0.1 away from the kink at 0, where finite differences straddle it
    x = rng.choice([-1.0, 1.0], size=shape) * rng.uniform(0.1, 2.0, size=shape)
    gradcheck(relu, [tensor(x, requires_grad=True)])


def test_gradient_at_zero_is_zero():
    x = tensor(np.array([-1.0, 0.0, 2.0]), requires_grad=True)
    relu(x).backward(np.ones(3))
    np.testing.assert_array_equal(x.grad, [0.0, 0.0, 1.0])
