"""flatten: forward against a loop that places every element by hand, backward by finite
differences, and the start_dim errors."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minialex.functions.shape import flatten
from minialex.gradcheck import gradcheck
from minialex.tensor import tensor

seeds = st.integers(0, 2**32 - 1)


@st.composite
def shapes_and_start_dims(draw):
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=4)))
    start_dim = draw(st.integers(-len(shape), len(shape) - 1))
    return shape, start_dim


def flatten_naive(x, start_dim):
    """Element x[i0, .., i{d-1}] goes to y[i0, .., i{s-1}, j], j the C-order position of
    (i{s}, .., i{d-1}) within the trailing axes."""
    s = start_dim % x.ndim
    trailing = x.shape[s:]
    y = np.zeros(x.shape[:s] + (int(np.prod(trailing)),), dtype=x.dtype)
    for index in np.ndindex(x.shape):
        j = 0
        for i, size in zip(index[s:], trailing):
            j = j * size + i
        y[index[:s] + (j,)] = x[index]
    return y


@given(shape_start=shapes_and_start_dims(), seed=seeds,
       dtype=st.sampled_from([np.float32, np.float64]))
def test_forward_matches_loop(shape_start, seed, dtype):
    shape, start_dim = shape_start
    x = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    y = flatten(tensor(x), start_dim)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y.numpy(), flatten_naive(x, start_dim))


@given(shape_start=shapes_and_start_dims(), seed=seeds)
def test_gradcheck(shape_start, seed):
    shape, start_dim = shape_start
    x = np.random.default_rng(seed).standard_normal(shape)
    gradcheck(lambda t: flatten(t, start_dim), [tensor(x, requires_grad=True)])


def test_alexnet_bridge_shape_and_float32_gradient():
    x = tensor(np.ones((2, 256, 6, 6), dtype=np.float32), requires_grad=True)
    y = flatten(x)
    assert y.shape == (2, 9216)
    y.sum().backward()
    assert x.grad.shape == (2, 256, 6, 6) and x.grad.dtype == np.float32


def test_empty_batch():
    assert flatten(tensor(np.zeros((0, 3, 2)))).shape == (0, 6)


@pytest.mark.parametrize("start_dim", [2, 5, -3])
def test_error_start_dim_out_of_range(start_dim):
    with pytest.raises(ValueError, match=rf"flatten: start_dim {start_dim} out of range for an "
                                         r"input of shape \(4, 5\) \(valid: -2 to 1\)"):
        flatten(tensor(np.zeros((4, 5))), start_dim)


def test_error_scalar():
    with pytest.raises(ValueError, match="0-d scalar"):
        flatten(tensor(np.float64(3.0)), 0)
