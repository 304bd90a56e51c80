"""linear: forward against a triple loop, backward against finite differences, and the errors."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minialex.functions.linear import linear
from minialex.gradcheck import gradcheck
from minialex.tensor import tensor

sizes = st.integers(1, 5)  # 1 included: batch 1, a single feature, a single output unit
seeds = st.integers(0, 2**32 - 1)
dtypes = st.sampled_from([np.float32, np.float64])


def linear_naive(x, weight, bias):
    """y[n, o] = sum_i x[n, i] weight[o, i] + bias[o], in float64."""
    n_batch, n_in = x.shape
    n_out = weight.shape[0]
    y = np.zeros((n_batch, n_out))
    for n in range(n_batch):
        for o in range(n_out):
            total = 0.0 if bias is None else float(bias[o])
            for i in range(n_in):
                total += float(x[n, i]) * float(weight[o, i])
            y[n, o] = total
    return y


def random_inputs(seed, n, n_in, n_out, dtype):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, n_in)).astype(dtype)
    weight = rng.standard_normal((n_out, n_in)).astype(dtype)
    bias = rng.standard_normal(n_out).astype(dtype)
    return x, weight, bias


@given(n=sizes, n_in=sizes, n_out=sizes, with_bias=st.booleans(), seed=seeds, dtype=dtypes)
def test_forward_matches_loop(n, n_in, n_out, with_bias, seed, dtype):
    x, weight, bias = random_inputs(seed, n, n_in, n_out, dtype)
    bias = bias if with_bias else None
    y = linear(tensor(x), tensor(weight), None if bias is None else tensor(bias))
    assert y.shape == (n, n_out) and y.dtype == dtype
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y.numpy(), linear_naive(x, weight, bias),
                               rtol=tolerance, atol=tolerance)


@given(n=sizes, n_in=sizes, n_out=sizes, with_bias=st.booleans(), seed=seeds)
def test_gradcheck(n, n_in, n_out, with_bias, seed):
    x, weight, bias = random_inputs(seed, n, n_in, n_out, np.float64)
    inputs = [tensor(x, requires_grad=True), tensor(weight, requires_grad=True)]
    if with_bias:
        inputs.append(tensor(bias, requires_grad=True))
    gradcheck(linear, inputs)


@pytest.mark.parametrize("needed", [(True, False, False), (False, True, False),
                                    (False, False, True), (True, False, True)])
def test_only_the_needed_gradients_are_computed(needed):
    x, weight, bias = random_inputs(0, 3, 4, 2, np.float64)
    inputs = [tensor(a, requires_grad=r) for a, r in zip((x, weight, bias), needed)]
    gradcheck(linear, inputs)
    for t, r in zip(inputs, needed):
        assert (t.grad is not None) == r


def test_float32_stays_float32():
    x, weight, bias = random_inputs(1, 3, 4, 2, np.float32)
    inputs = [tensor(a, requires_grad=True) for a in (x, weight, bias)]
    y = linear(*inputs)
    assert y.dtype == np.float32
    y.sum().backward()
    assert [t.grad.dtype for t in inputs] == [np.float32] * 3


def test_error_input_not_2d():
    with pytest.raises(ValueError, match=r"input must be 2-D \(N, in_features\); got shape "
                                         r"\(2, 3, 4\), flatten it first"):
        linear(tensor(np.zeros((2, 3, 4))), tensor(np.zeros((5, 12))))


def test_error_weight_not_2d():
    with pytest.raises(ValueError, match=r"weight must be 2-D .* got shape \(12,\)"):
        linear(tensor(np.zeros((2, 12))), tensor(np.zeros(12)))


def test_error_feature_mismatch():
    # fc6 of the paper expects 9216 = 256*6*6 features; here a network that made 1024 of them
    weight = tensor(np.broadcast_to(np.float32(0), (4096, 1024)))  # a zero-cost view
    with pytest.raises(ValueError, match=r"linear: input has 9216 features but weight expects "
                                         r"1024 \(weight shape \(4096, 1024\)\)"):
        linear(tensor(np.zeros((2, 9216), dtype=np.float32)), weight)


def test_error_bias_shape():
    with pytest.raises(ValueError, match=r"bias must have shape \(out_features,\) = \(5,\); "
                                         r"got shape \(4,\)"):
        linear(tensor(np.zeros((2, 3))), tensor(np.zeros((5, 3))), tensor(np.zeros(4)))


def test_error_not_a_tensor():
    with pytest.raises(TypeError, match="linear: weight must be a Tensor; got ndarray"):
        linear(tensor(np.zeros((2, 3))), np.zeros((5, 3)))
