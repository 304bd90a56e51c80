"""max_pool2d and adaptive_avg_pool2d against naive loops written from the formulas, and
their backward passes against naive loops and float64 finite differences."""
import math

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from minialex.functions.pool import adaptive_avg_pool2d, max_pool2d
from minialex.gradcheck import gradcheck
from minialex.tensor import tensor


# --------------------------------------------------------------------------------------------
# The specification: naive loops over every output element

def expected_output_size(size, kernel, stride, padding, ceil_mode):
    """PyTorch's rule, written out: round down (or up), then drop a last window that would
    start in the right padding."""
    if ceil_mode:
        out = math.ceil((size + 2 * padding - kernel) / stride) + 1
        if (out - 1) * stride >= size + padding:
            out -= 1
        return out
    return math.floor((size + 2 * padding - kernel) / stride) + 1


def window_cells(i, j, kernel, stride, padding, H, W):
    """The input positions (row, column) inside window (i, j), in row-major order; cells in
    the padding are left out (they hold -inf, which is never the max)."""
    KH, KW = kernel
    cells = []
    for di in range(KH):
        for dj in range(KW):
            row = i * stride[0] - padding[0] + di
            column = j * stride[1] - padding[1] + dj
            if 0 <= row < H and 0 <= column < W:
                cells.append((row, column))
    return cells


def naive_max_pool(x, kernel, stride, padding, ceil_mode):
    """y and, for every output, the input position of the first maximum of its window."""
    N, C, H, W = x.shape
    OH = expected_output_size(H, kernel[0], stride[0], padding[0], ceil_mode)
    OW = expected_output_size(W, kernel[1], stride[1], padding[1], ceil_mode)
    y = np.empty((N, C, OH, OW), dtype=x.dtype)
    where = {}
    for n, c, i, j in np.ndindex(N, C, OH, OW):
        best = None
        for row, column in window_cells(i, j, kernel, stride, padding, H, W):
            if best is None or x[n, c, row, column] > x[n, c, best[0], best[1]]:
                best = (row, column)  # strict >: ties keep the first, as PyTorch
        y[n, c, i, j] = x[n, c, best[0], best[1]]
        where[n, c, i, j] = best
    return y, where


def naive_max_pool_backward(x_shape, gy, where):
    gx = np.zeros(x_shape, dtype=gy.dtype)
    for (n, c, i, j), (row, column) in where.items():
        gx[n, c, row, column] += gy[n, c, i, j]  # += : overlapping windows accumulate
    return gx


def naive_adaptive_avg_pool(x, OH, OW):
    N, C, H, W = x.shape
    y = np.empty((N, C, OH, OW), dtype=np.float64)
    for n, c, i, j in np.ndindex(N, C, OH, OW):
        rows = slice(math.floor(i * H / OH), math.ceil((i + 1) * H / OH))
        columns = slice(math.floor(j * W / OW), math.ceil((j + 1) * W / OW))
        y[n, c, i, j] = x[n, c, rows, columns].astype(np.float64).mean()
    return y


def distinct_values(shape, rng, dtype=np.float64):
    """All values different (a shuffled arange), so the max is unique and finite differences
    with a small step never change which element wins."""
    size = int(np.prod(shape))
    return (rng.permutation(size).reshape(shape) * 0.1 - size * 0.05).astype(dtype)


# --------------------------------------------------------------------------------------------
# Max pooling: shapes drawn by hypothesis

