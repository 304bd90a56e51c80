"""Export a minialex model to ONNX, the exchange format that onnxruntime, Netron and most
deployment tools read (the format: https://onnx.ai/onnx/intro/concepts.html; each operator's
definition: https://onnx.ai/onnx/operators/).

    import minialex as mx
    import minialex.onnx
    model = mx.models.alexnet(variant="paper")
    minialex.onnx.export(model, "alexnet.onnx", input_shape=(1, 3, 227, 227))

The file holds one graph in opset OPSET (17, default domain; any opset from MIN_OPSET on can be
asked for), its IR version the lowest that opset allows, so that older runtimes read it too. The
graph's input is "input" (N, C, H, W) and its output "output", with the batch axis N dynamic:
any batch runs. Every other tensor and every node is named after the minialex layer that makes
it ("features.0", "classifier.6"), and every weight after its parameter ("features.0.weight"),
so the file reads like model.state_dict(). Weights are written in float32.

The model must be a chain of layers, each applied to the output of the one before, as
nn.Sequential and the three AlexNets are. It is traced once in eval() mode on a zero input of
`input_shape`, which records the layers in the order they run and the shape of each output;
each layer then becomes ONNX operators:

    Conv2d             Conv: pads [PH, PW, PH, PW] (begins, then ends), group = groups
    Linear             Gemm with transB = 1: y = x W^T + b, W (out_features, in_features)
    ReLU               Relu
    MaxPool2d          MaxPool, with ceil_mode when the layer has it
    LocalResponseNorm  LRN: y = x / (bias + alpha / size * S)^beta, S the sum of squares over
                       the channels c - (size - 1) / 2 ... c + (size - 1) / 2; PyTorch's alpha
                       and minialex's (minialex/ALEXNET.md). Odd sizes only: for an even size
                       ONNX's window is not PyTorch's, and onnxruntime refuses it.
    Dropout            Identity: dropout is the identity at inference
    Flatten            Flatten (start_dim 1) or Reshape to [0, ..., 0, -1] (start_dim k)
    AdaptiveAvgPool2d  Identity when the input already has the output's size (torchvision's
                       AlexNet at 224 or 227), else y = P_h x P_w^T as two MatMuls, with the
                       averaging matrices of minialex/functions/pool.py as initializers

onnx is an optional dependency (pip install -e '.[onnx]'): it is imported when export() runs,
never by `import minialex`.
"""
import os
import tempfile

import numpy as np

from . import backend, nn
from .functions.conv import _pair
from .functions.pool import adaptive_pool_matrix

OPSET = 17       # onnxruntime >= 1.13 and onnx >= 1.12 run it
MIN_OPSET = 13   # the operators above have had their present form since opset 13
# protobuf cannot hold a message over 2 GiB: larger weights go to a file beside the model
LARGE_MODEL_BYTES = 1_800_000_000
INSTALL_HINT = "pip install -e '.[onnx]' (or pip install onnx)"


def import_onnx():
    """The onnx package, or one clear ImportError saying how to install it."""
    # `import onnx` is absolute: it finds the onnx package, not this module (minialex.onnx)
    try:
        import onnx
        import onnx.checker
        import onnx.helper
        import onnx.shape_inference
    except ImportError:
        raise ImportError(f"minialex.onnx needs the onnx package: {INSTALL_HINT}") from None
    return onnx


