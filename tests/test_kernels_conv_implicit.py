"""The implicit-GEMM convolution (kernels/conv_implicit.cu) on the CPU, through the kernel shim.

Expected values come from a naive float64 loop written from the formula of functions/conv.py,

    y[n, f, oh, ow] = b[f] + sum over c, i, j of w[f, c, i, j] x_padded[n, g CG + c, oh SH + i,
                                                                        ow SW + j]

and its three gradients, one window position at a time; and, for Conv2dOnKernels, from the
reference op in float64 through the same seam that tests/test_gpu.py uses (float32 NumPy arrays
count as "cuda", each launch runs on the CPU build of the .cu file). No GPU has run these
kernels: speed and the memory saving on a real device are unmeasured.
"""
import numpy as np
import pytest

from minialex import backend, cuda
from minialex.functions.conv import conv2d
from minialex.gpu import Conv2dOnKernels
from minialex.tensor import tensor
from conftest import names_launched

FILE = "conv_implicit.cu"
SIZES = ("int",) * 14  # N C H W KH KW SH SW PH PW OH OW F G
CONTRACT = {
    "conv_implicit_forward": ("float*",) * 4 + SIZES,
    "conv_implicit_grad_w": ("float*",) * 3 + SIZES + ("int",),
    "conv_implicit_sum_splits": ("float*",) * 3 + ("int",) * 3,
    "conv_implicit_grad_x": ("float*",) * 3 + SIZES,
}


def naive_conv(x, w, b, gy, stride, padding, groups):
    """y, dx, dw, db in float64 from the formula, one output position (oh, ow) at a time."""
    (N, _, H, W), (F, CG, KH, KW) = x.shape, w.shape
    (SH, SW), (PH, PW), FG = stride, padding, F // groups
    OH, OW = (H + 2 * PH - KH) // SH + 1, (W + 2 * PW - KW) // SW + 1
    x_padded = np.pad(x, ((0, 0), (0, 0), (PH, PH), (PW, PW)))
    y, dx_padded, dw = np.zeros((N, F, OH, OW)), np.zeros_like(x_padded), np.zeros_like(w)
    for g in range(groups):
        filters, channels = slice(g * FG, (g + 1) * FG), slice(g * CG, (g + 1) * CG)
        for oh in range(OH):
            for ow in range(OW):
                rows, columns = slice(oh * SH, oh * SH + KH), slice(ow * SW, ow * SW + KW)
                window = x_padded[:, channels, rows, columns]            # (N, CG, KH, KW)
                y[:, filters, oh, ow] = np.einsum("ncij,fcij->nf", window, w[filters])
                g_out = gy[:, filters, oh, ow]                           # (N, FG)
                dw[filters] += np.einsum("nf,ncij->fcij", g_out, window)
                dx_padded[:, channels, rows, columns] += np.einsum("nf,fcij->ncij", g_out,
                                                                   w[filters])
    y += b[None, :, None, None]
    return y, dx_padded[:, :, PH:PH + H, PW:PW + W], dw, gy.sum(axis=(0, 2, 3))


def random_problem(shape, groups, seed=0):
    N, C, H, W, F, KH, KW = shape
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((N, C, H, W)), rng.standard_normal((F, C // groups, KH, KW)),
            rng.standard_normal(F))


def assert_close(got, expected, what):
    scale = max(1.0, float(np.abs(expected).max(initial=0)))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * scale, err_msg=what)
    assert got.dtype == np.float32 and got.shape == expected.shape, what


# (N, C, H, W, F, KH, KW), stride, padding, groups: AlexNet's kinds of layer, shrunk and ragged
SHAPES = [
    ((2, 3, 23, 21, 6, 11, 11), (4, 4), (0, 0), 1),    # conv1: 11x11 stride 4
    ((2, 3, 19, 22, 5, 11, 11), (4, 3), (2, 1), 1),    # 11x11, padding 2 and uneven strides
    ((3, 4, 9, 8, 6, 5, 5), (1, 1), (2, 2), 2),        # conv2: 5x5 padding 2, two groups
    ((2, 6, 7, 6, 140, 3, 3), (1, 1), (1, 1), 2),      # conv4: 3x3, FG = 70: two M tiles
    ((1, 66, 5, 4, 3, 3, 3), (2, 1), (1, 0), 1),       # CG = 66: two channel tiles of dx
    ((5, 2, 4, 5, 1, 1, 1), (1, 1), (0, 0), 1),        # 1x1, one filter
]


