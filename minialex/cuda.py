"""The GPU's hot path: our own CUDA kernels (kernels/*.cu), compiled at run time and launched.

This is the only module that touches `cupy.RawModule`. The GPU's stand-ins for the reference
ops (gpu.py) call the wrappers below when their input is a float32 CuPy array (`uses_kernels`);
float64 CuPy arrays, and every array under MINIALEX_FAST=0, take the reference ops
(functions/*.py) on CuPy's own functions, which is what gradient checks use on a GPU.

Each kernels/NAME.cu is compiled by NVRTC (CuPy's RawModule) once per process, the first time
one of its kernels is needed. Its entry points, `extern "C" __global__ void NAME(PARAMS)`, are
read from the source: the declared type of each parameter says how a Python value is passed.
The launch geometry is plain Python beside each launch below (grid and block as tuples); one
function, `check_launch_shape`, holds every grid to CUDA's limits before anything runs.

    declared type          Python value                   passed as
    float*                 float32 array, C-contiguous    its device pointer
    unsigned char*         uint8 array                    (also the `const` ones)
    long long*             int64 array
    int                    int in [-2^31, 2^31)           numpy.int32
    long long              int                            numpy.int64
    float                  a number                       numpy.float32

A wrong count, dtype or layout is a TypeError naming the kernel and the parameter, instead of
garbage computed from a misread pointer. The parsing and the conversion are plain Python, so
the tests check them (and the launch geometry, through the kernel shim) on a CPU.

Notation as in functions/conv.py: N C H W, KH KW, SH SW, PH PW, OH OW; M N K for a GEMM.
"""
import collections
import functools
import pathlib
import re

import numpy as np

from . import backend

# A source checkout (or editable install) reads kernels/ beside minialex/; a wheel carries the same
# files as minialex/kernels (pyproject.toml).
KERNEL_DIR = next((path for path in (pathlib.Path(__file__).resolve().parents[1] / "kernels",
                                     pathlib.Path(__file__).resolve().parent / "kernels")
                   if path.is_dir()), pathlib.Path(__file__).resolve().parents[1] / "kernels")

# The SGEMM versions in kernels/sgemm.cu (its header explains each). v1 to v7 add one idea at a
# time and have one tile each: (tile_M, tile_N, block). v8 (v7 + split-K, a tile per problem)
# is what the layers use: sgemm_plan picks its tile (SGEMM_TILES: the threads of each) and its
# splits. Every version has three layouts: sgemm_vK_nn, _nt, _tn (t: that operand is stored
# transposed); v8's names carry the tile too, sgemm_v8_128x64_nt.
SGEMM_GEOMETRY = {1: (16, 16, (16, 16, 1)), 2: (16, 16, (16, 16, 1)), 3: (16, 16, (16, 16, 1)),
                  4: (64, 64, (512, 1, 1)), 5: (128, 128, (256, 1, 1)),
                  6: (128, 128, (256, 1, 1)), 7: (128, 128, (256, 1, 1))}
SGEMM_TILES = {(128, 128): 256, (128, 64): 128, (64, 64): 64}  # biggest first
SGEMM_VERSIONS = (*SGEMM_GEOMETRY, 8)
SGEMM_BEST = 8
SGEMM_LAYOUTS = {(False, False): "nn", (False, True): "nt", (True, False): "tn"}

# Every other entry point the wrappers below launch, by file (the tests check they exist).
ENTRY_POINTS = {
    "im2col.cu": ("im2col", "col2im"),
    "pool.cu": ("maxpool_forward", "maxpool_backward"),
    "lrn.cu": ("lrn_forward", "lrn_backward"),
    "softmax_xent.cu": ("softmax_xent_forward", "softmax_xent_backward"),
}

POINTER_DTYPES = {"float*": np.float32, "unsigned char*": np.uint8, "long long*": np.int64}
INT32_RANGE = (-2**31, 2**31)


def uses_kernels(array):
    """True for a float32 CuPy array: the ops then run on our kernels."""
    return backend.device_of(array) == "cuda" and array.dtype == np.float32


def ceil_div(a, b):
    return -(-a // b)


# --------------------------------------------------------------------------------------------
# Reading a .cu source: its entry points and their parameters (plain Python, tested on a CPU)

_ENTRY_POINT = re.compile(r'extern\s+"C"\s+__global__\s+void\s+'
                          r'(?:__launch_bounds__\s*\([^)]*\)\s*)?(\w+)\s*\(([^)]*)\)')
_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.DOTALL)


Parameter = collections.namedtuple("Parameter", "type name")  # ("float*", "x"), ("int", "N")


