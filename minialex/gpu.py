"""The GPU's fast path: the reference ops on our CUDA kernels (kernels/*.cu, launched by cuda.py).

On a float32 CuPy array every op below stands in for its reference (dispatch.py, fast path
"cuda-kernels"). Convolution and the fully connected layer keep the reference algorithm and
swap its steps: im2col and col2im on kernels/im2col.cu, every product on our SGEMM
(kernels/sgemm.cu) instead of cuBLAS, the bias added in its final store. Pooling, LRN, the loss,
ReLU and dropout are one kernel each way, and SGD updates every parameter in one launch
(kernels/elementwise.cu).
DevicePrefetcher copies the next batch to the GPU on a second stream while a step computes.
Float64 CuPy arrays (gradient checks) and MINIALEX_FAST=0 run the reference on CuPy's own
functions. No GPU has measured what this buys yet (benchmarks/bench_kernels.py will).

Notation as in functions/conv.py and functions/pool.py.
"""
import numpy as np

from . import cuda, dispatch
from .backend import _import_cupy, check_device, get_array_module
from .functions.activation import ReLU
from .functions.conv import Conv2d, output_size
from .functions.dropout import Dropout
from .functions.linear import Linear
from .functions.loss import CrossEntropy
from .functions.lrn import LocalResponseNorm
from .functions.pool import MaxPool2d, pool_output_size
from .optim import SGD
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


def matmul(a, b, bias=None, bias_along=None):
    """a @ b (2-D, or 3-D with one product per leading index) on our SGEMM kernel; a bias, if
    given, is added in the product's final store (cuda.sgemm: bias_along "row" or "column")."""
    (a, trans_a), (b, trans_b) = _as_stored(a), _as_stored(b)
    if trans_a and trans_b:  # SGEMM has no tt layout: lay b out as it is read
        b, trans_b = get_array_module(b).ascontiguousarray(b.swapaxes(-1, -2)), False
    return cuda.sgemm(a, b, trans_a=trans_a, trans_b=trans_b, bias=bias, bias_along=bias_along)


