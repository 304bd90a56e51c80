"""The GPU's fast path: the reference ops on our CUDA kernels (kernels/*.cu, launched by cuda.py).

On a float32 CuPy array every op below stands in for its reference (dispatch.py, fast path
"cuda-kernels"). Convolution and the fully connected layer keep the reference algorithm and
swap its steps: im2col and col2im on kernels/im2col.cu, every product on our SGEMM
(kernels/sgemm.cu) instead of cuBLAS. Pooling, LRN, the loss, ReLU and dropout are one kernel
each way. Float64 CuPy arrays (gradient checks) and MINIALEX_FAST=0 run the reference on CuPy's
own functions. No GPU has measured what this buys yet (benchmarks/bench_kernels.py will).

Notation as in functions/conv.py and functions/pool.py.
"""
from . import cuda, dispatch
from .backend import get_array_module
from .functions.activation import ReLU
from .functions.conv import Conv2d
from .functions.dropout import Dropout
from .functions.linear import Linear
from .functions.loss import CrossEntropy
from .functions.lrn import LocalResponseNorm
from .functions.pool import MaxPool2d, pool_output_size
from .random import generator


def _as_stored(array):
    """(stored, transposed): a C-contiguous array and whether `array` is its transpose (the
    last two axes swapped), so that SGEMM reads it in place; a copy only if it is neither."""
    xp = get_array_module(array)
    if array.flags.c_contiguous:
        return array, False
    if array.swapaxes(-1, -2).flags.c_contiguous:
        return array.swapaxes(-1, -2), True
    return xp.ascontiguousarray(array), False


def matmul(a, b):
    """a @ b (2-D, or 3-D with one product per leading index) on our SGEMM kernel."""
    (a, trans_a), (b, trans_b) = _as_stored(a), _as_stored(b)
    if trans_a and trans_b:  # SGEMM has no tt layout: lay b out as it is read
        b, trans_b = get_array_module(b).ascontiguousarray(b.swapaxes(-1, -2)), False
    return cuda.sgemm(a, b, trans_a=trans_a, trans_b=trans_b)


class Conv2dOnKernels(Conv2d):
    im2col, col2im = staticmethod(cuda.im2col), staticmethod(cuda.col2im)
    matmul = staticmethod(matmul)


class LinearOnKernels(Linear):
    matmul = staticmethod(matmul)


class MaxPool2dOnKernels(MaxPool2d):
    """One thread per window forward; one per input pixel backward, gathering from the windows
    that hold it (kernels/pool.cu). argmax is the same uint8 window offset as the reference's."""

    def forward(self, x):
        N, C, H, W = x.shape
        (KH, KW), (SH, SW), (PH, PW) = self.kernel_size, self.stride, self.padding
        OH = pool_output_size(H, KH, SH, PH, self.ceil_mode)
        OW = pool_output_size(W, KW, SW, PW, self.ceil_mode)
        self.input_shape = x.shape
        y, self.argmax = cuda.maxpool_forward(x, KH, KW, SH, SW, PH, PW, OH, OW)
        return y

    def backward(self, gy):
        (KH, KW), (SH, SW), (PH, PW) = self.kernel_size, self.stride, self.padding
        return cuda.maxpool_backward(gy, self.argmax, self.input_shape, KH, KW, SH, SW, PH, PW)


class LocalResponseNormOnKernels(LocalResponseNorm):
    """One thread per (n, pixel) walks the channels (kernels/lrn.cu)."""

    def forward(self, x):
        self.x = x  # (N, C, H, W), and y, scale: (N, C, H, W)
        self.y, self.scale = cuda.lrn_forward(x, self.size, self.alpha, self.beta, self.k)
        return self.y

    def backward(self, gy):
        return cuda.lrn_backward(self.x, self.y, self.scale, gy, self.size, self.alpha,
                                 self.beta, self.k)


class CrossEntropyOnKernels(CrossEntropy):
    """One block per row, softmax and loss fused (kernels/softmax_xent.cu)."""

    def forward(self, logits):
        self.probs, losses = cuda.softmax_xent_forward(logits, self.labels)  # (N, K), (N,)
        return losses.mean()

    def backward(self, gy):  # one device-to-host copy of the scalar gy
        return cuda.softmax_xent_backward(self.probs, self.labels, float(gy) / len(self.probs))


class ReLUOnKernels(ReLU):
    """y and the mask in one pass (a CuPy elementwise kernel)."""

    def forward(self, x):
        y, self.positive = cuda.relu(x)
        return y


class DropoutOnKernels(Dropout):
    """The mask and the product in one pass, from the same uniform draw as the reference."""

    def forward(self, x):
        if not self.training or self.p in (0, 1):
            return super().forward(x)
        uniform = generator(get_array_module(x)).random(x.shape, dtype=x.dtype)
        y, self.mask = cuda.dropout(x, uniform, self.p)
        return y


def _on_kernels(reference, stand_in, applies=lambda op, x: True):
    @dispatch.register(reference, "cuda", "cuda-kernels", "every op on a float32 CuPy array")
    def make(op, x, *arrays):
        if cuda.uses_kernels(x) and applies(op, x):
            return dispatch.same_settings(stand_in, op)
        return None


_on_kernels(Conv2d, Conv2dOnKernels)
_on_kernels(Linear, LinearOnKernels)
_on_kernels(MaxPool2d, MaxPool2dOnKernels, lambda op, x: op.kernel_size[0] * op.kernel_size[1]
            <= 256)  # the uint8 argmax names at most 256 window offsets
_on_kernels(LocalResponseNorm, LocalResponseNormOnKernels)
_on_kernels(CrossEntropy, CrossEntropyOnKernels)
_on_kernels(ReLU, ReLUOnKernels)
_on_kernels(Dropout, DropoutOnKernels)
