"""Dropout (Krizhevsky et al. 2012, §4.2), in its "inverted" form.

Notation: x is the input, of any shape (in AlexNet (N, 4096), the outputs of fc6 and fc7);
p the probability of dropping a unit; y the output, same shape; gy = dL/dy in backward.

    training:   m_i = [u_i >= p] / (1 - p),   u_i ~ Uniform[0, 1) drawn afresh every call
                y = m * x                      (so a unit survives with probability 1 - p)
    evaluation: y = x

The paper (§4.2, p = 0.5 on fc6 and fc7): "setting to zero the output of each hidden neuron
with probability 0.5 ... At test time, we use all the neurons but multiply their outputs by
0.5". A dropped neuron takes no part in forward or backward, so every batch trains a different
thinned network that shares the weights, and a neuron cannot rely on particular others being
present: "it is, therefore, forced to learn more robust features".

Why inverted dropout is the same thing: in both schemes the test-time output equals the
expected training-time output, E[y] = (1 - p) x in the paper's and E[y] = x in ours. Our every
dropped-out activation is the paper's divided by (1 - p), and since the layer that reads it is
linear, a network trained our way with weights W computes exactly what the paper's computes
with weights W / (1 - p). Scaling while training instead of while testing leaves evaluation
with nothing to do, so a model in eval mode (or a saved checkpoint) needs no correction.
"""
from numbers import Real

from ..backend import get_array_module
from ..random import generator
from ..tensor import Function, Tensor


class Dropout(Function):
    def __init__(self, p=0.5, training=True):
        self.p, self.training = p, training

    def forward(self, x):
        if not self.training or self.p == 0:
            self.mask = None  # identity: nothing is dropped, nothing is scaled
            return x
        xp = get_array_module(x)
        if self.p == 1:  # everything dropped; 1 / (1 - p) would divide by zero
            self.mask = xp.zeros_like(x)
        else:
            # Draw in x's dtype: a float64 draw for float32 activations would double the
            # memory traffic of the layer.
            uniform = generator(xp).random(x.shape, dtype=x.dtype)
            scale = x.dtype.type(1 / (1 - self.p))  # a scalar of x's dtype, not float64
            self.mask = (uniform >= self.p) * scale  # x.shape: 0 or 1/(1-p), in x's dtype
        return x * self.mask

    # y = m * x with m a constant once drawn, so dL/dx = dL/dy * m: the gradient flows back
    # through the surviving units only, scaled like their activations.
    def backward(self, gy):
        if self.mask is None:
            return gy
        return gy * self.mask


def dropout(x, p=0.5, training=True):
    """Zero each element with probability p and scale the rest by 1/(1-p) while training;
    the identity when training is False. As torch.nn.functional.dropout."""
    if isinstance(p, bool) or not isinstance(p, Real) or not 0 <= p <= 1:
        raise ValueError(f"dropout: p must be a probability in [0, 1]; got {p!r}")
    if isinstance(x, Tensor) and x.dtype.kind != "f":
        raise TypeError(f"dropout: input must be floating-point; got dtype {x.dtype}")
    return Dropout(float(p), bool(training))(x)
