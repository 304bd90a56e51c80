"""Winograd convolution: the same stride-1 convolution as functions/conv.py (the reference it
stands in for, on the CPU) with fewer multiplications.

Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (2015), after Winograd (1980).
Notation as in conv.py (N C H W, F G CG FG, PH PW, OH OW), and:
    r           kernel size (KH = KW = r)
    m           output tile: each tile of m x m outputs is computed at once
    a           input tile: a = m + r - 1 (the tiles overlap by r - 1)
    TH, TW      tiles per image: TH = ceil(OH / m);  P = N TH TW tiles in the batch
    AT, G, BT   the transforms, (m, a), (a, r) and (a, a) (`transforms`)

In one dimension, m outputs of a correlation with an r-tap filter g are

    y = AT [(G g) * (BT d)]        d: the a inputs the m windows cover;  * elementwise

a products instead of m r: both are polynomial products evaluated at a points and interpolated
(Toom-Cook). In two dimensions the transforms act on rows and columns of each tile,

    Y = AT [ sum_c (G g_c GT) * (BT d_c B) ] A          (m, m) from (a, a) tiles,

and the sum over input channels, for each of the a^2 points, is a matrix product of
U (FG, CG) = transformed filters with V (CG, P) = transformed input tiles. F(5x5, 3x3) takes 49
products per 25 outputs where direct convolution takes 225 (WINOGRAD_TILES: AlexNet's tiles).
The transforms are cheap (products with small constant matrices, `_both_sides`) but move memory,
and their rounding grows with a: in float32 the error stays within 1e-5 of the output's scale
for a <= 8 (tests/test_winograd.py).

Backward is the adjoint of each step, in reverse order: with dM = A dY AT (per tile),
dU = dM @ VT gives the filters' gradient through GT dU G, and dV = UT @ dM gives the input's
through B dV BT, whose overlapping tiles add up. All of it is exact in exact arithmetic, so a
float64 gradient check holds to 1e-10 like the direct path's.

The fast path "winograd" (dispatch.py) stands in for Conv2d on the CPU for stride-1 square
kernels with a tile in WINOGRAD_TILES (AlexNet's conv2 to conv5); im2col stays the reference, and
the path for everything else. What it buys (benchmarks/bench_alexnet.py, `seed` at batch 32 on
2 cores, the reference alone against the reference with this path): conv2 to conv5 took 1,495 ms
of the training step (forward and backward) by im2col and 678 ms by Winograd; the step went from
2,056 to 1,517 ms, 1.36x. The README's table "What each fast path buys" has the whole run.
"""
import functools

import numpy as np

from .. import dispatch
from ..backend import get_array_module
from ..functions.conv import Conv2d
from ..tensor import Function
from . import threads

# Output tile m for a kernel size r. What counts is the products per output, a^2 / m^2, times
# the outputs computed past the map's edge. AlexNet's 13 x 13 maps with 3x3 kernels: m = 5
# (3 tiles cover 15) does 441 products per image and channel pair where direct convolution does
# 1,521, m = 4 (4 tiles cover 16) 576, m = 7 (2 tiles cover 14) 324 but with 1e-4 rounding.
# conv2's 27 x 27 with 5x5: m = 4 (7 tiles cover 28) does 3,136, m = 3 (9 tiles, exact) 3,969,
# direct 18,225. On 2 cores (fwd + bwd, batch 32) conv4 took 150 ms with m = 5, 171 with m = 4;
# conv2 214 with m = 4, 237 with m = 3.
WINOGRAD_TILES = {3: 5, 5: 4}

# Interpolation points; infinity is always the last one. Small integers and halves keep the
# transforms' entries small, which keeps float32 rounding small.
POINTS = (0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5, 3.0, -3.0)


