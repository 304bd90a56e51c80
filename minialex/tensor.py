"""Tensor, Function and reverse-mode automatic differentiation.

A `Tensor` wraps an array (`.data`, NumPy on the CPU, CuPy on the GPU) and remembers the
`Function` that made it (`.creator`). A `Function` has `forward(*arrays) -> array` and
`backward(grad_output) -> grads`, both on plain arrays. `loss.backward()` visits the graph in
reverse topological order, so every tensor's gradient is complete (summed over all of its uses)
before it is passed further back.

    y = f(x1, x2)              forward: y.data = f.forward(x1.data, x2.data); y.creator = f
    dL/dx_i = f.backward(dL/dy)[i]   for every input that requires a gradient

Only first derivatives are needed for AlexNet, so `backward` works on plain arrays and never
builds a graph of its own (as micrograd's `_backward` does).
"""
import contextlib
import threading

import numpy as np

from . import backend, dispatch

DEFAULT_DTYPE = np.float32


# --------------------------------------------------------------------------------------------
# Gradient mode

class _GradMode(threading.local):
    """Whether operations record the graph; one flag per thread (data loaders run in threads)."""
    enabled = True


_grad_mode = _GradMode()


@contextlib.contextmanager
def no_grad():
    """Inside `with no_grad():` operations record nothing: for evaluation and weight updates."""
    previous = _grad_mode.enabled
    _grad_mode.enabled = False
    try:
        yield
    finally:
        _grad_mode.enabled = previous


def is_grad_enabled():
    return _grad_mode.enabled


# --------------------------------------------------------------------------------------------
# Tensor

class Tensor:
    """An array with an optional gradient and a record of the Function that produced it."""

    __array_priority__ = 1000  # so that ndarray + Tensor calls Tensor.__radd__

    def __init__(self, data, requires_grad=False):
        if isinstance(data, Tensor):
            data = data.data
        xp = backend.get_array_module(data)
        if not isinstance(data, xp.ndarray):
            raise TypeError(f"Tensor wraps an ndarray; got {type(data).__name__} "
                            "(use minialex.tensor(...) to build one from lists or scalars)")
        if data.dtype.kind not in "biuf":
            raise TypeError(f"a Tensor holds real numbers (bool, integer or floating point); "
                            f"got dtype {data.dtype}")
        if requires_grad and not xp.issubdtype(data.dtype, xp.floating):
            raise TypeError(f"only floating-point tensors can require gradients; "
                            f"got dtype {data.dtype}")
        self.data = data
        self.grad = None             # same shape and device as data, after backward()
        self.requires_grad = bool(requires_grad)
        self.creator = None          # the Function that produced this tensor, if any
        self.name = None
        self._grad_hooks = []        # called as hook(self) after backward() adds to .grad

    # -- what it is ------------------------------------------------------------------------
    @property
    def shape(self):
        return self.data.shape

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def size(self):
        return self.data.size

    @property
    def device(self):
        return backend.device_of(self.data)

    @property
    def is_leaf(self):
        return self.creator is None

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        body = np.array2string(self.numpy(), precision=4, threshold=20, prefix="tensor(")
        extras = "" if self.device == "cpu" else ", device='cuda'"
        extras += ", requires_grad=True" if self.requires_grad else ""
        return f"tensor({body}, dtype={self.dtype}{extras})"

    # -- conversions -----------------------------------------------------------------------
    def numpy(self):
        """The values as a NumPy array (copied from the GPU if needed)."""
        return backend.as_numpy(self.data)

    def item(self):
        if self.size != 1:
            raise ValueError(f"item() needs a tensor with one element; got shape {self.shape}")
        return self.numpy().reshape(()).item()

    def detach(self):
        """The same data, cut from the graph."""
        return Tensor(self.data)

    def to(self, device=None, dtype=None):
        """A copy on `device` and/or with `dtype`; a leaf keeps requires_grad."""
        data = self.data
        if device is not None:
            data = backend.to_device(data, device)
        if dtype is not None:
            data = data.astype(dtype, copy=False)
        if data is self.data:
            return self
        return Tensor(data, requires_grad=self.requires_grad)

    def float(self):
        return self.to(dtype=np.float32)

    def double(self):
        return self.to(dtype=np.float64)

    # -- backpropagation -------------------------------------------------------------------
    def backward(self, grad=None, retain_graph=False):
        """Accumulate dL/dx into `.grad` of every leaf that requires a gradient.

        `grad` is dL/dself; it may be left out only when self holds a single value (a loss).
        The graph's cached arrays are freed as backward passes them, as in PyTorch, unless
        retain_graph=True; that keeps a training step's peak memory to one graph.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require a gradient: no "
                               "input of the computation had requires_grad=True, or it ran "
                               "under no_grad()")
        xp = backend.get_array_module(self.data)
        if grad is None:
            if self.size != 1:
                raise ValueError(f"backward() without a gradient needs a single-value tensor "
                                 f"such as a loss; got shape {self.shape}. Pass "
                                 f"grad= of that shape, or reduce it first (e.g. .sum())")
            grad = xp.ones_like(self.data)
        else:
            grad = grad.data if isinstance(grad, Tensor) else xp.asarray(grad)
            if grad.shape != self.shape:
                raise ValueError(f"backward(): grad has shape {grad.shape}, but the tensor has "
                                 f"shape {self.shape}; they must match")
            grad = grad.astype(self.dtype, copy=False)
        _backpropagate(self, grad, retain_graph)

    def zero_grad(self):
        self.grad = None

    def register_post_accumulate_grad_hook(self, hook):
        """Call hook(tensor) each time backward() has added to this leaf's .grad (PyTorch's
        name): minialex/distributed.py sends a layer's gradients while backward goes on."""
        self._grad_hooks.append(hook)

    # -- operators (the Functions live in functions/basic.py) ------------------------------
    def __add__(self, other):
        return _basic().add(self, other)

    def __radd__(self, other):
        return _basic().add(other, self)

    def __sub__(self, other):
        return _basic().sub(self, other)

    def __rsub__(self, other):
        return _basic().sub(other, self)

    def __mul__(self, other):
        return _basic().mul(self, other)

    def __rmul__(self, other):
        return _basic().mul(other, self)

    def __truediv__(self, other):
        return _basic().div(self, other)

    def __rtruediv__(self, other):
        return _basic().div(other, self)

    def __neg__(self):
        return _basic().neg(self)

    def __pow__(self, exponent):
        return _basic().pow(self, exponent)

    def __matmul__(self, other):
        return _basic().matmul(self, other)

    def __rmatmul__(self, other):
        return _basic().matmul(other, self)

    def __getitem__(self, index):
        return _basic().getitem(self, index)

    def sum(self, axis=None, keepdims=False):
        return _basic().sum(self, axis, keepdims)

    def mean(self, axis=None, keepdims=False):
        return _basic().mean(self, axis, keepdims)

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return _basic().reshape(self, shape)

    def transpose(self, *axes):
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        return _basic().transpose(self, axes or None)

    @property
    def T(self):
        return self.transpose()

    def exp(self):
        return _basic().exp(self)

    def log(self):
        return _basic().log(self)

    def max(self, axis=None, keepdims=False):
        return _basic().max(self, axis, keepdims)


