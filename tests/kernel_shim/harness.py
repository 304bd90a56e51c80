"""Run a kernels/*.cu file on the CPU: compile it with g++ and cuda_shim.h, call it with ctypes.

CI has no GPU, so the CUDA kernels are tested here, on the CPU, against the NumPy path. Usage:

    from kernel_shim import harness          # tests/ is on sys.path under pytest
    kernels = harness.load("kernels/sgemm.cu")
    kernels.launch("sgemm_v1_nn", (harness.ceil_div(N, 16), harness.ceil_div(M, 16), 1),
                   (16, 16, 1), M, N, K, a, b, c, 0, 0, 0)

`load` finds every `extern "C" __global__ void NAME(PARAMS)` in the source and generates, for
each, a C launcher `shim_launch_NAME(gx, gy, gz, bx, by, bz, PARAMS)` that runs the kernel over the
grid with shim::launch (see cuda_shim.h for the execution model). The library is built once per
test session for each distinct source, in a temporary folder removed at exit.

`launch` checks every argument against the declared parameter type: a pointer parameter takes a
C-contiguous NumPy array of exactly the matching dtype (float* -> float32, unsigned char* ->
uint8, long long* -> int64, int* -> int32); int, long long and float take Python numbers. The
kernel sees a private copy of each array, with guard bytes on both sides: a kernel that writes
outside an array raises an error naming the argument, and one that reads outside it reads NaN
(for float32), which shows up in the comparison with NumPy. The copy keeps the address modulo
64, so misaligned-pointer cases stay misaligned. After the launch, arrays passed to non-const
pointers are copied back. (So arguments must not overlap; no kernel here needs that.)
"""
import atexit
import ctypes
import dataclasses
import hashlib
import os
import pathlib
import re
import shutil
import subprocess
import tempfile

import numpy as np

SHIM_HEADER = pathlib.Path(__file__).resolve().with_name("cuda_shim.h")
CXX_FLAGS = ["-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-fno-strict-aliasing"]
GUARD_BYTES = 16384  # on each side of every array argument
GUARD_FILL = 0xFF  # as float32 a NaN, as int64 -1, as uint8 255

# CUDA's limits on a launch's shape (every GPU since compute capability 3.0)
MAX_THREADS_PER_BLOCK = 1024
MAX_BLOCK = (1024, 1024, 64)
MAX_GRID = (2**31 - 1, 65535, 65535)

# parameter base type -> (NumPy dtype of the array behind a pointer, ctypes type of a scalar)
POINTER_DTYPES = {"float": np.float32, "unsigned char": np.uint8, "long long": np.int64,
                  "int": np.int32}
SCALAR_CTYPES = {"int": ctypes.c_int, "long long": ctypes.c_longlong, "float": ctypes.c_float}

ENTRY_POINT = re.compile(
    r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?'
    r'(\w+)\s*\(([^)]*)\)')


