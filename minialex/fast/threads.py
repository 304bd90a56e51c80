"""Work on a thread per core, for the CPU fast paths: memory-bound passes in cache-sized pieces,
and matrix products cut so that each core runs its own piece with BLAS on one thread.

Why our threads and not BLAS's. NumPy runs an elementwise pass on one core; it releases the GIL
inside it, so pieces of one pass on two threads use both cores. OpenBLAS splits each product
over its own threads, which spin for about 0.1 s after every product before they sleep: on
2 cores that spinning took a core from the next pass (240 instead of 170 ms of a seed step).
OPENBLAS_THREAD_TIMEOUT stops the spinning, but only when set before NumPy loads OpenBLAS, so it
depended on import order: 34.0-34.6 img/s with NumPy imported first, 46.4-49.0 with minialex
first (seed, batch 32, 2 cores, medians of 8 steps, three alternating pairs of processes). Every
product a fast path does goes through `matmul` below instead: cut in one piece per core, each
run with BLAS held to one thread (threadpoolctl, at run time), so OpenBLAS's own threads never
get work and never spin, whatever the import order: 49.9-50.0 and 49.9-51.0 img/s.

The sizes that decide how work is split are module constants, so that the tests can shrink
them and check that every piece is done once (tests/test_fast_paths.py).
"""
import concurrent.futures
import functools
import os

import numpy as np

THREADS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
THREADS = max(1, THREADS or 1)  # pieces a product is cut into: one per core
CHUNK = 1 << 20  # elements per piece of an elementwise pass: 4 MB of float32, near the cache

_pool = None


def run_in_threads(function, pieces):
    """function(*piece) for every piece, on a thread per core; the first error is re-raised."""
    global _pool
    if len(pieces) < 2:
        for piece in pieces:
            function(*piece)
        return
    if _pool is None:
        _pool = concurrent.futures.ThreadPoolExecutor(THREADS)
    for done in [_pool.submit(function, *piece) for piece in pieces]:
        done.result()


def chunks_of(*arrays):
    """Matching pieces of CHUNK elements of 1-D arrays of one length (None passes through)."""
    size = next(a.size for a in arrays if a is not None)
    return [tuple(None if a is None else a[start:start + CHUNK] for a in arrays)
            for start in range(0, size, CHUNK)]


def cuts(size, pieces):
    """[(start, stop), ...]: range(size) in `pieces` nearly equal runs (none empty)."""
    bounds = [size * k // pieces for k in range(pieces + 1)]
    return [(lo, hi) for lo, hi in zip(bounds, bounds[1:]) if hi > lo]


@functools.lru_cache(maxsize=None)
def _blas_libraries():
    """threadpoolctl's controllers of the BLAS libraries loaded now, or () without it."""
    try:
        import threadpoolctl
    except ImportError:
        return ()
    return tuple(threadpoolctl.ThreadpoolController().select(user_api="blas").lib_controllers)


def matmul(a, b):
    """a @ b for NumPy arrays, (..., M, K) @ (..., K, N) with the same leading shape (or 2-D),
    on a thread per core with BLAS on one thread each.

    A stack of at least THREADS products (Winograd's 25 to 64) is cut along the stack; each
    product of a shorter stack (a convolution's groups, a fully connected layer) along its
    longer side, M or N. Without threadpoolctl this is plain a @ b.
    """
    libraries = _blas_libraries()
    if THREADS < 2 or not libraries or not isinstance(a, np.ndarray) or not a.size * b.size:
        return a @ b
    stack = a.shape[:-2]
    a3, b3 = a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:])
    out = np.empty((len(a3), a.shape[-2], b.shape[-1]), dtype=np.result_type(a, b))
    if len(a3) >= THREADS:
        pieces = [(a3[lo:hi], b3[lo:hi], out[lo:hi]) for lo, hi in cuts(len(a3), THREADS)]
    else:
        per_product = -(-THREADS // len(a3))
        M, N = out.shape[1:]
        pieces = [(a3[k, lo:hi], b3[k], out[k, lo:hi]) if M >= N else
                  (a3[k], b3[k, :, lo:hi], out[k, :, lo:hi])
                  for k in range(len(a3)) for lo, hi in cuts(max(M, N), per_product)]
    previous = [library.get_num_threads() for library in libraries]
    for library in libraries:
        library.set_num_threads(1)
    try:
        run_in_threads(lambda a, b, out: np.matmul(a, b, out=out), pieces)
    finally:
        for library, threads in zip(libraries, previous):
            library.set_num_threads(threads)
    return out.reshape(*stack, *out.shape[-2:])
