"""softmax, log_softmax, cross_entropy: forward against loops over rows written with math.exp and
math.log in float64, backward against finite differences, stability at logits of 1e4, errors."""
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minialex.functions.loss import (cross_entropy, cross_entropy_simple, log_softmax,
                                     softmax)
from minialex.gradcheck import gradcheck
from minialex.tensor import tensor

seeds = st.integers(0, 2**32 - 1)
dtypes = st.sampled_from([np.float32, np.float64])
batches = st.integers(1, 5)    # batch 1 included
classes = st.integers(1, 6)    # a single class included: its loss is 0 whatever the logit


@st.composite
def shapes_and_axes(draw):
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    return shape, axis


# -- the specification: loops over one slice at a time, in Python floats ---------------------

def softmax_row(values):
    exps = [math.exp(v) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def log_softmax_row(values):
    log_total = math.log(sum(math.exp(v) for v in values))
    return [v - log_total for v in values]


def along_axis_naive(row_function, x, axis):
    """Apply row_function to every 1-D slice of x along axis."""
    moved = np.moveaxis(x.astype(np.float64), axis, -1)
    out = np.zeros_like(moved)
    for index in np.ndindex(moved.shape[:-1]):
        out[index] = row_function([float(v) for v in moved[index]])
    return np.moveaxis(out, -1, axis)


def cross_entropy_naive(logits, labels):
    total = 0.0
    for row, label in zip(logits, labels):
        row = [float(v) for v in row]
        probability = math.exp(row[label]) / sum(math.exp(v) for v in row)
        total += -math.log(probability)
    return total / len(labels)


def random_problem(seed, n, k, dtype, scale=3.0):
    rng = np.random.default_rng(seed)
    logits = (scale * rng.standard_normal((n, k))).astype(dtype)
    labels = rng.integers(0, k, size=n)
    return logits, labels


# -- forward -------------------------------------------------------------------------------

@given(shape_axis=shapes_and_axes(), seed=seeds, dtype=dtypes)
def test_softmax_matches_loop(shape_axis, seed, dtype):
    shape, axis = shape_axis
    x = (3 * np.random.default_rng(seed).standard_normal(shape)).astype(dtype)
    y = softmax(tensor(x), axis=axis)
    assert y.dtype == dtype
    tolerance = 1e-6 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(y.numpy(), along_axis_naive(softmax_row, x, axis),
                               rtol=tolerance * 10, atol=tolerance)


@given(shape_axis=shapes_and_axes(), seed=seeds, dtype=dtypes)
def test_log_softmax_matches_loop(shape_axis, seed, dtype):
    shape, axis = shape_axis
    x = (3 * np.random.default_rng(seed).standard_normal(shape)).astype(dtype)
    y = log_softmax(tensor(x), axis=axis)
    assert y.dtype == dtype
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y.numpy(), along_axis_naive(log_softmax_row, x, axis),
                               rtol=tolerance, atol=tolerance)


@given(n=batches, k=classes, seed=seeds, dtype=dtypes)
def test_cross_entropy_matches_loop(n, k, seed, dtype):
    logits, labels = random_problem(seed, n, k, dtype)
    loss = cross_entropy(tensor(logits), labels)
    assert loss.shape == () and loss.dtype == dtype
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    assert loss.item() == pytest.approx(cross_entropy_naive(logits, labels),
                                        rel=tolerance, abs=tolerance)


@given(n=batches, k=classes, seed=seeds)
def test_simple_and_fused_cross_entropy_agree(n, k, seed):
    logits, labels = random_problem(seed, n, k, np.float64)
    fused_input = tensor(logits, requires_grad=True)
    simple_input = tensor(logits, requires_grad=True)
    fused = cross_entropy(fused_input, labels)
    simple = cross_entropy_simple(simple_input, labels)
    assert fused.item() == pytest.approx(simple.item(), rel=1e-12, abs=1e-12)
    fused.backward()
    simple.backward()
    np.testing.assert_allclose(fused_input.grad, simple_input.grad, rtol=1e-10, atol=1e-12)


# -- backward ------------------------------------------------------------------------------

@given(shape_axis=shapes_and_axes(), seed=seeds)
def test_softmax_gradcheck(shape_axis, seed):
    shape, axis = shape_axis
    x = np.random.default_rng(seed).standard_normal(shape)
    gradcheck(lambda t: softmax(t, axis=axis), [tensor(x, requires_grad=True)])


@given(shape_axis=shapes_and_axes(), seed=seeds)
def test_log_softmax_gradcheck(shape_axis, seed):
    shape, axis = shape_axis
    x = np.random.default_rng(seed).standard_normal(shape)
    gradcheck(lambda t: log_softmax(t, axis=axis), [tensor(x, requires_grad=True)])


@given(n=batches, k=classes, seed=seeds)
def test_cross_entropy_gradcheck(n, k, seed):
    logits, labels = random_problem(seed, n, k, np.float64, scale=1.0)
    gradcheck(lambda t: cross_entropy(t, labels), [tensor(logits, requires_grad=True)])


@given(n=batches, k=classes, seed=seeds)
def test_cross_entropy_simple_gradcheck(n, k, seed):
    logits, labels = random_problem(seed, n, k, np.float64, scale=1.0)
    gradcheck(lambda t: cross_entropy_simple(t, labels), [tensor(logits, requires_grad=True)])