def _basic():
    from .functions import basic  # imported late: basic.py itself imports this module
    return basic


def tensor(data, requires_grad=False, dtype=None, device="cpu"):
    """Build a Tensor from an array, a list or a number.

    Python floats and lists become float32 (DEFAULT_DTYPE); NumPy arrays keep their dtype,
    so float64 stays float64 for gradient checks. `dtype` converts explicitly.
    """
    backend.check_device(device)
    if isinstance(data, Tensor):
        data = data.data
    xp = backend.get_array_module(data)
    if not isinstance(data, xp.ndarray):
        data = np.asarray(data)
        if data.dtype == np.float64 and dtype is None:
            data = data.astype(DEFAULT_DTYPE)
    if dtype is not None:
        data = data.astype(dtype, copy=False)
    return Tensor(backend.to_device(data, device), requires_grad=requires_grad)


def as_tensor_like(value, reference):
    """A constant Tensor for a Python number or array, with the dtype and device of reference."""
    if isinstance(value, Tensor):
        return value
    value = backend.get_array_module(reference.data).asarray(value)
    if value.dtype.kind not in "biuf":  # astype would drop an imaginary part with a warning
        raise TypeError(f"expected a real number or array; got dtype {value.dtype}")
    # a float with an integer tensor becomes float32, not truncated to an integer
    floats = value.dtype.kind == "f" and reference.dtype.kind != "f"
    return Tensor(value.astype(DEFAULT_DTYPE if floats else reference.dtype))


# --------------------------------------------------------------------------------------------
# Function

