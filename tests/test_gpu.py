"""The GPU path: minialex/cuda.py, the ops' GPU dispatch, devices and checkpoints.

Three parts:
  1. On any machine: importing minialex never imports CuPy; asking for "cuda" without it says
     how to install it; cuda.py's reading of the .cu files (entry points) and its
     argument checks; every entry point it launches exists with the contract's parameters.
  2. On any machine, through the kernel shim (tests/kernel_shim, g++): cuda.py's wrappers and
     the ops' GPU branches run with NumPy arrays, each launch executed by the CPU build of the
     same .cu source, and are compared with the NumPy path. This checks what a GPU run would
     do (shapes, transposes, grids, argument order) without a GPU; cuda.launch itself runs
     on the fake CuPy's RawModule (part 1), and RawModule itself is left to part 3 (ReLU,
     dropout, SGD and the step's syncs: test_gpu_step.py).
  3. Marked `gpu` (skipped without CuPy and a device, unless MINIALEX_REQUIRE_GPU=1): every op
     forward and backward on CuPy against NumPy, every SGEMM version against cupy.matmul, a
     whole AlexNet training step on both devices, moving models and checkpoints between them,
     and the training script with --device cuda.
"""
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from minialex import cuda
from minialex.backend import as_numpy, device_of
from minialex.functions.activation import relu
from minialex.functions.conv import col2im, conv2d, im2col
from minialex.functions.dropout import dropout
from minialex.functions.linear import linear
from minialex.functions.loss import cross_entropy
from minialex.functions.lrn import local_response_norm
from minialex.functions.pool import max_pool2d, pool_output_size
from minialex.gpu import Conv2dOnKernels, MaxPool2dOnKernels
from minialex.tensor import tensor
from conftest import names_launched

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                                 os.environ.get("PYTHONPATH")])))
INSTALL_HINT = "pip install -e '.[gpu]'"

# The contract between cuda.py and kernels/*.cu: each entry point's parameter types, in order
# (const and __restrict__ left out). IMAGE is N C H W KH KW SH SW PH PW OH OW.
IMAGE = ("int",) * 12
SGEMM_PARAMETERS = ("int",) * 3 + ("float*",) * 3 + ("long long",) * 3
CONTRACT = {
    "im2col": ("float*", "float*") + IMAGE,
    "col2im": ("float*", "float*") + IMAGE,
    "maxpool_forward": ("float*", "float*", "unsigned char*") + IMAGE,
    "maxpool_backward": ("float*", "unsigned char*", "float*") + IMAGE,
    "lrn_forward": ("float*",) * 3 + ("int",) * 4 + ("float",) * 3,
    "lrn_backward": ("float*",) * 5 + ("int",) * 4 + ("float",) * 3,
    "softmax_xent_forward": ("float*", "long long*", "float*", "float*", "int", "int"),
    "softmax_xent_backward": ("float*", "long long*", "float*", "float", "float*", "int",
                              "int"),  # gy: a device scalar, read by the kernel (no sync)
}


def run_python(code):
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=120)


def sgemm_names():
    return [f"sgemm_v{v}_{layout}" for v in cuda.SGEMM_GEOMETRY  # v8: test_kernels_sgemm.py
            for layout in cuda.SGEMM_LAYOUTS.values()]


# ----------------------------------------------------------------------------------------------
# 1. Without a GPU: imports, the install message, reading the .cu files, argument checks

def test_importing_minialex_does_not_import_cupy():
    result = run_python("import sys, minialex, minialex.cuda, minialex.functional\n"
                        "assert 'cupy' not in sys.modules, 'minialex imported cupy'")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("statement", [
    "mx.tensor([1.0, 2.0], device='cuda')",
    "mx.tensor([1.0]).to('cuda')",
    "mx.models.alexnet('paper', num_classes=10, width=0.0625).to('cuda')",
    "minialex.cuda.relu(np.ones(3, np.float32))",
    "minialex.cuda.im2col(np.ones((1, 1, 3, 3), np.float32), 2, 2, 1, 1, 0, 0)",
])
def test_asking_for_cuda_without_cupy_says_how_to_install_it(statement):
    # sys.modules['cupy'] = None makes `import cupy` fail, even where CuPy is installed
    result = run_python("import sys; sys.modules['cupy'] = None\n"
                        "import numpy as np, minialex, minialex.cuda, minialex as mx\n"
                        f"try:\n    {statement}\nexcept RuntimeError as error:\n"
                        "    print(error)\nelse:\n    print('no error')")
    assert result.returncode == 0, result.stderr
    assert "needs CuPy" in result.stdout and INSTALL_HINT in result.stdout, result.stdout


def test_entry_points_are_read_with_their_parameters():
    source = """
    // extern "C" __global__ void commented_out(int n)
    template <int T> __device__ float helper(const float* p) { return p[T]; }
    extern "C" __global__ void first(const float* __restrict__ x, float *y,
                                     unsigned char* argmax, /* a comment */ int n,
                                     long long stride, const long long* labels, float scale)
    { }
    extern "C" __global__ void __launch_bounds__(256) second() { }
    """
    points = cuda.entry_points(source)
    assert points == {"first": (("float*", "x"), ("float*", "y"), ("unsigned char*", "argmax"),
                                ("int", "n"), ("long long", "stride"), ("long long*", "labels"),
                                ("float", "scale")),
                      "second": ()}
    assert points["first"][3].type == "int" and points["first"][3].name == "n"


