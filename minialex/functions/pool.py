"""Pooling: max pooling over (overlapping) windows, and adaptive average pooling.

Notation (the same names as conv.py and the kernels):

    N, C, H, W      batch, channels, input height and width      x:  (N, C, H, W)
    KH, KW          window (kernel) height and width
    SH, SW          stride: how far the window moves between outputs
    PH, PW          padding added on each side (with -inf for max pooling: never the max)
    OH, OW          output height and width                      y:  (N, C, OH, OW)
    gy, gx          dL/dy and dL/dx, the gradients backward receives and returns

Max pooling
-----------
    y[n, c, i, j] = max over (di, dj) in [0, KH) x [0, KW) of  xpad[n, c, i*SH + di, j*SW + dj]
    OH = floor((H + 2 PH - KH) / SH) + 1                       (ceil instead of floor in ceil_mode)

AlexNet (Krizhevsky et al. 2012, §3.4) pools with overlapping windows, 3x3 with stride 2: each
input pixel can sit in up to four windows. The paper reports 0.4% lower top-1 error than
non-overlapping 2x2 windows with stride 2, and a network a little harder to overfit.

The window is unrolled over its KH*KW offsets only: for the offset (di, dj) the values it sees,
across all N*C*OH*OW windows at once, are one strided slice of the padded input,
xpad[:, :, di : di + SH*(OH-1) + 1 : SH, dj : ...]. No loop ever runs over pixels.

Adaptive average pooling
------------------------
torchvision's AlexNet ends its convolutions with an average pool to a fixed 6x6 output, whatever
the input size. PyTorch splits the H rows into OH bins, bin i covering

    rows floor(i H / OH)  up to (not including)  ceil((i + 1) H / OH),

so bins may overlap when OH does not divide H. An average over bins is linear, so it is a matrix:
P_h (OH, H) holds 1/(bin size) on bin i's rows in row i, and

    y = P_h x P_w^T   (on the last two axes),      gx = P_h^T gy P_w.
"""
import numpy as np

from ..backend import get_array_module
from ..tensor import Function


def _pair(value, op, what):
    """(int, int) from an int or a pair of ints; a TypeError naming `op` otherwise."""
    pair = (value, value) if isinstance(value, (int, np.integer)) else value
    if (not isinstance(pair, (tuple, list)) or len(pair) != 2
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                       for v in pair)):
        raise TypeError(f"{op}: {what} must be an int or a pair of ints; got {value!r}")
    return int(pair[0]), int(pair[1])


def _check_4d(x, op):
    if x.ndim != 4:
        raise ValueError(f"{op}: input must be 4-D (N, C, H, W); got shape {tuple(x.shape)}")
    if x.shape[2] < 1 or x.shape[3] < 1:
        raise ValueError(f"{op}: input height and width must be at least 1; got shape "
                         f"{tuple(x.shape)}")


def pool_output_size(size, kernel, stride, padding, ceil_mode):
    """Outputs along one axis, as PyTorch counts them.

    In ceil mode a last, partial window is kept only if it starts inside the input or the left
    padding; a window starting in the right padding would see nothing but padding.
    """
    span = size + 2 * padding - kernel
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


# --------------------------------------------------------------------------------------------
# Max pooling

class MaxPool2d(Function):
    """y = the maximum of each KH x KW window of x, moving by (SH, SW), padded by (PH, PW)."""

    def __init__(self, kernel_size, stride, padding, ceil_mode):
        self.kernel_size = kernel_size  # (KH, KW)
        self.stride = stride            # (SH, SW)
        self.padding = padding          # (PH, PW)
        self.ceil_mode = ceil_mode

    def _padded(self, x, fill):
        """x with PH, PW of `fill` on each side, and more at the bottom and right where a ceil
        mode window runs past the padding: (N, C, (OH - 1) SH + KH, (OW - 1) SW + KW) or more."""
        xp = get_array_module(x)
        N, C, H, W = x.shape
        (KH, KW), (SH, SW), (PH, PW) = self.kernel_size, self.stride, self.padding
        OH = pool_output_size(H, KH, SH, PH, self.ceil_mode)
        OW = pool_output_size(W, KW, SW, PW, self.ceil_mode)
        bottom, right = max(PH, (OH - 1) * SH + KH - H - PH), max(PW, (OW - 1) * SW + KW - W - PW)
        padded = xp.full((N, C, H + PH + bottom, W + PW + right), fill, dtype=x.dtype)
        padded[:, :, PH:PH + H, PW:PW + W] = x
        return padded, OH, OW

    def _seen_at(self, di, dj, OH, OW):
        """The index of what every window sees at offset (di, dj): a strided slice."""
        SH, SW = self.stride
        return (slice(None), slice(None), slice(di, di + SH * (OH - 1) + 1, SH),
                slice(dj, dj + SW * (OW - 1) + 1, SW))

    def forward(self, x):
        xp = get_array_module(x)
        KH, KW = self.kernel_size
        x_padded, OH, OW = self._padded(x, -np.inf)  # padding is never the max
        self.input_shape = x.shape
        # One pass per window offset (di, dj): the pixel every window sees there is one
        # strided slice. A later offset wins only if strictly greater, so ties go to the first
        # max in row-major order, as in PyTorch; a NaN always wins, so that it shows.
        y = xp.full((x.shape[0], x.shape[1], OH, OW), -np.inf, dtype=x.dtype)
        self.argmax = xp.zeros(y.shape, dtype=np.min_scalar_type(KH * KW - 1))
        for di in range(KH):
            for dj in range(KW):
                seen = x_padded[self._seen_at(di, dj, OH, OW)]
                better = (seen > y) | (seen != seen)  # seen != seen: a NaN, which must show
                xp.copyto(y, seen, where=better)
                xp.copyto(self.argmax, di * KW + dj, where=better)
        # argmax (N, C, OH, OW): the offset di KW + dj of each window's max; all backward needs
        return y

    # y[i, j] = x[i*SH + di* - PH, j*SW + dj* - PW], with (di*, dj*) the argmax of window
    # (i, j), so
    #     dy[i, j] / dx[p, q] = 1 if x[p, q] is that pixel, else 0,
    #     gx[p, q] = sum of gy[i, j] over the windows (i, j) whose max is x[p, q].
    # Windows overlap, so one pixel can be the max of several: the gradients add up, one pass
    # per window offset as in forward. A max in the padding sends its gradient nowhere.
    def backward(self, gy):
        (KH, KW), (PH, PW) = self.kernel_size, self.padding
        N, C, H, W = self.input_shape
        OH, OW = gy.shape[2:]
        grad_padded, _, _ = self._padded(get_array_module(gy).zeros(self.input_shape, gy.dtype), 0)
        for di in range(KH):
            for dj in range(KW):
                seen = self._seen_at(di, dj, OH, OW)
                grad_padded[seen] += gy * (self.argmax == di * KW + dj)
        return grad_padded[:, :, PH:PH + H, PW:PW + W]