@st.composite
def pool_configs(draw):
    KH, KW = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    SH, SW = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    PH, PW = draw(st.integers(0, KH // 2)), draw(st.integers(0, KW // 2))
    H = draw(st.integers(max(1, KH - 2 * PH), KH + 6))
    W = draw(st.integers(max(1, KW - 2 * PW), KW + 6))
    N, C = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    ceil_mode = draw(st.booleans())
    return (N, C, H, W), (KH, KW), (SH, SW), (PH, PW), ceil_mode


# window = input size; AlexNet's 3x3 stride 2 (odd size, ceil mode keeps the last window);
# stride larger than the kernel.
@example(((1, 1, 3, 3), (3, 3), (3, 3), (0, 0), False), np.float32, 0)
@example(((1, 2, 7, 7), (3, 3), (2, 2), (0, 0), False), np.float32, 1)
@example(((2, 1, 6, 8), (3, 3), (2, 2), (1, 1), True), np.float64, 2)
@example(((1, 1, 9, 9), (2, 2), (3, 3), (1, 1), True), np.float64, 3)
@given(pool_configs(), st.sampled_from([np.float32, np.float64]), st.integers(0, 2**32 - 1))
def test_max_pool_forward_and_backward_match_naive_loops(config, dtype, seed):
    shape, kernel, stride, padding, ceil_mode = config
    rng = np.random.default_rng(seed)
    x_data = rng.standard_normal(shape).astype(dtype)
    x = tensor(x_data, requires_grad=True)
    y = max_pool2d(x, kernel, stride, padding, ceil_mode)

    expected, where = naive_max_pool(x_data, kernel, stride, padding, ceil_mode)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y.numpy(), expected)  # max only copies: exact

    gy = rng.standard_normal(y.shape).astype(dtype)
    y.backward(gy)
    assert x.grad.dtype == dtype
    tolerance = 1e-6 if dtype == np.float32 else 1e-12  # sums of several gy where overlapping
    np.testing.assert_allclose(x.grad, naive_max_pool_backward(shape, gy, where),
                               rtol=tolerance, atol=tolerance)


def test_max_pool_ties_send_the_gradient_to_the_first_max(rng):
    """Many equal values: the gradient goes to the first maximum of each window, row by row."""
    x_data = rng.integers(0, 3, size=(2, 3, 7, 7)).astype(np.float64)
    x = tensor(x_data, requires_grad=True)
    y = max_pool2d(x, 3, stride=2, padding=1, ceil_mode=True)
    expected, where = naive_max_pool(x_data, (3, 3), (2, 2), (1, 1), True)
    np.testing.assert_array_equal(y.numpy(), expected)
    gy = rng.standard_normal(y.shape)
    y.backward(gy)
    np.testing.assert_allclose(x.grad, naive_max_pool_backward(x_data.shape, gy, where),
                               rtol=1e-12, atol=1e-12)


def test_max_pool_constant_input_all_to_the_first_cell():
    x = tensor(np.zeros((1, 1, 4, 4)), requires_grad=True)
    max_pool2d(x, 2).sum().backward()
    expected = np.zeros((4, 4))
    expected[::2, ::2] = 1.0  # the top-left cell of every 2x2 window
    np.testing.assert_array_equal(x.grad[0, 0], expected)


@given(pool_configs(), st.integers(0, 2**32 - 1))
def test_max_pool_gradcheck(config, seed):
    shape, kernel, stride, padding, ceil_mode = config
    x = tensor(distinct_values(shape, np.random.default_rng(seed)), requires_grad=True)
    gradcheck(lambda t: max_pool2d(t, kernel, stride, padding, ceil_mode), [x])


def test_max_pool_overlapping_windows_accumulate(rng):
    """AlexNet's 3x3 stride 2: a pixel that is the max of several windows gets their sum."""
    x_data = distinct_values((1, 1, 5, 5), rng)
    x_data[0, 0, 2, 2] = 100.0  # the centre is in all four windows, and wins each
    x = tensor(x_data, requires_grad=True)
    y = max_pool2d(x, 3, stride=2)
    assert y.shape == (1, 1, 2, 2)
    np.testing.assert_array_equal(y.numpy(), np.full((1, 1, 2, 2), 100.0))
    gy = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    y.backward(gy)
    expected = np.zeros((5, 5))
    expected[2, 2] = 1.0 + 2.0 + 3.0 + 4.0
    np.testing.assert_array_equal(x.grad[0, 0], expected)


def test_max_pool_alexnet_sizes():
    x = tensor(np.zeros((1, 2, 55, 55), dtype=np.float32))
    assert max_pool2d(x, 3, stride=2).shape == (1, 2, 27, 27)          # pool1 (§3.4)
    assert max_pool2d(x[:, :, :27, :27], 3, 2).shape == (1, 2, 13, 13)  # pool2
    assert max_pool2d(x[:, :, :13, :13], 3, 2).shape == (1, 2, 6, 6)    # pool5


def test_max_pool_stride_defaults_to_kernel_size():
    x = tensor(np.arange(36.0).reshape(1, 1, 6, 6))
    np.testing.assert_array_equal(max_pool2d(x, 2).numpy(), max_pool2d(x, 2, 2).numpy())
    assert max_pool2d(x, (2, 3)).shape == (1, 1, 3, 2)


def test_ceil_mode_changes_the_output_size_where_it_should():
    x = tensor(np.arange(36.0).reshape(1, 1, 6, 6))
    # 6 rows, window 3, stride 2: (6 - 3) / 2 = 1.5 -> floor 1 + 1 = 2, ceil 2 + 1 = 3; the
    # third window starts at row 4 < 6, inside the input, so ceil mode keeps it.
    assert max_pool2d(x, 3, stride=2).shape == (1, 1, 2, 2)
    y = max_pool2d(x, 3, stride=2, ceil_mode=True)
    assert y.shape == (1, 1, 3, 3)
    assert y.numpy()[0, 0, 2, 2] == 35.0  # the partial last window holds rows/columns 4, 5

    # 5 rows, window 2, stride 2, padding 1: (5 + 2 - 2) / 2 = 2.5 -> floor 3, ceil 4; but
    # the fourth window would start at padded row 6 >= 5 + 1, in the right padding, so it is
    # dropped and ceil mode gives 3 as well.
    x5 = tensor(np.arange(25.0).reshape(1, 1, 5, 5))
    assert max_pool2d(x5, 2, stride=2, padding=1).shape == (1, 1, 3, 3)
    assert max_pool2d(x5, 2, stride=2, padding=1, ceil_mode=True).shape == (1, 1, 3, 3)

    # 55 rows (AlexNet's conv1), window 3, stride 2: (55 - 3) / 2 = 26 exactly: no change.
    x55 = tensor(np.zeros((1, 1, 55, 55)))
    assert max_pool2d(x55, 3, 2, ceil_mode=True).shape == (1, 1, 27, 27)


def test_max_pool_padding_is_never_the_max():
    x = tensor(-np.ones((1, 1, 2, 2)) * 1e30)  # very negative, still above -inf
    y = max_pool2d(x, 2, stride=1, padding=1)
    np.testing.assert_array_equal(y.numpy(), np.full((1, 1, 3, 3), -1e30))


# --------------------------------------------------------------------------------------------
# Adaptive average pooling

@example((1, 1, 13, 13), (6, 6), np.float32, 0)   # torchvision AlexNet-style, 13 -> 6
@example((2, 3, 7, 5), (3, 2), np.float64, 1)     # bins that overlap
@example((1, 2, 3, 4), (5, 7), np.float64, 2)     # more outputs than inputs
@given(st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(1, 9), st.integers(1, 9)),
       st.tuples(st.integers(1, 9), st.integers(1, 9)),
       st.sampled_from([np.float32, np.float64]), st.integers(0, 2**32 - 1))