def ceil_div(a, b):
    """The number of size-b tiles that cover a: the grid size of a launch."""
    return -(-a // b)


@dataclasses.dataclass(frozen=True)
class Param:
    """One kernel parameter, e.g. `const float* __restrict__ A` -> Param("A", "float", True, True)
    """
    name: str
    base_type: str  # "float", "unsigned char", "long long" or "int"
    is_pointer: bool
    is_const: bool  # for a pointer: the kernel promises not to write through it
    declaration: str  # as written in the source, for the generated launcher

    def describe(self):
        if self.is_pointer:
            return f"{'const ' if self.is_const else ''}{self.base_type}* {self.name}"
        return f"{self.base_type} {self.name}"


def strip_comments(source):
    source = re.sub(r"/\*.*?\*/", " ", source, flags=re.DOTALL)
    return re.sub(r"//[^\n]*", "", source)


def parse_param(text, kernel):
    declaration = " ".join(text.split())
    tokens = [t for t in re.findall(r"\w+|\*", declaration) if t != "__restrict__"]
    if len(tokens) < 2:
        raise ValueError(f"harness: cannot parse parameter {text!r} of kernel {kernel}")
    name, type_tokens = tokens[-1], tokens[:-1]
    is_pointer = "*" in type_tokens
    if type_tokens.count("*") > 1:
        raise ValueError(f"harness: kernel {kernel}: pointer to pointer {text!r} is not supported")
    is_const = is_pointer and type_tokens[0] == "const"
    base_type = " ".join(t for t in type_tokens if t not in ("const", "*"))
    known = POINTER_DTYPES if is_pointer else SCALAR_CTYPES
    if base_type not in known:
        kinds = [f"{t}*" for t in POINTER_DTYPES] if is_pointer else list(SCALAR_CTYPES)
        raise ValueError(f"harness: kernel {kernel}: parameter {text!r} has type {base_type}"
                         f"{'*' if is_pointer else ''}; supported: {', '.join(kinds)}")
    return Param(name, base_type, is_pointer, is_const, declaration)


def parse_entry_points(source):
    """{kernel name: [Param, ...]} for every `extern "C" __global__ void NAME(...)` in source."""
    kernels = {}
    for match in ENTRY_POINT.finditer(strip_comments(source)):
        name, params = match.group(1), match.group(2).strip()
        if name in kernels:
            raise ValueError(f"harness: kernel {name} is defined twice")
        parts = [p for p in params.split(",")] if params and params != "void" else []
        kernels[name] = [parse_param(p, name) for p in parts]
    return kernels


def launcher_source(name, params):
    """The C function that launches kernel `name`; its grid and block parameters have names no
    kernel parameter will have (a kernel may well call its gradient gx)."""
    declarations = "".join(f", {p.declaration}" for p in params)
    arguments = ", ".join(p.name for p in params)
    return (f'extern "C" void shim_launch_{name}(unsigned shim_grid_x, unsigned shim_grid_y, '
            f"unsigned shim_grid_z, unsigned shim_block_x, unsigned shim_block_y, "
            f"unsigned shim_block_z{declarations}) {{\n"
            f"    shim::launch(dim3(shim_grid_x, shim_grid_y, shim_grid_z),\n"
            f"                 dim3(shim_block_x, shim_block_y, shim_block_z),\n"
            f"                 [=] {{ {name}({arguments}); }});\n"
            f"}}\n")


class Kernels:
    """The entry points of one compiled .cu file. Call them with `launch`."""

    def __init__(self, path, library, entry_points):
        self.path = path
        self.entry_points = entry_points  # {name: [Param, ...]}
        self._library = library
        self._library.shim_take_error.restype = ctypes.c_char_p
        self._launchers = {}
        for name, params in entry_points.items():
            launcher = getattr(library, f"shim_launch_{name}")
            launcher.restype = None
            launcher.argtypes = [ctypes.c_uint] * 6 + [
                ctypes.c_void_p if p.is_pointer else SCALAR_CTYPES[p.base_type] for p in params]
            self._launchers[name] = launcher

    def launch(self, name, grid, block, *args):
        """Run kernel `name` over `grid` blocks of `block` threads (tuples of 1 to 3 ints)."""
        if name not in self.entry_points:
            raise ValueError(f"harness: {self.path.name} has no kernel {name!r}; it has "
                             f"{', '.join(sorted(self.entry_points))}")
        params = self.entry_points[name]
        grid = launch_shape(grid, MAX_GRID, f"{name}: grid")
        block = launch_shape(block, MAX_BLOCK, f"{name}: block")
        if block[0] * block[1] * block[2] > MAX_THREADS_PER_BLOCK:
            raise ValueError(f"harness: {name}: block {block} has more than "
                             f"{MAX_THREADS_PER_BLOCK} threads")
        if len(args) != len(params):
            raise TypeError(f"harness: {name} takes {len(params)} arguments "
                            f"({', '.join(p.describe() for p in params)}); got {len(args)}")
        guarded = []  # (Param, caller's array, GuardedCopy)
        c_args = []
        for param, arg in zip(params, args):
            if param.is_pointer:
                check_array(name, param, arg)
                copy = GuardedCopy(arg)
                guarded.append((param, arg, copy))
                c_args.append(copy.address)
            else:
                c_args.append(scalar(name, param, arg))
        self._launchers[name](*grid, *block, *c_args)
        error = self._library.shim_take_error()
        if error is not None:
            raise RuntimeError(f"harness: {name}: {error.decode()}")
        for param, arg, copy in guarded:
            copy.check_guards(name, param)
        for param, arg, copy in guarded:
            if not param.is_const:
                arg[...] = copy.array


def launch_shape(shape, limits, what):
    if isinstance(shape, int):
        shape = (shape,)
    shape = tuple(shape)
    if not 1 <= len(shape) <= 3 or not all(isinstance(s, (int, np.integer)) for s in shape):
        raise ValueError(f"harness: {what} must be 1 to 3 ints; got {shape!r}")
    shape = tuple(int(s) for s in shape) + (1,) * (3 - len(shape))
    if any(not 1 <= s <= limit for s, limit in zip(shape, limits)):
        raise ValueError(f"harness: {what} {shape} is outside CUDA's limits 1..{limits}")
    return shape


def check_array(kernel, param, arg):
    dtype = np.dtype(POINTER_DTYPES[param.base_type])
    if not isinstance(arg, np.ndarray):
        raise TypeError(f"harness: {kernel}: argument {param.describe()} needs a NumPy array; "
                        f"got {type(arg).__name__}")
    if arg.dtype != dtype:
        raise TypeError(f"harness: {kernel}: argument {param.describe()} needs dtype {dtype}; "
                        f"got {arg.dtype}")
    if not arg.flags.c_contiguous:
        raise TypeError(f"harness: {kernel}: argument {param.describe()} must be C-contiguous")
    if not param.is_const and not arg.flags.writeable:
        raise TypeError(f"harness: {kernel}: argument {param.describe()} is read-only")


def scalar(kernel, param, arg):
    if isinstance(arg, (bool, np.bool_)) or isinstance(arg, np.ndarray):
        raise TypeError(f"harness: {kernel}: argument {param.describe()} got {arg!r}")
    if param.base_type == "float":
        if not isinstance(arg, (int, float, np.integer, np.floating)):
            raise TypeError(f"harness: {kernel}: argument {param.describe()} needs a number; "
                            f"got {arg!r}")
        return ctypes.c_float(float(arg))
    if not isinstance(arg, (int, np.integer)):
        raise TypeError(f"harness: {kernel}: argument {param.describe()} needs an int; "
                        f"got {arg!r}")
    bits = 32 if param.base_type == "int" else 64
    if not -2**(bits - 1) <= int(arg) < 2**(bits - 1):
        raise ValueError(f"harness: {kernel}: argument {param.describe()} = {arg} does not fit "
                         f"in {bits} bits")
    return SCALAR_CTYPES[param.base_type](int(arg))


class GuardedCopy:
    """A copy of `array` with GUARD_BYTES of GUARD_FILL on both sides, at the same address
    modulo 64 as the original (so a 16-byte-misaligned array stays misaligned)."""

    def __init__(self, array):
        self.nbytes = array.nbytes
        self.buffer = np.full(self.nbytes + 2 * GUARD_BYTES + 64, GUARD_FILL, dtype=np.uint8)
        base = self.buffer.ctypes.data + GUARD_BYTES
        self.start = GUARD_BYTES + (array.ctypes.data - base) % 64
        self.array = self.buffer[self.start:self.start + self.nbytes].view(array.dtype)
        self.array = self.array.reshape(array.shape)
        self.array[...] = array
        self.address = self.buffer.ctypes.data + self.start

    def check_guards(self, kernel, param):
        before = self.buffer[:self.start]
        after = self.buffer[self.start + self.nbytes:]
        for side, guard in (("before", before), ("after", after)):
            written = np.flatnonzero(guard != GUARD_FILL)
            if written.size:
                distance = (len(guard) - written[0]) if side == "before" else written[-1] + 1
                raise RuntimeError(
                    f"harness: {kernel} wrote outside argument {param.describe()}: "
                    f"{written.size} bytes {side} the array, up to {distance} bytes away")


# ---- building: once per session for each distinct source ----
_built = {}  # hash of (source, shim, flags) -> Kernels
_build_folder = None


def build_folder():
    global _build_folder
    if _build_folder is None:
        _build_folder = tempfile.mkdtemp(prefix="minialex_kernel_shim_")
        atexit.register(shutil.rmtree, _build_folder, ignore_errors=True)
    return pathlib.Path(_build_folder)


def load(cu_path):
    """Compile `cu_path` for the CPU (cached for the session) and return its Kernels."""
    path = pathlib.Path(cu_path).resolve()
    source = path.read_text()
    entry_points = parse_entry_points(source)
    if not entry_points:
        raise ValueError(f'harness: {path.name} has no extern "C" __global__ kernel')
    unit_source = (f'#line 1 "{path}"\n{source}\n'
                   f'#line 1 "generated launchers for {path.name}"\n'
                   + "".join(launcher_source(n, p) for n, p in entry_points.items()))
    compiler = os.environ.get("CXX", "g++")
    key = hashlib.sha256("\0".join(
        [unit_source, SHIM_HEADER.read_text(), compiler, *CXX_FLAGS]).encode()).hexdigest()[:20]
    if key in _built:
        return _built[key]
    if shutil.which(compiler) is None:
        raise RuntimeError(f"harness: C++ compiler {compiler!r} not found. The CUDA kernel tests "
                           f"run kernels/*.cu on the CPU, compiled with g++ (C++20, for "
                           f"std::barrier); install g++ >= 11 or set CXX.")
    unit = build_folder() / f"{path.stem}_{key}.cpp"
    library_path = unit.with_suffix(".so")
    unit.write_text(unit_source)
    command = [compiler, *CXX_FLAGS, "-x", "c++", "-include", str(SHIM_HEADER),
               str(unit), "-o", str(library_path)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"harness: g++ could not compile {path.name} with the CUDA shim:\n"
                           f"{' '.join(command)}\n{result.stderr}")
    kernels = Kernels(path, ctypes.CDLL(str(library_path)), entry_points)
    _built[key] = kernels
    return kernels
