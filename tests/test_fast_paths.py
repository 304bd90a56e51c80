"""Every CPU fast path (minialex/fast/) against the reference op it stands in for, forward and
the gradients of every input.

Each path is tried twice:
  (a) with its work-splitting constants shrunk (threads.THREADS = 3, so that cuts are ragged
      even on 2 cores; threads.CHUNK; WinogradConv2d.BLOCK_BYTES; winograd.CHANNEL_BLOCK_BYTES;
      pool.PIECE_BYTES), on small float64 inputs, with the number of pieces counted, so that a
      piece skipped, done twice or cut at the wrong place shows;
  (b) at AlexNet's real layer shapes, batch 8, in float32, with the default constants, so that
      the splits a real run makes are the ones checked.
The expected values always come from the reference op (functions/*.py, optim.SGD).
Then the switch: a whole AlexNet gives the same logits and gradients with set_fast(False), with
the default, and with MINIALEX_FAST=0 in a fresh process. (conftest.py restores set_fast.)
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import minialex
from minialex import dispatch, set_fast
from minialex.fast import pool as fast_pool
from minialex.fast import threads, winograd
from minialex.fast.conv import Conv2dOnThreads, LinearOnThreads
from minialex.fast.elementwise import ReLUOnThreads, SGDOnThreads
from minialex.fast.pool import MaxPool2dOnThreads
from minialex.fast.winograd import WinogradConv2d
from minialex.functions.activation import ReLU
from minialex.functions.conv import Conv2d
from minialex.functions.linear import Linear
from minialex.functions.pool import MaxPool2d
from minialex.optim import SGD
from minialex.tensor import Tensor, tensor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- helpers ---------------------------------------------------------------------------------

def stand_in(op, arrays, name, expected_class):
    """The fast path `name`'s stand-in for `op` on these arrays, as dispatch.py picks it."""
    set_fast([name])
    function = dispatch.fast_version(op, *arrays)
    assert type(function) is expected_class, f"{name} gave {type(function).__name__}"
    return function


def forward_backward(function, arrays, gy=None, seed=1):
    """[y, dL/d(input) for every input] for dL/dy = gy (random normal if None)."""
    function.needs_grad = (True,) * len(arrays)
    y = function.forward(*arrays)
    if gy is None:
        gy = np.random.default_rng(seed).standard_normal(y.shape).astype(y.dtype)
    grads = function.backward(gy.copy())
    return [y, *(grads if isinstance(grads, tuple) else (grads,))]


def assert_agree(got, expected, tolerance, what=""):
    """Each array within tolerance * max|expected| of the reference's (0: exactly equal)."""
    assert len(got) == len(expected)
    for index, (g, e) in enumerate(zip(got, expected)):
        assert g.shape == e.shape and g.dtype == e.dtype, (what, index, g.shape, e.shape)
        if tolerance == 0:
            np.testing.assert_array_equal(g, e, err_msg=f"{what} output {index}")
            continue
        scale = float(np.abs(e).max(initial=0))
        error = float(np.abs(g.astype(np.float64) - e).max(initial=0))
        assert error <= tolerance * scale, (
            f"{what} output {index} (0: forward, then gradients): max error {error:.3e}, "
            f"{error / max(scale, 1e-300):.2e} of the scale {scale:.3e}")


def reference_and_fast(reference_op, fast_op, arrays, gy=None):
    """Forward and backward of the reference op and of the fast path's stand-in; the fast one
    made from a fresh op, so that nothing the reference kept is shared."""
    expected = forward_backward(reference_op(), arrays, gy)
    return expected, forward_backward(fast_op(), arrays, gy)


class FakeBlas:
    """A BLAS controller for machines where threadpoolctl finds none (matmul then cuts)."""

    def get_num_threads(self):
        return 1

    def set_num_threads(self, n):
        pass


@pytest.fixture
def pieces(monkeypatch):
    """Counts every run_in_threads call: a list of (function name, number of pieces)."""
    calls, original = [], threads.run_in_threads

    def run(function, work):
        calls.append((getattr(function, "__name__", "?"), len(work)))
        original(function, work)

    monkeypatch.setattr(threads, "run_in_threads", run)
    return calls


@pytest.fixture
def three_threads(monkeypatch):
    """Products cut in 3 (ragged on any machine); a BLAS controller even where none is found."""
    monkeypatch.setattr(threads, "THREADS", 3)
    if not threads._blas_libraries():
        monkeypatch.setattr(threads, "_blas_libraries", lambda: (FakeBlas(),))