@functools.lru_cache(maxsize=None)
def transforms(m, r):
    """AT (m, a), G (a, r), BT (a, a) of F(m, r), in float64, a = m + r - 1.

    Evaluating a polynomial of n coefficients at the points is the (a, n) matrix
    E_n = [p^0 p^1 ... p^(n-1)] per finite point p, and [0 ... 0 1] (the leading coefficient)
    at infinity. A linear convolution g (r) with h (m) is then s = inv(E_a) [(E_r g) * (E_m h)],
    and a correlation, its transpose in h, is y = E_m^T [(E_r g) * (inv(E_a)^T d)]:
    AT = E_m^T, G = E_r, BT = inv(E_a)^T. Row k of BT is scaled by prod_{l != k} (p_k - p_l)
    and row k of G divided by it (Lavin's form), which makes BT integral.
    """
    a = m + r - 1
    if not 2 <= a <= len(POINTS) + 1:
        raise ValueError(f"winograd: F({m}, {r}) needs {a} points; at most "
                         f"{len(POINTS) + 1} are defined")
    points = POINTS[:a - 1]

    def evaluation(n):
        finite = [[p ** j for j in range(n)] for p in points]
        return np.array(finite + [[0.0] * (n - 1) + [1.0]])

    scale = np.array([np.prod([p - q for q in points if q != p]) for p in points] + [1.0])
    AT = evaluation(m).T
    G = evaluation(r) / scale[:, None]
    BT = np.linalg.inv(evaluation(a)).T * scale[:, None]
    return AT, G, BT


def _both_sides(L, X):
    """L X LT for every trailing index: X (k, k, Q) -> (l, l, Q), with L (l, k).

    One matrix product with the Kronecker product, (l^2, k^2) @ (k^2, Q). Two products with L
    (rows, then columns) do fewer multiply-adds but measured no faster: both wait on memory.
    """
    k, _, Q = X.shape
    return threads.matmul(np.kron(L, L), X.reshape(k * k, Q)).reshape(len(L), len(L), Q)


