"""The fully connected layer: AlexNet's fc6, fc7 and fc8 (Krizhevsky et al. 2012, §3.5).

Notation: N is the batch size, IN the input features, OUT the output features.
    x       (N, IN)       the input, one row per example (a conv output is flattened first)
    weight  (OUT, IN)     one row per output unit, PyTorch's layout
    bias    (OUT,)        optional
    y       (N, OUT)

    y = x @ weight^T + bias,    y[n, o] = sum_i x[n, i] weight[o, i] + bias[o]

In AlexNet fc6 maps 256*6*6 = 9216 features to 4096, fc7 4096 to 4096 and fc8 4096 to the 1000
classes: 58.6 million of the network's 61 million parameters. The whole layer is one matrix
product, done by the matrix library NumPy or CuPy links. (A fast path swaps `matmul`: on the
CPU the product cut over a thread per core, on the GPU our SGEMM kernel; see dispatch.py.)
"""
from ..backend import get_array_module
from ..tensor import Function, Tensor


def matmul(a, b):
    """a @ b on NumPy's or CuPy's matrix library."""
    return get_array_module(a).matmul(a, b)


class Linear(Function):
    matmul = staticmethod(matmul)  # looked up on the class, so that a fast path can swap it

    def forward(self, x, weight, bias=None):
        self.x = x            # (N, IN): needed for the weight's gradient
        self.weight = weight  # (OUT, IN): needed for the input's gradient
        y = self.matmul(x, weight.T)  # (N, OUT)
        if bias is not None:
            y += bias  # broadcast over the batch; y is a fresh array, so in place is safe
        return y

    # From y[n, o] = sum_i x[n, i] weight[o, i] + bias[o], with gy = dL/dy of shape (N, OUT):
    #   dL/dx[n, i]      = sum_o gy[n, o] weight[o, i]   ->  gx = gy @ weight       (N, IN)
    #   dL/dweight[o, i] = sum_n gy[n, o] x[n, i]        ->  gw = gy^T @ x          (OUT, IN)
    #   dL/dbias[o]      = sum_n gy[n, o]                ->  gb = gy summed over n  (OUT,)
    # Each product is skipped when its input needs no gradient (e.g. gx for the first layer's
    # input, the image batch).
    def backward(self, gy):
        gx = self.matmul(gy, self.weight) if self.needs_grad[0] else None
        gw = self.matmul(gy.T, self.x) if self.needs_grad[1] else None
        if len(self.needs_grad) == 2:  # called without a bias
            return gx, gw
        gb = gy.sum(axis=0) if self.needs_grad[2] else None
        return gx, gw, gb


def linear(x, weight, bias=None):
    """y = x @ weight^T + bias for x (N, IN), weight (OUT, IN), bias (OUT,) or None.
    As torch.nn.functional.linear, but the input must be 2-D."""
    for name, value in (("input", x), ("weight", weight), ("bias", bias)):
        if value is not None and not isinstance(value, Tensor):
            raise TypeError(f"linear: {name} must be a Tensor; got {type(value).__name__}")
    if x.ndim != 2:
        raise ValueError(f"linear: input must be 2-D (N, in_features); got shape "
                         f"{tuple(x.shape)}, flatten it first")
    if weight.ndim != 2:
        raise ValueError(f"linear: weight must be 2-D (out_features, in_features); got shape "
                         f"{tuple(weight.shape)}")
    out_features, in_features = weight.shape
    if x.shape[1] != in_features:
        raise ValueError(f"linear: input has {x.shape[1]} features but weight expects "
                         f"{in_features} (weight shape {tuple(weight.shape)})")
    if bias is None:
        return Linear()(x, weight)
    if tuple(bias.shape) != (out_features,):
        raise ValueError(f"linear: bias must have shape (out_features,) = ({out_features},); "
                         f"got shape {tuple(bias.shape)}")
    return Linear()(x, weight, bias)