def parameters(*types):
    return [cuda.Parameter(kind, f"p{index}") for index, kind in enumerate(types)]


def test_arguments_are_converted_to_the_declared_types():
    types = parameters("float*", "unsigned char*", "long long*", "int", "long long", "float")
    arrays = (np.zeros(3, np.float32), np.zeros(2, np.uint8), np.zeros(2, np.int64))
    converted = cuda.convert_arguments("k", types, (*arrays, 7, 2**40, 0.5), np.ndarray)
    assert all(a is b for a, b in zip(converted, arrays))
    assert [type(v) for v in converted[3:]] == [np.int32, np.int64, np.float32]
    assert converted[3:] == [7, 2**40, 0.5]


@pytest.mark.parametrize("types, arguments, error, match", [
    (("float*", "int"), (np.zeros(2, np.float32),), TypeError,
     r"kernel k takes 2 arguments \(float\* p0, int p1\); got 1"),
    (("float*",), (np.zeros(2),), TypeError,
     r"argument 0 \(float\* p0\).*float32; got dtype float64"),
    (("float*",), (np.zeros((3, 4), np.float32).T,), TypeError, "not contiguous"),
    (("float*",), ([1.0, 2.0],), TypeError, "needs a numpy.ndarray of float32; got list"),
    (("long long*",), (np.zeros(2, np.int32),), TypeError, "int64; got dtype int32"),
    (("int",), (2**31,), ValueError, "does not fit a 32-bit int"),
    (("int",), (1.5,), TypeError, "needs an int; got 1.5"),
    (("int",), (True,), TypeError, "needs an int; got True"),
    (("float",), ("0.5",), TypeError, "needs a number"),
    (("double",), (0.5,), TypeError, "cannot pass parameters of type double"),
])
def test_wrong_arguments_are_refused_with_a_clear_error(types, arguments, error, match):
    with pytest.raises(error, match=match):
        cuda.convert_arguments("k", parameters(*types), arguments, np.ndarray)


@pytest.mark.parametrize("filename, names", [("sgemm.cu", None), *cuda.ENTRY_POINTS.items()])
def test_every_entry_point_cuda_py_launches_exists_with_the_contracts_parameters(filename,
                                                                                  names):
    points = cuda.entry_points(cuda.kernel_source(filename))
    for name in names or sgemm_names():
        assert name in points, f"kernels/{filename} has no entry point {name}"
        expected = SGEMM_PARAMETERS if filename == "sgemm.cu" else CONTRACT[name]
        types = tuple(parameter.type for parameter in points[name])
        assert types == expected, f"{name}: parameters {types}, contract {expected}"


# The launch geometry is plain Python beside each launch in cuda.py; CUDA's grid limits,
# checked before every launch, are tested in test_kernels_sgemm.py.


def test_uses_kernels_only_for_float32_gpu_arrays():
    assert not cuda.uses_kernels(np.zeros(3, np.float32))  # NumPy: the CPU path


