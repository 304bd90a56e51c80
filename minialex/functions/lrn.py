"""Local response normalization across channels (Krizhevsky et al. 2012, §3.3).

Notation:

    N, C, H, W      batch, channels, height, width          x, y:  (N, C, H, W)
    size            how many neighbouring channels a window spans (the paper's n)
    before, after   the window of channel c is channels c - before .. c + after, clipped to
                    [0, C-1]: before = size // 2, after = (size - 1) // 2 (as PyTorch, which
                    pads size // 2 channels before and (size - 1) // 2 after; for an even size
                    the window has one channel more before c than after it)
    g, gx           dL/dy and dL/dx

The formula (PyTorch's convention, which this module follows):

    S[c]     = sum over j in window(c) of x[j]^2              (per n, h, w)
    scale[c] = k + (alpha / size) S[c]
    y[c]     = x[c] scale[c]^(-beta)

A strongly active channel damps its neighbours at the same pixel: "a form of lateral inhibition
inspired by the type found in real neurons, creating competition for big activities amongst
neuron outputs computed using different kernels" (§3.3). The paper applies it after the ReLU of
conv1 and conv2. Its own formula multiplies the sum by alpha, not alpha / n:

    b[c] = a[c] / (k + alpha sum_{j = max(0, c - n/2)}^{min(C-1, c + n/2)} a[j]^2) ^ beta,
    paper: k = 2, n = 5, alpha = 1e-4, beta = 0.75

Conventions differ, and a user will meet all of them:

    | implementation                        | the sum is multiplied by | default k            |
    |---------------------------------------|--------------------------|----------------------|
    | the paper, Chainer                    | alpha                    | 2                    |
    | PyTorch, Caffe, ONNX, cuda-convnet2   | alpha / n                | 1 (cuda-convnet2: 2) |

So the paper's layer is local_response_norm(x, 5, alpha=5e-4, beta=0.75, k=2) here (alpha
5 x 1e-4, because the sum is divided by size = 5). Caffe's reference AlexNet (alpha 1e-4, k 1,
divided by n) is not the paper's formula.
"""
import numpy as np

from ..backend import get_array_module
from ..tensor import Function, Tensor


def window_sum(a, before, after):
    """s[:, c] = sum of a[:, j] for j from c - before to c + after, clipped to [0, C-1].

    One shifted add per neighbour (size - 1 of them), over all N, H, W and channels at once.
    """
    C = a.shape[1]
    s = a.copy()
    for offset in range(1, min(after, C - 1) + 1):     # neighbours above: j = c + offset
        s[:, :C - offset] += a[:, offset:]
    for offset in range(1, min(before, C - 1) + 1):    # neighbours below: j = c - offset
        s[:, offset:] += a[:, :C - offset]
    return s


class LocalResponseNorm(Function):
    """y[c] = x[c] (k + alpha/size sum_{j in window(c)} x[j]^2)^(-beta), across channels."""

    def __init__(self, size, alpha, beta, k):
        self.size = size
        # Python floats, so that a float32 input stays float32 (a NumPy float64 would not).
        self.alpha, self.beta, self.k = float(alpha), float(beta), float(k)
        self.before, self.after = size // 2, (size - 1) // 2

    def forward(self, x):
        scale = window_sum(x * x, self.before, self.after)  # S: (N, C, H, W)
        scale *= self.alpha / self.size                    # in place: this array is large
        scale += self.k
        scale_pow = negative_power(scale, self.beta)
        self.x = x                  # (N, C, H, W)
        self.scale = scale          # (N, C, H, W): k + alpha/size S
        self.scale_pow = scale_pow  # (N, C, H, W): scale^(-beta)
        return x * scale_pow

    # y[c] = x[c] scale[c]^(-beta), and scale[c] depends on x[j] for every j in window(c):
    #     d scale[c] / d x[j] = (2 alpha / size) x[j]                  (j in window(c))
    #     d y[c] / d x[j]     = delta_cj scale[c]^(-beta)
    #                           - (2 beta alpha / size) x[c] x[j] scale[c]^(-beta-1)
    # Summing over the outputs c that x[j] reaches:
    #     gx[j] = g[j] scale[j]^(-beta)
    #             - (2 beta alpha / size) x[j] sum_{c : j in window(c)} g[c] x[c] scale[c]^(-beta-1)
    # j is in window(c) when c - before <= j <= c + after, i.e. j - after <= c <= j + before:
    # the "transposed" window has before and after swapped (they differ for an even size).
    def backward(self, g):
        x, scale, scale_pow = self.x, self.scale, self.scale_pow
        per_output = g * x          # g[c] x[c] scale[c]^(-beta-1), built in place
        per_output *= scale_pow
        per_output /= scale
        cross_term = window_sum(per_output, self.after, self.before)  # mirrored window
        cross_term *= x
        cross_term *= 2 * self.beta * self.alpha / self.size
        gx = g * scale_pow
        gx -= cross_term
        return gx


