"""Modules: layers that own their weights, and containers of layers. PyTorch's names.

A `Module` finds its parameters and sub-modules among its attributes, in the order they were
set, so `named_parameters()` and `state_dict()` list them in the order the network uses them:

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)        # conv.weight (8, 3, 3, 3), conv.bias (8,)
            self.fc = nn.Linear(8, 10)            # fc.weight (10, 8), fc.bias (10,)

The layers start from PyTorch's default initialisation, so that habits and learning rates
carry over: every weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in being the
number of inputs of one output unit. AlexNet's own initialisation (§5) is in models/alexnet.py.
"""
import math

import numpy as np

from . import backend, functional as F, random
from .functions.conv import _pair as conv_pair
from .tensor import DEFAULT_DTYPE, Tensor, no_grad, tensor


_call_hooks = []  # functions (module, output) called after every module's forward


class Parameter(Tensor):
    """A Tensor that is a weight of a Module: it requires a gradient unless told otherwise."""

    def __init__(self, data, requires_grad=True):
        super().__init__(data.data if isinstance(data, Tensor) else data, requires_grad)

    def __repr__(self):
        return "Parameter(" + super().__repr__() + ")"


class Module:
    """The base of every layer and network. Subclasses define forward()."""

    def __init__(self):
        self.training = True

    def forward(self, *inputs):
        raise NotImplementedError(f"{type(self).__name__} defines no forward()")

    def __call__(self, *inputs):
        output = self.forward(*inputs)
        for hook in _call_hooks:  # empty except while summary() traces the layers
            hook(self, output)
        return output

    # -- what it holds ---------------------------------------------------------------------
    def named_children(self):
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield name, value

    def children(self):
        return [module for _, module in self.named_children()]

    def named_modules(self, prefix=""):
        yield prefix, self
        for name, child in self.named_children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self):
        return [module for _, module in self.named_modules()]

    def named_parameters(self, prefix=""):
        for name, value in vars(self).items():
            full_name = f"{prefix}.{name}" if prefix else name
            if isinstance(value, Parameter):
                yield full_name, value
            elif isinstance(value, Module):
                yield from value.named_parameters(full_name)

    def parameters(self):
        return [parameter for _, parameter in self.named_parameters()]

    def num_parameters(self):
        return sum(parameter.size for parameter in self.parameters())

    # -- modes, devices, gradients ---------------------------------------------------------
    def train(self, mode=True):
        for module in self.modules():
            module.training = mode
        return self

    def eval(self):
        return self.train(False)

    def to(self, device=None, dtype=None):
        """Move every parameter (and its gradient) to `device` and/or `dtype`, in place."""
        if device is not None:
            backend.check_device(device)
        for parameter in self.parameters():
            moved = parameter.to(device, dtype)
            parameter.data = moved.data
            if parameter.grad is not None:
                parameter.grad = parameter.grad if device is None else \
                    backend.to_device(parameter.grad, device)
                if dtype is not None:
                    parameter.grad = parameter.grad.astype(dtype, copy=False)
        return self

    def float(self):
        return self.to(dtype=np.float32)

    def double(self):
        return self.to(dtype=np.float64)

    def zero_grad(self):
        for parameter in self.parameters():
            parameter.grad = None

    # -- saving ----------------------------------------------------------------------------
    def state_dict(self):
        """{name: array} for every parameter, in order. The arrays are the live weights, not
        copies (as in PyTorch); minialex.save copies them to disk."""
        return {name: parameter.data for name, parameter in self.named_parameters()}

    def load_state_dict(self, state_dict, strict=True):
        """Copy arrays from `state_dict` into the parameters of the same names.

        Every problem is found before anything is copied, and all of them are listed in one
        error: a half-loaded model is worse than none. With strict=False, missing and
        unexpected names are allowed and returned; a shape mismatch is always an error, and so
        is a value that is not a real floating-point or integer array (a list, None, strings,
        bools, complex numbers, whose imaginary part a copy would drop).
        """
        if not isinstance(state_dict, dict):
            raise TypeError(f"load_state_dict: expected a dict of arrays, got "
                            f"{type(state_dict).__name__}")
        own = dict(self.named_parameters())
        missing = [name for name in own if name not in state_dict]
        unexpected = [name for name in state_dict if name not in own]
        mismatched, wrong_type, arrays = [], [], {}
        for name, parameter in own.items():
            if name not in state_dict:
                continue
            value = state_dict[name]
            value = value.data if isinstance(value, Tensor) else value
            if not isinstance(value, backend.get_array_module(value).ndarray):
                wrong_type.append(f"{name}: a {type(value).__name__}, not an array")
            elif value.dtype.kind not in "fiu":
                wrong_type.append(f"{name}: dtype {value.dtype}, not real floating point or "
                                  "integer")
            elif tuple(value.shape) != tuple(parameter.shape):
                mismatched.append(f"{name}: file has {tuple(value.shape)}, model has "
                                  f"{tuple(parameter.shape)}")
            else:
                arrays[name] = value
        problems = []
        if wrong_type:
            problems.append("values that are not weights: " + "; ".join(wrong_type))
        if mismatched:
            problems.append("shapes that do not match: " + "; ".join(mismatched))
        if strict and missing:
            problems.append("missing from the state dict: " + ", ".join(missing))
        if strict and unexpected:
            problems.append("unexpected in the state dict: " + ", ".join(unexpected))
        if problems:
            raise ValueError(f"load_state_dict into {type(self).__name__} failed, nothing was "
                             "loaded; " + " | ".join(problems))
        # every copy is made before any is put in place: nothing changes if one fails
        arrays = {name: backend.to_device(value, own[name].device).astype(own[name].dtype)
                  for name, value in arrays.items()}
        for name, value in arrays.items():
            own[name].data = value
        return missing, unexpected

    # -- display ---------------------------------------------------------------------------
    def extra_repr(self):
        return ""

    def __repr__(self):
        children = list(self.named_children())
        if not children:
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = [f"{type(self).__name__}("]
        for name, child in children:
            lines.append("  " + f"({name}): {child!r}".replace("\n", "\n  "))
        return "\n".join(lines + [")"])

    def summary(self, input_shape, show_all=False):
        """A table of every layer with its output shape and parameter count, the total last
        (Keras's model.summary()). `input_shape` is one image's shape, e.g. (3, 227, 227).

        ReLU and Dropout change neither shapes nor parameters, so they are left out unless
        show_all=True; the table then lists the same rows as the seed table in minialex/ALEXNET.md.
        """
        rows = _trace_layers(self, input_shape)
        return _format_summary(rows, show_all)


