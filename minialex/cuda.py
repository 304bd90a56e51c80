"""The GPU's hot path: our own CUDA kernels (kernels/*.cu), compiled at run time and launched.

This is the only module that touches `cupy.RawModule`. The GPU's stand-ins for the reference
ops (gpu.py) call the wrappers below when their input is a float32 CuPy array (`uses_kernels`);
float64 CuPy arrays, and every array under MINIALEX_FAST=0, take the reference ops
(functions/*.py) on CuPy's own functions, which is what gradient checks use on a GPU.

Each kernels/NAME.cu is compiled by NVRTC (CuPy's RawModule) once per process, the first time
one of its kernels is needed. How to launch a kernel is read from the .cu source itself:

    extern "C" __global__ void NAME(PARAMS)     the entry points; the declared type of each
                                                parameter says how a Python value is passed
    // launch NAME: key=value ...               the launch geometry: for an SGEMM version
                                                tile_M=64 tile_N=64 block=(256,1,1) (the grid
                                                follows from the tiles); for the other kernels
                                                block=(256,1,1) grid=(ceil(N*HW / 256),1,1), a
                                                formula of the kernel's parameters, evaluated
                                                at each launch with the values passed

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
import ast
import collections
import fractions
import functools
import math
import pathlib
import re

import numpy as np

from . import backend

# A source checkout (or editable install) reads kernels/ beside minialex/; a wheel carries the same
# files as minialex/kernels (pyproject.toml).
KERNEL_DIR = next((path for path in (pathlib.Path(__file__).resolve().parents[1] / "kernels",
                                     pathlib.Path(__file__).resolve().parent / "kernels")
                   if path.is_dir()), pathlib.Path(__file__).resolve().parents[1] / "kernels")

# The SGEMM versions in kernels/sgemm.cu (its header explains each), and the one the layers
# use: v5 (v4's float4 tiles plus double buffering), the fastest by design; the table of
# benchmarks/bench_kernels.py is the judge. Every version has three layouts, one entry point
# each: sgemm_vK_nn, sgemm_vK_nt, sgemm_vK_tn (t: that operand is stored transposed).
SGEMM_VERSIONS = (1, 2, 3, 4, 5)
SGEMM_BEST = 5
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
# Reading a .cu source: entry points and launch lines (plain Python, tested on the CPU)

_ENTRY_POINT = re.compile(r'extern\s+"C"\s+__global__\s+void\s+'
                          r'(?:__launch_bounds__\s*\([^)]*\)\s*)?(\w+)\s*\(([^)]*)\)')
_LAUNCH_LINE = re.compile(r"^[ \t]*//[ \t]*launch[ \t]+(\w+)[ \t]*:(.*)$", re.MULTILINE)
_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.DOTALL)
_SETTING_KEY = re.compile(r"\s*(\w+)\s*=\s*")


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


def launch_settings(source):
    """{NAME: {key: value}} from the lines `// launch NAME: key=value key=value ...`.

    A value is an int ("64"), a tuple of ints ("(16,16,1)"), or else the text as written
    (a grid formula such as "(ceil(N*HW / 256),1,1)").
    """
    return {name: _parse_settings(text) for name, text in _LAUNCH_LINE.findall(source)}


def _parse_settings(text):
    settings, position = {}, 0
    while True:
        match = _SETTING_KEY.match(text, position)
        if not match:
            return settings
        start = position = match.end()
        depth = 0  # parentheses may nest and hold spaces: "(ceil(C*H / 256),1,1)"
        while position < len(text) and (depth or not text[position].isspace()):
            depth += {"(": 1, ")": -1}.get(text[position], 0)
            position += 1
        settings[match.group(1)] = _parse_value(text[start:position])


def _parse_value(text):
    if re.fullmatch(r"\d+", text):
        return int(text)
    if re.fullmatch(r"\(\s*\d+(\s*,\s*\d+)*\s*\)", text):
        return tuple(int(v) for v in text.strip("()").split(","))
    return text


_GRID_SYNTAX = (ast.Expression, ast.Tuple, ast.Load, ast.Name, ast.Constant, ast.BinOp, ast.Add,
                ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Call)


def evaluate_grid(formula, values):
    """The grid of a launch line, "(ceil(N*HW / 256),1,1)", for the parameter values given
    ({"N": 128, "HW": 3025, ...}). Only arithmetic, names and ceil() are allowed, and it is
    exact: every value is a Fraction, so ceil(a / b) is never off by one through rounding."""
    names = {name: fractions.Fraction(value) for name, value in values.items()}
    grid = eval(_compiled_grid(formula), {"__builtins__": {}, "ceil": math.ceil}, names)
    if not isinstance(grid, tuple) or len(grid) != 3 or any(g != int(g) for g in grid):
        raise ValueError(f"launch line grid {formula!r} gives {grid}, not three integers")
    return tuple(int(g) for g in grid)


@functools.lru_cache(maxsize=None)
def _compiled_grid(formula):
    tree = ast.parse(formula, mode="eval")
    for node in ast.walk(tree):
        if not isinstance(node, _GRID_SYNTAX) or (isinstance(node, ast.Call) and not (
                isinstance(node.func, ast.Name) and node.func.id == "ceil")):
            raise ValueError(f"launch line grid {formula!r}: only + - * / //, names, numbers "
                             "and ceil() are allowed")
    return compile(tree, "<launch line>", "eval")  # safe to eval: arithmetic only


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


@functools.lru_cache(maxsize=None)
def launch_setting(filename, name):
    """The settings of the line `// launch NAME: ...` of kernels/`filename`."""
    settings = launch_settings(kernel_source(filename)).get(name)
    if settings is None:
        raise RuntimeError(f"kernels/{filename} has no line '// launch {name}: ...'")
    return settings


def launch(filename, name, grid, block, *arguments):
    """Run entry point `name` of kernels/`filename` on a grid of blocks of threads."""
    function, parameters = _kernel(filename, name)
    cupy = backend._import_cupy()
    function(grid, block, tuple(convert_arguments(name, parameters, arguments, cupy.ndarray)))


def _launch_as_written(filename, name, *arguments):
    """Launch with the block and grid of the file's line `// launch NAME: block=... grid=...`,
    the grid's formula evaluated with these arguments; nothing to do if it has no blocks."""
    setting = launch_setting(filename, name)
    values = {parameter.name: value  # the integer parameters: N, C, HW, ...
              for parameter, value in zip(parameters_of(filename, name), arguments)
              if parameter.type in ("int", "long long")}
    grid = evaluate_grid(setting["grid"], values)
    if min(grid) > 0:
        launch(filename, name, grid, setting["block"], *arguments)