def max_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False):
    """Max pooling over KH x KW windows of a (N, C, H, W) tensor, as torch's max_pool2d.

    kernel_size, stride, padding: an int or a pair (height, width); stride defaults to
    kernel_size. Padding counts as -inf and is at most half the kernel. ceil_mode rounds the
    output size up, keeping a last partial window. AlexNet (§3.4): max_pool2d(x, 3, stride=2).
    """
    op = "max_pool2d"
    _check_4d(x, op)
    if x.dtype.kind != "f":
        raise TypeError(f"{op}: input must be floating point (padding is -inf); got dtype "
                        f"{x.dtype}")
    KH, KW = _pair(kernel_size, op, "kernel_size")
    SH, SW = (KH, KW) if stride is None else _pair(stride, op, "stride")
    PH, PW = _pair(padding, op, "padding")
    if KH < 1 or KW < 1:
        raise ValueError(f"{op}: kernel_size must be positive; got {KH}x{KW}")
    if SH < 1 or SW < 1:
        raise ValueError(f"{op}: stride must be positive; got {SH}x{SW}")
    if PH < 0 or PW < 0 or PH > KH // 2 or PW > KW // 2:
        raise ValueError(f"{op}: padding must be between 0 and half the kernel size "
                         f"({KH // 2}x{KW // 2} for a {KH}x{KW} kernel); got {PH}x{PW}")
    H, W = x.shape[2:]
    if KH > H + 2 * PH or KW > W + 2 * PW:
        # Also the only way to an empty output: a window that fits gives at least one.
        raise ValueError(f"{op}: window {KH}x{KW} does not fit the padded input "
                         f"{H + 2 * PH}x{W + 2 * PW} (input {H}x{W}, padding {PH}x{PW}), so "
                         f"the output would be empty; use a smaller kernel or a larger input")
    return MaxPool2d((KH, KW), (SH, SW), (PH, PW), bool(ceil_mode))(x)


# --------------------------------------------------------------------------------------------
# Adaptive average pooling

def adaptive_pool_matrix(xp, size, output_size, dtype):
    """The (output_size, size) matrix that averages PyTorch's adaptive bins along one axis.

    Row i is 1/(bin size) on bin i = [floor(i size / output_size), ceil((i+1) size / output_size)).
    """
    i = xp.arange(output_size)
    start = (i * size) // output_size
    end = -((-(i + 1) * size) // output_size)  # ceil division on integers
    position = xp.arange(size)
    in_bin = (position >= start[:, None]) & (position < end[:, None])  # (output_size, size)
    return in_bin.astype(dtype) / (end - start)[:, None].astype(dtype)


class AdaptiveAvgPool2d(Function):
    """y = the average of each of OH x OW bins of x: y = P_h x P_w^T on the last two axes."""

    def __init__(self, output_size):
        self.output_size = output_size  # (OH, OW)

    def forward(self, x):
        xp = get_array_module(x)
        H, W = x.shape[2:]
        OH, OW = self.output_size
        self.rows = adaptive_pool_matrix(xp, H, OH, x.dtype)     # (OH, H): P_h
        self.columns = adaptive_pool_matrix(xp, W, OW, x.dtype)  # (OW, W): P_w
        # (OH, H) @ (N, C, H, W) @ (W, OW): matmul broadcasts over N and C
        return self.rows @ x @ self.columns.T

    # y = P_h x P_w^T is linear in x; for each (n, c) slice, as for any product A X B,
    #     dL/dX = A^T (dL/dY) B^T,   so   gx = P_h^T gy P_w    (N, C, H, W).
    def backward(self, gy):
        return self.rows.T @ gy @ self.columns


def adaptive_avg_pool2d(x, output_size):
    """Average pooling to a fixed (OH, OW) output, with PyTorch's bins; as torch's
    adaptive_avg_pool2d. output_size: an int or a pair; None in the pair keeps that axis."""
    op = "adaptive_avg_pool2d"
    _check_4d(x, op)
    if x.dtype.kind != "f":
        raise TypeError(f"{op}: input must be floating point; got dtype {x.dtype}")
    if isinstance(output_size, (tuple, list)) and len(output_size) == 2:
        output_size = tuple(x.shape[2 + axis] if size is None else size
                            for axis, size in enumerate(output_size))
    OH, OW = _pair(output_size, op, "output_size")
    if OH < 1 or OW < 1:
        raise ValueError(f"{op}: output_size must be positive; got {OH}x{OW}")
    return AdaptiveAvgPool2d((OH, OW))(x)