def export(model, path, input_shape=(1, 3, 227, 227), opset=OPSET):
    """Write `model` to `path` as an ONNX model; input_shape is (N, C, H, W) with any N (the
    batch axis is dynamic in the file). onnx's checker (full check, with shape inference) has
    passed on what is written. Returns the onnx.ModelProto."""
    onnx = import_onnx()
    if not isinstance(model, nn.Module):
        raise TypeError(f"onnx.export: model must be a minialex nn.Module; got "
                        f"{type(model).__name__}")
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list)) else None
    if not shape or len(shape) < 2 or not all(
            isinstance(size, (int, np.integer)) and not isinstance(size, bool) and size > 0
            for size in shape):
        raise ValueError(f"onnx.export: input_shape must be a tuple of positive ints with the "
                         f"batch first, such as (1, 3, 227, 227); got {input_shape!r}")
    newest = onnx.defs.onnx_opset_version()
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= newest:
        raise ValueError(f"onnx.export: opset must be an int from {MIN_OPSET} to {newest} "
                         f"(this onnx's newest); got {opset!r}")
    try:
        traced = nn._trace_layers(model, shape[1:])  # [(layer, output shape without N)]
    except (ValueError, TypeError) as error:
        raise ValueError(f"onnx.export: the model cannot run on input_shape {shape}: "
                         f"{error}") from error

    if not traced:
        raise ValueError(f"onnx.export: {type(model).__name__} has no layers to export")
    graph = _GraphBuilder(onnx, model)
    layer_names = {id(module): name for name, module in model.named_modules()}
    value, value_shape = "input", shape[1:]
    for index, (layer, output_shape) in enumerate(traced):
        name = layer_names.get(id(layer), type(layer).__name__)
        translate = _TRANSLATIONS.get(type(layer))
        if translate is None:
            supported = ", ".join(kind.__name__ for kind in _TRANSLATIONS)
            raise ValueError(f"onnx.export: layer {name!r} is a {type(layer).__name__}, which "
                             f"has no ONNX translation; supported layers: {supported}")
        output = "output" if index == len(traced) - 1 else graph.unique(name)
        translate(graph, graph.unique(name, node=True), layer, value, output, value_shape,
                  output_shape)
        value, value_shape = output, output_shape

    helper, float32 = onnx.helper, onnx.TensorProto.FLOAT
    onnx_graph = helper.make_graph(
        graph.nodes, type(model).__name__, [
            helper.make_tensor_value_info("input", float32, ["N", *shape[1:]])], [
            helper.make_tensor_value_info("output", float32, ["N", *traced[-1][1]])],
        initializer=graph.initializers)
    opsets = [helper.make_opsetid("", opset)]
    onnx_model = helper.make_model(onnx_graph, opset_imports=opsets, producer_name="minialex",
                                   ir_version=helper.find_min_ir_version_for(opsets),
                                   doc_string=repr(model))
    # written in a folder beside PATH, then renamed: a failure never leaves half a file there
    where = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(where):
        raise FileNotFoundError(f"onnx.export: the folder {where} of {path} does not exist")
    with tempfile.TemporaryDirectory(dir=where, prefix=".onnx-export-") as folder:
        staged = os.path.join(folder, os.path.basename(path))
        if graph.weight_bytes <= LARGE_MODEL_BYTES:
            onnx_model = onnx.shape_inference.infer_shapes(onnx_model, strict_mode=True)
            onnx.checker.check_model(onnx_model, full_check=True)
            onnx.save_model(onnx_model, staged)
        else:  # the weights in PATH.data beside it; the checker then reads the files
            onnx.save_model(onnx_model, staged, save_as_external_data=True,
                            all_tensors_to_one_file=True,
                            location=os.path.basename(path) + ".data")
            onnx.shape_inference.infer_shapes_path(staged, strict_mode=True)
            onnx.checker.check_model(staged, full_check=True)
            os.replace(staged + ".data", os.fspath(path) + ".data")
        os.replace(staged, path)
    return onnx_model


class _GraphBuilder:
    """The nodes and initializers of the graph being built, with unique names."""

    def __init__(self, onnx, model):
        self.onnx, self.nodes, self.initializers, self.weight_bytes = onnx, [], [], 0
        self.parameter_names = {id(p): name for name, p in model.named_parameters()}
        self.used_names = {(False, "input"), (False, "output")}  # (is a node's, name)

    def unique(self, name, node=False):
        """`name`, or name#2, name#3, ... for a layer that runs more than once."""
        unique, count = name, 1
        while (node, unique) in self.used_names:
            count += 1
            unique = f"{name}#{count}"
        self.used_names.add((node, unique))
        return unique

    def constant(self, name, array):
        """Add an initializer (once per name) and return its name."""
        if name not in {initializer.name for initializer in self.initializers}:
            array = np.ascontiguousarray(array)
            self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
            self.weight_bytes += array.nbytes
        return name

    def parameter(self, parameter):
        name = self.parameter_names[id(parameter)]
        return self.constant(name, backend.as_numpy(parameter.data).astype(np.float32))

    def node(self, op_type, inputs, output, name, **attributes):
        self.nodes.append(self.onnx.helper.make_node(op_type, inputs, [output], name=name,
                                                     **attributes))