def test_launch_passes_each_argument_as_the_c_type_of_its_parameter(monkeypatch):
    """cuda.launch itself, on the fake CuPy's RawModule (tests/fake_cupy.py), for every wrapper:
    RawModule(code=, options=tuple), grid and block as tuples, and each argument of the C type
    that the shim's own parser reads from the .cu. CUDA reads sizeof(parameter) bytes behind
    each argument, and CuPy passes a Python int as a long long and a float as a double."""
    import functools

    import fake_cupy
    cp = fake_cupy.install(monkeypatch)
    for name in ("_module", "_kernel", "_device_sm_count"):  # fresh caches, for the fake only
        monkeypatch.setattr(cuda, name, functools.lru_cache(None)(getattr(cuda, name).__wrapped__))
    rng = np.random.default_rng(0)

    def device(*shape):
        return cp.asarray(rng.standard_normal(shape).astype(np.float32))

    x, w = device(2, 4, 9, 9), device(6, 2, 3, 3)
    for version in cuda.SGEMM_VERSIONS:
        cuda.sgemm(device(5, 7), device(3, 7), trans_b=True, version=version)
    cuda.sgemm(device(2, 600, 5), device(2, 600, 3), trans_a=True, plan=(64, 64, 2))  # split-K
    for plan in ((64, 64, 1), (64, 64, 2)):  # the bias epilogue: in the store, in the sum
        cuda.sgemm(device(5, 600), device(3, 600), trans_b=True, plan=plan, bias=device(3),
                   bias_along="column")
        cuda.sgemm(device(2, 5, 600), device(2, 600, 3), plan=plan, bias=device(2, 5),
                   bias_along="row")
    cuda.set_float32_matmul_precision("high")
    try:
        cuda.sgemm(device(5, 7), device(7, 3))
        cuda.sgemm(device(5, 7), device(7, 3), bias=device(5), bias_along="row")
    finally:
        cuda.set_float32_matmul_precision("highest")
    for kernel in ("im2col", "im2col_v1"):
        col = cuda.im2col(x, 3, 3, 1, 1, 1, 1, kernel)
    cuda.col2im(col, x.shape, 1, 1, 1, 1)
    y, argmax = cuda.maxpool_forward(x, 3, 3, 2, 2, 0, 0, 4, 4)
    cuda.maxpool_backward(y, argmax, x.shape, 3, 3, 2, 2, 0, 0)
    y, scale = cuda.lrn_forward(x, 5, 1e-4, 0.75, 2.0)
    cuda.lrn_backward(x, y, scale, y, 5, 1e-4, 0.75, 2.0)
    labels = cp.asarray(np.array([3, 0]))
    probs, _ = cuda.softmax_xent_forward(device(2, 10), labels)
    cuda.softmax_xent_backward(probs, labels, cp.asarray(np.ones((), np.float32)))
    y, positive = cuda.relu(x)
    cuda.relu_backward(y, positive)
    cuda.dropout(x, 0.5, 2**40, 7)
    cuda.sgd_multi_tensor([(w, device(*w.shape), device(*w.shape)), (x, device(*x.shape), None)],
                          0.01, 0.9, 5e-4)
    cuda.conv_implicit_forward(x, w, None, (1, 1), (1, 1), 2)
    cuda.conv_implicit_grad_x(device(2, 6, 9, 9), w, x.shape, (1, 1), (1, 1), 2)
    cuda.conv_implicit_grad_w(x, device(2, 6, 9, 9), w.shape, (1, 1), (1, 1), 2)
    launched = {name for name, *_ in cp.log.kernel_launches}  # each one checked by the fake
    every = {name for path in cuda.KERNEL_DIR.glob("*.cu") for name in cuda.entry_points(
        path.read_text()) if not name.startswith("sgemm_")}
    assert every <= launched, f"not launched here: {sorted(every - launched)}"
    assert len([n for n in launched if n.startswith("sgemm_v")]) == 8 + 2  # v1..v7, 3 of v8
    assert {"sgemm_tf32_nn", "splitk_reduce"} <= launched
    epilogues = [args[-3:] for name, _, _, args in cp.log.kernel_launches
                 if name.startswith(("sgemm_v8", "sgemm_tf32", "splitk_reduce"))]
    assert [(a.size, int(along), int(stride)) for a, along, stride in epilogues] == [
        (0, 0, 0)] * 3 + [(3, 2, 0), (10, 1, 5), (3, 2, 0), (3, 2, 0), (10, 1, 5), (10, 1, 5),
                          (0, 0, 0), (5, 1, 0)]  # (bias size, bias_along, batch_stride_bias)


@pytest.mark.parametrize("capability, kernel", [("75", "sgemm_v8_64x64_nn"),
                                                ("80", "sgemm_tf32_nn")])
def test_tf32_only_where_the_gpu_has_its_tensor_cores(capability, kernel, monkeypatch):
    """As in PyTorch, "high" precision uses TF32 only from compute capability 8.0 (Ampere) on;
    before it, sgemm.cu's TF32 kernels are compiled as traps and v8 runs instead."""
    import fake_cupy
    cp = fake_cupy.install(monkeypatch)
    monkeypatch.setattr(cp.cuda.Device, "compute_capability", capability)
    cuda.set_float32_matmul_precision("high")
    try:
        cuda.sgemm(cp.asarray(np.ones((5, 7), np.float32)), cp.asarray(np.ones((7, 3), np.float32)))
    finally:
        cuda.set_float32_matmul_precision("highest")
    assert [name for name, *_ in cp.log.kernel_launches][0] == kernel


BENCHMARK = str(ROOT / "benchmarks" / "bench_kernels.py")


def test_the_kernel_benchmark_explains_itself():
    result = subprocess.run([sys.executable, BENCHMARK, "--help"], cwd=ROOT, env=ENV,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "CUPY_TF32=0" in result.stdout and "--quick" in result.stdout


def test_the_kernel_benchmark_without_a_gpu_says_so():
    result = run_python("import runpy, sys; sys.modules['cupy'] = None\n"
                        f"sys.argv = [{BENCHMARK!r}]\n"
                        f"runpy.run_path({BENCHMARK!r}, run_name='__main__')")
    assert result.returncode == 0, result.stderr  # as benchmarks/gpu_check.sh: nothing failed
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "needs CuPy and an NVIDIA GPU" in lines[0], result.stderr
    assert INSTALL_HINT in lines[0]


# ----------------------------------------------------------------------------------------------
# 2. Without a GPU, through the kernel shim: cuda.py's wrappers and the ops' GPU branches
#    (the fixture `shim`, in tests/conftest.py)

def forward_and_backward(op, arrays, seed=1):
    """op(*tensors) and the gradient of every input, backward from a fixed random dL/dout
    (1 for a scalar output); float64 arrays take the NumPy path, float32 ones the GPU branch
    (under `shim`)."""
    inputs = [tensor(a, requires_grad=True) for a in arrays]
    out = op(*inputs)
    r = np.random.default_rng(seed).standard_normal(out.shape).astype(out.dtype)
    out.backward(r if out.ndim else None)
    return [out.numpy()] + [x.grad for x in inputs]


def assert_kernel_path_matches_numpy(op, arrays, rtol=2e-4, atol=2e-5):
    """The GPU branch in float32 against the NumPy path in float64, output and gradients."""
    float32 = forward_and_backward(op, [a.astype(np.float32) for a in arrays])
    float64 = forward_and_backward(op, [a.astype(np.float64) for a in arrays])
    for index, (got, expected) in enumerate(zip(float32, float64)):
        scale = max(1.0, float(np.abs(expected).max(initial=0)))
        np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol * scale,
                                   err_msg=f"output {index} (0: forward, then gradients)")


