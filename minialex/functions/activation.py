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
from ..backend import get_array_module
from ..tensor import Function


class ReLU(Function):
    def forward(self, x):
        xp = get_array_module(x)
        # A boolean mask costs 1 byte per element, a quarter of a float32 copy of the output.
        self.positive = x > 0  # x.shape: True where the unit passes gradient
        return xp.maximum(x, 0)  # NaN stays NaN, as in NumPy, so that a diverged network shows

    # y = x where x > 0, else 0, so dy/dx is 1 or 0 elementwise and
    #     dL/dx = dL/dy * [x > 0]
    # (the multiplication by a boolean array keeps gy's dtype).
    def backward(self, gy):
        return gy * self.positive


def relu(x):
    """max(x, 0) elementwise, as torch.nn.functional.relu."""
    return ReLU()(x)