def check_against_the_formula(shape, stride, padding, groups, to_device, to_host):
    """The four wrappers on float32 arrays (moved by to_device) against naive_conv."""
    x, w, b = random_problem(shape, groups)
    y = to_host(cuda.conv_implicit_forward(*(to_device(a.astype(np.float32)) for a in (x, w, b)),
                                           stride, padding, groups))
    gy = np.random.default_rng(1).standard_normal(y.shape)
    expected = naive_conv(x, w, b, gy, stride, padding, groups)
    assert_close(y, expected[0], "forward")
    x32, w32, gy32 = (to_device(a.astype(np.float32)) for a in (x, w, gy))
    assert_close(to_host(cuda.conv_implicit_grad_x(gy32, w32, x.shape, stride, padding, groups)),
                 expected[1], "grad_x")
    grad_w, grad_b = cuda.conv_implicit_grad_w(x32, gy32, w.shape, stride, padding, groups)
    assert_close(to_host(grad_w), expected[2], "grad_w")
    assert_close(to_host(grad_b), expected[3], "grad_b")


@pytest.mark.parametrize("shape, stride, padding, groups", SHAPES)
def test_forward_and_every_gradient_match_the_formula(shim, shape, stride, padding, groups):
    check_against_the_formula(shape, stride, padding, groups, np.asarray, np.asarray)
    names = names_launched(shim)
    assert names == ["conv_implicit_forward", "conv_implicit_grad_x", "conv_implicit_grad_w",
                     "conv_implicit_sum_splits"]


def test_forward_without_bias_adds_nothing(shim):
    x, w, _ = random_problem((2, 4, 6, 6, 4, 3, 3), 2)
    y = cuda.conv_implicit_forward(x.astype(np.float32), w.astype(np.float32), None, (1, 1),
                                   (1, 1), 2)
    expected = naive_conv(x, w, np.zeros(4), np.zeros(y.shape), (1, 1), (1, 1), 2)[0]
    assert_close(y, expected, "forward without bias")


@pytest.mark.parametrize("target_blocks, splits", [(1, 1), (4, 2), (10**6, 5)])
def test_grad_w_sums_splits_of_the_batch(shim, monkeypatch, target_blocks, splits):
    """1 split; 2 splits of 3 and 2 images (a ragged last split); one split per image."""
    monkeypatch.setattr(cuda, "CONV_SPLIT_TARGET_BLOCKS", target_blocks)
    shape, stride, padding, groups = (5, 4, 8, 7, 6, 3, 3), (1, 2), (1, 1), 2
    x, w, b = random_problem(shape, groups)
    gy = np.random.default_rng(1).standard_normal((5, 6, 8, 4))
    grad_w, grad_b = cuda.conv_implicit_grad_w(x.astype(np.float32), gy.astype(np.float32),
                                               w.shape, stride, padding, groups)
    _, _, dw, db = naive_conv(x, w, b, gy, stride, padding, groups)
    assert_close(grad_w, dw, "grad_w")
    assert_close(grad_b, db, "grad_b")
    (_, name, grid, _, arguments), (_, sum_name, _, _, sum_arguments) = shim
    assert name == "conv_implicit_grad_w" and sum_name == "conv_implicit_sum_splits"
    assert grid[2] == groups * splits and sum_arguments[3] == splits
    assert arguments[2].shape == (splits, 6, 2 * 3 * 3 + 1)  # partial sums, bias column last


# The five conv layers of the paper's AlexNet (minialex/ALEXNET.md) at batch 128: x and w shapes,
# stride, padding, groups
ALEXNET_128 = [((128, 3, 227, 227), (96, 3, 11, 11), 4, 0, 1),
               ((128, 96, 27, 27), (256, 48, 5, 5), 1, 2, 2),
               ((128, 256, 13, 13), (384, 256, 3, 3), 1, 1, 1),
               ((128, 384, 13, 13), (384, 192, 3, 3), 1, 1, 2),
               ((128, 384, 13, 13), (256, 192, 3, 3), 1, 1, 2)]