def test_cross_entropy_gradient_is_softmax_minus_one_hot_over_n():
    logits, labels = random_problem(3, 4, 5, np.float64)
    x = tensor(logits, requires_grad=True)
    cross_entropy(x, labels).backward(np.array(2.0))  # an upstream gradient of 2
    expected = np.zeros_like(logits)
    for n, row in enumerate(logits):
        for k, p in enumerate(softmax_row([float(v) for v in row])):
            expected[n, k] = 2.0 * (p - (1.0 if k == labels[n] else 0.0)) / len(labels)
    np.testing.assert_allclose(x.grad, expected, rtol=1e-12, atol=1e-15)


def test_backward_twice_with_retain_graph_gives_the_same_gradient():
    logits, labels = random_problem(4, 3, 4, np.float64)
    x = tensor(logits, requires_grad=True)
    loss = cross_entropy(x, labels)
    loss.backward(retain_graph=True)
    first = x.grad.copy()
    loss.backward()
    np.testing.assert_allclose(x.grad, 2 * first)


# -- large logits: the max is subtracted, so nothing overflows -----------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("logits, label, expected", [
    ([1e4, 0.0], 0, 0.0),                       # certain and right
    ([1e4, 0.0], 1, 1e4),                       # certain and wrong: -log(e^-1e4) = 1e4
    ([-1e4, -1e4], 0, math.log(2)),             # a tie, far below zero
    ([1e4, -1e4, 0.0], 2, 1e4),                 # a mix of huge and tiny
    ([-1e4, 1e4, 1e4], 1, math.log(2)),         # a tie at the top
])
def test_cross_entropy_of_huge_logits(dtype, logits, label, expected):
    x = tensor(np.array([logits], dtype=dtype), requires_grad=True)
    loss = cross_entropy(x, [label])
    assert loss.dtype == dtype
    assert loss.item() == pytest.approx(expected, rel=1e-6, abs=1e-6)
    loss.backward()
    assert x.grad.dtype == dtype and np.all(np.isfinite(x.grad))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_and_log_softmax_of_huge_logits(dtype):
    x = np.array([[1e4, 0.0, -1e4], [-1e4, -1e4, -1e4]], dtype=dtype)
    np.testing.assert_allclose(softmax(tensor(x)).numpy(), [[1, 0, 0], [1 / 3, 1 / 3, 1 / 3]],
                               rtol=1e-6, atol=1e-30)
    np.testing.assert_allclose(log_softmax(tensor(x)).numpy(),
                               [[0, -1e4, -2e4], [-math.log(3)] * 3], rtol=1e-6)


# -- dtypes and label types ----------------------------------------------------------------

@pytest.mark.parametrize("op", [softmax, log_softmax,
                                lambda x: cross_entropy(x, [0, 2]),
                                lambda x: cross_entropy_simple(x, [0, 2])])
def test_float32_stays_float32(op):
    x = tensor(np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32),
               requires_grad=True)
    y = op(x)
    assert y.dtype == np.float32
    y.sum().backward()
    assert x.grad.dtype == np.float32


@pytest.mark.parametrize("labels", [[2, 0, 1], np.array([2, 0, 1]),
                                    np.array([2, 0, 1], dtype=np.int32),
                                    np.array([2, 0, 1], dtype=np.uint8),
                                    tensor(np.array([2, 0, 1]))])
def test_labels_as_list_array_or_tensor(labels):
    logits, _ = random_problem(5, 3, 4, np.float64)
    loss = cross_entropy(tensor(logits), labels)
    assert loss.item() == pytest.approx(cross_entropy_naive(logits, [2, 0, 1]), rel=1e-12)


# -- errors --------------------------------------------------------------------------------

def logits_2x10():
    return tensor(np.zeros((2, 10)))


@pytest.mark.parametrize("loss_function", [cross_entropy, cross_entropy_simple])
def test_error_labels_not_whole_numbers(loss_function):
    with pytest.raises(TypeError, match="labels must be integers"):
        loss_function(logits_2x10(), [1.5, 0])


@pytest.mark.parametrize("loss_function", [cross_entropy, cross_entropy_simple])
def test_error_float_labels_even_if_whole(loss_function):
    with pytest.raises(TypeError, match=r"labels must be integers \(class indices\), got "
                                        r"dtype float64"):
        loss_function(logits_2x10(), np.array([1.0, 0.0]))


def test_error_wrong_number_of_labels():
    with pytest.raises(ValueError, match="cross_entropy: 3 labels for a batch of 2 logits"):
        cross_entropy(logits_2x10(), [1, 2, 3])


def test_error_labels_not_1d():
    with pytest.raises(ValueError, match=r"labels must be 1-D \(N,\) class indices; got shape "
                                         r"\(2, 1\)"):
        cross_entropy(logits_2x10(), np.array([[1], [2]]))


def test_error_label_too_large():
    with pytest.raises(ValueError, match=r"label 10 out of range for 10 classes \[0, 10\)"):
        cross_entropy(logits_2x10(), [3, 10])


def test_error_negative_label():
    with pytest.raises(ValueError, match=r"label -1 out of range for 10 classes \[0, 10\)"):
        cross_entropy(logits_2x10(), [-1, 3])


def test_error_logits_not_2d():
    with pytest.raises(ValueError, match=r"logits must be 2-D \(N, K classes\); got shape "
                                         r"\(10,\)"):
        cross_entropy(tensor(np.zeros(10)), [3])


def test_error_empty_batch():
    with pytest.raises(ValueError, match="the batch is empty"):
        cross_entropy(tensor(np.zeros((0, 10))), np.zeros(0, dtype=np.int64))


@pytest.mark.parametrize("op", [softmax, log_softmax])
def test_error_axis_out_of_range(op):
    with pytest.raises(ValueError, match=r"axis 2 out of range for an input of shape \(3, 4\)"):
        op(tensor(np.zeros((3, 4))), axis=2)
