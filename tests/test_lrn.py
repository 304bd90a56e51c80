"""local_response_norm against a naive loop written from the formula, against the paper's own
formula (§3.3), against lrn_simple (basic ops), and its backward against finite differences."""
import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from minialex.functions.lrn import local_response_norm, lrn_simple
from minialex.gradcheck import gradcheck
from minialex.tensor import tensor


def naive_lrn(x, size, alpha, beta, k):
    """PyTorch's definition, one element at a time, in float64: the window of channel c is
    c - size//2 .. c + (size-1)//2, clipped to the channels that exist."""
    N, C, H, W = x.shape
    x = x.astype(np.float64)
    y = np.empty_like(x)
    for n, c, h, w in np.ndindex(N, C, H, W):
        first, last = max(0, c - size // 2), min(C - 1, c + (size - 1) // 2)
        sum_of_squares = sum(x[n, j, h, w] ** 2 for j in range(first, last + 1))
        y[n, c, h, w] = x[n, c, h, w] / (k + alpha / size * sum_of_squares) ** beta
    return y


def naive_lrn_paper(a, n=5, alpha=1e-4, beta=0.75, k=2.0):
    """§3.3: b[c] = a[c] / (k + alpha sum_{j=max(0, c-n/2)}^{min(C-1, c+n/2)} a[j]^2)^beta;
    n/2 rounds down (n = 5: two channels on each side), and the sum is multiplied by alpha."""
    N, C, H, W = a.shape
    b = np.empty(a.shape)
    for i, c, h, w in np.ndindex(N, C, H, W):
        channels = range(max(0, c - n // 2), min(C - 1, c + n // 2) + 1)
        b[i, c, h, w] = a[i, c, h, w] / (k + alpha * sum(a[i, j, h, w] ** 2
                                                         for j in channels)) ** beta
    return b


@st.composite
def lrn_configs(draw):
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 9)), draw(st.integers(1, 3)),
             draw(st.integers(1, 3)))
    size = draw(st.integers(1, 7))
    # alpha large enough that the neighbours matter: a wrong window must show
    alpha = draw(st.floats(0.1, 2.0))
    beta = draw(st.one_of(st.just(0.75), st.floats(0.5, 1.0)))  # 0.75 has its own code path
    k = draw(st.floats(0.5, 2.0))
    return shape, size, alpha, beta, k


EVEN_WINDOW = ((1, 6, 2, 2), 4, 1.0, 0.75, 1.0)    # asymmetric: 2 channels before, 1 after
SIZE_TWO = ((2, 5, 1, 3), 2, 1.5, 0.6, 0.5)        # the channel itself and the one before
WIDER_THAN_C = ((1, 3, 2, 1), 7, 0.8, 0.9, 1.2)     # every channel sees all the others


@example(EVEN_WINDOW, np.float32, 0)
@example(SIZE_TWO, np.float64, 1)
@example(WIDER_THAN_C, np.float32, 2)
@given(lrn_configs(), st.sampled_from([np.float32, np.float64]), st.integers(0, 2**32 - 1))
def test_forward_matches_naive_loop(config, dtype, seed):
    shape, size, alpha, beta, k = config
    x_data = (np.random.default_rng(seed).standard_normal(shape) * 2).astype(dtype)
    y = local_response_norm(tensor(x_data), size, alpha, beta, k)
    assert y.dtype == dtype
    tolerance = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y.numpy(), naive_lrn(x_data, size, alpha, beta, k),
                               rtol=tolerance, atol=tolerance)


@example(EVEN_WINDOW, 0)
@example(SIZE_TWO, 1)
@example(WIDER_THAN_C, 2)
@given(lrn_configs(), st.integers(0, 2**32 - 1))
def test_gradcheck(config, seed):
    shape, size, alpha, beta, k = config
    x = tensor(np.random.default_rng(seed).standard_normal(shape), requires_grad=True)
    gradcheck(lambda t: local_response_norm(t, size, alpha, beta, k), [x])