def _conv(graph, name, conv, x, y, x_shape, y_shape):
    inputs = [x, graph.parameter(conv.weight)]
    if conv.bias is not None:
        inputs.append(graph.parameter(conv.bias))
    PH, PW = _pair(conv.padding, "padding")
    graph.node("Conv", inputs, y, name, kernel_shape=list(conv.kernel_size),
               strides=list(_pair(conv.stride, "stride")), pads=[PH, PW, PH, PW],
               group=conv.groups)


def _linear(graph, name, linear, x, y, x_shape, y_shape):
    if len(x_shape) != 1:
        raise ValueError(f"onnx.export: Linear layer {name!r} gets a {len(x_shape) + 1}-D "
                         f"input (N, {', '.join(map(str, x_shape))}); ONNX's Gemm takes (N, "
                         "features) only: put a Flatten before it")
    inputs = [x, graph.parameter(linear.weight)]
    if linear.bias is not None:
        inputs.append(graph.parameter(linear.bias))
    graph.node("Gemm", inputs, y, name, transB=1)


def _max_pool(graph, name, pool, x, y, x_shape, y_shape):
    kernel = _pair(pool.kernel_size, "kernel_size")
    stride = kernel if pool.stride is None else _pair(pool.stride, "stride")
    PH, PW = _pair(pool.padding, "padding")
    ceil_mode = {"ceil_mode": 1} if pool.ceil_mode else {}
    graph.node("MaxPool", [x], y, name, kernel_shape=list(kernel), strides=list(stride),
               pads=[PH, PW, PH, PW], **ceil_mode)


def _lrn(graph, name, lrn, x, y, x_shape, y_shape):
    if lrn.size % 2 == 0:
        raise ValueError(f"onnx.export: LocalResponseNorm layer {name!r} has the even size "
                         f"{lrn.size}; ONNX's LRN centres an even window one channel off "
                         "PyTorch's (and minialex's), and onnxruntime runs odd sizes only")
    graph.node("LRN", [x], y, name, size=int(lrn.size), alpha=float(lrn.alpha),
               beta=float(lrn.beta), bias=float(lrn.k))


def _flatten(graph, name, flatten, x, y, x_shape, y_shape):
    if flatten.start_dim == 1:
        graph.node("Flatten", [x], y, name, axis=1)
    else:  # Reshape's 0 keeps that axis; -1 takes the rest
        target = np.array([0] * flatten.start_dim + [-1], dtype=np.int64)
        graph.node("Reshape", [x, graph.constant(f"{name}.shape", target)], y, name)


def _adaptive_avg_pool(graph, name, pool, x, y, x_shape, y_shape):
    (H, W), (OH, OW) = x_shape[-2:], y_shape[-2:]
    if (H, W) == (OH, OW):
        return graph.node("Identity", [x], y, name)
    rows = adaptive_pool_matrix(np, H, OH, np.float32)        # (OH, H): P_h
    columns = adaptive_pool_matrix(np, W, OW, np.float32).T   # (W, OW): P_w^T
    # (N, C, H, W) @ (W, OW), then (OH, H) @ (N, C, H, OW): MatMul broadcasts over N and C
    half = graph.unique(f"{name}.columns")  # (N, C, H, OW)
    graph.node("MatMul", [x, graph.constant(f"{name}.column_weights", columns)], half,
               graph.unique(f"{name}.columns", node=True))
    graph.node("MatMul", [graph.constant(f"{name}.row_weights", rows), half], y, name)


_TRANSLATIONS = {
    nn.Conv2d: _conv,
    nn.Linear: _linear,
    nn.ReLU: lambda graph, name, layer, x, y, *shapes: graph.node("Relu", [x], y, name),
    nn.MaxPool2d: _max_pool,
    nn.LocalResponseNorm: _lrn,
    nn.Dropout: lambda graph, name, layer, x, y, *shapes: graph.node("Identity", [x], y, name),
    nn.Flatten: _flatten,
    nn.AdaptiveAvgPool2d: _adaptive_avg_pool,
}