def test_adaptive_avg_pool_matches_naive_loop(shape, output_size, dtype, seed):
    x_data = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    y = adaptive_avg_pool2d(tensor(x_data), output_size)
    assert y.dtype == dtype
    tolerance = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(y.numpy(), naive_adaptive_avg_pool(x_data, *output_size),
                               rtol=tolerance, atol=tolerance)


@given(st.tuples(st.integers(1, 2), st.integers(1, 2), st.integers(1, 7), st.integers(1, 7)),
       st.tuples(st.integers(1, 7), st.integers(1, 7)), st.integers(0, 2**32 - 1))
def test_adaptive_avg_pool_gradcheck(shape, output_size, seed):
    x = tensor(np.random.default_rng(seed).standard_normal(shape), requires_grad=True)
    gradcheck(lambda t: adaptive_avg_pool2d(t, output_size), [x])


def test_adaptive_avg_pool_to_the_input_size_is_exactly_the_identity(rng):
    x = tensor(rng.standard_normal((2, 3, 6, 6)).astype(np.float32), requires_grad=True)
    y = adaptive_avg_pool2d(x, 6)
    np.testing.assert_array_equal(y.numpy(), x.numpy())
    gy = rng.standard_normal(y.shape).astype(np.float32)
    y.backward(gy)
    np.testing.assert_array_equal(x.grad, gy)