@pytest.mark.parametrize("shape, stride, padding, groups", [
    ((2, 4, 7, 7, 6, 3, 3), (2, 2), (1, 1), 2),      # (N, C, H, W, F, KH, KW)
    ((1, 3, 9, 6, 5, 3, 2), (1, 3), (0, 1), 1),
    ((3, 2, 5, 5, 4, 5, 5), (1, 1), (2, 2), 2),      # a 5x5 window, padding 2
    ((1, 6, 4, 4, 6, 1, 1), (1, 1), (0, 0), 3),
])
def test_conv2d_on_the_kernels_matches_numpy(shim, shape, stride, padding, groups):
    N, C, H, W, F, KH, KW = shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((F, C // groups, KH, KW))
    b = rng.standard_normal(F)
    assert_kernel_path_matches_numpy(
        lambda x, w, b: conv2d(x, w, b, stride, padding, groups), [x, w, b])
    names = names_launched(shim)
    assert "im2col" in names and "col2im" in names
    # forward nn, grad_col tn, grad_w nt: every product on our SGEMM, none on BLAS
    layouts = sorted(name[-2:] for name in names if name.startswith("sgemm"))
    assert layouts == ["nn", "nt", "tn"]
    # forward: the bias in the product's store, one per row (filter), group g's at g F/G
    _, name, _, _, arguments = next(launch for launch in shim if launch[1].startswith("sgemm"))
    assert name.endswith("_nn") and arguments[-2:] == (1, F // groups)
    np.testing.assert_array_equal(arguments[-3].ravel(), b.astype(np.float32))


@pytest.mark.parametrize("N, IN, OUT", [(1, 1, 1), (3, 17, 5), (5, 33, 65)])
def test_linear_on_the_kernels_matches_numpy(shim, N, IN, OUT):
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((N, IN)), rng.standard_normal((OUT, IN)),
              rng.standard_normal(OUT)]
    assert_kernel_path_matches_numpy(linear, arrays)
    forward = shim[0]  # y = x W^T + b: the bias goes to the product's store, one per column
    assert forward[1].startswith("sgemm_v8") and forward[4][-2:] == (2, 0)  # one for all
    np.testing.assert_array_equal(forward[4][-3], arrays[2].astype(np.float32))
    layouts = sorted(name[-2:] for name in names_launched(shim))
    if min(N, IN, OUT) > 1:
        assert layouts == ["nn", "nt", "tn"]
    else:  # a transposed 1-wide operand is laid out as it is read: no transpose needed
        assert len(layouts) == 3 and all(name.startswith("sgemm") for name in names_launched(shim))


@pytest.mark.parametrize("shape, kernel, stride, padding, ceil_mode", [
    ((2, 3, 7, 7), (3, 3), (2, 2), (0, 0), False),   # AlexNet's overlapping pooling
    ((1, 2, 6, 9), (3, 2), (2, 3), (1, 1), True),
    ((2, 1, 5, 5), (5, 5), (1, 1), (0, 0), False),   # window = input
    ((1, 2, 8, 8), (2, 2), (2, 2), (1, 0), True),
])
def test_max_pool2d_on_the_kernels_matches_numpy(shim, shape, kernel, stride, padding,
                                                 ceil_mode):
    x = np.random.default_rng(0).standard_normal(shape)
    assert_kernel_path_matches_numpy(
        lambda x: max_pool2d(x, kernel, stride, padding, ceil_mode), [x])
    assert names_launched(shim) == ["maxpool_forward", "maxpool_backward"]


def test_max_pool2d_on_the_kernels_sends_ties_to_the_first_max(shim):
    x = np.zeros((1, 1, 5, 5))  # every window a tie, as after a ReLU of a dead region
    assert_kernel_path_matches_numpy(lambda x: max_pool2d(x, 3, 2), [x])


@pytest.mark.parametrize("shape, size, alpha, beta, k", [
    ((2, 7, 3, 3), 5, 5e-4, 0.75, 2.0),              # the paper's constants
    ((1, 4, 2, 5), 2, 0.3, 0.5, 1.0),                # an even size: the window is lopsided
    ((2, 3, 1, 1), 7, 1.0, 0.75, 1.0),               # window wider than the channels
])
def test_lrn_on_the_kernels_matches_numpy(shim, shape, size, alpha, beta, k):
    x = np.random.default_rng(0).standard_normal(shape) * 3
    assert_kernel_path_matches_numpy(
        lambda x: local_response_norm(x, size, alpha, beta, k), [x])
    assert names_launched(shim) == ["lrn_forward", "lrn_backward"]


@pytest.mark.parametrize("N, K", [(1, 1), (3, 10), (4, 300)])
def test_cross_entropy_on_the_kernels_matches_numpy(shim, N, K):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((N, K)) * 5
    labels = rng.integers(0, K, N).astype(np.int32)  # any integer dtype; int64 on the GPU
    assert_kernel_path_matches_numpy(lambda z: cross_entropy(z, labels), [logits])
    assert names_launched(shim) == ["softmax_xent_forward", "softmax_xent_backward"]


@pytest.mark.parametrize("version", cuda.SGEMM_VERSIONS)
@pytest.mark.parametrize("trans_a, trans_b", cuda.SGEMM_LAYOUTS)
def test_every_sgemm_version_and_layout_on_ragged_shapes(shim, version, trans_a, trans_b):
    rng = np.random.default_rng(version)
    for batch, M, N, K in [(None, 1, 1, 1), (None, 17, 33, 5), (2, 3, 65, 18)]:
        lead = () if batch is None else (batch,)
        a = rng.standard_normal(lead + ((K, M) if trans_a else (M, K)))
        b = rng.standard_normal(lead + ((N, K) if trans_b else (K, N)))
        expected = np.matmul(a.swapaxes(-1, -2) if trans_a else a,
                             b.swapaxes(-1, -2) if trans_b else b)
        got = cuda.sgemm(a.astype(np.float32), b.astype(np.float32), trans_a, trans_b, version)
        assert got.shape == expected.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * max(1, K),
                                   err_msg=f"v{version} batch {batch} M {M} N {N} K {K}")


def test_sgemm_on_operands_that_are_not_16_byte_aligned(shim):
    """Views that start 4 bytes past an allocation (the shim keeps the address modulo 64): the
    float4 loads of the later versions must fall back to scalar loads."""
    rng = np.random.default_rng(0)
    for M, K, N in [(5, 8, 12), (3, 7, 9)]:  # rows a multiple of 4 floats, and not
        a = np.empty(M * K + 1, np.float32)[1:].reshape(M, K)
        b = np.empty(K * N + 1, np.float32)[1:].reshape(K, N)
        a[...], b[...] = rng.standard_normal((M, K)), rng.standard_normal((K, N))
        assert a.ctypes.data % 16 != 0 and b.ctypes.data % 16 != 0
        for version in cuda.SGEMM_VERSIONS:
            np.testing.assert_allclose(cuda.sgemm(a, b, version=version), a @ b, rtol=1e-5,
                                       atol=1e-5, err_msg=f"v{version} {M}x{K}x{N}")


def test_sgemm_with_an_empty_sum_gives_zeros(shim):
    got = cuda.sgemm(np.ones((3, 0), np.float32), np.ones((0, 4), np.float32))
    assert np.array_equal(got, np.zeros((3, 4))) and not shim


@pytest.mark.parametrize("a_shape, b_shape, options, match", [
    ((2, 3), (4, 5), {}, r"inner sizes differ: op\(a\) is \(2, 3\) and op\(b\) is \(4, 5\)"),
    ((2, 3), (3,), {}, "needs two 2-D arrays"),
    ((2, 2, 3), (3, 3, 4), {}, "same batch"),
    ((2, 3), (3, 4), {"trans_a": True, "trans_b": True}, "together are not supported"),
    ((2, 3), (3, 4), {"version": 99}, "version must be one of"),
])
def test_sgemm_refuses_bad_shapes_and_options(a_shape, b_shape, options, match):
    a, b = np.ones(a_shape, np.float32), np.ones(b_shape, np.float32)
    with pytest.raises(ValueError, match=match):
        cuda.sgemm(a, b, **options)


def test_the_kernels_take_float32_only():
    with pytest.raises(TypeError, match="the kernels take float32; got float64"):
        cuda.sgemm(np.ones((2, 2)), np.ones((2, 2)))


def test_a_small_network_runs_every_layer_on_the_kernels(shim):
    rng = np.random.default_rng(0)
    x = tensor(rng.standard_normal((2, 4, 9, 9)).astype(np.float32), requires_grad=True)
    w = tensor(rng.standard_normal((4, 2, 3, 3)).astype(np.float32))  # needs no gradient
    y = local_response_norm(max_pool2d(conv2d(x, w, stride=2, groups=2), 2), 3)
    cross_entropy(y.reshape(2, 16), np.array([0, 3])).backward()
    assert names_launched(shim) == [  # forward, then backward: nothing left to NumPy
        "im2col", "sgemm_v8_64x64_nn", "maxpool_forward", "lrn_forward",  # sgemm_plan's tile
        "softmax_xent_forward", "softmax_xent_backward", "lrn_backward", "maxpool_backward",
        "sgemm_v8_64x64_tn", "col2im"]
    assert x.grad.shape == x.shape and np.isfinite(x.grad).all()


def test_im2col_and_col2im_on_the_kernels_match_numpy(shim):
    """cuda.py's wrappers against the reference's im2col and col2im (functions/conv.py)."""
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 7)).astype(np.float32)
    col = cuda.im2col(x, 3, 2, 2, 1, 1, 0)
    assert np.array_equal(col, im2col(x, 3, 2, 2, 1, 1, 0))
    expected = col2im(col.astype(np.float64), x.shape, 2, 1, 1, 0)
    np.testing.assert_allclose(cuda.col2im(col, x.shape, 2, 1, 1, 0), expected, rtol=1e-6)
    assert names_launched(shim) == ["im2col", "col2im"]


