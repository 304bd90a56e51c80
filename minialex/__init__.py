"""minialex: a deep-learning engine written from scratch, small enough to read, fast enough to
train AlexNet. NumPy on the CPU, CuPy on the GPU.

    import minialex as mx
    import minialex.functional as F
    from minialex import nn, optim
"""
import os
import sys

# OpenBLAS (NumPy's BLAS from PyPI) keeps its worker threads spinning for about 0.1 s after every
# matrix product (2^28 cycles) before they sleep. minialex runs memory-bound passes on a thread
# per core right after products (backend.run_in_threads), and a spinning worker takes a core from
# them: on 2 cores those passes took 240 ms of an AlexNet step instead of 170. OpenBLAS reads
# OPENBLAS_THREAD_TIMEOUT once, when NumPy loads it, so this only counts where minialex is
# imported first (the examples and benchmarks are); elsewhere, set it in the environment.
if "numpy" not in sys.modules:
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # 2^4 cycles: sleep at once

from .tensor import Function, Tensor, is_grad_enabled, no_grad, tensor  # noqa: E402,F401
from .gradcheck import GradcheckError, gradcheck  # noqa: E402,F401
from .serialization import load, save  # noqa: E402,F401
from . import functional, models, nn, optim, random  # noqa: E402,F401

__version__ = "0.1.0"