def entry_points(source):
    """{NAME: (Parameter, ...)} for every `extern "C" __global__ void NAME(...)` of a source.

    A type is written without const or __restrict__: "float*", "int", "long long".
    """
    code = _COMMENT.sub(" ", source)
    return {name: tuple(_parameter(p) for p in parameters.split(",") if p.strip())
            for name, parameters in _ENTRY_POINT.findall(code)}


def _parameter(declaration):
    words = [w for w in declaration.replace("*", " * ").split()
             if w not in ("const", "__restrict__")]
    type_words = words[:-1]  # the last word is the parameter's name
    kind = " ".join(w for w in type_words if w != "*") + "*" * type_words.count("*")
    return Parameter(kind, words[-1])


def convert_arguments(name, parameters, arguments, array_type):
    """The arguments of kernel `name` as the launch passes them, checked against its
    parameters (entry_points); arrays must be instances of `array_type` (cupy.ndarray)."""
    if len(arguments) != len(parameters):
        listing = ", ".join(f"{kind} {parameter}" for kind, parameter in parameters)
        raise TypeError(f"kernel {name} takes {len(parameters)} arguments ({listing}); got "
                        f"{len(arguments)}")
    converted = []
    for index, ((kind, parameter), value) in enumerate(zip(parameters, arguments)):
        where = f"kernel {name}, argument {index} ({kind} {parameter})"
        if kind in POINTER_DTYPES:
            dtype = np.dtype(POINTER_DTYPES[kind])
            if not isinstance(value, array_type):
                raise TypeError(f"{where}: needs a {array_type.__module__}.ndarray of {dtype}; "
                                f"got {type(value).__name__}")
            if value.dtype != dtype or not value.flags.c_contiguous:
                raise TypeError(f"{where}: needs a C-contiguous array of {dtype}; got dtype "
                                f"{value.dtype}, shape {value.shape}, "
                                f"{'' if value.flags.c_contiguous else 'not '}contiguous")
            converted.append(value)
        elif kind in ("int", "long long"):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{where}: needs an int; got {value!r}")
            if kind == "int" and not INT32_RANGE[0] <= value < INT32_RANGE[1]:
                raise ValueError(f"{where}: {value} does not fit a 32-bit int")
            converted.append(np.int32(value) if kind == "int" else np.int64(value))
        elif kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                raise TypeError(f"{where}: needs a number; got {value!r}")
            converted.append(np.float32(value))
        else:
            raise TypeError(f"{where}: minialex.cuda cannot pass parameters of type {kind}")
    return converted


# --------------------------------------------------------------------------------------------
# Compiling and launching (cached: each .cu is read and compiled once per process)

@functools.lru_cache(maxsize=None)
def kernel_source(filename):
    path = KERNEL_DIR / filename
    if not path.is_file():
        raise FileNotFoundError(f"minialex.cuda: kernel source {path} not found; the GPU path "
                                "reads kernels/*.cu, installed with the package")
    return path.read_text()


@functools.lru_cache(maxsize=None)
def _module(filename):
    cupy = backend._import_cupy()  # the error that says how to install CuPy, if it is missing
    return cupy.RawModule(code=kernel_source(filename), options=("-std=c++17",))


@functools.lru_cache(maxsize=None)
def parameters_of(filename, name):
    """The Parameters of entry point `name` of kernels/`filename`."""
    parameters = entry_points(kernel_source(filename)).get(name)
    if parameters is None:
        raise RuntimeError(f"kernels/{filename} has no entry point "
                           f"'extern \"C\" __global__ void {name}(...)'")
    return parameters


@functools.lru_cache(maxsize=None)
def _kernel(filename, name):
    return _module(filename).get_function(name), parameters_of(filename, name)


# CUDA's limits on a launch (every GPU since compute capability 3.0; CUDA C++ Programming
# Guide, "Features and Technical Specifications"): gridDim.x < 2^31, gridDim.y and gridDim.z at
# most 65,535; at most 1,024 threads in a block of at most (1024, 1024, 64).
MAX_GRID = (2**31 - 1, 65535, 65535)
MAX_BLOCK = (1024, 1024, 64)
MAX_THREADS_PER_BLOCK = 1024