@pytest.mark.parametrize("x_shape, w_shape, stride, padding, groups", ALEXNET_128)
def test_the_split_rule_fills_the_gpu_without_splitting_finer_than_an_image(
        x_shape, w_shape, stride, padding, groups):
    N, (F, CG, KH, KW) = x_shape[0], w_shape
    per_split = cuda.conv_split_images(N, F, CG * KH * KW, groups)
    splits = cuda.ceil_div(N, per_split)
    tiles = (cuda.ceil_div(CG * KH * KW + 1, 64) * cuda.ceil_div(F // groups, 64) * groups)
    assert 1 <= per_split <= N and (per_split - 1) * splits < N  # no split is empty
    assert tiles * splits >= min(cuda.CONV_SPLIT_TARGET_BLOCKS, tiles * N)
    # no finer than needed: one split fewer would give fewer blocks than the target
    assert splits == 1 or tiles * (splits - 1) < cuda.CONV_SPLIT_TARGET_BLOCKS


@pytest.mark.parametrize("x_shape, w_shape, stride, padding, groups", ALEXNET_128)
def test_auto_takes_the_implicit_gemm_for_alexnets_layers_at_batch_128(
        x_shape, w_shape, stride, padding, groups):
    op = Conv2dOnKernels((stride, stride), (padding, padding), groups)
    assert op.algorithm == "auto" and op.uses_implicit(x_shape, w_shape)
    small = (2,) + x_shape[1:2] + (9, 9)  # a small batch and image: columns of a few kB
    assert not op.uses_implicit(small, w_shape[:2] + (3, 3))


def test_a_bad_algorithm_name_is_refused():
    op = Conv2dOnKernels((1, 1), (0, 0), 1)
    op.algorithm = "winograd"
    with pytest.raises(ValueError, match="'auto', 'explicit' or 'implicit'; got 'winograd'"):
        op.uses_implicit((1, 1, 3, 3), (1, 1, 3, 3))


def run_conv(arrays, stride, padding, groups, needs_grad):
    """conv2d forward and backward from a fixed dL/dy: the op, the sizes of the arrays it kept
    for backward (backward frees them), and [y, then each gradient asked for]."""
    inputs = [tensor(a, requires_grad=wants) for a, wants in zip(arrays, needs_grad)]
    y = conv2d(*inputs, stride=stride, padding=padding, groups=groups)
    kept = [a.size for a in vars(y.creator).values() if isinstance(a, np.ndarray)]
    y.backward(np.random.default_rng(1).standard_normal(y.shape).astype(y.dtype))
    return y.creator, kept, [y.numpy()] + [t.grad for t in inputs]


@pytest.mark.parametrize("algorithm", ["implicit", "explicit"])
@pytest.mark.parametrize("needs_grad", [(True, True, True), (False, True, False)])
def test_conv2d_on_kernels_runs_the_chosen_algorithm(shim, monkeypatch, algorithm, needs_grad):
    monkeypatch.setattr(Conv2dOnKernels, "algorithm", algorithm)
    (x, w, b), stride, padding, groups = random_problem((3, 4, 9, 8, 6, 5, 5), 2), 2, 2, 2
    if not needs_grad[2]:
        b = None
    arrays = [a for a in (x, w, b) if a is not None]
    op, kept, got = run_conv([a.astype(np.float32) for a in arrays], stride, padding, groups,
                             needs_grad)
    _, _, expected = run_conv(arrays, stride, padding, groups, needs_grad)  # the reference
    assert type(op) is Conv2dOnKernels
    for index, (g, e) in enumerate(zip(got, expected)):
        if e is None:
            assert g is None, f"output {index}: a gradient nobody asked for"
        else:
            assert_close(g, e, f"output {index} (0: forward, then gradients)")
    names = names_launched(shim)
    column_size = 4 * 5 * 5 * 3 * 5 * 4  # C KH KW N OH OW
    if algorithm == "explicit":
        assert "im2col" in names and not any(name.startswith("conv_implicit") for name in names)
        assert column_size in kept  # the columns, kept for backward
        return
    assert names == ["conv_implicit_forward"] + ["conv_implicit_grad_x"] * needs_grad[0] + [
        "conv_implicit_grad_w", "conv_implicit_sum_splits"]
    assert max(kept) < column_size, "the op kept an array as large as the columns"
    largest = max(a.size for launch in shim for a in launch.arguments
                  if isinstance(a, np.ndarray))
    assert largest < column_size, "an array as large as the columns went to a kernel"


def test_auto_keeps_the_explicit_path_for_small_layers(shim):
    x = tensor(np.ones((1, 2, 6, 6), np.float32), requires_grad=True)
    y = conv2d(x, tensor(np.ones((2, 2, 3, 3), np.float32)))
    assert type(y.creator) is Conv2dOnKernels and not y.creator.implicit
    y.sum().backward()
    assert "im2col" in names_launched(shim)


def test_every_entry_point_exists_with_the_contracts_parameters():
    points = cuda.entry_points(cuda.kernel_source(FILE))
    assert {name: tuple(p.type for p in parameters) for name, parameters in points.items()} \
        == CONTRACT


@pytest.mark.parametrize("x_shape, w_shape, groups, match", [
    ((1, 4, 5, 5), (2, 3, 3, 3), 1, "do not make a convolution with groups=1"),
    ((1, 4, 5, 5), (3, 2, 3, 3), 2, "do not make a convolution with groups=2"),
    ((1, 1, 2, 2), (1, 1, 3, 3), 1, "do not make a convolution"),
    ((2**16, 1, 2**8, 2**8), (1, 1, 1, 1), 1, "2\\^31 positions or more"),
])
def test_shapes_that_are_no_convolution_are_refused(x_shape, w_shape, groups, match):
    with pytest.raises(ValueError, match=match):
        cuda._conv_sizes(x_shape, w_shape, (1, 1), (0, 0), groups)


def test_the_kernels_take_float32_only():
    with pytest.raises(TypeError, match="the kernels take float32; got float64"):
        cuda.conv_implicit_forward(np.ones((1, 1, 3, 3)), np.ones((1, 1, 3, 3)), None, (1, 1),
                                   (0, 0), 1)


# ----------------------------------------------------------------------------------------------
# On a GPU (skipped without CuPy and a device, unless MINIALEX_REQUIRE_GPU=1)

@pytest.mark.gpu
@pytest.mark.parametrize("shape, stride, padding, groups", SHAPES)
def test_gpu_implicit_kernels_match_the_formula(shape, stride, padding, groups):
    cp = backend._import_cupy()
    check_against_the_formula(shape, stride, padding, groups, cp.asarray, cp.asnumpy)


@pytest.mark.gpu
def test_gpu_the_implicit_gemm_saves_at_least_the_columns(monkeypatch):
    """AlexNet's conv2 at batch 32, forward and backward: the memory pool's high-water mark
    with the explicit path exceeds the implicit one's by at least the columns (224 MB)."""
    cp = backend._import_cupy()
    pool = cp.get_default_memory_pool()
    rng = np.random.default_rng(0)
    x = cp.asarray(rng.standard_normal((32, 96, 27, 27)), dtype=cp.float32)
    w = cp.asarray(rng.standard_normal((256, 48, 5, 5)) * 0.01, dtype=cp.float32)
    peaks = {}
    for algorithm in ("explicit", "implicit"):
        monkeypatch.setattr(Conv2dOnKernels, "algorithm", algorithm)
        inputs = tensor(x, requires_grad=True), tensor(w, requires_grad=True)
        cp.cuda.Device().synchronize()
        pool.free_all_blocks()  # the pool then grows to the step's high-water mark
        y = conv2d(*inputs, padding=2, groups=2)
        y.backward(cp.ones(y.shape, dtype=cp.float32))
        cp.cuda.Device().synchronize()
        peaks[algorithm] = pool.total_bytes()
        del y, inputs
    column_bytes = 4 * 96 * 5 * 5 * 32 * 27 * 27
    assert peaks["explicit"] - peaks["implicit"] >= column_bytes, peaks