def test_the_stand_ins_are_gpu_pys_and_set_fast_false_keeps_the_reference(shim):
    """Under the shim a float32 op gets gpu.py's stand-in; with set_fast(False) (or without
    "cuda-kernels") the reference runs with no launch at all."""
    from minialex import set_fast
    x = tensor(np.ones((1, 2, 6, 6), np.float32), requires_grad=True)
    w = tensor(np.ones((2, 2, 3, 3), np.float32))
    assert type(conv2d(x, w).creator) is Conv2dOnKernels
    assert type(max_pool2d(x, 2).creator) is MaxPool2dOnKernels
    launched = len(shim)
    assert launched > 0
    for setting in (False, ["winograd", "gemm", "pool", "elementwise", "sgd"]):
        set_fast(setting)
        y = max_pool2d(conv2d(x, w), 2)
        assert type(y.creator).__module__ == "minialex.functions.pool"
        assert type(y.creator.inputs[0].creator).__module__ == "minialex.functions.conv"
        y.sum().backward()
        assert len(shim) == launched


def test_pool_output_size_is_what_the_kernel_is_given(shim):
    x = tensor(np.ones((1, 1, 6, 6), np.float32))
    max_pool2d(x, 3, 2, ceil_mode=True)
    arguments = shim[0][4]
    assert arguments[-2:] == (pool_output_size(6, 3, 2, 0, True),) * 2 == (3, 3)