def _uniform(shape, bound):
    """U(-bound, bound) in float32, from minialex's seedable generator."""
    values = random.generator(np).uniform(-bound, bound, size=shape)
    return Parameter(values.astype(DEFAULT_DTYPE))


class Conv2d(Module):
    """y = conv2d(x, weight, bias): weight (out_channels, in_channels / groups, KH, KW)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1,
                 bias=True):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d: in_channels {in_channels} and out_channels "
                             f"{out_channels} must both be divisible by groups={groups}")
        KH, KW = conv_pair(kernel_size, "kernel_size")  # an int or a pair; not a bool
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.groups = (KH, KW), stride, padding, \
            groups
        fan_in = in_channels // groups * KH * KW
        bound = 1 / math.sqrt(fan_in)
        self.weight = _uniform((out_channels, in_channels // groups, KH, KW), bound)
        self.bias = _uniform((out_channels,), bound) if bias else None

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.groups)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, groups={self.groups}")


class Linear(Module):
    """y = x @ weight^T + bias: weight (out_features, in_features), as in PyTorch."""

    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        bound = 1 / math.sqrt(in_features)
        self.weight = _uniform((out_features, in_features), bound)
        self.bias = _uniform((out_features,), bound) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}"


class MaxPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False):
        super().__init__()
        self.kernel_size, self.stride, self.padding, self.ceil_mode = \
            kernel_size, stride, padding, ceil_mode

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AdaptiveAvgPool2d(Module):
    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, x):
        return F.adaptive_avg_pool2d(x, self.output_size)

    def extra_repr(self):
        return f"output_size={self.output_size}"


class LocalResponseNorm(Module):
    """PyTorch's convention: the sum of squares is multiplied by alpha / size
    (minialex/ALEXNET.md, "Local response normalization")."""

    def __init__(self, size, alpha=1e-4, beta=0.75, k=1.0):
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, x):
        return F.local_response_norm(x, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self):
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


class ReLU(Module):
    def forward(self, x):
        return F.relu(x)


class Dropout(Module):
    """Inverted dropout while training (module.train()), the identity in module.eval()."""

    def __init__(self, p=0.5):
        super().__init__()
        self.p = p

    def forward(self, x):
        return F.dropout(x, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}"


class Flatten(Module):
    def __init__(self, start_dim=1):
        super().__init__()
        self.start_dim = start_dim

    def forward(self, x):
        return F.flatten(x, self.start_dim)


class Sequential(Module):
    """Layers applied one after another; they are named "0", "1", ... as in PyTorch."""

    def __init__(self, *layers):
        super().__init__()
        for index, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential: layer {index} is a {type(layer).__name__}, "
                                "not a Module")
            setattr(self, str(index), layer)

    def __len__(self):
        return len(self.children())

    def __getitem__(self, index):
        return self.children()[index]

    def __iter__(self):
        return iter(self.children())

    def forward(self, x):
        for layer in self.children():
            x = layer(x)
        return x


# ----------------------------------------------------------------------------------------------
# summary()

# The short names of the summary's first column, as in minialex/ALEXNET.md's seed table
# (Keras says "dense").
_SHORT_NAMES = {"Conv2d": "conv", "MaxPool2d": "pool", "LocalResponseNorm": "lrn",
                "Linear": "dense", "ReLU": "relu", "Dropout": "dropout", "Flatten": "flatten",
                "AdaptiveAvgPool2d": "avgpool"}
_HIDDEN_BY_DEFAULT = ("ReLU", "Dropout")


def _trace_layers(model, input_shape):
    """Run one zero image through the model and record every leaf layer's output shape."""
    rows = []

    def record(module, output):
        if not module.children():
            rows.append((module, tuple(output.shape[1:])))

    parameters = model.parameters()
    device = parameters[0].device if parameters else "cpu"
    dtype = parameters[0].dtype if parameters else DEFAULT_DTYPE
    was_training = model.training
    _call_hooks.append(record)
    try:
        model.eval()
        with no_grad():
            model(tensor(np.zeros((1, *input_shape), dtype=dtype), device=device))
    finally:
        _call_hooks.remove(record)
        model.train(was_training)
    return rows


def _format_summary(rows, show_all):
    counters, lines = {}, []
    header = f"{'Layer (type)':<30}{'Output shape':<24}{'Param #':>14}"
    rule = "=" * len(header)
    lines += [header, rule]
    total = 0
    hidden = 0
    for module, shape in rows:
        kind = type(module).__name__
        count = sum(p.size for p in module.parameters())
        total += count
        short = _SHORT_NAMES.get(kind, kind.lower())
        counters[short] = counters.get(short, 0) + 1
        if kind in _HIDDEN_BY_DEFAULT and not show_all:
            hidden += 1
            continue
        label = f"{short} {counters[short]}" if short != "flatten" else short
        shape_text = "(N, " + ", ".join(str(s) for s in shape) + ")"
        lines.append(f"{label + ' (' + kind + ')':<30}{shape_text:<24}{count:>14,}")
    lines.append(rule)
    megabytes = total * 4 / 2**20
    lines.append(f"Total params: {total:,} ({megabytes:.2f} MB in float32)")
    if hidden:
        lines.append(f"({hidden} ReLU and Dropout layers not shown: summary(..., show_all=True))")
    return "\n".join(lines)
