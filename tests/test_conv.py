"""conv2d: forward against a loop written from the formula, backward against finite differences."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minialex.functions.conv import col2im, conv2d, im2col
from minialex.gradcheck import gradcheck
from minialex.tensor import tensor


def conv2d_naive(x, w, b, stride, padding, groups):
    """y[n, f, oh, ow] = b[f]
    + sum_{c, i, j} w[f, c, i, j] x_pad[n, g CG + c, oh SH + i, ow SW + j]"""
    N, C, H, W = x.shape
    F, CG, KH, KW = w.shape
    (SH, SW), (PH, PW) = stride, padding
    x_pad = np.zeros((N, C, H + 2 * PH, W + 2 * PW), dtype=np.float64)
    x_pad[:, :, PH:PH + H, PW:PW + W] = x
    OH, OW = (H + 2 * PH - KH) // SH + 1, (W + 2 * PW - KW) // SW + 1
    y = np.zeros((N, F, OH, OW))
    for n, f, oh, ow in np.ndindex(N, F, OH, OW):
        g = f // (F // groups)
        total = 0.0 if b is None else b[f]
        for c, i, j in np.ndindex(CG, KH, KW):
            total += w[f, c, i, j] * x_pad[n, g * CG + c, oh * SH + i, ow * SW + j]
        y[n, f, oh, ow] = total
    return y


@st.composite
def conv_cases(draw, max_size=9):
    """Shapes a convolution can meet: odd sizes, stride > 1, padding, groups 1/2/4, batch 1,
    a kernel as large as the (padded) input."""
    groups = draw(st.sampled_from([1, 2, 4]))
    CG, FG = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    N = draw(st.integers(1, 3))
    KH, KW = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    PH, PW = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    SH, SW = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    H = draw(st.integers(max(1, KH - 2 * PH), max(1, KH - 2 * PH) + max_size))
    W = draw(st.integers(max(1, KW - 2 * PW), max(1, KW - 2 * PW) + max_size))
    with_bias = draw(st.booleans())
    return dict(N=N, C=CG * groups, H=H, W=W, F=FG * groups, CG=CG, KH=KH, KW=KW,
                stride=(SH, SW), padding=(PH, PW), groups=groups, with_bias=with_bias)


def make(case, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((case["N"], case["C"], case["H"], case["W"])).astype(dtype)
    w = rng.standard_normal((case["F"], case["CG"], case["KH"], case["KW"])).astype(dtype)
    b = rng.standard_normal(case["F"]).astype(dtype) if case["with_bias"] else None
    return x, w, b


@given(conv_cases())
def test_forward_matches_naive_loop(case):
    x, w, b = make(case, np.float64)
    args = dict(stride=case["stride"], padding=case["padding"], groups=case["groups"])
    y = conv2d(tensor(x), tensor(w), None if b is None else tensor(b), **args)
    np.testing.assert_allclose(y.numpy(), conv2d_naive(x, w, b, **args), rtol=1e-10, atol=1e-10)


@given(conv_cases(max_size=5))
def test_backward_matches_finite_differences(case):
    x, w, b = make(case, np.float64)
    args = dict(stride=case["stride"], padding=case["padding"], groups=case["groups"])
    inputs = [tensor(x, requires_grad=True), tensor(w, requires_grad=True)]
    if b is not None:
        inputs.append(tensor(b, requires_grad=True))
    assert gradcheck(lambda *t: conv2d(*t, **args), inputs)


def test_float32_stays_float32():
    case = dict(N=2, C=4, H=9, W=8, F=6, CG=2, KH=3, KW=3, stride=(2, 1), padding=(1, 1),
                groups=2, with_bias=True)
    x, w, b = make(case, np.float32)
    xt, wt, bt = (tensor(a, requires_grad=True) for a in (x, w, b))
    y = conv2d(xt, wt, bt, stride=(2, 1), padding=1, groups=2)
    assert y.dtype == np.float32
    y.sum().backward()
    assert xt.grad.dtype == wt.grad.dtype == bt.grad.dtype == np.float32
    expected = conv2d_naive(x, w, b, (2, 1), (1, 1), 2)
    np.testing.assert_allclose(y.numpy(), expected, rtol=1e-4, atol=1e-4)


def test_alexnet_conv1_shape():
    x = tensor(np.zeros((1, 3, 227, 227), np.float32))
    w = tensor(np.zeros((96, 3, 11, 11), np.float32))
    assert conv2d(x, w, stride=4).shape == (1, 96, 55, 55)


def test_col2im_is_the_adjoint_of_im2col(rng):
    """<im2col(x), c> == <x, col2im(c)> for all x, c: the defining property of the backward."""
    x = rng.standard_normal((2, 3, 7, 6))
    col = im2col(x, 3, 2, 2, 1, 1, 0)
    c = rng.standard_normal(col.shape)
    lhs = (col * c).sum()
    rhs = (x * col2im(c, x.shape, 2, 1, 1, 0)).sum()
    assert lhs == pytest.approx(rhs, rel=1e-12)


def test_overlapping_windows_collect_every_contribution():
    """With a ones gradient, col2im counts how many windows cover each pixel."""
    x = np.zeros((1, 1, 5, 5))
    counts = col2im(np.ones_like(im2col(x, 3, 3, 1, 1, 0, 0)), x.shape, 1, 1, 0, 0)
    coverage = np.zeros((5, 5))
    for oh, ow in np.ndindex(3, 3):
        coverage[oh:oh + 3, ow:ow + 3] += 1
    np.testing.assert_array_equal(counts[0, 0], coverage)


@pytest.mark.parametrize("x_shape, w_shape, kwargs, message", [
    ((3, 227, 227), (96, 3, 11, 11), {}, r"input must be 4-D \(N, C, H, W\); got shape \(3, 227"),
    ((1, 3, 9, 9), (96, 3, 11), {}, r"weight must be 4-D"),
    ((1, 3, 9, 9), (8, 4, 3, 3), {}, r"input has 3 channels .* expects 4"),
    ((1, 96, 9, 9), (256, 96, 5, 5), {"groups": 2}, r"groups=2 expects 192 \(= 96 x 2\)"),
    ((1, 4, 9, 9), (5, 2, 3, 3), {"groups": 2}, r"out_channels 5 .* not divisible by groups=2"),
    ((1, 3, 5, 5), (4, 3, 11, 11), {}, r"kernel 11x11 does not fit the padded input 5x5"),
    ((1, 3, 5, 5), (4, 3, 3, 3), {"stride": 0}, r"stride must be >= 1"),
    ((1, 3, 5, 5), (4, 3, 3, 3), {"groups": 0}, r"groups must be a positive int"),
])
def test_bad_input_is_named(x_shape, w_shape, kwargs, message):
    x, w = tensor(np.zeros(x_shape, np.float32)), tensor(np.zeros(w_shape, np.float32))
    with pytest.raises(ValueError, match=message):
        conv2d(x, w, **kwargs)


def test_bad_bias_shape():
    x, w = tensor(np.zeros((1, 3, 5, 5), np.float32)), tensor(np.zeros((4, 3, 3, 3), np.float32))
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\)"):
        conv2d(x, w, tensor(np.zeros(3, np.float32)))


def test_mixed_dtypes_are_refused():
    x, w = tensor(np.zeros((1, 3, 5, 5))), tensor(np.zeros((4, 3, 3, 3), np.float32))
    with pytest.raises(TypeError, match=r"Conv2d: inputs have different dtypes"):
        conv2d(x, w)