# ----------------------------------------------------------------------------------------------
# 3. On a GPU

gpu = pytest.mark.gpu


def import_cupy():
    from minialex.backend import _import_cupy
    return _import_cupy()


def on_both_devices(op, arrays, seed=1):
    """forward_and_backward on the CPU and on the GPU (float32), as NumPy arrays."""
    results = []
    for device in ("cpu", "cuda"):
        inputs = [tensor(a, requires_grad=True, device=device) for a in arrays]
        out = op(*inputs)
        r = np.random.default_rng(seed).standard_normal(out.shape).astype(out.dtype)
        out.backward(tensor(r, device=device) if out.ndim else None)
        assert out.device == device and all(x.grad is not None for x in inputs)
        results.append([out.numpy()] + [as_numpy(x.grad) for x in inputs])
    return results


def assert_same_on_both_devices(op, arrays, rtol=1e-4, atol=1e-5):
    cpu, gpu_results = on_both_devices(op, [a.astype(np.float32) for a in arrays])
    for index, (got, expected) in enumerate(zip(gpu_results, cpu)):
        scale = max(1.0, float(np.abs(expected).max(initial=0)))
        np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol * scale,
                                   err_msg=f"output {index} (0: forward, then gradients)")


@gpu
@pytest.mark.parametrize("version", cuda.SGEMM_VERSIONS)
@pytest.mark.parametrize("trans_a, trans_b", cuda.SGEMM_LAYOUTS)
def test_gpu_sgemm_against_cupy_matmul(version, trans_a, trans_b):
    cp = import_cupy()
    rng = np.random.default_rng(version)
    shapes = [(None, 1, 1, 1), (None, 17, 33, 65), (None, 129, 255, 130), (None, 64, 64, 64),
              (3, 31, 97, 45), (2, 96, 1000, 363), (None, 4, 4099, 7)]
    for batch, M, N, K in shapes:
        lead = () if batch is None else (batch,)
        a = cp.asarray(rng.standard_normal(lead + ((K, M) if trans_a else (M, K))),
                       dtype=cp.float32)
        b = cp.asarray(rng.standard_normal(lead + ((N, K) if trans_b else (K, N))),
                       dtype=cp.float32)
        expected = cp.matmul((a.swapaxes(-1, -2) if trans_a else a).astype(cp.float64),
                             (b.swapaxes(-1, -2) if trans_b else b).astype(cp.float64))
        got = cuda.sgemm(a, b, trans_a, trans_b, version)
        assert isinstance(got, cp.ndarray) and got.dtype == np.float32
        # float32 rounding of a K-term sum: about 6e-8 K for entries ~ N(0, 1)
        np.testing.assert_allclose(cp.asnumpy(got), cp.asnumpy(expected), rtol=1e-4,
                                   atol=1e-5 + 2e-6 * K,
                                   err_msg=f"v{version} batch {batch} M {M} N {N} K {K}")


@gpu
def test_gpu_sgemm_with_misaligned_rows():
    """Operands that start 4 bytes past a 16-byte boundary, with rows of a multiple of 4 floats
    (so only the pointer is misaligned), and rows of an odd length: the float4 loads of the
    later versions must fall back to scalar loads."""
    cp = import_cupy()
    rng = np.random.default_rng(0)
    for M, K, N in [(36, 52, 40), (37, 53, 41)]:
        a = cp.asarray(rng.standard_normal(1 + M * K), dtype=cp.float32)[1:].reshape(M, K)
        b = cp.asarray(rng.standard_normal(1 + K * N), dtype=cp.float32)[1:].reshape(K, N)
        assert a.data.ptr % 16 == 4 and b.data.ptr % 16 == 4
        expected = cp.asnumpy(a).astype(np.float64) @ cp.asnumpy(b).astype(np.float64)
        for version in cuda.SGEMM_VERSIONS:
            for trans_a, trans_b in cuda.SGEMM_LAYOUTS:
                a_op = a if not trans_a else cp.ascontiguousarray(a.T)
                b_op = b if not trans_b else cp.ascontiguousarray(b.T)
                if trans_a or trans_b:  # a fresh copy is aligned; misalign it again
                    a_op, b_op = misaligned(cp, a_op), misaligned(cp, b_op)
                got = cuda.sgemm(a_op, b_op, trans_a, trans_b, version)
                np.testing.assert_allclose(cp.asnumpy(got), expected, rtol=1e-4, atol=1e-4,
                                           err_msg=f"v{version} {trans_a} {trans_b} {M}x{K}")