def test_adaptive_avg_pool_uneven_bins_by_hand():
    # H = 5 into 3 bins: [floor(0), ceil(5/3)) = [0, 2), [floor(5/3), ceil(10/3)) = [1, 4),
    # [floor(10/3), ceil(5)) = [3, 5): the middle bin overlaps both others.
    x = tensor(np.array([1.0, 2.0, 4.0, 8.0, 16.0]).reshape(1, 1, 5, 1))
    y = adaptive_avg_pool2d(x, (3, 1))
    np.testing.assert_allclose(y.numpy().ravel(), [1.5, 14.0 / 3.0, 12.0])


def test_adaptive_avg_pool_none_keeps_an_axis():
    x = tensor(np.zeros((1, 1, 5, 4)))
    assert adaptive_avg_pool2d(x, (None, 2)).shape == (1, 1, 5, 2)


# --------------------------------------------------------------------------------------------
# Errors

def test_max_pool_errors():
    x = tensor(np.zeros((1, 1, 5, 5), dtype=np.float32))
    with pytest.raises(ValueError, match=r"max_pool2d: input must be 4-D.*got shape \(3, 5, 5\)"):
        max_pool2d(tensor(np.zeros((3, 5, 5))), 2)
    with pytest.raises(ValueError, match="max_pool2d: kernel_size must be positive; got 0x2"):
        max_pool2d(x, (0, 2))
    with pytest.raises(ValueError, match="max_pool2d: stride must be positive; got -1x-1"):
        max_pool2d(x, 2, stride=-1)
    with pytest.raises(ValueError, match="max_pool2d: stride must be positive; got 0x0"):
        max_pool2d(x, 2, stride=0)
    with pytest.raises(ValueError, match=r"max_pool2d: padding must be between 0 and half.*"
                                         r"3x3 kernel\); got 2x2"):
        max_pool2d(x, 3, padding=2)
    with pytest.raises(ValueError, match="max_pool2d: padding .* got -1x0"):
        max_pool2d(x, 3, padding=(-1, 0))
    with pytest.raises(ValueError, match=r"max_pool2d: window 3x3 does not fit the padded "
                                         r"input 2x2 .* output would be empty"):
        max_pool2d(tensor(np.zeros((1, 1, 2, 2))), 3)
    with pytest.raises(ValueError, match="max_pool2d: window 1x6 does not fit the padded "
                                         "input 5x5"):
        max_pool2d(x, (1, 6))
    with pytest.raises(ValueError, match=r"max_pool2d: input height and width must be at "
                                         r"least 1; got shape \(1, 1, 0, 5\)"):
        max_pool2d(tensor(np.zeros((1, 1, 0, 5))), 2, padding=1)
    with pytest.raises(TypeError, match="max_pool2d: kernel_size must be an int or a pair"):
        max_pool2d(x, 2.5)
    with pytest.raises(TypeError, match="max_pool2d: stride must be an int or a pair"):
        max_pool2d(x, 2, stride=(1, 2, 3))
    with pytest.raises(TypeError, match="max_pool2d: input must be floating point"):
        max_pool2d(tensor(np.zeros((1, 1, 4, 4), dtype=np.int64)), 2)


def test_adaptive_avg_pool_errors():
    with pytest.raises(ValueError, match=r"adaptive_avg_pool2d: input must be 4-D.*\(2, 3\)"):
        adaptive_avg_pool2d(tensor(np.zeros((2, 3))), 1)
    with pytest.raises(ValueError, match="adaptive_avg_pool2d: output_size must be positive; "
                                         "got 0x3"):
        adaptive_avg_pool2d(tensor(np.zeros((1, 1, 4, 4))), (0, 3))
    with pytest.raises(TypeError, match="adaptive_avg_pool2d: output_size must be an int"):
        adaptive_avg_pool2d(tensor(np.zeros((1, 1, 4, 4))), "6")
