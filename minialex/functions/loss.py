"""Softmax, log-softmax and the cross-entropy loss that trains AlexNet (Krizhevsky et al. 2012,
§3.5: "the output of the last fully-connected layer is fed to a 1000-way softmax"; §4: the
network maximizes the multinomial logistic regression objective, i.e. minimizes cross-entropy).

Notation: N is the batch size, K the number of classes (1000 for ImageNet).
    x, logits  (N, K)   unnormalized scores, one row per example (softmax: any shape, any axis)
    labels     (N,)     integer class indices in [0, K)
    p          (N, K)   softmax(logits) along the class axis: probabilities that sum to 1

    softmax(x)_i     = exp(x_i) / sum_j exp(x_j)
    log_softmax(x)_i = x_i - log sum_j exp(x_j)
    cross_entropy    = -(1/N) sum_n log_softmax(logits[n])[labels[n]]

Numerical stability: exp(1000) overflows even in float64, and exp(-1000) underflows to 0, whose
log is -inf. Both formulas are unchanged when a constant is subtracted from every x_j, so we
subtract m = max_j x_j first: then every exponent is <= 0, the largest term is exp(0) = 1, and
the log-sum-exp lies in [m, m + log K]. Logits of 1e4 or -1e4 give finite, exact results.
"""
from ..backend import device_of, get_array_module, to_device
from ..tensor import Function, Tensor


def _shifted(x, axis):
    """x minus its maximum along axis: every entry <= 0, and 0 at the maximum."""
    return x - x.max(axis=axis, keepdims=True)


class Softmax(Function):
    def __init__(self, axis=-1):
        self.axis = axis

    def forward(self, x):
        xp = get_array_module(x)
        e = xp.exp(_shifted(x, self.axis))
        e /= e.sum(axis=self.axis, keepdims=True)
        self.y = e  # x.shape: the probabilities, all backward needs
        return e

    # With y_i = exp(x_i) / S:  dy_i/dx_j = y_i ([i = j] - y_j), so
    #   dL/dx_j = sum_i g_i y_i ([i = j] - y_j) = y_j (g_j - sum_i g_i y_i)
    def backward(self, gy):
        y = self.y
        return y * (gy - (gy * y).sum(axis=self.axis, keepdims=True))


class LogSoftmax(Function):
    def __init__(self, axis=-1):
        self.axis = axis

    def forward(self, x):
        xp = get_array_module(x)
        shifted = _shifted(x, self.axis)
        log_sum_exp = xp.log(xp.exp(shifted).sum(axis=self.axis, keepdims=True))
        self.y = shifted - log_sum_exp  # x.shape: the log-probabilities
        return self.y

    # With y_i = x_i - log S:  dy_i/dx_j = [i = j] - softmax_j, so
    #   dL/dx_j = g_j - softmax_j sum_i g_i,   and softmax = exp(y).
    def backward(self, gy):
        xp = get_array_module(gy)
        return gy - xp.exp(self.y) * gy.sum(axis=self.axis, keepdims=True)


def _check_axis(op, x, axis):
    if not isinstance(x, Tensor):
        raise TypeError(f"{op}: input must be a Tensor; got {type(x).__name__}")
    if not isinstance(axis, int) or not -x.ndim <= axis < x.ndim:
        raise ValueError(f"{op}: axis {axis!r} out of range for an input of shape "
                         f"{tuple(x.shape)}")
    if x.dtype.kind != "f":
        raise TypeError(f"{op}: input must be floating-point; got dtype {x.dtype}")


def softmax(x, axis=-1):
    """exp(x) / sum(exp(x)) along axis, computed stably. As torch.nn.functional.softmax."""
    _check_axis("softmax", x, axis)
    return Softmax(axis)(x)


def log_softmax(x, axis=-1):
    """x - log(sum(exp(x))) along axis, computed stably. As torch's log_softmax."""
    _check_axis("log_softmax", x, axis)
    return LogSoftmax(axis)(x)