def negative_power(scale, beta):
    """scale ** -beta, for scale > 0. AlexNet's beta = 0.75 (the paper's and PyTorch's
    default) is computed as 1 / (sqrt(scale) sqrt(sqrt(scale))): square roots are vectorized
    and rounded correctly, and about three times faster than a general power on the CPU."""
    xp = get_array_module(scale)
    if beta != 0.75:
        return scale ** -beta
    result = xp.sqrt(scale)
    result *= xp.sqrt(result)          # scale^(1/2 + 1/4)
    return xp.reciprocal(result, out=result)


def local_response_norm(x, size, alpha=1e-4, beta=0.75, k=1.0):
    """Local response normalization across channels of a (N, C, H, W) tensor, as torch's
    local_response_norm (the sum of squares multiplied by alpha / size).

    The paper's layer (§3.3, k=2, n=5, alpha=1e-4 on the plain sum):
    local_response_norm(x, 5, alpha=5e-4, beta=0.75, k=2).
    """
    _check_arguments(x, size, alpha, k)
    return LocalResponseNorm(int(size), alpha, beta, k)(x)


def lrn_simple(x, size, alpha=1e-4, beta=0.75, k=1.0):
    """The same function from basic Tensor ops, for reading and for testing the fused one.

    The window sum is a matrix product: in_window[j, c] = 1 when channel j is in window(c),
    so S = squares @ in_window with the channels as the last axis. Backward comes for free
    from the basic ops (and costs a C x C matrix product instead of `size` shifted adds).
    """
    _check_arguments(x, size, alpha, k)
    xp = get_array_module(x.data)
    N, C, H, W = x.shape
    j = xp.arange(C)[:, None]   # contributing channel
    c = xp.arange(C)[None, :]   # output channel
    in_window = ((c - size // 2 <= j) & (j <= c + (size - 1) // 2)).astype(x.dtype)  # (C, C)

    squares = (x ** 2).transpose(0, 2, 3, 1).reshape(N * H * W, C)   # one row per pixel
    sum_of_squares = (squares @ Tensor(in_window)).reshape(N, H, W, C).transpose(0, 3, 1, 2)
    scale = sum_of_squares * (float(alpha) / size) + float(k)
    return x * scale ** -float(beta)


def _check_arguments(x, size, alpha, k):
    op = "local_response_norm"
    if x.ndim != 4:
        raise ValueError(f"{op}: input must be 4-D (N, C, H, W); got shape {tuple(x.shape)}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise TypeError(f"{op}: size must be an int; got {size!r}")
    if size < 1:
        raise ValueError(f"{op}: size (channels in a window) must be at least 1; got {size}")
    if not k > 0:
        raise ValueError(f"{op}: k must be positive, or the scale k + alpha/size S can be 0 "
                         f"(or negative) and its power undefined; got k={k}")
    if not alpha >= 0:
        raise ValueError(f"{op}: alpha must be non-negative, or the scale k + alpha/size S "
                         f"can be 0 (or negative); got alpha={alpha}")
