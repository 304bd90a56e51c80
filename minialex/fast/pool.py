"""Max pooling on the CPU: the max over rows of the max over columns, in cache-sized pieces on a
thread per core, and a backward that is one scatter-add.

Stands in for the reference MaxPool2d (functions/pool.py), which makes KH KW passes in forward
(one per window offset, each comparing and selecting) and KH KW masked adds in backward:

- The max of a window is the max over its rows of the max over its columns: first every row's
  KW-wide maxima, then KH of those rows. 2 (KH + KW) passes over the data instead of 2 KH KW.
- The batch is cut into pieces of about PIECE_BYTES, done on a thread per core, so that the
  passes of a piece run in cache (pool1 forward at batch 32: 37 -> 21 ms on 2 cores).
- Forward keeps, for every window, the flat index of its max in x; backward then adds each
  window's gradient there in one scatter-add (numpy.add.at), instead of masked strided adds
  (about 40 -> 8 ms at pool1, batch 32).

What the whole path buys (benchmarks/bench_alexnet.py, `seed` at batch 32 on 2 cores, switched
on after winograd): the three max-pools took 408 ms of the training step in the reference and
55 ms here; the step went from 1,517 to 1,061 ms, 1.43x (README, "What each fast path buys").
"""
import numpy as np

from .. import dispatch
from ..functions.pool import MaxPool2d
from . import threads

PIECE_BYTES = 2 << 20  # images per piece of the forward: about this much of the padded input


class MaxPool2dOnThreads(MaxPool2d):
    def forward(self, x):
        N, C, H, W = x.shape
        x_padded, OH, OW = self._padded(x, -np.inf)
        self.input_shape = x.shape
        y = np.empty((N, C, OH, OW), dtype=x.dtype)
        self.argmax_index = np.empty((N, C, OH, OW), dtype=np.int64)  # where each max is in x
        step = max(1, PIECE_BYTES // x_padded[0].nbytes)
        threads.run_in_threads(self._forward_images, [
            (x_padded[n:n + step], y[n:n + step], self.argmax_index[n:n + step], n)
            for n in range(0, N, step)])
        return y

    def _forward_images(self, x_padded, y, argmax_index, first_image):
        """y and argmax_index of the images first_image, ... of the batch, given x_padded."""
        (KH, KW), (SH, SW) = self.kernel_size, self.stride
        OH, OW = y.shape[2:]
        rows = SH * (OH - 1) + KH
        colmax, col_argmax = _max_along(
            [x_padded[:, :, :rows, dj:dj + SW * (OW - 1) + 1:SW] for dj in range(KW)])
        y[...], row_argmax = _max_along(
            [colmax[:, :, di:di + SH * (OH - 1) + 1:SH] for di in range(KH)])
        # row_argmax (n, C, OH, OW): the window's first row di holding its max; col_argmax
        # (n, C, rows, OW): in row di, the first column dj holding it. Together: the first max
        # in row-major order, as in the reference and PyTorch.
        argmax_index[...] = self._index_in_x(row_argmax, col_argmax, first_image)

    def _index_in_x(self, row_argmax, col_argmax, first_image):
        """The flat index into x (N, C, H, W) of each window's max, or -1 where it is in the
        padding (only when all of a window's pixels are -inf)."""
        _, C, H, W = self.input_shape
        (SH, SW), (PH, PW) = self.stride, self.padding
        OH, OW = row_argmax.shape[2:]
        column = np.zeros(row_argmax.shape, dtype=col_argmax.dtype)  # dj of the max
        for di in range(self.kernel_size[0]):
            column += (row_argmax == di) * col_argmax[:, :, di:di + SH * (OH - 1) + 1:SH]
        top = (np.arange(OH) * SH - PH).reshape(OH, 1)  # each window's first row in x
        left = np.arange(OW) * SW - PW                    # and first column
        index = row_argmax.astype(np.int64)               # (n, C, OH, OW) flat index in x
        index *= W
        index += column
        index += top * W + left
        n = row_argmax.shape[0]
        index += ((first_image * C + np.arange(n * C)) * (H * W)).reshape(n, C, 1, 1)
        if PH or PW or self.ceil_mode:
            h, w = row_argmax + top, column + left
            index[(h < 0) | (h >= H) | (w < 0) | (w >= W)] = -1
        return index

    def backward(self, gy):
        N, C, H, W = self.input_shape
        index, gy = self.argmax_index.ravel(), gy.ravel()
        if self.padding != (0, 0) or self.ceil_mode:  # a max in the padding sends nothing
            inside = index >= 0
            index, gy = index[inside], gy[inside]
        gx = np.zeros(N * C * H * W, dtype=gy.dtype)
        np.add.at(gx, index, gy)  # windows overlap: repeated indices must accumulate
        return gx.reshape(N, C, H, W)


def _max_along(slices):
    """The elementwise max of equally shaped arrays, and the index of the first array holding
    it (uint8 when there are at most 256). Counting the arrays before the first max is several
    times faster than argmax over a stacked axis, and builds no stack."""
    maximum = slices[0].copy()
    for s in slices[1:]:
        np.maximum(maximum, s, out=maximum)
    first = np.zeros(maximum.shape, dtype=np.min_scalar_type(len(slices) - 1))
    max_seen = np.zeros(maximum.shape, dtype=bool)
    for s in slices[:-1]:
        max_seen |= s == maximum
        first += ~max_seen
    if np.isnan(maximum).any():  # a NaN equals nothing: the last NaN, as in the reference
        for index, s in enumerate(slices):
            first[np.isnan(s)] = index
    return maximum, first


@dispatch.register(MaxPool2d, "cpu", "pool", "max_pool2d")
def _pool_on_threads(pool, x):
    if len(x) == 0:  # an empty batch: the reference gives the empty output and gradient
        return None
    return dispatch.same_settings(MaxPool2dOnThreads, pool)
