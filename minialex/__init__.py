"""minialex: a deep-learning engine written from scratch, small enough to read, fast enough to
train AlexNet. NumPy on the CPU, CuPy on the GPU.

    import minialex as mx
    import minialex.functional as F
    from minialex import nn, optim
"""
import os
import sys

# OpenBLAS's idle threads spin for ~0.1 s after each product, taking a core from the passes that
# minialex runs on a thread per core (backend.run_in_threads): 240 instead of 170 ms of a seed
# step on 2 cores. OpenBLAS reads this once, when NumPy loads it: import minialex first.
if "numpy" not in sys.modules:
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # 2^4 cycles: sleep at once

from .tensor import Function, Tensor, is_grad_enabled, no_grad, tensor  # noqa: E402,F401
from .gradcheck import GradcheckError, gradcheck  # noqa: E402,F401
from .serialization import load, save  # noqa: E402,F401
from . import functional, models, nn, optim, random  # noqa: E402,F401

__version__ = "0.1.0"
