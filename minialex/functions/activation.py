"""The rectified linear unit, AlexNet's nonlinearity (Krizhevsky et al. 2012, §3.1).

Notation: x is the input, of any shape (N, C, H, W after a convolution, N, OUT after a fully
connected layer); y the output, same shape; gy = dL/dy the gradient that arrives in backward.

    y = max(x, 0)                    elementwise
    dy/dx = 1 where x > 0, else 0    (at x = 0 we take 0, as PyTorch does)

Why ReLU (§3.1): tanh and the logistic sigmoid saturate, so their gradient vanishes for large
|x| and gradient descent slows down. A ReLU does not saturate for x > 0. The paper's Figure 1:
a four-layer CNN with ReLUs reached 25% training error on CIFAR-10 six times faster than the
same network with tanh units. Without that speed, AlexNet could not have been trained at all
on 1.2 million images in the time the authors had.
"""
from .. import backend, cuda
from ..backend import get_array_module
from ..tensor import Function


class ReLU(Function):
    def forward(self, x):
        if cuda.uses_kernels(x):  # GPU: y and the mask in one pass (a CuPy elementwise kernel)
            y, self.positive = cuda.relu(x)
            return y
        xp = get_array_module(x)
        y = xp.empty_like(x)
        # A boolean mask costs 1 byte per element, a quarter of a float32 copy of the output.
        self.positive = xp.empty(x.shape, dtype=bool)  # True where the unit passes gradient
        # In pieces of 4 MB on a thread per core: the two passes then read x from cache
        backend.run_in_threads(_relu_piece, backend.chunks_of(
            x.reshape(-1), y.reshape(-1), self.positive.reshape(-1)))
        return y

    # y = x where x > 0, else 0, so dy/dx is 1 or 0 elementwise and
    #     dL/dx = dL/dy * [x > 0]
    # (the multiplication by a boolean array keeps gy's dtype).
    def backward(self, gy):
        xp = get_array_module(gy)
        gx = xp.empty_like(gy)
        backend.run_in_threads(xp.multiply, backend.chunks_of(
            gy.reshape(-1), self.positive.reshape(-1), gx.reshape(-1)))
        return gx


def _relu_piece(x, y, positive):
    xp = get_array_module(x)
    xp.greater(x, 0, out=positive)
    xp.maximum(x, 0, out=y)  # NaN stays NaN, as in NumPy, so that a diverged network shows


def relu(x):
    """max(x, 0) elementwise, as torch.nn.functional.relu."""
    return ReLU()(x)