def misaligned(cp, array):
    """The same values in an array that starts 4 bytes past a 16-byte boundary."""
    buffer = cp.empty(array.size + 1, dtype=array.dtype)
    buffer[1:] = array.ravel()
    return buffer[1:].reshape(array.shape)


@gpu
@pytest.mark.parametrize("shape, stride, padding, groups", [
    ((2, 4, 7, 7, 6, 3, 3), 2, 1, 2), ((1, 3, 19, 17, 8, 11, 11), 4, 0, 1),
    ((3, 8, 13, 13, 12, 5, 5), 1, 2, 2), ((4, 6, 6, 6, 6, 3, 3), 1, 1, 3),
])
def test_gpu_conv2d(shape, stride, padding, groups):
    N, C, H, W, F, KH, KW = shape
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((N, C, H, W)), rng.standard_normal((F, C // groups, KH, KW)),
              rng.standard_normal(F)]
    assert_same_on_both_devices(lambda x, w, b: conv2d(x, w, b, stride, padding, groups), arrays)


@gpu
@pytest.mark.parametrize("N, IN, OUT", [(1, 1, 1), (4, 33, 17), (8, 300, 1000)])
def test_gpu_linear(N, IN, OUT):
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((N, IN)), rng.standard_normal((OUT, IN)),
              rng.standard_normal(OUT)]
    assert_same_on_both_devices(linear, arrays)


@gpu
def test_gpu_conv2d_and_linear_run_on_our_kernels_not_cupy_matmul(monkeypatch):
    cp = import_cupy()

    def refuse(*args, **kwargs):
        raise AssertionError("cupy.matmul was called on the float32 GPU path")

    monkeypatch.setattr(cp, "matmul", refuse)
    rng = np.random.default_rng(0)
    x = tensor(rng.standard_normal((2, 4, 9, 9)).astype(np.float32), requires_grad=True,
               device="cuda")
    w = tensor(rng.standard_normal((6, 2, 3, 3)).astype(np.float32), requires_grad=True,
               device="cuda")
    fc = tensor(rng.standard_normal((5, 6 * 7 * 7)).astype(np.float32), requires_grad=True,
                device="cuda")
    linear(conv2d(x, w, groups=2).reshape(2, -1), fc).sum().backward()
    assert x.grad is not None and w.grad is not None and fc.grad is not None


@gpu
def test_gpu_float64_takes_the_generic_path_and_agrees():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 4, 7, 7)), rng.standard_normal((6, 2, 3, 3))
    results = on_both_devices(lambda x, w: conv2d(x, w, stride=2, padding=1, groups=2), [x, w])
    for got, expected in zip(results[1], results[0]):
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


@gpu
@pytest.mark.parametrize("shape, kernel, stride, padding, ceil_mode", [
    ((4, 8, 55, 55), 3, 2, 0, False), ((2, 3, 6, 9), (3, 2), (2, 3), 1, True),
    ((2, 2, 5, 5), 5, 1, 0, False),
])
def test_gpu_max_pool2d(shape, kernel, stride, padding, ceil_mode):
    x = np.random.default_rng(0).standard_normal(shape)
    # the gradients of overlapping windows are summed in another order: rounding differs
    assert_same_on_both_devices(lambda x: max_pool2d(x, kernel, stride, padding, ceil_mode),
                                [x], rtol=1e-6, atol=1e-7)


@gpu
@pytest.mark.parametrize("shape, size, alpha, beta, k", [
    ((4, 16, 27, 27), 5, 5e-4, 0.75, 2.0), ((2, 5, 3, 4), 2, 0.3, 0.5, 1.0),
])
def test_gpu_local_response_norm(shape, size, alpha, beta, k):
    x = np.random.default_rng(0).standard_normal(shape) * 3
    assert_same_on_both_devices(lambda x: local_response_norm(x, size, alpha, beta, k), [x])


@gpu
@pytest.mark.parametrize("N, K", [(1, 1), (5, 10), (128, 1000)])
def test_gpu_cross_entropy(N, K):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, K, N)
    assert_same_on_both_devices(lambda z: cross_entropy(z, labels),
                                [rng.standard_normal((N, K)) * 5])


@gpu
def test_gpu_relu():
    x = np.random.default_rng(0).standard_normal((3, 5, 7))
    x[0, 0, :3] = 0  # at 0 the gradient is 0, as on the CPU
    assert_same_on_both_devices(relu, [x], rtol=0, atol=0)


@gpu
def test_gpu_dropout_drops_a_fraction_p_and_scales_the_rest():
    cp = import_cupy()
    p = 0.3
    x = tensor(np.ones((1000, 1000), np.float32), requires_grad=True, device="cuda")
    y = dropout(x, p)
    y.backward(tensor(np.full(y.shape, 2, np.float32), device="cuda"))
    values = cp.asnumpy(y.data)
    dropped = float((values == 0).mean())
    assert abs(dropped - p) < 0.005  # 1e6 draws: the standard deviation is 0.0005
    assert np.allclose(values[values != 0], 1 / (1 - p))
    assert np.array_equal(cp.asnumpy(x.grad), 2 * values)  # the same mask scales the gradient
    assert np.array_equal(dropout(x, p, training=False).numpy(), x.numpy())  # evaluation


