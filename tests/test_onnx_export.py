"""minialex.onnx.export, checked by onnx's checker and with onnxruntime as the oracle: the file
it writes must compute what minialex's eval() forward computes, at any batch size.

(onnx.reference is not used as an oracle: its LRN is wrong in onnx 1.23.)
"""
import importlib.util
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import minialex as mx
import minialex.onnx
from minialex import nn
from minialex.models.alexnet import VARIANTS

ROOT = pathlib.Path(__file__).resolve().parents[1]
needs_onnx = pytest.mark.skipif(importlib.util.find_spec("onnx") is None,
                                reason="needs onnx (pip install -e '.[onnx]')")
needs_onnxruntime = pytest.mark.skipif(
    importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None,
    reason="needs onnx and onnxruntime (pip install -e '.[onnx]')")


def minialex_forward(model, x):
    """The oracle's counterpart: minialex's eval() forward, the model's mode restored after."""
    was_training = model.training
    model.eval()
    with mx.no_grad():
        y = model(mx.tensor(x)).data
    model.train(was_training)
    return y


def onnxruntime_forward(path, x):
    import onnxruntime
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def assert_close(actual, expected):
    """float32 tolerance: 1e-5 relative, against the largest logit (sums of thousands of
    products come out in another order in onnxruntime)."""
    assert actual.shape == expected.shape
    scale = np.abs(expected).max()
    assert scale > 0
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5 * scale)


def images(batch, size, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)


def small_alexnet(variant):
    # kaiming keeps the logits far from 0, so that a wrong layer shows in them
    return mx.models.alexnet(variant, num_classes=10, width=0.25, init="kaiming")


def dims(value_info):
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


# ---- the three variants ----------------------------------------------------------------------

@needs_onnx
@pytest.mark.parametrize("variant", VARIANTS)
def test_each_variant_passes_the_checker_with_a_dynamic_batch_and_the_opset(variant, tmp_path):
    import onnx
    model = small_alexnet(variant)
    size = model.input_size
    path = tmp_path / "alexnet.onnx"
    minialex.onnx.export(model, path, input_shape=(1, 3, size, size))
    onnx.checker.check_model(str(path), full_check=True)  # on the file, as a user would
    saved = onnx.load(str(path))
    assert [(o.domain, o.version) for o in saved.opset_import] == [("", minialex.onnx.OPSET)]
    assert saved.ir_version == onnx.helper.find_min_ir_version_for(list(saved.opset_import))
    assert [i.name for i in saved.graph.input] == ["input"]
    assert dims(saved.graph.input[0]) == ["N", 3, size, size]
    assert [o.name for o in saved.graph.output] == ["output"]
    assert dims(saved.graph.output[0]) == ["N", 10]
    assert saved.producer_name == "minialex"
    assert model.training, "export must leave the model in the mode it found it in"


@needs_onnxruntime
@pytest.mark.parametrize("variant", VARIANTS)
def test_onnxruntime_computes_minialex_forward_at_batch_1_and_5(variant, tmp_path):
    model = small_alexnet(variant)
    size = model.input_size
    path = tmp_path / "alexnet.onnx"
    minialex.onnx.export(model, path, input_shape=(1, 3, size, size))
    for batch in (1, 5):
        x = images(batch, size, seed=batch)
        assert_close(onnxruntime_forward(path, x), minialex_forward(model, x))


@needs_onnxruntime
def test_the_full_size_paper_alexnet_with_lrn_and_groups(tmp_path):
    model = mx.models.alexnet("paper", init="kaiming")  # 60,965,224 parameters
    path = tmp_path / "alexnet.onnx"
    minialex.onnx.export(model, path)
    x = images(2, 227)
    assert_close(onnxruntime_forward(path, x), minialex_forward(model, x))


@needs_onnxruntime
def test_torchvision_adaptive_pool_that_is_not_the_identity(tmp_path):
    """At 256x288 the features end at 7x8, and the average pool to 6x6 has overlapping bins
    (not a square, so that rows and columns cannot be swapped unseen)."""
    import onnx
    model = small_alexnet("torchvision")
    path = tmp_path / "alexnet.onnx"
    minialex.onnx.export(model, path, input_shape=(1, 3, 256, 288))
    ops = {node.name: node.op_type for node in onnx.load(str(path)).graph.node}
    assert ops["avgpool"] == "MatMul"
    x = np.random.default_rng(0).standard_normal((3, 3, 256, 288)).astype(np.float32)
    assert_close(onnxruntime_forward(path, x), minialex_forward(model, x))