class WinogradConv2d(Function):
    # Images per block are chosen so that the products M of a block take about this much:
    # the a^2 / m^2 times larger Winograd domain then never holds the whole batch (conv2 at
    # batch 128 would need 0.5 GB for M alone), and a block's arrays stay near the cache.
    BLOCK_BYTES = 32 << 20

    def __init__(self, padding, groups, tile):
        self.PH, self.PW = padding
        self.G = groups
        self.m = tile

    def _transforms(self, r, dtype):
        return tuple(t.astype(dtype) for t in transforms(self.m, r))

    def forward(self, x, w, b=None):
        xp = get_array_module(x)
        N, C, H, W = x.shape
        F, CG, r, _ = w.shape
        m, a = self.m, self.m + r - 1
        OH, OW = H + 2 * self.PH - r + 1, W + 2 * self.PW - r + 1
        TH, TW = -(-OH // m), -(-OW // m)
        self.x_shape, self.tiles_shape, self.r = x.shape, (TH, TW), r
        Gr = self._transforms(r, x.dtype)[1]
        U = threads.matmul(np.kron(Gr, Gr), w.reshape(F * CG, r * r).T)
        U = U.reshape(a * a, self.G, F // self.G, CG)
        self.U = U  # (a^2, G, FG, CG): the filters, transformed
        most = max(1, self.BLOCK_BYTES // (a * a * F * TH * TW * x.dtype.itemsize))
        step = -(-N // -(-N // most))  # blocks of equal size: 32 images in 4 x 8, not 3 x 10 + 2
        self.blocks = [slice(n, n + step) for n in range(0, N, step)]
        y = xp.empty((N, F, OH, OW), dtype=x.dtype)
        self.V = [None] * len(self.blocks)  # per block (a^2, G, CG, P): for backward
        for index, block in enumerate(self.blocks):
            self.V[index] = self._forward_images(x[block], U, r, b, y[block])
        return y

    def _forward_images(self, x, U, r, b, y):
        """y (N, F, OH, OW) of a block of N images, written into y; returns their transformed
        tiles V."""
        xp = get_array_module(x)
        N, C, H, W = x.shape
        a2, G, FG, CG = U.shape
        F, m, a, (TH, TW) = G * FG, self.m, self.m + r - 1, self.tiles_shape
        AT, _, BT = self._transforms(r, x.dtype)
        P = TH * TW * N  # tiles in the block, ordered (t, u, n)
        # The input is padded as (C, rows, columns, N), zero past the last tile. With the batch
        # last, the copies move runs of N values, not of the 3 tiles in a row of a 13 x 13 map,
        # which are slow to copy (conv4 forward and backward: 28 ms of copies instead of 39).
        # Tile (t, u) is x_padded[:, t m : t m + a, u m : u m + a]; element (i, j) of every tile
        # is one strided slice. Padding and gathering go a few channels at a time (near the
        # cache), on threads.
        tiles = xp.empty((a, a, C, TH, TW, N), dtype=x.dtype)
        padded_shape = (TH * m + r - 1, TW * m + r - 1, N)
        step = _channels_in_cache(padded_shape, x.dtype)
        threads.run_in_threads(self._pad_and_gather, [
            (x[:, c:c + step], tiles[:, :, c:c + step], padded_shape) for c in range(0, C, step)])
        V = _both_sides(BT, tiles.reshape(a, a, C * P)).reshape(a2, G, CG, P)
        M = threads.matmul(U, V)                                    # (a^2, G, FG, P)
        Y = _both_sides(AT, M.reshape(a, a, F * P))                 # (m, m, F P)
        Y = Y.reshape(m, m, F, TH, TW, N)
        # Back to (N, F, OH, OW), the bias added in the same pass, a few filters at a time
        step = _channels_in_cache((m * TH, m * TW, N), x.dtype)
        threads.run_in_threads(_place_outputs, [
            (Y[:, :, f:f + step], None if b is None else b[f:f + step], y[:, f:f + step])
            for f in range(0, F, step)])
        return V

    def _pad_and_gather(self, x, tiles, padded_shape):
        """tiles (a, a, C, TH, TW, N) of the images x (N, C, H, W) of a few channels."""
        N, C, H, W = x.shape
        x_padded = np.zeros((C, *padded_shape), dtype=x.dtype)
        x_padded[:, self.PH:self.PH + H, self.PW:self.PW + W] = x.transpose(1, 2, 3, 0)
        _gather_tiles(x_padded, tiles, self.m)

    def backward(self, gy):
        xp = get_array_module(gy)
        N, F, OH, OW = gy.shape
        a2, G, FG, CG = self.U.shape
        r = self.r
        grad_x = xp.empty(self.x_shape, dtype=gy.dtype) if self.needs_grad[0] else None
        dU = xp.zeros(self.U.shape, dtype=gy.dtype) if self.needs_grad[1] else None
        for block, V in zip(self.blocks, self.V):
            grad_x_block = self._backward_images(gy[block], V, dU, r)
            if grad_x is not None:
                grad_x[block] = grad_x_block
        grad_w = grad_b = None
        if dU is not None:  # back from the a x a points to r x r taps: GT dU G
            Gr = self._transforms(r, gy.dtype)[1]
            grad_w = threads.matmul(np.kron(Gr, Gr).T, dU.reshape(a2, F * CG))
            grad_w = grad_w.T.reshape(F, CG, r, r)
        if len(self.needs_grad) > 2 and self.needs_grad[2]:
            grad_b = gy.sum(axis=(0, 2, 3))
        return grad_x, grad_w, grad_b

    def _backward_images(self, gy, V, dU, r):
        """The gradient of a block's input (if needed); adds the block's part of dU."""
        xp = get_array_module(gy)
        N, F, OH, OW = gy.shape
        a2, G, FG, CG = self.U.shape
        C, m, a, (TH, TW) = G * CG, self.m, self.m + r - 1, self.tiles_shape
        AT, _, BT = self._transforms(r, gy.dtype)
        P = TH * TW * N
        # dY as tiles (m, m, F, TH, TW, N), zero past the outputs, then dM = A dY AT per tile
        gy_tiled = xp.zeros((N, F, TH * m, TW * m), dtype=gy.dtype)
        gy_tiled[:, :, :OH, :OW] = gy
        gy_tiles = xp.ascontiguousarray(
            gy_tiled.reshape(N, F, TH, m, TW, m).transpose(3, 5, 1, 2, 4, 0))
        dM = _both_sides(AT.T, gy_tiles.reshape(m, m, F * P)).reshape(a2, G, FG, P)
        if dU is not None:
            dU += threads.matmul(dM, V.transpose(0, 1, 3, 2))  # (a^2, G, FG, CG)
        if not self.needs_grad[0]:
            return None
        dV = threads.matmul(self.U.transpose(0, 1, 3, 2), dM)  # (a^2, G, CG, P)
        grad_tiles = _both_sides(BT.T, dV.reshape(a, a, C * P)).reshape(a, a, C, TH, TW, N)
        # The tiles overlap by r - 1: each input pixel collects from every tile it is in
        H, W = self.x_shape[2:]
        grad_padded = xp.zeros((C, TH * m + r - 1, TW * m + r - 1, N), dtype=gy.dtype)
        step = _channels_in_cache(grad_padded.shape[1:], gy.dtype)  # no two threads add to one
        threads.run_in_threads(_add_tiles, [(grad_padded[c:c + step],
                                             grad_tiles[:, :, c:c + step], m)
                                            for c in range(0, C, step)])
        return grad_padded[:, self.PH:self.PH + H, self.PW:self.PW + W].transpose(3, 0, 1, 2)


# Channels per piece of the tile gather and its adjoint: about this many bytes of the padded
# input, near the cache, and enough work per piece for the threads (smaller pieces measured
# slower on 2 cores).
CHANNEL_BLOCK_BYTES = 2 << 20


def _channels_in_cache(shape, dtype):
    """How many channels of arrays (C, *shape) take about CHANNEL_BLOCK_BYTES."""
    return max(1, CHANNEL_BLOCK_BYTES // (int(np.prod(shape)) * np.dtype(dtype).itemsize))


def _place_outputs(Y, b, y):
    """y[n, f, t m + i, u m + j] = Y[i, j, f, t, u, n] + b[f], cut to y's (OH, OW)."""
    m, _, F, TH, TW, N = Y.shape
    OH, OW = y.shape[2:]
    whole = np.empty((N, F, TH * m, TW * m), dtype=Y.dtype)
    whole.reshape(N, F, TH, m, TW, m)[...] = Y.transpose(5, 2, 3, 0, 4, 1)
    np.add(whole[:, :, :OH, :OW], 0 if b is None else b.reshape(F, 1, 1), out=y)


def _gather_tiles(x_padded, tiles, m):
    """tiles[i, j, c, t, u, n] = x_padded[c, t m + i, u m + j, n]: (a, a, C, TH, TW, N)."""
    a, _, _, TH, TW, _ = tiles.shape
    for i in range(a):
        for j in range(a):
            tiles[i, j] = x_padded[:, i:i + m * TH:m, j:j + m * TW:m]


def _add_tiles(grad_padded, grad_tiles, m):
    """The adjoint of _gather_tiles: every tile added back in its place (they overlap)."""
    a, _, _, TH, TW, _ = grad_tiles.shape
    for i in range(a):
        for j in range(a):
            grad_padded[:, i:i + m * TH:m, j:j + m * TW:m] += grad_tiles[i, j]


@dispatch.register(Conv2d, "cpu", "winograd", "conv2d with stride-1 3x3 and 5x5 kernels")
def _winograd_for(conv, x, w, b=None):
    F, CG, KH, KW = w.shape
    if len(x) == 0:  # an empty batch: im2col (the reference or gemm) gives the empty output
        return None
    if (conv.SH, conv.SW) == (1, 1) and KH == KW and KH in WINOGRAD_TILES:
        return WinogradConv2d((conv.PH, conv.PW), conv.G, WINOGRAD_TILES[KH])
    return None