@gpu
def test_gpu_alexnet_training_step_matches_the_cpu():
    """The paper's AlexNet at width 1/8, batch 4: one step of forward, backward and SGD on each
    device from the same weights gives the same loss, gradients and new weights (float32)."""
    from minialex import optim
    from minialex.models.alexnet import alexnet
    import minialex.random
    minialex.random.manual_seed(0)
    models = {device: alexnet("paper", num_classes=1000, width=0.125, init="kaiming",
                              dropout=0.0) for device in ("cpu", "cuda")}
    models["cuda"].load_state_dict(models["cpu"].state_dict())
    models["cuda"].to("cuda")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 227, 227)).astype(np.float32)
    labels = rng.integers(0, 1000, 4)
    losses, grads = {}, {}
    for device, model in models.items():
        optimizer = optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        loss = cross_entropy(model(tensor(x, device=device)), labels)
        loss.backward()
        losses[device] = loss.item()
        grads[device] = [as_numpy(p.grad) for p in model.parameters()]
        optimizer.step()
    assert abs(losses["cuda"] - losses["cpu"]) <= 1e-4 * abs(losses["cpu"])
    for (name, p_cpu), p_gpu, g_cpu, g_gpu in zip(models["cpu"].named_parameters(),
                                                  models["cuda"].parameters(), grads["cpu"],
                                                  grads["cuda"]):
        assert p_gpu.device == "cuda"
        # relative error of the whole array: robust to a rare max-pool tie broken differently
        error = np.linalg.norm(g_gpu - g_cpu) / max(np.linalg.norm(g_cpu), 1e-12)
        assert error < 1e-3, f"gradient of {name}: relative error {error:.2e}"
        np.testing.assert_allclose(p_gpu.numpy(), p_cpu.numpy(), rtol=1e-4, atol=1e-6,
                                   err_msg=f"{name} after the SGD step")


@gpu
def test_gpu_module_and_optimizer_move_between_devices():
    from minialex import optim
    from minialex.models.alexnet import alexnet
    model = alexnet("paper", num_classes=10, width=0.0625)
    before = {name: p.numpy().copy() for name, p in model.named_parameters()}
    optimizer = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = np.random.default_rng(0).standard_normal((2, 3, 227, 227)).astype(np.float32)
    cross_entropy(model(tensor(x)), [1, 2]).backward()
    optimizer.step()  # velocities on the CPU
    model.to("cuda")
    assert all(p.device == "cuda" and p.grad is not None and cuda.uses_kernels(p.grad)
               for p in model.parameters())
    model.zero_grad()
    cross_entropy(model(tensor(x, device="cuda")), [1, 2]).backward()
    optimizer.step()  # the velocities follow the parameters to the GPU
    assert all(cuda.uses_kernels(u) for u in optimizer.velocity)
    model.to("cpu")
    assert all(isinstance(p.data, np.ndarray) for p in model.parameters())
    moved = alexnet("paper", num_classes=10, width=0.0625)
    moved.load_state_dict(before)
    moved.to("cuda").to("cpu")  # a round trip copies the bits exactly
    assert all(np.array_equal(p.data, before[name]) for name, p in moved.named_parameters())


@gpu
def test_gpu_checkpoint_loads_on_the_cpu_and_back(tmp_path):
    from minialex import optim
    from minialex.models.alexnet import alexnet
    from minialex.serialization import load, save
    model = alexnet("paper", num_classes=10, width=0.0625).to("cuda")
    optimizer = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = np.random.default_rng(0).standard_normal((2, 3, 227, 227)).astype(np.float32)
    cross_entropy(model(tensor(x, device="cuda")), [3, 4]).backward()
    optimizer.step()
    save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "c.npz")
    checkpoint = load(tmp_path / "c.npz")
    assert all(isinstance(a, np.ndarray) for a in checkpoint["model"].values())
    assert all(isinstance(a, np.ndarray) for a in checkpoint["optimizer"]["velocity"].values())
    for device in ("cpu", "cuda"):
        other = alexnet("paper", num_classes=10, width=0.0625).to(device)
        other_optimizer = optim.SGD(other.parameters(), lr=0.1)
        other.load_state_dict(checkpoint["model"])
        other_optimizer.load_state_dict(checkpoint["optimizer"])
        for (name, p), q in zip(model.named_parameters(), other.parameters()):
            assert q.device == device and np.array_equal(q.numpy(), p.numpy()), name
        for u, q in zip(other_optimizer.velocity, other.parameters()):
            assert device_of(u) == device and u.shape == q.shape


@gpu
def test_gpu_training_script_runs_with_device_cuda(tmp_path):
    from minialex.serialization import load
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "train_alexnet.py"), "--device", "cuda",
         "--out", str(out), "--width", "0.0625", "--per-class", "2", "--batch-size", "4",
         "--epochs", "2", "--threads", "1", "--no-progress"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "device=cuda" in result.stdout
    checkpoint = load(out / "checkpoint.npz")  # saved from the GPU, read as NumPy
    assert checkpoint["epoch"] == 1
    assert all(isinstance(a, np.ndarray) and np.isfinite(a).all()
               for a in checkpoint["model"].values())