def check_launch_shape(name, grid, block):
    """grid and block as 3-tuples of ints, or a ValueError naming the kernel and the limit: a
    grid over CUDA's limits would otherwise fail on the GPU with a bare "invalid argument"
    (or, for a loop over blocks, silently compute part of the output)."""
    shapes = []
    for what, shape, limits in (("grid", grid, MAX_GRID), ("block", block, MAX_BLOCK)):
        shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
        shape += (1,) * (3 - len(shape))
        if len(shape) != 3 or not all(isinstance(s, (int, np.integer)) and not isinstance(
                s, bool) for s in shape):
            raise TypeError(f"kernel {name}: {what} must be 1 to 3 ints; got {shape!r}")
        low = 0 if what == "grid" else 1  # a grid of no blocks launches nothing
        for axis, size, limit in zip("xyz", shape, limits):
            if not low <= size <= limit:
                raise ValueError(f"kernel {name}: {what} {shape} has {what}Dim.{axis} = {size}; "
                                 f"CUDA allows {low}..{limit} (split the work into smaller "
                                 "launches)")
        shapes.append(tuple(int(s) for s in shape))
    if shapes[1][0] * shapes[1][1] * shapes[1][2] > MAX_THREADS_PER_BLOCK:
        raise ValueError(f"kernel {name}: block {shapes[1]} has more than "
                         f"{MAX_THREADS_PER_BLOCK} threads")
    return shapes


def launch(filename, name, grid, block, *arguments):
    """Run entry point `name` of kernels/`filename` on a grid of blocks of threads (tuples of 1 to
    3 ints, checked against CUDA's limits); a grid with no blocks launches nothing."""
    grid, block = check_launch_shape(name, grid, block)
    if 0 in grid:
        return
    function, parameters = _kernel(filename, name)
    cupy = backend._import_cupy()
    function(grid, block, tuple(convert_arguments(name, parameters, arguments, cupy.ndarray)))


def _float32(array, what):
    """array as a C-contiguous float32 array (no copy if it is one), or a clear TypeError."""
    if array.dtype != np.float32:
        raise TypeError(f"minialex.cuda.{what}: the kernels take float32; got {array.dtype}")
    return backend.get_array_module(array).ascontiguousarray(array)


# --------------------------------------------------------------------------------------------
# SGEMM (kernels/sgemm.cu): the GEMMs of conv2d and linear

# v8's plan: a multiprocessor is full with 512 threads of it (the __launch_bounds__ of sgemm.cu:
# 2 blocks of 128x128, 4 of 128x64, 8 of 64x64), and a split sums at least 256 of K.
THREADS_PER_SM = 512
MIN_K_PER_SPLIT = 256
K_STEP = 8  # sgemm.cu's BK: a split starts on a multiple of it, so float4 loads stay aligned
DEFAULT_SM_COUNT = 132  # an H100 or H200 (SXM); the plan for NumPy arrays (the kernel shim)


