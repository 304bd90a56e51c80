"""Elementary operations: arithmetic with broadcasting, matmul, reductions, shapes, indexing.

Notation: x, y are inputs, z the output, gz = dL/dz the gradient that arrives in backward.
Broadcasting copies an input along new or size-1 axes, so its gradient is the sum of gz over
those axes (`sum_to`). These ops are the building blocks of the "simple" reference versions
of the layers (e.g. `lrn_simple`), which the tests compare with the fast, fused ones.
"""
from ..backend import get_array_module
from ..tensor import Function, Tensor, as_tensor_like


def sum_to(gz, shape):
    """Sum gz over the axes along which an input of `shape` was broadcast to gz.shape."""
    if gz.shape == shape:
        return gz
    extra = gz.ndim - len(shape)
    axes = tuple(range(extra)) + tuple(
        extra + i for i, n in enumerate(shape) if n == 1 and gz.shape[extra + i] != 1)
    return gz.sum(axis=axes, keepdims=True).reshape(shape)


def _pair(x, y):
    """Two tensors of one dtype, from tensors and numbers, as PyTorch promotes them: a number
    takes the tensor's dtype (float32 if it is a float and the tensor is not), and an integer
    or bool tensor takes the dtype of a floating-point one (int64 + float32 -> float32)."""
    x = x if isinstance(x, Tensor) else as_tensor_like(x, y)
    y = y if isinstance(y, Tensor) else as_tensor_like(y, x)
    if x.dtype.kind == "f" and y.dtype.kind != "f":
        y = Tensor(y.data.astype(x.dtype))  # a constant: integer tensors have no gradient
    elif y.dtype.kind == "f" and x.dtype.kind != "f":
        x = Tensor(x.data.astype(y.dtype))
    return x, y


class Add(Function):
    def forward(self, x, y):
        self.x_shape, self.y_shape = x.shape, y.shape
        return x + y

    def backward(self, gz):
        return sum_to(gz, self.x_shape), sum_to(gz, self.y_shape)


def add(x, y):
    return Add()(*_pair(x, y))


class Sub(Function):
    def forward(self, x, y):
        self.x_shape, self.y_shape = x.shape, y.shape
        return x - y

    def backward(self, gz):
        return sum_to(gz, self.x_shape), sum_to(-gz, self.y_shape)


def sub(x, y):
    return Sub()(*_pair(x, y))


class Mul(Function):
    def forward(self, x, y):
        self.x, self.y = x, y  # both as given: each is needed for the other's gradient
        return x * y

    def backward(self, gz):
        gx = sum_to(gz * self.y, self.x.shape) if self.needs_grad[0] else None
        gy = sum_to(gz * self.x, self.y.shape) if self.needs_grad[1] else None
        return gx, gy


def mul(x, y):
    return Mul()(*_pair(x, y))


class Div(Function):
    def forward(self, x, y):
        self.x, self.y = x, y
        return x / y

    def backward(self, gz):
        gx = sum_to(gz / self.y, self.x.shape) if self.needs_grad[0] else None
        gy = sum_to(-gz * self.x / (self.y * self.y), self.y.shape) if self.needs_grad[1] else None
        return gx, gy


def div(x, y):
    x, y = _pair(x, y)
    if x.dtype.kind != "f":  # integers divide to float32, as in PyTorch (NumPy: float64)
        x, y = x.float(), y.float()
    return Div()(x, y)


class Neg(Function):
    def forward(self, x):
        return -x

    def backward(self, gz):
        return -gz


def neg(x):
    return Neg()(x)


class Pow(Function):
    """z = x ** p for a constant number p:  dz/dx = p x^(p-1)."""

    def __init__(self, exponent):
        self.exponent = exponent

    def forward(self, x):
        self.x = x
        return x ** self.exponent

    def backward(self, gz):
        return gz * self.exponent * self.x ** (self.exponent - 1)


def pow(x, exponent):
    if isinstance(exponent, Tensor):
        raise TypeError("pow: the exponent must be a number, not a Tensor")
    return Pow(exponent)(x)


class Exp(Function):
    def forward(self, x):
        self.z = get_array_module(x).exp(x)  # dz/dx = z
        return self.z

    def backward(self, gz):
        return gz * self.z