def _float32(array, what):
    """array as a C-contiguous float32 array (no copy if it is one), or a clear TypeError."""
    if array.dtype != np.float32:
        raise TypeError(f"minialex.cuda.{what}: the kernels take float32; got {array.dtype}")
    return backend.get_array_module(array).ascontiguousarray(array)


# --------------------------------------------------------------------------------------------
# SGEMM (kernels/sgemm.cu): the GEMMs of conv2d and linear

def sgemm(a, b, trans_a=False, trans_b=False, version=SGEMM_BEST):
    """C = opA(a) @ opB(b) in float32 on our kernel; C is a new array.

    2-D: a is (M, K), or (K, M) with trans_a; b is (K, N), or (N, K) with trans_b; C (M, N).
    3-D: the same with a leading batch axis on a, b and C (one product per batch index).
    """
    if (trans_a, trans_b) not in SGEMM_LAYOUTS:
        raise ValueError("sgemm: trans_a and trans_b together are not supported (no tt "
                         "kernel); transpose one operand first")
    if version not in SGEMM_VERSIONS:
        raise ValueError(f"sgemm: version must be one of {SGEMM_VERSIONS}; got {version!r}")
    if a.ndim != b.ndim or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[0] != b.shape[0]):
        raise ValueError(f"sgemm: needs two 2-D arrays, or two 3-D arrays with the same batch; "
                         f"got shapes {tuple(a.shape)} and {tuple(b.shape)}")
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
    c = xp.empty((batch, M, N), dtype=np.float32)
    if K == 0:
        c[...] = 0  # an empty sum; also keeps a zero-sized grid from being launched
    elif c.size:
        setting = launch_setting("sgemm.cu", f"sgemm_v{version}")
        grid = (ceil_div(N, setting["tile_N"]), ceil_div(M, setting["tile_M"]), batch)
        name = f"sgemm_v{version}_{SGEMM_LAYOUTS[trans_a, trans_b]}"
        launch("sgemm.cu", name, grid, setting["block"], M, N, K, a, b, c, M * K, K * N, M * N)
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
    _launch_as_written("im2col.cu", kernel, x, col, N, C, H, W, KH, KW, SH, SW, PH, PW, OH, OW)
    return col


