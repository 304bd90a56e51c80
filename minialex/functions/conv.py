"""2-D convolution as one matrix product: im2col, GEMM, col2im.

Notation (the same names in every file, and in kernels/*.cu):
    N           batch size
    C, H, W     input channels, height, width
    F           filters (output channels);  G groups;  CG = C / G,  FG = F / G
    KH, KW      kernel height and width;    SH, SW strides;   PH, PW zero padding
    OH, OW      output size: OH = (H + 2 PH - KH) // SH + 1, and likewise OW
    P           output positions of the whole batch: P = N * OH * OW

A convolution computes, for every image n, filter f and output position (oh, ow),

    y[n, f, oh, ow] = b[f] + sum_{c in group(f)} sum_{i < KH} sum_{j < KW}
                      w[f, c - g CG, i, j] * x_padded[n, c, oh SH + i, ow SW + j]

im2col copies every window into a column, so that the sums become one matrix product per group:

    col[c, i, j, (n, oh, ow)] = x_padded[n, c, oh SH + i, ow SW + j]    (C KH KW, P)
    y_g = w_g (FG, CG KH KW) @ col_g (CG KH KW, P)                         (FG, P)

Over 90% of AlexNet's arithmetic is these products (minialex/ALEXNET.md, "Work per image"), so
they go to the matrix library in one call per group, never a loop over images. The loops left in
im2col and col2im run over the KH x KW window offsets only; each step copies a strided slice of
the whole batch.

Groups are the paper's two GPUs (§3.5, Figure 2): in conv2, conv4 and conv5 each half of the
filters sees only the half of the channels that lives on its own GPU. Here they are G
independent products over the channel groups, which is also how PyTorch's `groups` works.

This page is the reference. Faster ways to compute the same thing live apart and stand in for
it where they apply (minialex/dispatch.py): Winograd's transform for stride-1 3x3 and 5x5 layers
and im2col split by phases with the products on a thread per core (minialex/fast/), and our CUDA
kernels on the GPU (minialex/gpu.py).
"""
import numpy as np

from ..backend import get_array_module
from ..tensor import Function


def output_size(size, kernel, stride, padding):
    """OH = (H + 2 PH - KH) // SH + 1: how many windows fit along one axis."""
    return (size + 2 * padding - kernel) // stride + 1


def im2col(x, KH, KW, SH, SW, PH, PW):
    """x (N, C, H, W) -> col (C, KH, KW, N, OH, OW), every window of the padded input a column.

    The channel axis goes first so that each group's rows are one contiguous block and the
    GEMM's long axis P = N * OH * OW is the fast one. For window offset (i, j), the pixel that
    every window sees there is one strided slice of the padded input: rows i, i + SH, ...
    """
    xp = get_array_module(x)
    N, C, H, W = x.shape
    OH, OW = output_size(H, KH, SH, PH), output_size(W, KW, SW, PW)
    x_padded = xp.zeros((C, N, H + 2 * PH, W + 2 * PW), dtype=x.dtype)  # channel-major
    x_padded[:, :, PH:PH + H, PW:PW + W] = x.transpose(1, 0, 2, 3)
    col = xp.empty((C, KH, KW, N, OH, OW), dtype=x.dtype)
    for i in range(KH):
        for j in range(KW):
            rows, columns = slice(i, i + SH * (OH - 1) + 1, SH), slice(j, j + SW * (OW - 1) + 1, SW)
            col[:, i, j] = x_padded[:, :, rows, columns]
    return col


def col2im(col, x_shape, SH, SW, PH, PW):
    """The adjoint of im2col: add every column back onto the pixels it was copied from.

    col (C, KH, KW, N, OH, OW) -> x (N, C, H, W). Where windows overlap (stride < kernel) a pixel
    collects one contribution from every window that contains it; the padding's share is dropped.
    """
    xp = get_array_module(col)
    N, C, H, W = x_shape
    _, KH, KW, _, OH, OW = col.shape
    grad_padded = xp.zeros((C, N, H + 2 * PH, W + 2 * PW), dtype=col.dtype)
    for i in range(KH):
        for j in range(KW):
            rows, columns = slice(i, i + SH * (OH - 1) + 1, SH), slice(j, j + SW * (OW - 1) + 1, SW)
            grad_padded[:, :, rows, columns] += col[:, i, j]
    return grad_padded[:, :, PH:PH + H, PW:PW + W].transpose(1, 0, 2, 3)


def matmul(a, b):
    """a @ b, one product per leading index (the groups): NumPy's or CuPy's matrix library."""
    return get_array_module(a).matmul(a, b)


