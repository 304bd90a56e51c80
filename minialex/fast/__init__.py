"""The CPU's fast paths: each stands in for a reference op (minialex/dispatch.py) and computes
the same thing faster on NumPy. Importing this package registers them, in this order (the order
of the benchmark's table "What each fast path buys"):

    winograd      fast/winograd.py     conv2d, stride-1 3x3 and 5x5 kernels: Winograd's F(5x5,3x3)
                                       and F(4x4,5x5), 2 to 5 times fewer multiply-adds
    pool          fast/pool.py         max_pool2d: separable max in cached pieces on threads,
                                       backward as one scatter-add
    elementwise   fast/elementwise.py  relu in cached pieces on threads
    sgd           fast/elementwise.py  SGD's update in cached pieces on threads
    gemm          fast/conv.py         conv2d by im2col (conv1) and linear: im2col split by phases,
                                       products on a thread per core, BLAS on one thread each (so
                                       that BLAS's own threads never spin beside the passes above)
    memory        fast/memory.py       glibc's malloc keeps large freed blocks (process-wide)

The GPU's fast path, "cuda-kernels" (minialex/gpu.py), is registered beside them.
"""
from .. import dispatch
from . import winograd  # noqa: F401 (registers; tried before gemm for Conv2d)
from . import pool, elementwise, conv, memory, threads  # noqa: F401,E402 (they register)

dispatch.declare("memory", "every large allocation (process-wide malloc setting)")
