"""minialex: a deep-learning engine written from scratch, small enough to read, fast enough to
train AlexNet. NumPy on the CPU, CuPy on the GPU.

    import minialex as mx
    import minialex.functional as F
    from minialex import nn, optim
"""
from .tensor import Function, Tensor, is_grad_enabled, no_grad, tensor  # noqa: F401
from .gradcheck import GradcheckError, gradcheck  # noqa: F401
from .serialization import load, save  # noqa: F401
from .interop import load_torch_state_dict  # noqa: F401
from . import functional, models, nn, optim, random  # noqa: F401
# The fast paths register themselves with dispatch.py: the CPU's (fast/), then the GPU's
from . import fast, gpu  # noqa: F401
from .dispatch import enabled_paths, fast_paths, set_fast  # noqa: F401
# TF32 tensor cores for the GPU's float32 products: off ("highest") unless switched on, as
# in PyTorch (cuda.py)
from .cuda import get_float32_matmul_precision, set_float32_matmul_precision  # noqa: F401

# The one process-wide setting, made now unless MINIALEX_FAST leaves "memory" out
fast.memory.keep_freed_memory_if_enabled()

__version__ = "0.1.0"