class Conv2d(Function):
    # The three steps are looked up on the class, so that a fast path can swap one of them (our
    # CUDA kernels, products on a thread per core) and keep the algorithm of this page.
    im2col, col2im, matmul = staticmethod(im2col), staticmethod(col2im), staticmethod(matmul)

    def __init__(self, stride, padding, groups):
        self.SH, self.SW = stride
        self.PH, self.PW = padding
        self.G = groups

    def forward(self, x, w, b=None):
        xp = get_array_module(x)
        N, C, H, W = x.shape
        F, CG, KH, KW = w.shape
        G = self.G
        OH, OW = output_size(H, KH, self.SH, self.PH), output_size(W, KW, self.SW, self.PW)
        col = self.im2col(x, KH, KW, self.SH, self.SW, self.PH, self.PW)
        self.col = col.reshape(G, CG * KH * KW, N * OH * OW)  # (G, CG KH KW, P): for grad_w
        self.w = w                                            # (F, CG, KH, KW): for grad_x
        self.x_shape = x.shape
        w_g = w.reshape(G, F // G, CG * KH * KW)
        y = self.matmul(w_g, self.col).reshape(F, N, OH, OW)  # (G, FG, P): one GEMM per group
        if b is not None:
            y += b.reshape(F, 1, 1, 1)
        return xp.ascontiguousarray(y.transpose(1, 0, 2, 3))  # (N, F, OH, OW)

    # Backward. With y_g = w_g @ col_g (one GEMM per group) and gy_g = dL/dy_g of shape (FG, P):
    #   dL/dw_g   = gy_g @ col_g^T         (FG, CG KH KW)   every window weighted by its gradient
    #   dL/dcol_g = w_g^T @ gy_g           (CG KH KW, P)    then col2im sums the columns back
    #   dL/db[f]  = sum over n, oh, ow of gy[n, f, oh, ow]
    def backward(self, gy):
        xp = get_array_module(gy)
        N, F, OH, OW = gy.shape
        G = self.G
        _, CG, KH, KW = self.w.shape
        gy_g = xp.ascontiguousarray(gy.transpose(1, 0, 2, 3)).reshape(G, F // G, N * OH * OW)
        grad_x = grad_w = grad_b = None
        if self.needs_grad[0]:
            w_g = self.w.reshape(G, F // G, CG * KH * KW)
            grad_col = self.matmul(w_g.transpose(0, 2, 1), gy_g)  # (G, CG KH KW, P)
            grad_col = grad_col.reshape(G * CG, KH, KW, N, OH, OW)
            grad_x = self.col2im(grad_col, self.x_shape, self.SH, self.SW, self.PH, self.PW)
            grad_x = xp.ascontiguousarray(grad_x)
        if self.needs_grad[1]:
            grad_w = self.matmul(gy_g, self.col.transpose(0, 2, 1))  # (G, FG, CG KH KW)
            grad_w = grad_w.reshape(self.w.shape)
        if len(self.needs_grad) > 2 and self.needs_grad[2]:
            grad_b = gy.sum(axis=(0, 2, 3))
        return grad_x, grad_w, grad_b


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _pair(value, name):
    """(int, int) from an int or a pair of ints (not bools: stride=True is no stride)."""
    pair = (value, value) if _is_int(value) else value
    if not isinstance(pair, (tuple, list)) or len(pair) != 2 or not all(map(_is_int, pair)):
        raise TypeError(f"conv2d: {name} must be an int or a pair of ints; got {value!r}")
    return int(pair[0]), int(pair[1])


def conv2d(x, weight, bias=None, stride=1, padding=0, groups=1):
    """y = conv2d(x, weight, bias): x (N, C, H, W), weight (F, C / groups, KH, KW), bias (F,).

    Returns (N, F, OH, OW). `stride` and `padding` are an int or a pair (height, width).
    """
    stride, padding = _pair(stride, "stride"), _pair(padding, "padding")
    if x.ndim != 4:
        raise ValueError(f"conv2d: input must be 4-D (N, C, H, W); got shape {tuple(x.shape)}")
    if weight.ndim != 4:
        raise ValueError(f"conv2d: weight must be 4-D (F, C/groups, KH, KW); got shape "
                         f"{tuple(weight.shape)}")
    if min(stride) < 1 or min(padding) < 0:
        raise ValueError(f"conv2d: stride must be >= 1 and padding >= 0; got stride {stride}, "
                         f"padding {padding}")
    if not _is_int(groups) or groups < 1:
        raise ValueError(f"conv2d: groups must be a positive int; got {groups!r}")
    N, C, H, W = x.shape
    F, CG, KH, KW = weight.shape
    if F % groups:
        raise ValueError(f"conv2d: out_channels {F} (weight shape {tuple(weight.shape)}) is not "
                         f"divisible by groups={groups}")
    if C != CG * groups:
        raise ValueError(f"conv2d: input has {C} channels (shape {tuple(x.shape)}), but weight "
                         f"{tuple(weight.shape)} with groups={groups} expects {CG * groups} "
                         f"(= {CG} x {groups})")
    if KH > H + 2 * padding[0] or KW > W + 2 * padding[1]:
        raise ValueError(f"conv2d: kernel {KH}x{KW} does not fit the padded input "
                         f"{H + 2 * padding[0]}x{W + 2 * padding[1]} (input {H}x{W}, padding "
                         f"{padding}); it needs a larger input or more padding")
    if bias is not None and tuple(bias.shape) != (F,):
        raise ValueError(f"conv2d: bias must have shape ({F},), one per filter; got "
                         f"{tuple(bias.shape)}")
    function = Conv2d(stride, padding, int(groups))
    return function(x, weight) if bias is None else function(x, weight, bias)