@needs_onnx
def test_names_are_minialex_layer_and_parameter_names(tmp_path):
    import onnx
    from onnx import numpy_helper
    model = small_alexnet("paper")
    path = tmp_path / "alexnet.onnx"
    minialex.onnx.export(model, path)
    graph = onnx.load(str(path)).graph
    layers = [name for name, module in model.named_modules() if not module.children()]
    assert [node.name for node in graph.node] == layers
    assert [node.op_type for node in graph.node[:4]] == ["Conv", "Relu", "LRN", "MaxPool"]
    # every node's output is named after its layer, the last one "output"
    assert [node.output[0] for node in graph.node] == layers[:-1] + ["output"]
    state = model.state_dict()
    assert [initializer.name for initializer in graph.initializer] == list(state)
    for initializer in graph.initializer:
        np.testing.assert_array_equal(numpy_helper.to_array(initializer), state[initializer.name])
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in graph.node[4].attribute}
    assert graph.node[4].name == "features.4" and attributes["group"] == 2
    assert attributes["pads"] == [2, 2, 2, 2]


@needs_onnxruntime
@pytest.mark.parametrize("opset", [minialex.onnx.MIN_OPSET, 21])
def test_another_opset(opset, tmp_path):
    import onnx
    model = small_alexnet("paper")
    path = tmp_path / "alexnet.onnx"
    minialex.onnx.export(model, path, opset=opset)
    assert onnx.load(str(path)).opset_import[0].version == opset
    x = images(2, 227)
    assert_close(onnxruntime_forward(path, x), minialex_forward(model, x))


@needs_onnxruntime
def test_weights_over_the_protobuf_limit_go_to_a_file_beside_the_model(tmp_path, monkeypatch):
    monkeypatch.setattr(minialex.onnx, "LARGE_MODEL_BYTES", 0)  # as if over 2 GiB
    model = small_alexnet("seed")
    path = tmp_path / "alexnet.onnx"
    minialex.onnx.export(model, path)
    weights = tmp_path / "alexnet.onnx.data"
    # onnx leaves tensors under 1 KiB (here the biases) inside the model file
    weight_bytes = 4 * model.num_parameters()
    assert weights.stat().st_size > 0.99 * weight_bytes > 10 * path.stat().st_size
    x = images(2, 227)
    assert_close(onnxruntime_forward(path, x), minialex_forward(model, x))


@needs_onnx
@pytest.mark.parametrize("large", [False, True])
def test_a_failed_export_leaves_the_file_already_there_as_it_was(large, tmp_path, monkeypatch):
    import onnx
    if large:
        monkeypatch.setattr(minialex.onnx, "LARGE_MODEL_BYTES", 0)
    path = tmp_path / "alexnet.onnx"
    path.write_bytes(b"an earlier export")
    (tmp_path / "alexnet.onnx.data").write_bytes(b"its weights")

    def fails(*args, **kwargs):
        raise RuntimeError("the disk is full")
    monkeypatch.setattr(onnx.checker, "check_model", fails)
    with pytest.raises(RuntimeError, match="the disk is full"):
        minialex.onnx.export(small_alexnet("seed"), path)
    assert path.read_bytes() == b"an earlier export"
    assert (tmp_path / "alexnet.onnx.data").read_bytes() == b"its weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alexnet.onnx", "alexnet.onnx.data"]


@needs_onnx
def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="folder .*missing.* does not exist"):
        minialex.onnx.export(small_alexnet("seed"), tmp_path / "missing" / "alexnet.onnx")
    assert not (tmp_path / "missing").exists()


# ---- other layers and settings ---------------------------------------------------------------

@needs_onnxruntime
def test_layers_without_bias_ceil_mode_padding_a_reused_layer_and_flatten_start_dim(tmp_path):
    import onnx
    relu = nn.ReLU()  # one layer, run twice: its nodes must still have unique names
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, stride=(2, 1), padding=(1, 2), bias=False),   # (N, 6, 8, 17)
        relu,
        nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),            # (N, 6, 5, 9)
        nn.LocalResponseNorm(3, alpha=1e-2, beta=0.6, k=1.5),
        nn.Conv2d(6, 4, 1, groups=2),
        relu,
        nn.Flatten(),
        nn.Linear(4 * 5 * 9, 7, bias=False))
    path = tmp_path / "net.onnx"
    minialex.onnx.export(model, path, input_shape=(1, 3, 15, 15))
    names = [node.name for node in onnx.load(str(path)).graph.node]
    assert len(set(names)) == len(names) == 8
    x = images(4, 15)
    assert_close(onnxruntime_forward(path, x), minialex_forward(model, x))

    flatten_last_axes = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(start_dim=2))
    path = tmp_path / "flatten.onnx"
    minialex.onnx.export(flatten_last_axes, path, input_shape=(1, 3, 6, 6))
    y = onnxruntime_forward(path, x[:, :, :6, :6])
    assert y.shape == (4, 4, 16)
    assert_close(y, minialex_forward(flatten_last_axes, x[:, :, :6, :6]))


# ---- errors ------------------------------------------------------------------------------------