class Conv2dOnKernels(Conv2d):
    """Two algorithms. Explicit: the reference's im2col, SGEMM and col2im on our kernels, the
    columns (C KH KW x N OH OW floats) kept for backward. Implicit (kernels/conv_implicit.cu):
    the GEMMs read the windows from x inside their tile loads, so no columns exist; backward
    recomputes them from x. `algorithm` picks one: "explicit", "implicit", or "auto", the
    implicit GEMM where the columns would take `implicit_from_bytes` (64 MiB) or more.

    The rule is about memory, the one gain known without a GPU: at batch 128 every conv layer
    of AlexNet has 199 to 896 MB of columns, 2.3 GB in all, which the implicit path never
    allocates (and their writes and reads, some 10 GB of traffic per step). Which path is
    faster, layer by layer, has not been measured: no GPU has run either yet.
    """
    im2col, col2im = staticmethod(cuda.im2col), staticmethod(cuda.col2im)
    matmul = staticmethod(matmul)
    algorithm = "auto"
    implicit_from_bytes = 64 * 2**20

    def uses_implicit(self, x_shape, w_shape):
        """True if the implicit GEMM computes a convolution of these shapes (see `algorithm`)."""
        if self.algorithm not in ("auto", "explicit", "implicit"):
            raise ValueError(f"Conv2dOnKernels.algorithm must be 'auto', 'explicit' or "
                             f"'implicit'; got {self.algorithm!r}")
        (N, C, H, W), (_, _, KH, KW) = x_shape, w_shape
        positions = output_size(H, KH, self.SH, self.PH) * output_size(W, KW, self.SW, self.PW)
        column_bytes = 4 * C * KH * KW * N * positions  # float32
        return self.algorithm == "implicit" or (self.algorithm == "auto"
                                                and column_bytes >= self.implicit_from_bytes)

    def forward(self, x, w, b=None):
        self.implicit = self.uses_implicit(x.shape, w.shape)
        if not self.implicit:
            return self._explicit_forward(x, w, b)
        self.x, self.w = x, w  # what backward recomputes the windows from: no columns
        return cuda.conv_implicit_forward(x, w, b, *self._settings())

    def _explicit_forward(self, x, w, b):
        """The reference's forward (functions/conv.py, the same attributes for its backward),
        the bias added per row of each group's product (one per filter) in its final store.
        The product is (F, N OH OW), so NCHW still takes a transposing copy after it."""
        (N, _, H, W), (F, CG, KH, KW), G = x.shape, w.shape, self.G
        OH, OW = output_size(H, KH, self.SH, self.PH), output_size(W, KW, self.SW, self.PW)
        col = self.im2col(x, KH, KW, self.SH, self.SW, self.PH, self.PW)
        self.col, self.w, self.x_shape = col.reshape(G, CG * KH * KW, N * OH * OW), w, x.shape
        y = matmul(w.reshape(G, F // G, CG * KH * KW), self.col,  # one product per group
                   None if b is None else b.reshape(G, F // G), "row")
        return get_array_module(x).ascontiguousarray(y.reshape(F, N, OH, OW).transpose(1, 0, 2, 3))

    def _settings(self):
        return (self.SH, self.SW), (self.PH, self.PW), self.G

    def backward(self, gy):
        if not self.implicit:
            return super().backward(gy)
        grad_x = grad_w = grad_b = None
        if self.needs_grad[0]:
            grad_x = cuda.conv_implicit_grad_x(gy, self.w, self.x.shape, *self._settings())
        if any(self.needs_grad[1:]):  # dw and db come out of one product
            grad_w, grad_b = cuda.conv_implicit_grad_w(self.x, gy, self.w.shape,
                                                       *self._settings())
        wants_b = len(self.needs_grad) > 2 and self.needs_grad[2]
        return grad_x, grad_w if self.needs_grad[1] else None, grad_b if wants_b else None


class LinearOnKernels(Linear):
    """The reference's products on our SGEMM; forward adds the bias in the product's final
    store (one per column of y = x W^T) instead of a separate pass over y."""
    matmul = staticmethod(matmul)

    def forward(self, x, weight, bias=None):
        self.x, self.weight = x, weight  # what the reference's backward reads
        return matmul(x, weight.T, bias, "column")


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
    """One block per row, softmax and loss fused (kernels/softmax_xent.cu). Backward passes
    gy to the kernel as a device scalar: float(gy) here would be a host sync every step."""

    def forward(self, logits):
        self.probs, losses = cuda.softmax_xent_forward(logits, self.labels)  # (N, K), (N,)
        return losses.mean()

    def backward(self, gy):
        return cuda.softmax_xent_backward(self.probs, self.labels, gy)


class ReLUOnKernels(ReLU):
    """y and the mask in one pass forward, gy * mask in one pass backward, one launch each
    whatever the size (kernels/elementwise.cu)."""

    def forward(self, x):
        y, self.positive = cuda.relu(x)
        return y

    def backward(self, gy):
        return cuda.relu_backward(gy, self.positive)


# The GPU dropout's random stream (kernels/elementwise.cu, dropout_forward): a seed and the
# count of numbers drawn so far. Seeded from the CPU generator at first use, as the CuPy
# generator of random.py is, and again after every manual_seed (which replaces that
# generator); dropout_state() and set_dropout_state() put it in a checkpoint.
_dropout_stream = {"seed": None, "offset": 0, "seeded_from": None}


def dropout_state():
    """The GPU dropout's random state, {"seed": int, "offset": int}, JSON-safe."""
    _seed_dropout_stream()
    return {"seed": _dropout_stream["seed"], "offset": _dropout_stream["offset"]}


def set_dropout_state(state):
    """Continue the GPU dropout masks from a state that dropout_state() returned."""
    seed, offset = state["seed"], state["offset"]
    for name, value in (("seed", seed), ("offset", offset)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
            raise ValueError(f"set_dropout_state: {name} must be an int in [0, 2^63); got "
                             f"{value!r}")
    # no draw from the CPU generator here: a resumed run has just restored its state
    _dropout_stream.update(seed=seed, offset=offset, seeded_from=generator())


def _seed_dropout_stream():
    cpu = generator()
    if _dropout_stream["seeded_from"] is not cpu:  # first use, or manual_seed since
        _dropout_stream.update(seed=int(cpu.integers(2**62)), offset=0, seeded_from=cpu)


class DropoutOnKernels(Dropout):
    """The draw, the mask and the product in one pass (kernels/elementwise.cu)."""

    def forward(self, x):
        if not self.training or self.p in (0, 1):
            return super().forward(x)
        _seed_dropout_stream()
        offset = _dropout_stream["offset"]
        _dropout_stream["offset"] = (offset + x.size) % 2**62
        y, self.mask = cuda.dropout(x, self.p, _dropout_stream["seed"], offset)
        return y


class SGDOnKernels(SGD):
    """Every parameter's update in one launch (kernels/elementwise.cu, sgd_multi_tensor),
    instead of six CuPy passes per parameter."""

    def apply(self, updates):
        on_kernels = [update for update in updates if all(
            cuda.uses_kernels(a) and a.flags.c_contiguous for a in update if a is not None)]
        cuda.sgd_multi_tensor(on_kernels, self.lr, self.momentum, self.weight_decay)
        super().apply([update for update in updates  # any other (a strided gradient): CuPy's
                       if not any(update is other for other in on_kernels)])


# --------------------------------------------------------------------------------------------
# Batches to the GPU while the previous step computes

class DevicePrefetcher:
    """Iterate over (x, labels) host batches as (x on `device`, labels on the host, labels on
    `device`), each batch's copy overlapped with the compute of the batch before it.

    On the CPU the batches pass through unchanged. On the GPU, each batch is put into a pinned
    (page-locked) host buffer, the only memory a copy engine can read while the host goes on,
    and copied with `ndarray.set(..., stream=copy_stream)` on a second stream: the copy of
    batch i+1 is issued before batch i is handed out, so it runs while step i computes. No
    host sync orders the two streams; events do (CUDA C Programming Guide, "Asynchronous
    Concurrent Execution", "Events"):
      - before a copy, the copy stream waits on an event recorded on the compute stream: the
        device buffer comes from the compute stream's memory pool and may still be read by
        kernels queued there;
      - before a batch is handed out, the compute stream waits on the event recorded after
        its copy.
    A pinned buffer is reused `depth` batches later; the host waits on that old copy's event
    (long done by then), which bounds how far the host may run ahead of the copies.
    """

    def __init__(self, batches, device, depth=3):
        self.batches, self.device, self.depth = batches, check_device(device), depth

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        if self.device == "cpu":
            for x, labels in self.batches:
                yield x, labels, labels
            return
        cupy = _import_cupy()
        compute_stream = cupy.cuda.get_current_stream()
        copy_stream = cupy.cuda.Stream(non_blocking=True)
        slots = [None] * self.depth  # per ring slot: (pinned host arrays, event of their copy)
        pending = None
        for index, (x, labels) in enumerate(self.batches):
            staged = self._issue_copy(cupy, index % self.depth, slots, (x, labels),
                                      compute_stream, copy_stream)
            if pending is not None:
                yield self._hand_out(pending, compute_stream)
            pending = staged
        if pending is not None:
            yield self._hand_out(pending, compute_stream)

    @staticmethod
    def _issue_copy(cupy, slot, slots, host_arrays, compute_stream, copy_stream):
        if slots[slot] is not None:
            slots[slot][1].synchronize()  # the copy `depth` batches ago: its buffer is free
        pinned = [_pinned_like(cupy, array, slots[slot][0][i] if slots[slot] else None)
                  for i, array in enumerate(host_arrays)]
        for buffer, array in zip(pinned, host_arrays):
            buffer[...] = array
        device_arrays = [cupy.empty(array.shape, array.dtype) for array in host_arrays]
        copy_stream.wait_event(compute_stream.record())
        for device_array, buffer in zip(device_arrays, pinned):
            device_array.set(buffer, stream=copy_stream)
        copied = copy_stream.record()
        slots[slot] = (pinned, copied)
        return host_arrays, device_arrays, copied

    @staticmethod
    def _hand_out(pending, compute_stream):
        (x, labels), (x_device, labels_device), copied = pending
        compute_stream.wait_event(copied)
        return x_device, labels, labels_device


def _pinned_like(cupy, array, previous):
    """A NumPy array in pinned host memory with array's shape and dtype (previous if it fits)."""
    array = np.asarray(array)
    if previous is not None and previous.shape == array.shape and previous.dtype == array.dtype:
        return previous
    memory = cupy.cuda.alloc_pinned_memory(max(array.nbytes, 1))
    return np.frombuffer(memory, array.dtype, array.size).reshape(array.shape)


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
_on_kernels(SGD, SGDOnKernels)
