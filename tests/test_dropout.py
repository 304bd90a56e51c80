"""dropout: the mask's statistics, its exact definition, eval mode, gradients, seeds, errors."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import minialex.random
from minialex.functions.dropout import dropout
from minialex.gradcheck import gradcheck
from minialex.tensor import tensor

seeds = st.integers(0, 2**32 - 1)
dtypes = [np.float32, np.float64]
# The statistical tests use a fixed seed, so they are deterministic; the bounds are 6 standard
# deviations, so that a correct implementation passes for (nearly) any seed, while a wrong p or a
# missing 1/(1-p) misses them by far more.
SIGMAS = 6


@pytest.mark.parametrize("dtype", dtypes)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_mean_is_preserved(p, dtype):
    minialex.random.manual_seed(0)
    x = np.random.default_rng(1).uniform(0.5, 1.5, size=200_000).astype(dtype)
    y = dropout(tensor(x), p).numpy().astype(np.float64)
    x = x.astype(np.float64)
    # y_i = x_i B_i / (1-p), B_i ~ Bernoulli(1-p): E[y_i] = x_i, Var[y_i] = x_i^2 p / (1-p)
    std_of_mean = math.sqrt((x**2).sum() * p / (1 - p)) / x.size
    assert abs(y.mean() - x.mean()) < SIGMAS * std_of_mean


@pytest.mark.parametrize("dtype", dtypes)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_fraction_dropped_is_p_and_survivors_are_scaled(p, dtype):
    minialex.random.manual_seed(0)
    x = np.random.default_rng(1).uniform(0.5, 1.5, size=200_000).astype(dtype)
    y = dropout(tensor(x), p).numpy()
    dropped = y == 0
    # the number dropped is Binomial(n, p): standard deviation sqrt(p (1-p) / n) as a fraction
    assert abs(dropped.mean() - p) < SIGMAS * math.sqrt(p * (1 - p) / x.size)
    kept = ~dropped
    np.testing.assert_allclose(y[kept], x[kept] / dtype(1 - p), rtol=1e-6)


@given(seed=seeds, p=st.floats(0.05, 0.95),
       shape=st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple),
       dtype=st.sampled_from(dtypes))
def test_mask_is_a_uniform_draw_compared_with_p(seed, p, shape, dtype):
    """The definition, element by element: keep x_i / (1-p) where u_i >= p, u drawn in x's dtype
    from minialex's generator."""
    x = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    minialex.random.manual_seed(seed)
    uniform = minialex.random.generator(np).random(shape, dtype=dtype)
    expected = np.zeros_like(x)
    for index in np.ndindex(shape):
        if uniform[index] >= p:
            expected[index] = x[index] / (1 - p)
    minialex.random.manual_seed(seed)
    y = dropout(tensor(x), p)
    assert y.dtype == dtype
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-6)


@given(seed=seeds, p=st.floats(0.0, 1.0),
       shape=st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple))
def test_gradcheck_with_the_mask_fixed_by_reseeding(seed, p, shape):
    x = np.random.default_rng(seed).standard_normal(shape)

    def dropout_with_fixed_mask(t):
        minialex.random.manual_seed(seed)  # every call draws the same mask
        return dropout(t, p)

    gradcheck(dropout_with_fixed_mask, [tensor(x, requires_grad=True)])


@pytest.mark.parametrize("dtype", dtypes)
def test_gradient_is_the_mask(dtype):
    minialex.random.manual_seed(3)
    x = tensor(np.ones((8, 16), dtype=dtype), requires_grad=True)
    y = dropout(x, 0.3)  # with x = 1, y is the mask itself
    y.backward(np.ones((8, 16), dtype=dtype))
    assert x.grad.dtype == dtype
    np.testing.assert_array_equal(x.grad, y.numpy())


@pytest.mark.parametrize("dtype", dtypes)
@pytest.mark.parametrize("p, training", [(0.5, False), (0.0, True), (0.0, False)])
def test_identity_in_eval_mode_and_for_p_zero(p, training, dtype):
    rng = np.random.default_rng(0)
    x = tensor(rng.standard_normal((3, 5)).astype(dtype), requires_grad=True)
    state = minialex.random.get_state()
    y = dropout(x, p, training=training)
    assert minialex.random.get_state() == state  # no random numbers were spent
    np.testing.assert_array_equal(y.numpy(), x.numpy())
    gy = rng.standard_normal((3, 5)).astype(dtype)
    y.backward(gy)  # still part of the graph: the gradient passes unchanged
    np.testing.assert_array_equal(x.grad, gy)


def test_p_one_drops_everything():
    x = tensor(np.ones((4, 6)), requires_grad=True)
    y = dropout(x, 1.0)
    assert np.all(y.numpy() == 0) and np.all(np.isfinite(y.numpy()))
    y.sum().backward()
    assert np.all(x.grad == 0)


def test_reproducible_with_manual_seed():
    x = tensor(np.ones((10, 10), dtype=np.float32))
    minialex.random.manual_seed(42)
    first, second = dropout(x).numpy(), dropout(x).numpy()
    minialex.random.manual_seed(42)
    again = dropout(x).numpy()
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, second)  # a fresh mask every call


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan"), "0.5", True])
def test_error_p_not_a_probability(p):
    with pytest.raises(ValueError, match=r"dropout: p must be a probability in \[0, 1\]"):
        dropout(tensor(np.ones(3)), p)


def test_error_integer_input():
    with pytest.raises(TypeError, match="dropout: input must be floating-point; got dtype int"):
        dropout(tensor(np.arange(3)), 0.5)