class CrossEntropy(Function):
    """log-softmax and the negative log-likelihood fused into one op, as in Caffe's
    SoftmaxWithLoss: the (N, K) log-probabilities are never stored, and the gradient has the
    short closed form below."""

    def __init__(self, labels):
        self.labels = labels  # (N,): integer class indices, on the logits' device

    def forward(self, logits):
        xp = get_array_module(logits)
        n = logits.shape[0]
        rows = xp.arange(n)
        shifted = _shifted(logits, 1)                   # (N, K), every entry <= 0
        picked = shifted[rows, self.labels]             # (N,): shifted score of the true class
        e = xp.exp(shifted, out=shifted)                # (N, K), in place: shifted is spent
        total = e.sum(axis=1)                           # (N,), in [1, K]: no log(0)
        loss = (xp.log(total) - picked).mean()          # -log p[n, label], averaged over n
        e /= total[:, None]
        self.probs = e                                  # (N, K): softmax(logits)
        self.rows = rows                                # (N,): 0 .. N-1, to pick the labels
        return loss

    # L = (1/N) sum_n (log S_n - x[n, l_n]) with S_n = sum_k exp(x[n, k]), so
    #   dL/dx[n, k] = (1/N) (p[n, k] - [k = l_n]),
    # the predicted probabilities minus the one-hot target, times the scalar gy from above.
    def backward(self, gy):
        n = self.probs.shape[0]
        grad = self.probs.copy()  # a copy: backward may run twice with retain_graph=True
        grad[self.rows, self.labels] -= 1
        grad *= gy / n  # gy is 0-d, in the logits' dtype
        return grad


def _label_array(labels, logits):
    """labels as an integer array on the logits' device, checked against the logits' shape."""
    if isinstance(labels, Tensor):
        labels = labels.data
    # checked where the labels are, before they move: on the host that costs no device sync
    labels = get_array_module(labels).asarray(labels)
    n, k = logits.shape
    if labels.dtype.kind not in "iu":
        raise TypeError(f"cross_entropy: labels must be integers (class indices), got dtype "
                        f"{labels.dtype}")
    if labels.ndim != 1:
        raise ValueError(f"cross_entropy: labels must be 1-D (N,) class indices; got shape "
                         f"{tuple(labels.shape)}")
    if labels.shape[0] != n:
        raise ValueError(f"cross_entropy: {labels.shape[0]} labels for a batch of {n} logits")
    if labels.size:  # labels already on the GPU cost one device sync here
        low, high = int(labels.min()), int(labels.max())
        for label in (low, high):
            if not 0 <= label < k:
                raise ValueError(f"cross_entropy: label {label} out of range for {k} classes "
                                 f"[0, {k})")
    device = device_of(logits.data)
    return labels if device_of(labels) == device else to_device(labels, device)


def _check_logits(op, logits):
    if not isinstance(logits, Tensor):
        raise TypeError(f"{op}: logits must be a Tensor; got {type(logits).__name__}")
    if logits.ndim != 2:
        raise ValueError(f"{op}: logits must be 2-D (N, K classes); got shape "
                         f"{tuple(logits.shape)}")
    if logits.shape[0] == 0:
        raise ValueError(f"{op}: the batch is empty (logits of shape {tuple(logits.shape)}); "
                         "the mean over no examples is undefined")
    if logits.dtype.kind != "f":
        raise TypeError(f"{op}: logits must be floating-point; got dtype {logits.dtype}")


def cross_entropy(logits, labels):
    """Mean over the batch of -log softmax(logits[n])[labels[n]]. logits (N, K) Tensor; labels
    (N,) integers in [0, K): a NumPy/CuPy array, a list or a Tensor. As torch's cross_entropy
    with reduction='mean'."""
    _check_logits("cross_entropy", logits)
    return CrossEntropy(_label_array(labels, logits))(logits)


def cross_entropy_simple(logits, labels):
    """The same loss built from basic Tensor ops, to read and to test the fused version against.
    Slower and hungrier (every intermediate is kept for backward), but each line is the math."""
    _check_logits("cross_entropy_simple", logits)
    labels = _label_array(labels, logits)
    xp = get_array_module(logits.data)
    n = logits.shape[0]
    # The shift is a constant: log-softmax does not change with it, so no gradient need flow
    # through the max (hence detach).
    shifted = logits - logits.detach().max(axis=1, keepdims=True)         # (N, K)
    log_probs = shifted - shifted.exp().sum(axis=1, keepdims=True).log()  # (N, K)
    return -log_probs[xp.arange(n), labels].mean()