def normal(shape, seed, scale=1.0, dtype=np.float64):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def conv_arrays(N, C, H, W, F, G, K, dtype, seed=0):
    """x, w, b with outputs of order 1 (weights scaled by 1 / sqrt(fan-in))."""
    CG = C // G
    return [normal((N, C, H, W), seed, dtype=dtype),
            normal((F, CG, K, K), seed + 1, (CG * K * K) ** -0.5, dtype),
            normal((F,), seed + 2, dtype=dtype)]


# ---- winograd --------------------------------------------------------------------------------

@pytest.mark.parametrize("N, C, F, groups, H, W, r, padding", [
    (5, 6, 4, 2, 9, 8, 3, 1),   # m = 5: 2 x 2 tiles, the last ones past the edge
    (5, 5, 3, 1, 7, 10, 5, 2),  # m = 4 for 5x5, 5 channels
    (7, 4, 4, 2, 6, 6, 3, 0),
])
def test_winograd_in_blocks_of_images_and_of_channels(N, C, F, groups, H, W, r, padding,
                                                      pieces, three_threads, monkeypatch):
    x, w, b = conv_arrays(N, C, H, W, F, groups, r, np.float64)
    m = winograd.WINOGRAD_TILES[r]
    a, OH, OW = m + r - 1, H + 2 * padding - r + 1, W + 2 * padding - r + 1
    TH, TW = -(-OH // m), -(-OW // m)
    # 2 images per block (the products of one image take a^2 F TH TW values): 3 or 4 blocks,
    # the last with one image
    monkeypatch.setattr(WinogradConv2d, "BLOCK_BYTES", 2 * a * a * F * TH * TW * 8)
    # 2 channels per piece of the gather, for blocks of 2 images: a ragged last piece for C odd
    per_channel = (TH * m + r - 1) * (TW * m + r - 1) * 8
    monkeypatch.setattr(winograd, "CHANNEL_BLOCK_BYTES", 2 * 2 * per_channel)
    expected, got = reference_and_fast(
        lambda: Conv2d((1, 1), (padding, padding), groups),
        lambda: stand_in(Conv2d((1, 1), (padding, padding), groups), [x, w, b], "winograd",
                         WinogradConv2d), [x, w, b])
    assert_agree(got, expected, 1e-10, "winograd")
    # every block of images, and in each every piece of channels, forward and backward
    images = [min(2, N - n) for n in range(0, N, 2)]
    channel_pieces = [-(-C // (2 * 2 // n)) for n in images]
    assert len(images) >= 3 and images[-1] == 1 and max(channel_pieces) >= 2
    assert [k for name, k in pieces if name == "_pad_and_gather"] == channel_pieces
    per_filter = m * TH * m * TW * 8  # the outputs of one filter, per image
    filter_pieces = [-(-F // max(1, 2 * 2 * per_channel // (per_filter * n))) for n in images]
    assert [k for name, k in pieces if name == "_place_outputs"] == filter_pieces
    assert [k for name, k in pieces if name == "_add_tiles"] == channel_pieces
    assert all(k == 3 for name, k in pieces if name == "<lambda>")  # products on 3 threads


ALEXNET_CONVS = {  # (N, C, H, W), F, kernel, padding, groups; batch 8
    "conv2": ((8, 96, 27, 27), 256, 5, 2, 2), "conv3": ((8, 256, 13, 13), 384, 3, 1, 1),
    "conv4": ((8, 384, 13, 13), 384, 3, 1, 2), "conv5": ((8, 384, 13, 13), 256, 3, 1, 2),
}


@pytest.mark.slow
@pytest.mark.parametrize("layer", ALEXNET_CONVS)
def test_winograd_at_alexnets_layers(layer, pieces):
    (N, C, H, W), F, r, padding, groups = ALEXNET_CONVS[layer]
    arrays = conv_arrays(N, C, H, W, F, groups, r, np.float32)
    expected, got = reference_and_fast(
        lambda: Conv2d((1, 1), (padding, padding), groups),
        lambda: stand_in(Conv2d((1, 1), (padding, padding), groups), arrays, "winograd",
                         WinogradConv2d), arrays)
    assert_agree(got, expected, 1e-4, layer)  # float32 rounding of the transforms: ~1e-5
    # the default CHANNEL_BLOCK_BYTES cuts the gather of these layers in pieces, and the outputs
    # of all but conv5 (256 filters of 8 images' 15 x 15 tiles fit in one piece)
    gathers = [k for name, k in pieces if name == "_pad_and_gather"]
    outputs = [k for name, k in pieces if name == "_place_outputs"]
    assert gathers and min(gathers) >= 2 and outputs and min(outputs) >= (layer != "conv5") + 1


# ---- gemm: im2col by phases, products on threads ---------------------------------------------

CONV_CASES = [  # (N, C, H, W), F, (KH, KW), stride, padding, groups
    ((2, 3, 23, 23), 4, (11, 11), (4, 4), (0, 0), 1),  # conv1 in small: 4 phases
    ((2, 3, 25, 22), 4, (11, 11), (4, 4), (2, 1), 1),  # rows past the last window, padding
    ((2, 4, 9, 10), 6, (3, 3), (2, 2), (1, 1), 2),
    ((1, 3, 8, 7), 2, (2, 3), (3, 2), (1, 0), 1),      # a kernel smaller than the stride
    ((3, 2, 7, 7), 4, (3, 3), (1, 1), (1, 1), 1),      # stride 1: the phases are x itself
    ((2, 6, 5, 6), 6, (1, 1), (2, 3), (0, 0), 3),
]


@pytest.mark.parametrize("shape, F, kernel, stride, padding, groups", CONV_CASES)
def test_im2col_by_phases_is_the_reference_im2col(shape, F, kernel, stride, padding, groups):
    from minialex.fast.conv import col2im_by_phases, im2col_by_phases
    from minialex.functions.conv import col2im, im2col
    x = normal(shape, 3)
    col = im2col_by_phases(x, *kernel, *stride, *padding)
    np.testing.assert_array_equal(col, im2col(x, *kernel, *stride, *padding))
    grad_col = normal(col.shape, 4)
    np.testing.assert_allclose(col2im_by_phases(grad_col, shape, *stride, *padding),
                               col2im(grad_col, shape, *stride, *padding), rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize("shape, F, kernel, stride, padding, groups", CONV_CASES)
def test_conv2d_on_threads_matches_the_reference(shape, F, kernel, stride, padding, groups,
                                                 pieces, three_threads):
    N, C, H, W = shape
    x = normal(shape, 0)
    w = normal((F, C // groups, *kernel), 1)
    b = normal((F,), 2)
    expected, got = reference_and_fast(
        lambda: Conv2d(stride, padding, groups),
        lambda: stand_in(Conv2d(stride, padding, groups), [x, w, b], "gemm", Conv2dOnThreads),
        [x, w, b])
    assert_agree(got, expected, 1e-12, "gemm conv2d")
    # forward, the columns' and the weights' gradients: each product cut over the 3 threads
    assert len(pieces) == 3 and all(k >= 2 for _, k in pieces), pieces


@pytest.mark.parametrize("N, IN, OUT", [(5, 7, 6), (1, 9, 4), (8, 3, 2)])
def test_linear_on_threads_matches_the_reference(N, IN, OUT, pieces, three_threads):
    arrays = [normal((N, IN), 0), normal((OUT, IN), 1), normal((OUT,), 2)]
    expected, got = reference_and_fast(
        Linear, lambda: stand_in(Linear(), arrays, "gemm", LinearOnThreads), arrays)
    assert_agree(got, expected, 1e-12, "gemm linear")
    assert len(pieces) == 3 and all(k >= 2 for _, k in pieces), pieces


def test_linear_on_threads_without_a_bias(three_threads):
    arrays = [normal((4, 5), 0), normal((3, 5), 1)]
    expected, got = reference_and_fast(
        Linear, lambda: stand_in(Linear(), arrays, "gemm", LinearOnThreads), arrays)
    assert len(got) == 3
    assert_agree(got, expected, 1e-12, "gemm linear without bias")


@pytest.mark.slow
def test_conv1_on_threads_at_alexnets_size(pieces):
    arrays = conv_arrays(8, 3, 227, 227, 96, 1, 11, np.float32)
    expected, got = reference_and_fast(
        lambda: Conv2d((4, 4), (0, 0), 1),
        lambda: stand_in(Conv2d((4, 4), (0, 0), 1), arrays, "gemm", Conv2dOnThreads), arrays)
    assert_agree(got, expected, 1e-5, "conv1")  # only the order of float32 sums differs
    assert len(pieces) == (3 if threads.THREADS > 1 and threads._blas_libraries() else 0)


@pytest.mark.slow
@pytest.mark.parametrize("IN, OUT", [(9216, 4096), (4096, 1000)])  # fc6, fc8
def test_linear_on_threads_at_alexnets_size(IN, OUT):
    arrays = [normal((8, IN), 0, dtype=np.float32),
              normal((OUT, IN), 1, IN ** -0.5, np.float32), normal((OUT,), 2, dtype=np.float32)]
    expected, got = reference_and_fast(
        Linear, lambda: stand_in(Linear(), arrays, "gemm", LinearOnThreads), arrays)
    assert_agree(got, expected, 1e-5, f"fc {IN}->{OUT}")


# ---- pool ------------------------------------------------------------------------------------

POOL_CASES = [  # (N, C, H, W), kernel, stride, padding, ceil_mode
    ((7, 3, 9, 9), (3, 3), (2, 2), (0, 0), False),   # AlexNet's overlapping windows
    ((5, 2, 8, 8), (3, 3), (2, 2), (1, 1), True),
    ((7, 2, 6, 9), (2, 3), (1, 2), (1, 0), True),
    ((5, 3, 7, 7), (2, 2), (2, 2), (0, 0), True),    # a last window half past the edge
    ((9, 1, 5, 6), (5, 6), (1, 1), (2, 3), False),   # window as large as the input
]


def pool_op(kernel, stride, padding, ceil_mode):
    return lambda: MaxPool2d(kernel, stride, padding, ceil_mode)


def pool_pieces_of_two_images(monkeypatch, shape, op):
    """Sets PIECE_BYTES so that a piece is 2 images of the padded input; the piece count."""
    padded, _, _ = op()._padded(np.zeros((1, *shape[1:])), -np.inf)
    monkeypatch.setattr(fast_pool, "PIECE_BYTES", 2 * padded.nbytes + 1)
    return -(-shape[0] // 2)


@pytest.mark.parametrize("shape, kernel, stride, padding, ceil_mode", POOL_CASES)
@pytest.mark.parametrize("values", ["normal", "ties"])
def test_max_pool_on_threads_matches_the_reference(shape, kernel, stride, padding, ceil_mode,
                                                   values, pieces, monkeypatch):
    op = pool_op(kernel, stride, padding, ceil_mode)
    count = pool_pieces_of_two_images(monkeypatch, shape, op)
    if values == "ties":  # a few small integers: many ties, and sums with no rounding
        x = np.random.default_rng(5).integers(0, 3, shape).astype(np.float64)
        gy_shape = op().forward(x).shape
        gy = np.random.default_rng(6).integers(-4, 5, gy_shape).astype(np.float64)
    else:
        x, gy = normal(shape, 5), None
    expected, got = reference_and_fast(
        op, lambda: stand_in(op(), [x], "pool", MaxPool2dOnThreads), [x], gy)
    # the maxima are copies; the gradients of overlapping windows add up in another order
    assert_agree(got[:1], expected[:1], 0, "max_pool2d forward")
    assert_agree(got[1:], expected[1:], 0 if values == "ties" else 1e-14, "max_pool2d backward")
    assert pieces == [("_forward_images", count)] and count >= 3 and shape[0] % 2 == 1


def test_max_pool_on_threads_sends_each_gradient_to_its_own_image(monkeypatch):
    """One image per piece, every image different: an index into the wrong image shows."""
    shape = (4, 3, 5, 5)
    op = pool_op((3, 3), (2, 2), (0, 0), False)
    monkeypatch.setattr(fast_pool, "PIECE_BYTES", 1)
    x = normal(shape, 7) + np.arange(4).reshape(4, 1, 1, 1) * 10
    expected, got = reference_and_fast(
        op, lambda: stand_in(op(), [x], "pool", MaxPool2dOnThreads), [x])
    assert_agree(got, expected, 1e-14, "max_pool2d")


def nan_pool_case():
    x = normal((2, 3, 7, 7), 11)
    x[0, 1, 2, 3] = x[1, 2, 4, 4] = x[1, 2, 5, 1] = np.nan  # two NaNs in one window
    return pool_op((3, 3), (2, 2), (0, 0), False), x


def test_max_pool_on_threads_shows_a_nan_as_the_reference_does():
    op, x = nan_pool_case()
    expected, got = reference_and_fast(
        op, lambda: stand_in(op(), [x], "pool", MaxPool2dOnThreads), [x])
    assert np.isnan(expected[0]).any()
    assert_agree(got[:1], expected[:1], 0, "max_pool2d forward with NaN")


def test_max_pool_on_threads_sends_a_nan_windows_gradient_where_the_reference_does():
    op, x = nan_pool_case()
    expected, got = reference_and_fast(
        op, lambda: stand_in(op(), [x], "pool", MaxPool2dOnThreads), [x])
    assert_agree(got[1:], expected[1:], 1e-14, "max_pool2d backward with NaN")


ALEXNET_POOLS = {"pool1": (8, 96, 55, 55), "pool2": (8, 256, 27, 27), "pool5": (8, 256, 13, 13)}


@pytest.mark.parametrize("layer", ALEXNET_POOLS)
def test_max_pool_on_threads_at_alexnets_layers(layer, pieces):
    shape = ALEXNET_POOLS[layer]
    op = pool_op((3, 3), (2, 2), (0, 0), False)
    x = np.maximum(normal(shape, 8, dtype=np.float32), 0)  # after a ReLU: ties at 0
    expected, got = reference_and_fast(
        op, lambda: stand_in(op(), [x], "pool", MaxPool2dOnThreads), [x])
    assert_agree(got[:1], expected[:1], 0, layer)
    assert_agree(got[1:], expected[1:], 1e-6, layer)
    per_image = shape[1] * shape[2] * shape[3] * 4
    count = -(-shape[0] // max(1, fast_pool.PIECE_BYTES // per_image))
    assert pieces == [("_forward_images", count)]
    assert count > 1 or layer == "pool5"  # pool1 in 8 pieces, pool2 in 4


# ---- elementwise: ReLU -----------------------------------------------------------------------

def test_relu_on_threads_matches_the_reference_in_ragged_pieces(pieces, monkeypatch):
    monkeypatch.setattr(threads, "CHUNK", 300)
    x = normal((7, 13, 11), 9)  # 1001 values: pieces of 300, 300, 300 and 101
    x.reshape(-1)[::97] = 0.0
    x.reshape(-1)[-1] = np.nan  # NaN stays NaN, in the last piece
    expected, got = reference_and_fast(
        ReLU, lambda: stand_in(ReLU(), [x], "elementwise", ReLUOnThreads), [x])
    assert_agree(got, expected, 0, "relu")
    assert pieces == [("_relu_piece", 4), ("multiply", 4)]


def test_relu_on_threads_at_conv1s_output(pieces):
    x = normal((8, 96, 55, 55), 10, dtype=np.float32)  # 2.3 million values: 3 pieces
    expected, got = reference_and_fast(
        ReLU, lambda: stand_in(ReLU(), [x], "elementwise", ReLUOnThreads), [x])
    assert_agree(got, expected, 0, "relu")
    count = -(-x.size // threads.CHUNK)
    assert pieces == [("_relu_piece", count), ("multiply", count)] and count >= 3


# ---- sgd -------------------------------------------------------------------------------------

def sgd_runs(shapes, steps, dtype=np.float64, transposed=(), **settings):
    """The parameters and velocities after `steps` steps of SGD, once on the reference and
    once with the fast path "sgd", from the same weights and gradients."""
    results = {}
    for name in ("reference", "sgd"):
        params = []
        for index, shape in enumerate(shapes):
            data = normal(shape, 20 + index, dtype=dtype)
            if index in transposed:  # a parameter that is not C-contiguous
                data = np.ascontiguousarray(data.T).T
            params.append(Tensor(data, requires_grad=True))
        optimizer = SGD(params, lr=0.01, **settings)
        set_fast(False if name == "reference" else ["sgd"])
        assert type(dispatch.fast_version(optimizer, params[0].data)) is (
            SGD if name == "reference" else SGDOnThreads)
        for step in range(steps):
            for index, p in enumerate(params):
                p.grad = normal(p.shape, 100 * step + index, dtype=dtype)
            optimizer.step()
        results[name] = [p.data.copy() for p in params] + [
            u.copy() for u in optimizer.velocity if u is not None]
    return results["reference"], results["sgd"]


@pytest.mark.parametrize("settings", [dict(momentum=0.9, weight_decay=5e-4), dict(),
                                      dict(weight_decay=0.1)])
def test_sgd_on_threads_matches_the_reference_in_ragged_pieces(settings, pieces, monkeypatch):
    monkeypatch.setattr(threads, "CHUNK", 16)
    shapes = [(7, 5), (13,), (3, 4, 5), (1,), (6, 5)]  # 35, 13, 60, 1 and 30 values
    expected, got = sgd_runs(shapes, 3, transposed=(4,), **settings)
    assert_agree(got, expected, 0, "sgd")  # the same operations on every value: exact
    # per step: 3 + 1 + 4 + 1 pieces of 16 values or fewer, and the transposed one whole
    assert [k for name, k in pieces] == [10] * 3


@pytest.mark.slow
def test_sgd_on_threads_at_fc6s_size(pieces):
    """fc6's weight: 37.7 million values, 36 pieces of threads.CHUNK."""
    shapes = [(4096, 9216), (4096,)]
    expected, got = sgd_runs(shapes, 2, dtype=np.float32, momentum=0.9, weight_decay=5e-4)
    assert_agree(got, expected, 0, "sgd at fc6")
    count = -(-4096 * 9216 // threads.CHUNK) + 1
    assert [k for _, k in pieces] == [count] * 2 and count > 30


# ---- the switch: a whole AlexNet with and without the fast paths -----------------------------

def alexnet_run(fast, seed=0):
    """Logits and parameter gradients of a small AlexNet (width 1/4, batch 2, 227 x 227,
    dropout 0), and the classes of every Function in the graph."""
    set_fast(fast)
    minialex.random.manual_seed(seed)
    model = minialex.models.alexnet("paper", num_classes=10, width=0.25, init="kaiming",
                                    dropout=0.0)
    x = normal((2, 3, 227, 227), seed, dtype=np.float32)
    logits = model(tensor(x))
    loss = minialex.functional.cross_entropy(logits, np.array([3, 7]))
    classes, stack, seen = set(), [loss], set()
    while stack:
        t = stack.pop()
        if t.creator is not None and id(t.creator) not in seen:
            seen.add(id(t.creator))
            classes.add(type(t.creator))
            stack.extend(t.creator.inputs)
    loss.backward()
    return ([logits.numpy()] + [p.grad for p in model.parameters()], classes,
            [name for name, _ in model.named_parameters()])


def assert_same_network(got, expected, names):
    for index, (g, e) in enumerate(zip(got, expected)):
        what = "logits" if index == 0 else names[index - 1]
        assert g.shape == e.shape and g.dtype == np.float32, what
        # relative error of the whole array (float32, Winograd's rounding)
        error = np.linalg.norm(g - e) / max(np.linalg.norm(e), 1e-30)
        assert error < 1e-4, f"{what}: relative error {error:.2e}"


def test_alexnet_gives_the_same_results_with_and_without_fast_paths():
    expected, reference_classes, names = alexnet_run(False)
    got, fast_classes, _ = alexnet_run(True)
    assert_same_network(got, expected, names)
    # set_fast(False): every op is a reference class; by default the fast paths stand in
    assert all(c.__module__.startswith("minialex.functions") for c in reference_classes), \
        reference_classes
    assert {WinogradConv2d, Conv2dOnThreads, LinearOnThreads, MaxPool2dOnThreads,
            ReLUOnThreads} <= fast_classes


SCRIPT = """
import sys
import numpy as np
sys.path.insert(0, {tests!r})
import minialex
from test_fast_paths import alexnet_run
arrays, classes, names = alexnet_run(sorted(minialex.enabled_paths()))
np.savez(sys.argv[1], *arrays)
print(sorted(minialex.enabled_paths()))
print(sorted(c.__module__ for c in classes))
"""


@pytest.mark.slow
def test_minialex_fast_0_in_the_environment_gives_the_same_network(tmp_path):
    runs = {}
    for setting in ("0", None):
        env = {k: v for k, v in os.environ.items() if k != "MINIALEX_FAST"}
        if setting is not None:
            env["MINIALEX_FAST"] = setting
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
        out = tmp_path / f"fast-{setting}.npz"
        result = subprocess.run(
            [sys.executable, "-c", SCRIPT.format(tests=os.path.join(ROOT, "tests")), str(out)],
            env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        paths, modules = result.stdout.splitlines()[-2:]
        with np.load(out) as saved:
            runs[setting] = [saved[f"arr_{i}"] for i in range(len(saved.files))], paths, modules
    (expected, paths_off, modules_off), (got, paths_on, _) = runs["0"], runs[None]
    assert paths_off == "[]" and "winograd" in paths_on
    assert "minialex.fast" not in modules_off
    assert_same_network(got, expected, ["parameter"] * (len(got) - 1))