@needs_onnx
def test_an_even_lrn_size_is_refused(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LocalResponseNorm(4))
    with pytest.raises(ValueError, match=r"LocalResponseNorm layer '1' has the even size 4"):
        minialex.onnx.export(model, tmp_path / "x.onnx", input_shape=(1, 3, 8, 8))
    assert not (tmp_path / "x.onnx").exists()


class Square(nn.Module):
    def forward(self, x):
        return x * x


@needs_onnx
def test_an_unknown_layer_is_named(tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), Square())
    with pytest.raises(ValueError, match=r"layer '1' is a Square, which has no ONNX translation"):
        minialex.onnx.export(model, tmp_path / "x.onnx", input_shape=(1, 3, 8, 8))


@needs_onnx
@pytest.mark.parametrize("input_shape", ["227", (227,), (1, 3, 0, 227), (1, 3, 227.0, 227),
                                         (1, 3, True, 227), None])
def test_a_malformed_input_shape(input_shape, tmp_path):
    with pytest.raises(ValueError, match=r"input_shape must be a tuple of positive ints"):
        minialex.onnx.export(small_alexnet("seed"), tmp_path / "x.onnx", input_shape)


@needs_onnx
@pytest.mark.parametrize("input_shape, phrase", [((1, 4, 227, 227), "channel"),
                                                 ((1, 3, 30, 30), "does not fit"),
                                                 ((3, 227, 227), "4-D")])
def test_an_input_shape_the_model_cannot_run(input_shape, phrase, tmp_path):
    with pytest.raises(ValueError, match=r"the model cannot run on input_shape") as error:
        minialex.onnx.export(small_alexnet("seed"), tmp_path / "x.onnx", input_shape)
    assert phrase in str(error.value)


@needs_onnx
@pytest.mark.parametrize("opset", [12, 10_000, "17", 17.0])
def test_an_opset_out_of_range(opset, tmp_path):
    with pytest.raises(ValueError, match=r"opset must be an int from 13 to"):
        minialex.onnx.export(small_alexnet("seed"), tmp_path / "x.onnx", opset=opset)


@needs_onnx
def test_not_a_model(tmp_path):
    with pytest.raises(TypeError, match=r"model must be a minialex nn.Module; got dict"):
        minialex.onnx.export({}, tmp_path / "x.onnx")


def test_without_onnx_installed_the_error_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now raises ImportError
    with pytest.raises(ImportError, match=r"needs the onnx package: pip install -e '.\[onnx\]'"):
        minialex.onnx.export(small_alexnet("seed"), tmp_path / "x.onnx")


def run_python(code, cwd=ROOT):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_import_minialex_never_imports_onnx():
    result = run_python(
        "import sys; sys.modules['onnx'] = sys.modules['onnxruntime'] = None\n"
        "import minialex, minialex.onnx\n"
        "del sys.modules['onnx'], sys.modules['onnxruntime']\n"
        "import minialex.models; minialex.models.alexnet('seed', width=0.1)\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] == 'onnx'))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@needs_onnx
def test_import_onnx_finds_the_onnx_package_not_minialex_onnx():
    import onnx
    assert minialex.onnx.import_onnx() is onnx
    assert onnx.__name__ == "onnx" and hasattr(onnx, "helper")
    assert pathlib.Path(onnx.__file__).resolve().parent != ROOT / "minialex"


# ---- examples/train_alexnet.py --export-onnx ---------------------------------------------------

TRAIN = str(ROOT / "examples" / "train_alexnet.py")
TINY = ["--width", "0.0625", "--per-class", "1", "--batch-size", "4", "--threads", "1",
        "--no-progress", "--epochs", "1"]


def train(out, *args, env=None):
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, TRAIN, "--out", str(out), *TINY, *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@needs_onnxruntime
def test_train_script_writes_model_onnx_beside_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    result = train(out, "--export-onnx", "--variant", "torchvision")
    assert result.returncode == 0, result.stderr
    assert f"wrote {out / 'model.onnx'}" in result.stdout
    checkpoint = mx.load(str(out / "checkpoint.npz"))
    config = checkpoint["config"]
    model = mx.models.alexnet(config["variant"], num_classes=config["num_classes"],
                              width=config["width"])
    model.load_state_dict(checkpoint["model"])
    x = images(3, 224)
    assert_close(onnxruntime_forward(out / "model.onnx", x), minialex_forward(model, x))


@pytest.mark.slow
def test_train_script_without_onnx_fails_before_training(tmp_path):
    fake = tmp_path / "no_onnx" / "onnx"  # a package `onnx` that cannot be imported
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no onnx here')\n")
    env = dict(os.environ, PYTHONPATH=str(fake.parent))
    out = tmp_path / "run"
    result = train(out, "--export-onnx", env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("error: --export-onnx: minialex.onnx needs the onnx package")
    assert not out.exists()
