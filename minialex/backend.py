"""The one module that knows NumPy from CuPy.

Every op asks `get_array_module(x)` for its array module instead of importing NumPy or CuPy
itself, so the same forward and backward serve both devices. Devices are named "cpu" (NumPy)
and "cuda" (CuPy). CuPy is imported lazily: importing minialex never needs it.
"""
import ctypes
import functools
import os
import sys

import numpy as np

DEVICES = ("cpu", "cuda")


def keep_freed_memory():
    """Ask glibc's malloc to serve large blocks from its heap and keep them once freed.

    A training step allocates and frees the same large temporaries every time (tiles, columns,
    gradients: about 1 GB for AlexNet at batch 32). By default glibc maps each block over
    32 MB afresh from the kernel and unmaps it when NumPy frees it, so every step faults in
    and zeroes new pages: 0.28 s of system time in a 1.5 s step on 2 cores. Kept in the heap,
    the next step reuses them. The peak resident memory is the same; what changes is that it
    is not returned between steps. Set MINIALEX_MALLOC=system to leave malloc as it is.
    Returns True when the setting took.
    """
    if not sys.platform.startswith("linux") or os.environ.get("MINIALEX_MALLOC") == "system":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, ...): nothing to tune
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h
    kept = any(libc.mallopt(M_MMAP_THRESHOLD, size) == 1 for size in (1 << 30, 32 << 20))
    return kept and libc.mallopt(M_TRIM_THRESHOLD, 1 << 31) == 1


KEEPS_FREED_MEMORY = keep_freed_memory()

_cupy = None  # the cupy module once it has been imported successfully


def _import_cupy():
    """Import CuPy on first use, with an error that says how to get it."""
    global _cupy
    if _cupy is None:
        try:
            import cupy
        except ImportError as error:
            raise RuntimeError(
                "device 'cuda' needs CuPy, which is not installed; install it with "
                "pip install -e '.[gpu]' (or pip install cupy-cuda13x) on a machine with an "
                "NVIDIA GPU") from error
        _cupy = cupy
    return _cupy


def cupy_available():
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        cupy = _import_cupy()
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no CuPy, no driver or no device: all mean "no GPU here"
        return False


def scatter_add(target, index, values):
    """target[index[k]] += values[k] for every k, accumulating repeated indices (1-D)."""
    if isinstance(target, np.ndarray):
        np.add.at(target, index, values)
    else:
        import cupyx  # comes with CuPy
        cupyx.scatter_add(target, index, values)


CHUNK = 1 << 20  # elements per piece of work for run_in_threads: 4 MB of float32
_threads = None


def chunks_of(*arrays):
    """Matching pieces of CHUNK elements of 1-D arrays of one length (None passes through)."""
    size = next(a.size for a in arrays if a is not None)
    return [tuple(None if a is None else a[start:start + CHUNK] for a in arrays)
            for start in range(0, size, CHUNK)]


def run_in_threads(function, pieces):
    """function(*piece) for every piece, NumPy pieces on a thread per core, CuPy ones in
    order (the GPU runs them in parallel anyway). Memory-bound NumPy passes release the GIL,
    so the cores share the work, as long as BLAS threads left spinning after a matrix product
    do not hold the cores (minialex/__init__.py sets OPENBLAS_THREAD_TIMEOUT for that)."""
    global _threads
    arrays = [a for a in (pieces[0] if pieces else ()) if hasattr(a, "shape")]
    if len(pieces) < 2 or not all(isinstance(a, np.ndarray) for a in arrays):
        for piece in pieces:
            function(*piece)
        return
    if _threads is None:
        import concurrent.futures
        _threads = concurrent.futures.ThreadPoolExecutor(max(1, os.cpu_count() or 1))
    for done in [_threads.submit(function, *piece) for piece in pieces]:
        done.result()  # re-raises an error from the thread


@functools.lru_cache(maxsize=None)
def _openblas_thread_count():
    """(set, get) of the thread count of NumPy's OpenBLAS, found with ctypes, or None."""
    try:
        with open("/proc/self/maps") as maps:  # Linux: the shared libraries now loaded
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower()}
    except OSError:
        return None
    for path in sorted(paths, key=lambda path: "numpy" not in path):  # NumPy's copy first
        library = ctypes.CDLL(path)
        for name in ("scipy_openblas{}64_", "scipy_openblas{}", "openblas{}", "openblas{}64_"):
            if hasattr(library, name.format("_set_num_threads")):
                return (getattr(library, name.format("_set_num_threads")),
                        getattr(library, name.format("_get_num_threads")))
    return None


def matmul_in_threads(a, b):
    """a @ b for two stacks of matrices with the same leading shape, (..., M, K) @ (..., K, N).

    OpenBLAS splits every product of a stack over its threads, and Winograd's stacks are many
    small products (conv4: 49 of 384 x 384 by 384 x 288); waking the threads for each one costs
    more than it gains. So where OpenBLAS's thread count can be set, the stack is cut in one
    piece per BLAS thread instead, each run on a thread of ours with BLAS on one thread: a seed
    AlexNet step on 2 cores took 901 ms instead of 937 (medians of 10, alternating).
    """
    control = _openblas_thread_count()
    threads = control[1]() if control else 1
    if not isinstance(a, np.ndarray) or threads < 2:
        return a @ b
    a3, b3 = a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:])
    out = np.empty((len(a3), a.shape[-2], b.shape[-1]), dtype=np.result_type(a, b))
    cuts = [len(a3) * k // threads for k in range(threads + 1)]
    control[0](1)
    try:
        run_in_threads(lambda lo, hi: np.matmul(a3[lo:hi], b3[lo:hi], out=out[lo:hi]),
                       [(lo, hi) for lo, hi in zip(cuts, cuts[1:]) if hi > lo])
    finally:
        control[0](threads)
    return out.reshape(*a.shape[:-1], b.shape[-1])


def get_array_module(*arrays):
    """numpy, or cupy if any of `arrays` is a CuPy array (tensors are unwrapped)."""
    for array in arrays:
        array = getattr(array, "data", array) if not isinstance(array, np.ndarray) else array
        if _cupy is not None and isinstance(array, _cupy.ndarray):
            return _cupy
    return np


def device_of(array):
    """'cpu' or 'cuda' for a NumPy or CuPy array."""
    if _cupy is not None and isinstance(array, _cupy.ndarray):
        return "cuda"
    return "cpu"


def check_device(device):
    """Return a valid device name, or raise a ValueError that lists the valid ones."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; expected one of {DEVICES}")
    return device


def to_device(array, device):
    """Move a NumPy or CuPy array to `device` ('cpu' or 'cuda'); no copy if already there."""
    check_device(device)
    if device_of(array) == device:
        return array
    if device == "cpu":
        return _cupy.asnumpy(array)
    cupy = _import_cupy()
    try:
        devices = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # CUDARuntimeError: no driver, or a driver too old for CuPy
        raise RuntimeError(f"device 'cuda' was asked for, but CuPy finds no usable CUDA "
                           f"device ({error})") from error
    if devices == 0:
        raise RuntimeError("device 'cuda' was asked for, but CuPy sees no CUDA device")
    return cupy.asarray(array)


def as_numpy(array):
    """A NumPy array with the same values, wherever `array` lives."""
    return to_device(array, "cpu")