def exp(x):
    return Exp()(x)


class Log(Function):
    def forward(self, x):
        self.x = x
        return get_array_module(x).log(x)

    def backward(self, gz):
        return gz / self.x


def log(x):
    return Log()(x)


class MatMul(Function):
    """z = x @ y for 2-D x (M, K) and y (K, N):  gx = gz @ y^T (M, K),  gy = x^T @ gz (K, N)."""

    def forward(self, x, y):
        if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[0]:
            raise ValueError(f"matmul: needs 2-D operands (M, K) @ (K, N); got {x.shape} @ "
                             f"{y.shape}")
        self.x, self.y = x, y
        return x @ y

    def backward(self, gz):
        gx = gz @ self.y.T if self.needs_grad[0] else None
        gy = self.x.T @ gz if self.needs_grad[1] else None
        return gx, gy


def matmul(x, y):
    return MatMul()(*_pair(x, y))


class Sum(Function):
    def __init__(self, axis, keepdims):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, x):
        self.x_shape = x.shape
        return x.sum(axis=self.axis, keepdims=self.keepdims)

    def backward(self, gz):
        xp = get_array_module(gz)
        if not self.keepdims and self.axis is not None:  # put the summed axes back as size 1
            axes = (self.axis,) if isinstance(self.axis, int) else self.axis
            gz = xp.expand_dims(gz, tuple(a % len(self.x_shape) for a in axes))
        return xp.broadcast_to(gz, self.x_shape).copy()


def sum(x, axis=None, keepdims=False):
    return Sum(axis, keepdims)(x)


def mean(x, axis=None, keepdims=False):
    axes = range(x.ndim) if axis is None else ((axis,) if isinstance(axis, int) else axis)
    count = 1
    for a in axes:
        count *= x.shape[a]
    return sum(x, axis, keepdims) * (1.0 / count)


class Max(Function):
    """z = max of x over axis; the gradient goes to the maxima (shared equally among ties)."""

    def __init__(self, axis, keepdims):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, x):
        z = x.max(axis=self.axis, keepdims=True)
        self.is_max = x == z  # x.shape: True where x is (one of) its slice's maxima
        return z if self.keepdims else z.squeeze(axis=self.axis)

    def backward(self, gz):
        xp = get_array_module(gz)
        if not self.keepdims:
            axes = (self.axis,) if isinstance(self.axis, int) else self.axis
            gz = gz.reshape(gz.shape) if axes is None else xp.expand_dims(gz, axes)
        ties = self.is_max.sum(axis=self.axis, keepdims=True, dtype=gz.dtype)  # not int64
        return self.is_max * (gz / ties)


def max(x, axis=None, keepdims=False):
    return Max(axis, keepdims)(x)


class Reshape(Function):
    def __init__(self, shape):
        self.shape = shape

    def forward(self, x):
        self.x_shape = x.shape
        return x.reshape(self.shape)

    def backward(self, gz):
        return gz.reshape(self.x_shape)


def reshape(x, shape):
    return Reshape(shape)(x)


class Transpose(Function):
    def __init__(self, axes=None):
        self.axes = axes

    def forward(self, x):
        return x.transpose(self.axes)

    def backward(self, gz):
        if self.axes is None:
            return gz.transpose()
        inverse = [0] * len(self.axes)
        for position, axis in enumerate(self.axes):
            inverse[axis] = position
        return gz.transpose(inverse)


def transpose(x, axes=None):
    return Transpose(axes)(x)


class GetItem(Function):
    """z = x[index]; the gradient scatters gz back into zeros shaped like x (add.at for
    repeated integer indices, so an element picked twice gets both contributions)."""

    def __init__(self, index):
        self.index = index.data if isinstance(index, Tensor) else index

    def forward(self, x):
        self.x_shape, self.x_dtype = x.shape, x.dtype
        return x[self.index]

    def backward(self, gz):
        xp = get_array_module(gz)
        gx = xp.zeros(self.x_shape, dtype=self.x_dtype)
        xp.add.at(gx, self.index, gz)
        return gx


def getitem(x, index):
    return GetItem(index)(x)