def sgemm_plan(M, N, K, batch=1, sm_count=DEFAULT_SM_COUNT, tiles=tuple(SGEMM_TILES)):
    """(tile_M, tile_N, splits, k_chunk): how v8 computes batch products of (M, K) @ (K, N).

    A tile of BM x BN reads (BM + BN) K floats for its BM BN K multiply-adds, so bigger tiles
    are cheaper, as long as there are enough of them: the GPU is full with a "wave" of
    sm_count * THREADS_PER_SM / threads blocks (on 132 SMs: 264 of 128x128, 528 of 128x64,
    1,056 of 64x64). The rule:
      1. For each tile, biggest first: blocks = batch * ceil(M / BM) * ceil(N / BN). Short of
         a wave, split K into splits = ceil(wave / blocks) ranges, but at most
         K // MIN_K_PER_SPLIT (a split must sum enough of K to pay for writing and re-reading
         its partial tile); take the first tile whose blocks * splits make a wave.
      2. If none does (short K and a small C), the smallest tile with as many splits as K
         allows: the most blocks there are.
    A split product writes splits partial C's to a workspace, then splitk_reduce adds them in
    a fixed order (deterministic). The workspace is about a wave of tiles at most (in rule 1),
    264 x 128 x 128 floats = 17 MB. Splits become ranges of k_chunk (a multiple of K_STEP).
    AlexNet's weight gradients, at batch 128 on 132 SMs: conv1 (96 x 363, K = 387,200) gets
    3 tiles of 128x128 x 88 splits; conv3 (384 x 2,304, K = 21,632) 54 tiles x 5 splits.
    """
    for index, (BM, BN) in enumerate(tiles):
        blocks = batch * ceil_div(M, BM) * ceil_div(N, BN)
        wave = sm_count * THREADS_PER_SM // SGEMM_TILES[BM, BN]
        splits = max(1, min(ceil_div(wave, blocks), K // MIN_K_PER_SPLIT))
        if blocks * splits >= wave or index == len(tiles) - 1:
            return (BM, BN) + _split_k(K, splits)


def _split_k(K, splits):
    """(splits, k_chunk): K in ranges of k_chunk, a multiple of K_STEP, none of them empty."""
    k_chunk = ceil_div(ceil_div(K, splits), K_STEP) * K_STEP
    return ceil_div(K, k_chunk), k_chunk


@functools.lru_cache(maxsize=None)
def _device_sm_count(device_id):
    properties = backend._import_cupy().cuda.runtime.getDeviceProperties(device_id)
    return properties["multiProcessorCount"]


def multiprocessor_count(xp):
    """The streaming multiprocessors of the current GPU (queried once per device), or
    DEFAULT_SM_COUNT for NumPy arrays: the kernel shim then plans as on an H100/H200."""
    if xp is np:
        return DEFAULT_SM_COUNT
    return _device_sm_count(xp.cuda.Device().id)


_MATMUL_PRECISIONS = ("highest", "high")
_matmul_precision = "highest"


def set_float32_matmul_precision(precision):
    """As torch.set_float32_matmul_precision: "highest" (the default) computes every float32
    product of the layers in float32; "high" lets them use TF32 tensor cores on GPUs that have
    them, compute capability 8.0 on (kernels/sgemm.cu's sgemm_tf32: inputs rounded to TF32's
    10-bit mantissa, sums in float32, so about 1e-3 relative error instead of 1e-7). The TF32
    kernel has NOT been run on a GPU yet (the CPU
    shim runs stand-ins for its mma instructions): keep the default until bench_kernels.py has
    checked it on one."""
    global _matmul_precision
    if precision not in _MATMUL_PRECISIONS:
        raise ValueError(f"set_float32_matmul_precision: expected one of {_MATMUL_PRECISIONS}; "
                         f"got {precision!r} (minialex has no bfloat16 'medium')")
    _matmul_precision = precision


def get_float32_matmul_precision():
    return _matmul_precision


SGEMM_BIAS_ALONG = {"row": 1, "column": 2}  # sgemm.cu's bias_along (0: no bias)


def sgemm(a, b, trans_a=False, trans_b=False, version=SGEMM_BEST, plan=None, bias=None,
          bias_along=None):
    """C = opA(a) @ opB(b) (+ bias) in float32 on our kernel; C is a new array.

    2-D: a is (M, K), or (K, M) with trans_a; b is (K, N), or (N, K) with trans_b; C (M, N).
    3-D: the same with a leading batch axis on a, b and C (one product per batch index).
    version 1 to 7: that version of kernels/sgemm.cu on its own tile (tests, benchmark); 8, the
    default: v8 as sgemm_plan says, or (tile_M, tile_N, splits) given as `plan` (tests use it
    to split small products); on TF32 tensor cores (one tile, 128x128) if
    set_float32_matmul_precision("high").
    bias (version 8): added in the product's final store (sgemm.cu's epilogue), bias_along
    "row": C[b][m][n] += bias[m] (conv), shape (M,), or (batch, M) for one per product;
    "column": += bias[n] (linear), shape (N,) or (batch, N).
    """
    if (trans_a, trans_b) not in SGEMM_LAYOUTS:
        raise ValueError("sgemm: trans_a and trans_b together are not supported (no tt "
                         "kernel); transpose one operand first")
    if version not in SGEMM_VERSIONS:
        raise ValueError(f"sgemm: version must be one of {SGEMM_VERSIONS}; got {version!r}")
    if plan is not None and (version != 8 or len(plan) != 3 or tuple(plan[:2]) not in
                             SGEMM_TILES or not plan[2] >= 1):
        raise ValueError(f"sgemm: plan must be (tile_M, tile_N, splits >= 1) with a tile of "
                         f"{list(SGEMM_TILES)}, for version 8; got {plan!r}")
    if a.ndim != b.ndim or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[0] != b.shape[0]):
        raise ValueError(f"sgemm: needs two 2-D arrays, or two 3-D arrays with the same batch; "
                         f"got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if bias is not None and (bias_along not in SGEMM_BIAS_ALONG or version != 8):
        raise ValueError(f"sgemm: a bias needs bias_along 'row' or 'column' and version 8; got "
                         f"bias_along={bias_along!r}, version={version!r}")
    a, b = _float32(a, "sgemm"), _float32(b, "sgemm")
    batched = a.ndim == 3
    if not batched:
        a, b = a[None], b[None]
    batch = a.shape[0]
    M, K = a.shape[:0:-1] if trans_a else a.shape[1:]
    K_b, N = b.shape[:0:-1] if trans_b else b.shape[1:]
    if K != K_b:
        raise ValueError(f"sgemm: inner sizes differ: op(a) is ({M}, {K}) and op(b) is "
                         f"({K_b}, {N}) (shapes {tuple(a.shape)} and {tuple(b.shape)}, "
                         f"trans_a={trans_a}, trans_b={trans_b})")
    if max(M * K, K * N, M * N) >= 2**31:  # the kernels index one matrix with 32-bit ints
        raise ValueError(f"sgemm: a matrix of ({M}, {K}) @ ({K}, {N}) has 2^31 elements or "
                         "more; split the product (e.g. a smaller batch)")
    xp = backend.get_array_module(a)
    along, bias_stride, no_bias = 0, 0, xp.empty(0, dtype=np.float32)  # never read: along 0
    if bias is not None:
        along, length = SGEMM_BIAS_ALONG[bias_along], (M if bias_along == "row" else N)
        if tuple(bias.shape) not in ((length,), (batch, length)):
            raise ValueError(f"sgemm: a bias along each {bias_along} of C ({M}, {N}) needs "
                             f"shape ({length},) or ({batch}, {length}); got {tuple(bias.shape)}")
        bias, bias_stride = _float32(bias, "sgemm"), length if bias.ndim == 2 else 0
    c = xp.empty((batch, M, N), dtype=np.float32)
    layout, strides = SGEMM_LAYOUTS[trans_a, trans_b], (M * K, K * N, M * N)
    if K == 0:
        c[...] = 0  # an empty sum; also keeps a zero-sized grid from being launched
        if along:
            c += bias[..., :, None] if along == 1 else bias[..., None, :]
    elif c.size and version in SGEMM_GEOMETRY:
        tile_M, tile_N, block = SGEMM_GEOMETRY[version]
        launch("sgemm.cu", f"sgemm_v{version}_{layout}", (ceil_div(N, tile_N),
               ceil_div(M, tile_M), batch), block, M, N, K, a, b, c, *strides)
    elif c.size:
        tf32 = _matmul_precision == "high" and (xp is np or  # the shim, or Ampere on
                                                int(xp.cuda.Device().compute_capability) >= 80)
        if plan is None:
            tiles = [(128, 128)] if tf32 else tuple(SGEMM_TILES)  # the TF32 kernel's one tile
            tile_M, tile_N, splits, k_chunk = sgemm_plan(M, N, K, batch, multiprocessor_count(xp),
                                                         tiles)
        else:
            (tile_M, tile_N), (splits, k_chunk) = ((128, 128) if tf32 else plan[:2],
                                                   _split_k(K, plan[2]))
        filename, name = (("sgemm.cu", f"sgemm_tf32_{layout}") if tf32 else
                          ("sgemm.cu", f"sgemm_v8_{tile_M}x{tile_N}_{layout}"))
        # splits > 1: the partial products go to a workspace (batch, splits, M, N) first
        out = c if splits == 1 else xp.empty((batch * splits, M, N), dtype=np.float32)
        # the bias is added once: in the tile's store if splits = 1, else by splitk_reduce
        epilogue = (no_bias if bias is None else bias, along, bias_stride)
        launch(filename, name, (ceil_div(N, tile_N), ceil_div(M, tile_M), batch * splits),
               (SGEMM_TILES[tile_M, tile_N],), M, N, K, a, b, out, *strides, splits, k_chunk,
               *epilogue)
        if splits > 1:
            launch("sgemm.cu", "splitk_reduce", (ceil_div(c.size, 256),), (256,), out, c, M * N,
                   batch, splits, N, *epilogue)
    return c if batched else c[0]


# --------------------------------------------------------------------------------------------
# Convolution's copies (kernels/im2col.cu), as im2col and col2im in functions/conv.py

def im2col(x, KH, KW, SH, SW, PH, PW, kernel="im2col"):
    """x (N, C, H, W) -> col (C, KH, KW, N, OH, OW): every window of the padded input.
    `kernel` names the version (im2col.cu's header); the benchmark compares them."""
    x = _float32(x, "im2col")
    N, C, H, W = x.shape
    OH, OW = (H + 2 * PH - KH) // SH + 1, (W + 2 * PW - KW) // SW + 1
    col = backend.get_array_module(x).empty((C, KH, KW, N, OH, OW), dtype=np.float32)
    rows = C * KH * KW * N  # v2: a block of 64 per row of col; v1: a thread per element
    grid, block = ((rows,), (64,)) if kernel == "im2col" else ((ceil_div(col.size, 256),), (256,))
    launch("im2col.cu", kernel, grid, block, x, col, N, C, H, W, KH, KW, SH, SW, PH, PW, OH, OW)
    return col


def col2im(col, x_shape, SH, SW, PH, PW):
    """col (C, KH, KW, N, OH, OW) -> x (N, C, H, W), each pixel the sum of its copies."""
    col = _float32(col, "col2im")
    N, C, H, W = x_shape
    _, KH, KW, _, OH, OW = col.shape
    x = backend.get_array_module(col).empty(x_shape, dtype=np.float32)
    launch("im2col.cu", "col2im", (ceil_div(x.size, 256),), (256,),  # a thread per pixel
           col, x, N, C, H, W, KH, KW, SH, SW, PH, PW, OH, OW)
    return x


# --------------------------------------------------------------------------------------------
# Max pooling (kernels/pool.cu), as MaxPool2d in functions/pool.py

def maxpool_forward(x, KH, KW, SH, SW, PH, PW, OH, OW):
    """y (N, C, OH, OW) and argmax (uint8, the offset di*KW + dj of each window's max)."""
    if KH * KW > 256:
        raise ValueError(f"maxpool_forward: a {KH}x{KW} window has more offsets than uint8 "
                         "argmax can name (256)")
    x = _float32(x, "maxpool_forward")
    N, C, H, W = x.shape
    xp = backend.get_array_module(x)
    y = xp.empty((N, C, OH, OW), dtype=np.float32)
    argmax = xp.empty((N, C, OH, OW), dtype=np.uint8)
    launch("pool.cu", "maxpool_forward", (ceil_div(y.size, 256),), (256,),  # a thread per window
           x, y, argmax, N, C, H, W, KH, KW, SH, SW, PH, PW, OH, OW)
    return y, argmax


def maxpool_backward(gy, argmax, x_shape, KH, KW, SH, SW, PH, PW):
    """gx (N, C, H, W): each window's gradient sent back to its max."""
    gy = _float32(gy, "maxpool_backward")
    N, C, H, W = x_shape
    OH, OW = gy.shape[2:]
    gx = backend.get_array_module(gy).empty(x_shape, dtype=np.float32)
    launch("pool.cu", "maxpool_backward", (ceil_div(gx.size, 256),), (256,),  # one per pixel
           gy, argmax, gx, N, C, H, W, KH, KW, SH, SW, PH, PW, OH, OW)
    return gx


# --------------------------------------------------------------------------------------------
# Local response normalization (kernels/lrn.cu), as functions/lrn.py

def lrn_forward(x, size, alpha, beta, k):
    """y and scale = k + alpha/size * (window sum of x^2), both (N, C, H, W)."""
    x = _float32(x, "lrn_forward")
    N, C, H, W = x.shape
    xp = backend.get_array_module(x)
    y, scale = xp.empty_like(x), xp.empty_like(x)
    launch("lrn.cu", "lrn_forward", (ceil_div(N * H * W, 256),), (256,),  # one per (n, pixel)
           x, y, scale, N, C, H * W, size, alpha, beta, k)
    return y, scale


def lrn_backward(x, y, scale, gy, size, alpha, beta, k):
    """gx (N, C, H, W) from the input, output and scale that forward returned."""
    gy = _float32(gy, "lrn_backward")
    N, C, H, W = x.shape
    gx = backend.get_array_module(gy).empty_like(gy)
    launch("lrn.cu", "lrn_backward", (ceil_div(N * H * W, 256),), (256,),  # one per (n, pixel)
           x, y, scale, gy, gx, N, C, H * W, size, alpha, beta, k)
    return gx


# --------------------------------------------------------------------------------------------
# Softmax cross-entropy (kernels/softmax_xent.cu), as CrossEntropy in functions/loss.py

XENT_THREADS = 256  # the block of both kernels (at most softmax_xent.cu's XENT_THREADS)


def softmax_xent_forward(logits, labels):
    """probs (N, K) = softmax of each row, and losses (N,) = -log probs[n, labels[n]]."""
    logits = _float32(logits, "softmax_xent_forward")
    N, K = logits.shape
    xp = backend.get_array_module(logits)
    labels = xp.ascontiguousarray(labels, dtype=np.int64)
    probs = xp.empty_like(logits)
    losses = xp.empty(N, dtype=np.float32)
    if N:  # one block per row
        launch("softmax_xent.cu", "softmax_xent_forward", (N, 1, 1), (XENT_THREADS, 1, 1),
               logits, labels, probs, losses, N, K)
    return probs, losses


def softmax_xent_backward(probs, labels, gy):
    """grad_logits (N, K) = (probs - onehot(labels)) * gy / N, with gy the loss's incoming
    gradient as a one-element float32 device array: the kernel reads it, the host never does
    (no sync)."""
    probs = _float32(probs, "softmax_xent_backward")
    N, K = probs.shape
    xp = backend.get_array_module(probs)
    labels = xp.ascontiguousarray(labels, dtype=np.int64)
    gy = _float32(xp.asarray(gy, dtype=np.float32).reshape(1), "softmax_xent_backward")
    grad = xp.empty_like(probs)
    if N:
        launch("softmax_xent.cu", "softmax_xent_backward", (N, 1, 1), (XENT_THREADS, 1, 1),
               probs, labels, gy, 1.0 / N, grad, N, K)
    return grad


# --------------------------------------------------------------------------------------------
# Elementwise passes (kernels/elementwise.cu): ReLU, dropout and the SGD update, one launch
# each, whatever the size (grid-stride loops)

ELEMENTWISE_ENTRY_POINTS = ("relu_forward", "relu_backward", "dropout_forward",
                            "sgd_multi_tensor")
ELEMENTWISE_THREADS = 256
# Blocks of a grid-stride launch: enough to fill any GPU (132 SMs x 16 blocks of 256 threads
# on an H200 is 2,048 threads per SM, its maximum); more would only add block starts.
GRID_STRIDE_BLOCKS = 132 * 16


def _grid_stride_blocks(n):
    return max(1, min(ceil_div(n, ELEMENTWISE_THREADS), GRID_STRIDE_BLOCKS))


def relu(x):
    """y = max(x, 0) and the mask [x > 0] (uint8) that backward multiplies by, in one pass."""
    x = _float32(x, "relu")
    xp = backend.get_array_module(x)
    y, positive = xp.empty_like(x), xp.empty(x.shape, dtype=np.uint8)
    if x.size:
        launch("elementwise.cu", "relu_forward", (_grid_stride_blocks(x.size), 1, 1),
               (ELEMENTWISE_THREADS, 1, 1), x, y, positive, x.size)
    return y, positive


def relu_backward(gy, positive):
    """gx = gy * positive, one launch for the whole tensor."""
    gy = _float32(gy, "relu_backward")
    gx = backend.get_array_module(gy).empty_like(gy)
    if gy.size:
        launch("elementwise.cu", "relu_backward", (_grid_stride_blocks(gy.size), 1, 1),
               (ELEMENTWISE_THREADS, 1, 1), gy, positive, gx, gy.size)
    return gx


def dropout(x, p, seed, offset):
    """y = x * mask and mask = [u >= p] / (1 - p) for 0 <= p < 1, in one pass; u in [0, 1) is
    the counter-based draw of (seed, offset + i) (kernels/elementwise.cu). The caller moves
    its offset on by x.size."""
    x = _float32(x, "dropout")
    xp = backend.get_array_module(x)
    y, mask = xp.empty_like(x), xp.empty_like(x)
    if x.size:
        launch("elementwise.cu", "dropout_forward", (_grid_stride_blocks(x.size), 1, 1),
               (ELEMENTWISE_THREADS, 1, 1), x, y, mask, x.size, seed, offset, p, 1 / (1 - p))
    return y, mask


def sgd_multi_tensor(updates, lr, momentum, weight_decay):
    """SGD.update (optim.py) for every (w, grad, u) of `updates` in one launch; u is None
    without momentum. Every array float32 and C-contiguous, updated in place."""
    if not updates:
        return
    rows = []
    for w, grad, u in updates:
        arrays = (w, grad) if u is None else (w, grad, u)
        if any(a.dtype != np.float32 or not a.flags.c_contiguous or a.shape != w.shape
               for a in arrays):
            raise TypeError("sgd_multi_tensor: needs C-contiguous float32 parameters, "
                            "gradients and velocities of one shape each; got "
                            + ", ".join(f"{a.dtype} {tuple(a.shape)}" for a in arrays))
        rows.append((backend.address_of(w), backend.address_of(grad),
                     0 if u is None else backend.address_of(u), w.size))
    if len(rows) > 65535:
        raise ValueError(f"sgd_multi_tensor: {len(rows)} parameters; gridDim.y holds 65,535")
    xp = backend.get_array_module(updates[0][0])
    table = xp.asarray(np.array(rows, dtype=np.int64))  # a host-to-device copy, no sync
    largest = max(row[3] for row in rows)
    launch("elementwise.cu", "sgd_multi_tensor", (_grid_stride_blocks(largest), len(rows), 1),
           (ELEMENTWISE_THREADS, 1, 1), table, len(rows), lr, momentum, weight_decay)
    # the table may be freed now: CuPy's pool hands its memory out again only to work queued
    # on the same stream after this launch


# --------------------------------------------------------------------------------------------
# Implicit-GEMM convolution (kernels/conv_implicit.cu): the windows read inside the GEMM's tile
# loads, so no column buffer is written, nor kept for backward

CONV_TILE, CONV_BLOCK = 64, (256, 1, 1)  # conv_implicit.cu: a 64 x 64 tile per 256 threads
# grad_w splits the batch until its grid has about two blocks per SM of an H100/H200 (132 SMs):
# conv1 at batch 128 sums over P = 387,200 positions into only 2 x 6 tiles of 64 x 64.
CONV_SPLIT_TARGET_BLOCKS = 2 * 132


def _conv_sizes(x_shape, w_shape, stride, padding, groups):
    """The integer arguments of every conv_implicit kernel: N C H W KH KW SH SW PH PW OH OW F G."""
    (N, C, H, W), (F, CG, KH, KW) = x_shape, w_shape
    (SH, SW), (PH, PW) = stride, padding
    OH, OW = (H + 2 * PH - KH) // SH + 1, (W + 2 * PW - KW) // SW + 1
    if C != CG * groups or F % groups or min(OH, OW) < 1:
        raise ValueError(f"conv_implicit: input {tuple(x_shape)} and weight {tuple(w_shape)} "
                         f"do not make a convolution with groups={groups}, stride {stride}, "
                         f"padding {padding}")
    if max(N * OH * OW, N * H * W, F * (CG * KH * KW + 1)) >= 2**31:
        raise ValueError(f"conv_implicit: input {tuple(x_shape)} has 2^31 positions or more; "
                         "the kernels count them in 32-bit ints (use a smaller batch)")
    return N, C, H, W, KH, KW, SH, SW, PH, PW, OH, OW, F, groups


def conv_implicit_forward(x, w, b, stride, padding, groups):
    """y (N, F, OH, OW) = conv2d(x, w, b) (functions/conv.py) in one launch; b may be None."""
    x, w = _float32(x, "conv_implicit_forward"), _float32(w, "conv_implicit_forward")
    sizes = N, C, H, W, KH, KW, SH, SW, PH, PW, OH, OW, F, G = _conv_sizes(
        x.shape, w.shape, stride, padding, groups)
    xp = backend.get_array_module(x)
    b = xp.zeros(F, np.float32) if b is None else _float32(b, "conv_implicit_forward")
    y = xp.empty((N, F, OH, OW), dtype=np.float32)
    grid = (ceil_div(N * OH * OW, CONV_TILE), ceil_div(F // G, CONV_TILE), G)
    if y.size:
        launch("conv_implicit.cu", "conv_implicit_forward", grid, CONV_BLOCK, x, w, b, y, *sizes)
    return y


def conv_implicit_grad_x(gy, w, x_shape, stride, padding, groups):
    """dL/dx (N, C, H, W) from gy (N, F, OH, OW): the transposed convolution, one launch."""
    gy, w = _float32(gy, "conv_implicit_grad_x"), _float32(w, "conv_implicit_grad_x")
    sizes = N, C, H, W, *_, F, G = _conv_sizes(x_shape, w.shape, stride, padding, groups)
    xp = backend.get_array_module(gy)
    gx = (xp.empty if F else xp.zeros)(tuple(x_shape), dtype=np.float32)  # F = 0: no terms
    grid = (ceil_div(N * H * W, CONV_TILE), ceil_div(C // G, CONV_TILE), G)
    if gx.size and F:
        launch("conv_implicit.cu", "conv_implicit_grad_x", grid, CONV_BLOCK, gy, w, gx, *sizes)
    return gx


def conv_split_images(N, F, K, groups):
    """Images per split of grad_w's sum over the batch: enough splits (at most N) for about
    CONV_SPLIT_TARGET_BLOCKS blocks, given the (K + 1) x F / G output tiles of each group."""
    tiles = ceil_div(K + 1, CONV_TILE) * ceil_div(F // groups, CONV_TILE) * groups
    return ceil_div(N, min(N, ceil_div(CONV_SPLIT_TARGET_BLOCKS, tiles)))


def conv_implicit_grad_w(x, gy, w_shape, stride, padding, groups):
    """(dL/dw (F, CG, KH, KW), dL/db (F,)) from x and gy, in two launches: partial sums over
    splits of the batch, then their sum in a fixed order (the same bits on every run)."""
    x, gy = _float32(x, "conv_implicit_grad_w"), _float32(gy, "conv_implicit_grad_w")
    sizes = N, *_, F, G = _conv_sizes(x.shape, w_shape, stride, padding, groups)
    K = w_shape[1] * w_shape[2] * w_shape[3]
    xp = backend.get_array_module(x)
    if gy.size == 0:  # an empty batch: empty sums
        return xp.zeros(tuple(w_shape), np.float32), xp.zeros(F, np.float32)
    grad_w, grad_b = xp.empty(tuple(w_shape), np.float32), xp.empty(F, np.float32)
    per_split = conv_split_images(N, F, K, G)
    splits = ceil_div(N, per_split)
    partial = xp.empty((splits, F, K + 1), dtype=np.float32)
    grid = (ceil_div(K + 1, CONV_TILE), ceil_div(F // G, CONV_TILE), G * splits)
    launch("conv_implicit.cu", "conv_implicit_grad_w", grid, CONV_BLOCK, x, gy, partial, *sizes,
           per_split)
    launch("conv_implicit.cu", "conv_implicit_sum_splits", (ceil_div(F * (K + 1), 256), 1, 1),
           (256, 1, 1), partial, grad_w, grad_b, splits, F, K)
    return grad_w, grad_b
