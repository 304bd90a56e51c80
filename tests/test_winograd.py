"""Winograd convolution (fast/winograd.py) against the naive loop and finite differences."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minialex import set_fast
from minialex.fast import winograd
from minialex.fast.conv import Conv2dOnThreads
from minialex.fast.winograd import WinogradConv2d, transforms
from minialex.functions import conv
from minialex.gradcheck import gradcheck
from minialex.tensor import tensor
from test_conv import conv2d_naive

TILES = [(2, 3), (4, 3), (5, 3), (6, 3), (2, 5), (3, 5), (4, 5), (1, 3), (3, 1)]  # (m, r)


@pytest.mark.parametrize("m, r", TILES)
def test_one_dimensional_transforms_compute_a_correlation(m, r, rng):
    """y_i = sum_j d[i + j] g[j] for i < m, from y = AT [(G g) * (BT d)], in float64."""
    AT, G, BT = transforms(m, r)
    assert AT.shape == (m, m + r - 1) and G.shape == (m + r - 1, r)
    d, g = rng.standard_normal(m + r - 1), rng.standard_normal(r)
    expected = [sum(d[i + j] * g[j] for j in range(r)) for i in range(m)]
    np.testing.assert_allclose(AT @ ((G @ g) * (BT @ d)), expected, rtol=1e-12, atol=1e-12)


def test_too_many_points_is_refused():
    with pytest.raises(ValueError, match="points"):
        transforms(9, 3)


def run(x, w, b, padding, groups, tile):
    function = WinogradConv2d(padding, groups, tile)
    inputs = [tensor(x), tensor(w)] + ([] if b is None else [tensor(b)])
    return function(*inputs).numpy()


@st.composite
def cases(draw, max_size=8):
    """Ragged sizes (tiles past the output's edge), padding 0 to r, groups, batch 1 to 3."""
    m, r = draw(st.sampled_from(TILES))
    groups = draw(st.sampled_from([1, 2]))
    CG, FG, N = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    PH, PW = draw(st.integers(0, r)), draw(st.integers(0, r))
    H = draw(st.integers(max(1, r - 2 * PH), max(1, r - 2 * PH) + max_size))
    W = draw(st.integers(max(1, r - 2 * PW), max(1, r - 2 * PW) + max_size))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x = rng.standard_normal((N, CG * groups, H, W))
    w = rng.standard_normal((FG * groups, CG, r, r))
    b = rng.standard_normal(FG * groups) if draw(st.booleans()) else None
    return x, w, b, (PH, PW), groups, m


@given(cases())
def test_forward_matches_naive_loop(case):
    x, w, b, padding, groups, m = case
    expected = conv2d_naive(x, w, b, (1, 1), padding, groups)
    np.testing.assert_allclose(run(x, w, b, padding, groups, m), expected, rtol=1e-10,
                               atol=1e-10)


@given(cases(max_size=4))
def test_backward_matches_finite_differences(case):
    x, w, b, padding, groups, m = case
    inputs = [tensor(x, requires_grad=True), tensor(w, requires_grad=True)]
    if b is not None:
        inputs.append(tensor(b, requires_grad=True))
    assert gradcheck(lambda *t: WinogradConv2d(padding, groups, m)(*t), inputs)


@pytest.mark.parametrize("m, r, padding, groups", [
    (4, 3, 1, 2), (5, 3, 1, 2), (5, 3, 1, 1), (3, 5, 2, 1), (4, 5, 2, 1), (2, 5, 2, 2)])
def test_float32_agrees_with_float64_at_alexnet_like_sizes(m, r, padding, groups, rng):
    """Rounding grows with the tile; at conv2- and conv3-like sizes it stays near 5e-6."""
    x = rng.standard_normal((2, 16, 13, 13))
    w = rng.standard_normal((8, 16 // groups, r, r)) * 0.1
    expected = conv2d_naive(x, w, None, (1, 1), (padding, padding), groups)
    got = run(x.astype(np.float32), w.astype(np.float32), None, (padding, padding), groups, m)
    assert got.dtype == np.float32
    assert np.abs(got - expected).max() <= 2e-5 * np.abs(expected).max()


def test_float32_gradients_agree_with_the_im2col_path(rng):
    """set_fast is switched back after each test (conftest.py)."""
    x = rng.standard_normal((2, 6, 11, 11)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    grads = []
    for fast in (True, False):
        inputs = [tensor(a, requires_grad=True) for a in (x, w, b)]
        set_fast(fast)
        y = conv.conv2d(*inputs, padding=1, groups=2)
        assert isinstance(y.creator, WinogradConv2d) == fast
        assert (type(y.creator) is conv.Conv2d) == (not fast)  # the reference itself
        (y * tensor(np.cos(np.arange(y.size)).reshape(y.shape).astype(np.float32))).sum()\
            .backward()
        grads.append([t.grad for t in inputs] + [y.numpy()])
    for winograd_result, im2col_result in zip(*grads):
        assert winograd_result.dtype == np.float32
        np.testing.assert_allclose(winograd_result, im2col_result, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kwargs, kernel, uses_winograd", [
    (dict(padding=1), 3, True), (dict(padding=2), 5, True), (dict(stride=2, padding=1), 3, False),
    (dict(), 11, False), (dict(), 1, False)])
def test_conv2d_takes_the_winograd_path_for_stride_1_kernels_with_a_tile(kwargs, kernel,
                                                                          uses_winograd):
    """By default Winograd where it applies and the threaded im2col elsewhere; with
    set_fast(False) the reference Conv2d everywhere."""
    assert winograd.WINOGRAD_TILES.get(kernel) is not None or not uses_winograd
    for fast in (True, False):
        set_fast(fast)
        x = tensor(np.ones((1, 2, 12, 12), dtype=np.float32), requires_grad=True)
        y = conv.conv2d(x, tensor(np.ones((2, 2, kernel, kernel), dtype=np.float32)), **kwargs)
        if not fast:
            assert type(y.creator) is conv.Conv2d
        elif uses_winograd:
            assert type(y.creator) is WinogradConv2d
        else:
            assert type(y.creator) is Conv2dOnThreads


def test_blocks_of_images_give_the_same_result_and_gradients(monkeypatch, rng):
    """With a tiny BLOCK_BYTES every image is a block of its own: results must not change."""
    monkeypatch.setattr(WinogradConv2d, "BLOCK_BYTES", 1)
    x, w, b = rng.standard_normal((3, 4, 6, 5)), rng.standard_normal((4, 2, 3, 3)), \
        rng.standard_normal(4)
    function = WinogradConv2d((1, 1), 2, 2)
    y = function(tensor(x), tensor(w), tensor(b)).numpy()
    assert len(function.blocks) == 3
    np.testing.assert_allclose(y, conv2d_naive(x, w, b, (1, 1), (1, 1), 2), rtol=1e-10,
                               atol=1e-10)
    inputs = [tensor(a, requires_grad=True) for a in (x, w, b)]
    assert gradcheck(lambda *t: WinogradConv2d((1, 1), 2, 2)(*t), inputs)
