"""ReLU and the SGD update on the CPU, in pieces of threads.CHUNK elements on a thread per core.

Each is a few passes over memory with no arithmetic to speak of, and NumPy runs a pass on one
core. Cut into 4 MB pieces, the passes of a piece stay in cache and the cores share the pieces
(NumPy releases the GIL inside each pass). Stand in for the reference ReLU
(functions/activation.py) and SGD.apply (optim.py). The SGD update of AlexNet's 62 million
parameters took 91 ms on 2 cores as whole passes, 40 ms in pieces. In a training step
(benchmarks/bench_alexnet.py, `seed` at batch 32 on 2 cores, README "What each fast path buys"):
sgd took the optimizer from 127 to 52 ms and the step from 1,047 to 919 ms, 1.14x; ReLU's pieces
are within the noise of one run there (relu 23.4 -> 20.8 ms, the step 1.01x).
"""
import numpy as np

from .. import dispatch
from ..functions.activation import ReLU
from ..optim import SGD
from . import threads


class ReLUOnThreads(ReLU):
    def forward(self, x):
        y = np.empty_like(x)
        self.positive = np.empty(x.shape, dtype=bool)
        threads.run_in_threads(_relu_piece, threads.chunks_of(
            x.reshape(-1), y.reshape(-1), self.positive.reshape(-1)))
        return y

    def backward(self, gy):
        gx = np.empty_like(gy)
        threads.run_in_threads(np.multiply, threads.chunks_of(
            gy.reshape(-1), self.positive.reshape(-1), gx.reshape(-1)))
        return gx


def _relu_piece(x, y, positive):
    np.greater(x, 0, out=positive)
    np.maximum(x, 0, out=y)  # NaN stays NaN, as in the reference


class SGDOnThreads(SGD):
    def apply(self, updates):
        pieces = []
        for w, grad, u in updates:
            if all(a is None or a.flags.c_contiguous for a in (w, grad, u)):  # flat views
                pieces += threads.chunks_of(w.reshape(-1), grad.reshape(-1),
                                            None if u is None else u.reshape(-1))
            else:
                pieces.append((w, grad, u))
        threads.run_in_threads(self.update, pieces)


@dispatch.register(ReLU, "cpu", "elementwise", "relu")
def _relu_on_threads(relu, x):
    return dispatch.same_settings(ReLUOnThreads, relu)


@dispatch.register(SGD, "cpu", "sgd", "optim.SGD.step")
def _sgd_on_threads(sgd, w):
    return dispatch.same_settings(SGDOnThreads, sgd)
