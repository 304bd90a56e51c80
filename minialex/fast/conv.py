"""im2col convolution and the fully connected layer on the CPU: im2col split by phases, and
every product cut over a thread per core with BLAS on one thread each (threads.matmul).

Stands in for the reference Conv2d (functions/conv.py) where Winograd does not apply (AlexNet's
conv1, stride 4), and for Linear (functions/linear.py, fc6 to fc8): the same algorithm, with
the class's `im2col`, `col2im` and `matmul` swapped. What it buys (benchmarks/bench_alexnet.py,
`seed` at batch 32 on 2 cores, switched on after winograd, pool, elementwise and sgd): the step
went from 919 to 817 ms, 1.12x, though conv1 itself stayed at 116 ms. The gain is in the passes
on our threads (the optimizer 52 -> 40 ms, conv2's Winograd 205 -> 160), which no longer lose a
core to BLAS's threads spinning after conv1's and the fully connected layers' products.

im2col by phases. With stride S > 1 a window offset i reads every S-th row, a slow strided
gather. So the padded input is first split by phase: row h = S a + r goes to phase r, row a.
Offset i then reads phase i % S from row i // S on, as one unit-stride block (conv1, stride 4:
one extra pass over x makes each of the 121 copies a plain copy of rows; conv1's im2col at
batch 32 took 42-52 ms instead of 54-78).

Notation as in functions/conv.py; AH, AW: rows and columns per phase.
"""
import numpy as np

from .. import dispatch
from ..functions.conv import Conv2d, output_size
from ..functions.linear import Linear
from . import threads


def _phase_shape(OH, OW, KH, KW, SH, SW):
    """Rows and columns per phase: window offset i reads phase i % SH from row i // SH on."""
    return OH + (KH - 1) // SH, OW + (KW - 1) // SW


def im2col_by_phases(x, KH, KW, SH, SW, PH, PW):
    """As functions/conv.py's im2col: x (N, C, H, W) -> col (C, KH, KW, N, OH, OW)."""
    N, C, H, W = x.shape
    OH, OW = output_size(H, KH, SH, PH), output_size(W, KW, SW, PW)
    AH, AW = _phase_shape(OH, OW, KH, KW, SH, SW)
    # (C, N, SH AH, SW AW): channel-major, padded, and cut or extended to whole phases; rows
    # that no window reads are dropped, and missing ones are zeros like the padding
    x_padded = np.zeros((C, N, SH * AH, SW * AW), dtype=x.dtype)
    rows, columns = min(H, SH * AH - PH), min(W, SW * AW - PW)
    x_padded[:, :, PH:PH + rows, PW:PW + columns] = x[:, :, :rows, :columns].transpose(1, 0, 2, 3)
    # (C, SH, SW, N, AH, AW): the phases; a view with no copy when the stride is 1
    phases = np.ascontiguousarray(
        x_padded.reshape(C, N, AH, SH, AW, SW).transpose(0, 3, 5, 1, 2, 4))
    col = np.empty((C, KH, KW, N, OH, OW), dtype=x.dtype)
    for i in range(KH):
        for j in range(KW):
            a, b = i // SH, j // SW
            col[:, i, j] = phases[:, i % SH, j % SW, :, a:a + OH, b:b + OW]
    return col


def col2im_by_phases(col, x_shape, SH, SW, PH, PW):
    """As functions/conv.py's col2im: the sums go into the phases of im2col_by_phases, which
    are then put back in place."""
    N, C, H, W = x_shape
    _, KH, KW, _, OH, OW = col.shape
    AH, AW = _phase_shape(OH, OW, KH, KW, SH, SW)
    phases = np.zeros((C, SH, SW, N, AH, AW), dtype=col.dtype)
    for i in range(KH):
        for j in range(KW):
            a, b = i // SH, j // SW
            phases[:, i % SH, j % SW, :, a:a + OH, b:b + OW] += col[:, i, j]
    # (N, C, H, W): back from phases to rows and columns, then the padding cut away; pixels no
    # window reached get zero
    x_padded = phases.transpose(3, 0, 4, 1, 5, 2).reshape(N, C, SH * AH, SW * AW)
    grad_x = np.zeros(x_shape, dtype=col.dtype)
    rows, columns = min(H, SH * AH - PH), min(W, SW * AW - PW)
    grad_x[:, :, :rows, :columns] = x_padded[:, :, PH:PH + rows, PW:PW + columns]
    return grad_x


class Conv2dOnThreads(Conv2d):
    im2col, col2im = staticmethod(im2col_by_phases), staticmethod(col2im_by_phases)
    matmul = staticmethod(threads.matmul)


class LinearOnThreads(Linear):
    matmul = staticmethod(threads.matmul)


@dispatch.register(Conv2d, "cpu", "gemm", "conv2d by im2col (conv1) and linear (fc6-fc8)")
def _conv_on_threads(conv, *arrays):
    return dispatch.same_settings(Conv2dOnThreads, conv)


@dispatch.register(Linear, "cpu", "gemm", "conv2d by im2col (conv1) and linear (fc6-fc8)")
def _linear_on_threads(linear, *arrays):
    return dispatch.same_settings(LinearOnThreads, linear)