def col2im(col, x_shape, SH, SW, PH, PW):
    """col (C, KH, KW, N, OH, OW) -> x (N, C, H, W), each pixel the sum of its copies."""
    col = _float32(col, "col2im")
    N, C, H, W = x_shape
    _, KH, KW, _, OH, OW = col.shape
    x = backend.get_array_module(col).empty(x_shape, dtype=np.float32)
    _launch_as_written("im2col.cu", "col2im", col, x, N, C, H, W, KH, KW, SH, SW, PH, PW, OH, OW)
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
    _launch_as_written("pool.cu", "maxpool_forward",
                       x, y, argmax, N, C, H, W, KH, KW, SH, SW, PH, PW, OH, OW)
    return y, argmax


def maxpool_backward(gy, argmax, x_shape, KH, KW, SH, SW, PH, PW):
    """gx (N, C, H, W): each window's gradient sent back to its max."""
    gy = _float32(gy, "maxpool_backward")
    N, C, H, W = x_shape
    OH, OW = gy.shape[2:]
    gx = backend.get_array_module(gy).empty(x_shape, dtype=np.float32)
    _launch_as_written("pool.cu", "maxpool_backward",
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
    _launch_as_written("lrn.cu", "lrn_forward", x, y, scale, N, C, H * W, size, alpha, beta, k)
    return y, scale


def lrn_backward(x, y, scale, gy, size, alpha, beta, k):
    """gx (N, C, H, W) from the input, output and scale that forward returned."""
    gy = _float32(gy, "lrn_backward")
    N, C, H, W = x.shape
    gx = backend.get_array_module(gy).empty_like(gy)
    _launch_as_written("lrn.cu", "lrn_backward",
                       x, y, scale, gy, gx, N, C, H * W, size, alpha, beta, k)
    return gx


# --------------------------------------------------------------------------------------------
# Softmax cross-entropy (kernels/softmax_xent.cu), as CrossEntropy in functions/loss.py

def softmax_xent_forward(logits, labels):
    """probs (N, K) = softmax of each row, and losses (N,) = -log probs[n, labels[n]]."""
    logits = _float32(logits, "softmax_xent_forward")
    N, K = logits.shape
    xp = backend.get_array_module(logits)
    labels = xp.ascontiguousarray(labels, dtype=np.int64)
    probs = xp.empty_like(logits)
    losses = xp.empty(N, dtype=np.float32)
    _launch_as_written("softmax_xent.cu", "softmax_xent_forward",
                       logits, labels, probs, losses, N, K)
    return probs, losses


def softmax_xent_backward(probs, labels, grad_scale):
    """grad_logits (N, K) = (probs - onehot(labels)) * grad_scale."""
    probs = _float32(probs, "softmax_xent_backward")
    N, K = probs.shape
    xp = backend.get_array_module(probs)
    labels = xp.ascontiguousarray(labels, dtype=np.int64)
    grad = xp.empty_like(probs)
    _launch_as_written("softmax_xent.cu", "softmax_xent_backward",
                       probs, labels, grad_scale, grad, N, K)
    return grad


# --------------------------------------------------------------------------------------------
# ReLU and dropout: one pass each, as CuPy elementwise kernels (no .cu file needed)

_ELEMENTWISE = {  # name: (inputs, outputs, body for one element)
    # NaN passes through, as in NumPy's maximum, so that a diverged network shows
    "relu": ("float32 x", "float32 y, bool positive",
             "positive = x > 0.0f; y = (positive || x != x) ? x : 0.0f"),
    "dropout": ("float32 x, float32 uniform, float32 p, float32 scale", "float32 y, float32 mask",
                "mask = uniform >= p ? scale : 0.0f; y = x * mask"),
}


@functools.lru_cache(maxsize=None)
def _elementwise(name):
    inputs, outputs, body = _ELEMENTWISE[name]
    return backend._import_cupy().ElementwiseKernel(inputs, outputs, body, f"minialex_{name}")


def relu(x):
    """y = max(x, 0) and the mask x > 0 (bool) that backward multiplies by, in one pass."""
    return _elementwise("relu")(_float32(x, "relu"))


def dropout(x, uniform, p):
    """y = x * mask and mask = [uniform >= p] / (1 - p), for 0 <= p < 1, in one pass."""
    return _elementwise("dropout")(_float32(x, "dropout"), uniform, np.float32(p),
                                   np.float32(1 / (1 - p)))