class Function:
    """One differentiable operation. Subclasses define forward and backward on arrays.

    forward(*arrays) -> array         the result, from the inputs' data
    backward(grad_output) -> tuple    dL/d(input_i) for every input (None where not needed)

    Non-differentiable arguments (stride, labels, ...) go to __init__. `self.needs_grad[i]`
    says whether input i requires a gradient, so backward can skip work nobody asked for.
    A fast path (dispatch.py) may stand in for a Function: then the stand-in, which computes
    the same thing, runs forward and is the output's `creator`.
    """

    def __call__(self, *inputs):
        inputs = [x if isinstance(x, Tensor) else _reject_non_tensor(self, x) for x in inputs]
        self._check_inputs(inputs)
        arrays = [x.data for x in inputs]
        # A fast path may stand in for this op (minialex/dispatch.py); by default this is self
        function = dispatch.fast_version(self, *arrays)
        function.needs_grad = tuple(x.requires_grad for x in inputs)
        result = function.forward(*arrays)
        # a full reduction gives a NumPy scalar, not an array
        output = Tensor(backend.get_array_module(result).asarray(result))
        if is_grad_enabled() and any(function.needs_grad):
            output.requires_grad = True
            output.creator = function
            function.inputs = inputs
            # The output is alive while backward runs (it is some later op's input, or the
            # root), so its id names it without holding a reference cycle.
            function._output_id = id(output)
        return output

    def _check_inputs(self, inputs):
        devices = {x.device for x in inputs}
        if len(devices) > 1:
            listing = ", ".join(f"{x.device} {tuple(x.shape)}" for x in inputs)
            raise ValueError(f"{self.name}: inputs are on different devices ({listing}); "
                             "move them to one device with .to('cpu') or .to('cuda')")
        float_dtypes = {x.dtype for x in inputs if x.dtype.kind == "f"}
        if len(float_dtypes) > 1:
            listing = ", ".join(str(x.dtype) for x in inputs)
            raise TypeError(f"{self.name}: inputs have different dtypes ({listing}); convert "
                            "them to one, e.g. with .float() or .double()")

    @property
    def name(self):
        return type(self).__name__

    def forward(self, *arrays):
        raise NotImplementedError

    def backward(self, grad_output):
        raise NotImplementedError


def _reject_non_tensor(function, value):
    raise TypeError(f"{function.name}: expected Tensor inputs, got {type(value).__name__}; wrap "
                    "arrays with minialex.tensor(...)")


def _topological_order(root):
    """Functions reachable from root, each after every function that consumes its output."""
    order, visited = [], set()
    stack = [(root.creator, False)]
    while stack:  # iterative depth-first search: deep graphs must not hit the recursion limit
        function, expanded = stack.pop()
        if expanded:
            order.append(function)
            continue
        if id(function) in visited:
            continue
        visited.add(id(function))
        stack.append((function, True))
        if not hasattr(function, "inputs"):
            raise RuntimeError("backward() through a graph that an earlier backward() already "
                               "freed; pass retain_graph=True to the first call to keep it")
        for x in function.inputs:
            if x.creator is not None and id(x.creator) not in visited:
                stack.append((x.creator, False))
    return order[::-1]


def _backpropagate(root, grad, retain_graph):
    if root.creator is None:  # backward() on a leaf: dL/dL = grad
        _accumulate_leaf(root, grad)
        return
    grads = {id(root): grad}  # gradients of non-leaf tensors, freed as soon as they are used
    for function in _topological_order(root):
        output_grad = grads.pop(function._output_id, None)
        if output_grad is None:  # no gradient reached it (its consumers returned None)
            continue
        input_grads = function.backward(output_grad)
        inputs = function.inputs
        if not retain_graph:
            _release(function)
        if not isinstance(input_grads, tuple):
            input_grads = (input_grads,)
        for x, g in zip(inputs, input_grads):
            if g is None or not x.requires_grad:
                continue
            if g.shape != x.shape or g.dtype != x.dtype:  # e.g. a silent float64 temporary
                raise RuntimeError(f"{function.name}.backward returned a gradient of shape "
                                   f"{g.shape} and dtype {g.dtype} for an input of shape "
                                   f"{x.shape} and dtype {x.dtype}")
            if x.creator is None:
                _accumulate_leaf(x, g)
            elif id(x) in grads:
                grads[id(x)] = grads[id(x)] + g
            else:
                grads[id(x)] = g


def _accumulate_leaf(x, g):
    # Never in place: one gradient array may be handed to several inputs (e.g. by add).
    x.grad = g if x.grad is None else x.grad + g
    for hook in x._grad_hooks:
        hook(x)


def _release(function):
    """Drop what a function cached for backward (its inputs and arrays); it is spent."""
    output_id = function._output_id
    function.__dict__.clear()
    function._output_id = output_id