@example(EVEN_WINDOW, 0)
@example(SIZE_TWO, 1)
@given(lrn_configs(), st.integers(0, 2**32 - 1))
def test_fused_agrees_with_lrn_simple(config, seed):
    """Forward and gradient of the fused op against the one built from basic ops."""
    shape, size, alpha, beta, k = config
    rng = np.random.default_rng(seed)
    x_data = rng.standard_normal(shape)
    gy = rng.standard_normal(shape)

    x_fused = tensor(x_data, requires_grad=True)
    y_fused = local_response_norm(x_fused, size, alpha, beta, k)
    y_fused.backward(gy)
    x_simple = tensor(x_data, requires_grad=True)
    y_simple = lrn_simple(x_simple, size, alpha, beta, k)
    y_simple.backward(gy)

    np.testing.assert_allclose(y_fused.numpy(), y_simple.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(x_fused.grad, x_simple.grad, rtol=1e-10, atol=1e-12)


def test_lrn_simple_matches_naive_loop(rng):
    x_data = rng.standard_normal((2, 7, 2, 3))
    for size in (1, 2, 4, 5):
        y = lrn_simple(tensor(x_data), size, 0.7, 0.75, 1.5)
        np.testing.assert_allclose(y.numpy(), naive_lrn(x_data, size, 0.7, 0.75, 1.5),
                                   rtol=1e-12)


def test_the_papers_layer_in_pytorchs_terms(rng):
    """§3.3 (k=2, n=5, alpha=1e-4, beta=0.75, alpha on the plain sum) is
    local_response_norm(x, 5, alpha=5e-4, beta=0.75, k=2)."""
    # Post-ReLU activations large enough that the normalization is far from the identity
    a = np.maximum(rng.standard_normal((2, 10, 3, 3)) * 60, 0)
    expected = naive_lrn_paper(a)
    assert np.abs(expected - a / 2 ** 0.75).max() > 0.1  # the neighbours do matter here
    y = local_response_norm(tensor(a), 5, alpha=5e-4, beta=0.75, k=2)
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-12)
    # PyTorch's defaults with the paper's alpha (Caffe's AlexNet) are a different function
    caffe = local_response_norm(tensor(a), 5, alpha=1e-4, beta=0.75, k=1)
    assert not np.allclose(caffe.numpy(), expected, rtol=1e-3)


def test_size_one_divides_by_own_square():
    x = np.array([1.0, -2.0, 3.0]).reshape(1, 3, 1, 1)
    y = local_response_norm(tensor(x), 1, alpha=1.0, beta=1.0, k=1.0)
    np.testing.assert_allclose(y.numpy().ravel(), [1 / 2, -2 / 5, 3 / 10])


def test_float32_stays_float32_with_numpy_scalar_constants(rng):
    """Constants given as NumPy float64 scalars must not promote a float32 computation."""
    x = tensor(rng.standard_normal((2, 4, 3, 3)).astype(np.float32), requires_grad=True)
    y = local_response_norm(x, np.int64(3), alpha=np.float64(1e-2), beta=np.float64(0.75),
                            k=np.float64(2.0))
    assert y.dtype == np.float32
    y.backward(np.ones(y.shape, dtype=np.float32))
    assert x.grad.dtype == np.float32


def test_errors():
    x = tensor(np.zeros((1, 3, 2, 2)))
    with pytest.raises(ValueError, match=r"local_response_norm: input must be 4-D.*"
                                         r"got shape \(3, 2, 2\)"):
        local_response_norm(tensor(np.zeros((3, 2, 2))), 5)
    with pytest.raises(ValueError, match="local_response_norm: size .* at least 1; got 0"):
        local_response_norm(x, 0)
    with pytest.raises(ValueError, match="local_response_norm: size .* at least 1; got -3"):
        lrn_simple(x, -3)
    with pytest.raises(TypeError, match="local_response_norm: size must be an int; got 2.5"):
        local_response_norm(x, 2.5)
    with pytest.raises(ValueError, match="local_response_norm: k must be positive.*got k=0"):
        local_response_norm(x, 5, k=0)
    with pytest.raises(ValueError, match="local_response_norm: k must be positive.*got k=-1"):
        local_response_norm(x, 5, k=-1.0)
    with pytest.raises(ValueError, match="local_response_norm: alpha must be non-negative.*"
                                         "got alpha=-0.1"):
        local_response_norm(x, 5, alpha=-0.1)
