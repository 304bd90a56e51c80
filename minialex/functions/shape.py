"""Flatten: the bridge from the convolutional part of AlexNet to the fully connected part.

Notation: x has shape (D0, D1, ..., D{d-1}), usually (N, C, H, W); s = start_dim.
    y = x reshaped to (D0, ..., D{s-1}, D{s} * ... * D{d-1})

With the default s = 1 each example becomes one row: AlexNet's last pooling output
(N, 256, 6, 6) becomes (N, 9216), the input of fc6 (Krizhevsky et al. 2012, §3.5). The order of
the elements is C order (channel, then row, then column), as in PyTorch, so weights trained
there keep their meaning here.
"""
import math

from ..tensor import Function, Tensor


class Flatten(Function):
    def __init__(self, start_dim=1):
        self.start_dim = start_dim  # already checked and made non-negative by flatten()

    def forward(self, x):
        self.x_shape = x.shape  # the shape backward restores
        s = self.start_dim
        # The size is spelled out rather than -1, which NumPy cannot resolve for an empty batch.
        return x.reshape(x.shape[:s] + (math.prod(x.shape[s:]),))

    # A reshape moves no value, so the gradient is gy with the input's shape.
    def backward(self, gy):
        return gy.reshape(self.x_shape)


def flatten(x, start_dim=1):
    """Merge the axes from start_dim to the last into one. As torch.flatten(x, start_dim)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"flatten: input must be a Tensor; got {type(x).__name__}")
    if x.ndim == 0:
        raise ValueError("flatten: input is a 0-d scalar (shape ()); there are no axes to merge")
    if isinstance(start_dim, bool) or not isinstance(start_dim, int) \
            or not -x.ndim <= start_dim < x.ndim:
        raise ValueError(f"flatten: start_dim {start_dim!r} out of range for an input of shape "
                         f"{tuple(x.shape)} (valid: {-x.ndim} to {x.ndim - 1})")
    return Flatten(start_dim % x.ndim)(x)
