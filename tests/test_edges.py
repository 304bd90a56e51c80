"""Edges of the API (issue 12): non-finite SGD settings, all-or-nothing load_state_dict,
16-bit images, empty batches, bools and floats where ints belong, non-numeric tensors, and
integer tensors mixed with floating-point ones."""
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

import minialex as mx
from minialex import functional as F, nn, optim
from minialex.data.folder import load_image
from minialex.tensor import Tensor, tensor

NAN, INF = float("nan"), float("inf")


# ---- SGD refuses NaN, inf and bools -----------------------------------------------------------

def one_parameter():
    return [tensor(np.ones(3, np.float32), requires_grad=True)]


@pytest.mark.parametrize("name, value", [("lr", NAN), ("lr", INF), ("momentum", NAN),
                                         ("momentum", INF), ("weight_decay", NAN),
                                         ("weight_decay", INF), ("lr", np.float32("nan"))])
def test_sgd_refuses_non_finite_settings(name, value):
    settings = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, name: value}
    with pytest.raises(ValueError, match=f"SGD: {name} must be finite; got {name}=.*(nan|inf)"):
        optim.SGD(one_parameter(), **settings)


@pytest.mark.parametrize("name", ["lr", "momentum", "weight_decay"])
def test_sgd_refuses_bools_and_non_numbers(name):
    for value in (True, "0.1", None):
        with pytest.raises(TypeError, match=f"SGD: {name} must be a number; got {value!r}"):
            optim.SGD(one_parameter(), **{"lr": 0.1, name: value})


def test_sgd_still_takes_numpy_numbers_and_integers():
    sgd = optim.SGD(one_parameter(), lr=np.float32(0.5), momentum=0, weight_decay=np.float64(0))
    assert sgd.lr == 0.5


@pytest.mark.parametrize("name, value", [("lr", NAN), ("momentum", INF),
                                         ("weight_decay", NAN), ("lr", False)])
def test_sgd_load_state_dict_refuses_a_bad_checkpoint_and_keeps_its_state(name, value):
    params = one_parameter()
    sgd = optim.SGD(params, lr=0.1, momentum=0.9)
    params[0].grad = np.ones(3, np.float32)
    sgd.step()
    state = sgd.state_dict()
    state = {**state, "velocity": {k: v * 2 for k, v in state["velocity"].items()}, name: value}
    with pytest.raises((ValueError, TypeError), match=f"SGD.load_state_dict: {name} must be"):
        sgd.load_state_dict(state)
    assert (sgd.lr, sgd.momentum, sgd.weight_decay) == (0.1, 0.9, 0.0)
    np.testing.assert_array_equal(sgd.velocity[0], np.ones(3, np.float32))  # u = 0 + grad


# ---- Module.load_state_dict: all or nothing ---------------------------------------------------

def snapshot(model):
    return {name: (p.data.dtype, p.data.shape, p.data.tobytes())
            for name, p in model.named_parameters()}


@pytest.mark.parametrize("bias, message", [
    (np.array(["x", "y"]), "bias: dtype <U1, not real floating point or integer"),
    (np.array([1 + 2j, 3]), "bias: dtype complex128"),
    (np.array([True, False]), "bias: dtype bool"),
    (np.array([1.0, None]), "bias: dtype object"),
    ([1.0, 2.0], "bias: a list, not an array"),
    (None, "bias: a NoneType, not an array"),
    ("weights", "bias: a str, not an array"),
])
def test_load_state_dict_refuses_non_weights_and_changes_nothing(bias, message):
    model = nn.Linear(2, 2)
    before = snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ComplexWarning either: nothing is cast
        with pytest.raises(ValueError, match="nothing was loaded") as error:
            model.load_state_dict({"weight": np.full((2, 2), 7, np.float32), "bias": bias})
    assert message in str(error.value)
    assert snapshot(model) == before


def test_load_state_dict_refuses_complex_weights_and_lists_every_problem():
    model = nn.Linear(2, 2)
    before = snapshot(model)
    state = {"weight": np.full((2, 2), 1 + 2j), "bias": np.zeros(3, np.float32)}
    with pytest.raises(ValueError) as error:
        model.load_state_dict(state)
    message = str(error.value)
    assert "weight: dtype complex128" in message
    assert "bias: file has (3,), model has (2,)" in message
    assert snapshot(model) == before


def test_load_state_dict_takes_integer_and_float64_arrays_as_float32():
    model = nn.Linear(2, 2)
    model.load_state_dict({"weight": np.array([[1, 2], [3, 4]], np.int64),
                           "bias": tensor(np.array([0.5, -0.25]))})
    assert model.weight.dtype == np.float32 and model.bias.dtype == np.float32
    np.testing.assert_array_equal(model.weight.data, [[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(model.bias.data, [0.5, -0.25])


# ---- 16-bit images ------------------------------------------------------------------------

def gradient16(size=64):
    """A diagonal gradient over the 16-bit range: v[i, j] = (i + j) 65535 // (2 size - 2)."""
    i, j = np.indices((size, size))
    return ((i + j) * 65535 // (2 * size - 2)).astype(np.uint16)


def to8(values16):
    """The 8-bit version of 16-bit values: v * 255 / 65535 = v / 257, rounded."""
    return np.floor(values16.astype(np.int64) / 257 + 0.5).astype(np.uint8)


def test_a_16_bit_png_loads_as_its_8_bit_version(tmp_path):
    a = gradient16()
    Image.fromarray(a).save(tmp_path / "a16.png")
    assert Image.open(tmp_path / "a16.png").mode in ("I;16", "I")
    Image.fromarray(to8(a)).save(tmp_path / "a8.png")
    loaded16 = load_image(tmp_path / "a16.png", image_size=64).astype(int)
    loaded8 = load_image(tmp_path / "a8.png", image_size=64).astype(int)
    assert loaded16.shape == (64, 64, 3)
    assert np.abs(loaded16 - loaded8).max() <= 1
    expected = np.repeat(to8(a)[:, :, None], 3, axis=2).astype(int)  # grey in every channel
    assert np.abs(loaded16 - expected).max() <= 1
    assert loaded16.max() >= 254 and loaded16.min() == 0  # not clipped to white


@pytest.mark.parametrize("make", [
    lambda a: Image.fromarray(a.astype(">u2")),                 # I;16B
    lambda a: Image.fromarray(a.astype(np.int32)),              # I, 16-bit values
    lambda a: Image.fromarray(a.astype(np.float32) / 65535),    # F, values in [0, 1]
], ids=["I;16B", "I", "F"])
def test_other_high_bit_depth_modes_scale_to_8_bits(tmp_path, make):
    a = gradient16()
    make(a).save(tmp_path / "a.tiff")
    loaded = load_image(tmp_path / "a.tiff", image_size=64).astype(int)
    expected = np.repeat(to8(a)[:, :, None], 3, axis=2).astype(int)
    assert np.abs(loaded - expected).max() <= 1


def png_16_bit_rgb(pixels):
    """A 16-bit RGB PNG (colour type 2), written by hand: Pillow cannot write one."""
    height, width = pixels.shape[:2]
    rows = b"".join(b"\0" + pixels[r].astype(">u2").tobytes() for r in range(height))

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def test_a_16_bit_rgb_png_loads_as_its_8_bit_version(tmp_path):
    a = gradient16()
    pixels = np.stack([a, a[::-1], a[:, ::-1]], axis=2)
    (tmp_path / "rgb16.png").write_bytes(png_16_bit_rgb(pixels))
    loaded = load_image(tmp_path / "rgb16.png", image_size=64).astype(int)
    assert np.abs(loaded - to8(pixels).astype(int)).max() <= 1


# ---- empty batches ----------------------------------------------------------------------------

@pytest.mark.parametrize("fast", [True, False], ids=["fast", "reference"])
@pytest.mark.parametrize("K, stride, padding, groups", [
    (3, 1, 1, 1),   # Winograd's 3x3 on the fast path
    (5, 1, 2, 2),   # Winograd's 5x5, groups
    (11, 4, 0, 1),  # im2col by phases (gemm)
])
def test_conv2d_of_an_empty_batch_is_empty_and_so_are_its_gradients(fast, K, stride, padding,
                                                                   groups):
    mx.set_fast(fast)
    x = tensor(np.zeros((0, 4, 19, 19), np.float32), requires_grad=True)
    w = tensor(np.ones((6, 4 // groups, K, K), np.float32), requires_grad=True)
    b = tensor(np.ones(6, np.float32), requires_grad=True)
    y = F.conv2d(x, w, b, stride=stride, padding=padding, groups=groups)
    OH = (19 + 2 * padding - K) // stride + 1
    assert y.shape == (0, 6, OH, OH) and y.dtype == np.float32
    (y * 2.0).sum().backward()
    assert x.grad.shape == (0, 4, 19, 19)
    np.testing.assert_array_equal(w.grad, np.zeros(w.shape, np.float32))  # a sum over no images
    np.testing.assert_array_equal(b.grad, np.zeros(6, np.float32))


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "reference"])
def test_max_pool2d_and_linear_of_an_empty_batch(fast):
    mx.set_fast(fast)
    x = tensor(np.zeros((0, 3, 13, 13), np.float32), requires_grad=True)
    y = F.max_pool2d(x, 3, stride=2)
    assert y.shape == (0, 3, 6, 6)
    y.sum().backward()
    assert x.grad.shape == (0, 3, 13, 13) and x.grad.dtype == np.float32
    x = tensor(np.zeros((0, 5), np.float32), requires_grad=True)
    w = tensor(np.ones((3, 5), np.float32), requires_grad=True)
    y = F.linear(x, w)
    assert y.shape == (0, 3)
    y.sum().backward()
    np.testing.assert_array_equal(w.grad, np.zeros((3, 5), np.float32))


# ---- ints, not floats or bools, for strides, padding, kernels, groups -----------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"stride": 1.5}, "stride must be an int or a pair of ints; got 1.5"),
    ({"stride": True}, "stride must be an int or a pair of ints; got True"),
    ({"stride": (1, 2.0)}, r"stride must be an int or a pair of ints; got \(1, 2.0\)"),
    ({"padding": False}, "padding must be an int or a pair of ints; got False"),
    ({"padding": (1, True)}, r"padding must be an int or a pair of ints; got \(1, True\)"),
    ({"stride": "2"}, "stride must be an int or a pair of ints; got '2'"),
])
def test_conv2d_refuses_floats_and_bools_as_sizes(kwargs, message):
    x, w = tensor(np.zeros((1, 3, 8, 8), np.float32)), tensor(np.zeros((4, 3, 3, 3), np.float32))
    with pytest.raises(TypeError, match="conv2d: " + message):
        F.conv2d(x, w, **kwargs)


def test_conv2d_refuses_bool_groups_and_kernel_size_but_takes_numpy_ints():
    x, w = tensor(np.zeros((1, 2, 8, 8), np.float32)), tensor(np.zeros((2, 2, 3, 3), np.float32))
    with pytest.raises(ValueError, match="conv2d: groups must be a positive int; got True"):
        F.conv2d(x, w, groups=True)
    with pytest.raises(TypeError, match="conv2d: kernel_size must be an int or a pair"):
        nn.Conv2d(2, 2, True)
    assert F.conv2d(x, w, stride=np.int64(2), padding=[np.int32(1), 0]).shape == (1, 2, 4, 3)


@pytest.mark.parametrize("kwargs, what", [
    ({"kernel_size": True}, "kernel_size"), ({"kernel_size": 2, "stride": True}, "stride"),
    ({"kernel_size": 3, "padding": True}, "padding"), ({"kernel_size": 2.0}, "kernel_size"),
    ({"kernel_size": (2, False)}, "kernel_size"),
])
def test_max_pool2d_refuses_floats_and_bools_as_sizes(kwargs, what):
    x = tensor(np.zeros((1, 1, 6, 6), np.float32))
    with pytest.raises(TypeError, match=f"max_pool2d: {what} must be an int or a pair"):
        F.max_pool2d(x, **kwargs)


# ---- tensors hold real numbers ----------------------------------------------------------------

@pytest.mark.parametrize("data", [
    np.array([1, "a"], dtype=object), ["a", "b"], np.array([b"x"]), [1j, 2],
    np.zeros(2, np.complex64)], ids=["object", "str", "bytes", "complex", "complex64"])
def test_tensor_refuses_non_real_data(data):
    with pytest.raises(TypeError, match="a Tensor holds real numbers .* got dtype"):
        tensor(data)
    with pytest.raises(TypeError, match="a Tensor holds real numbers"):
        Tensor(np.asarray(data))


def test_tensor_takes_bools_integers_and_floats():
    assert tensor([True, False]).dtype == np.bool_
    assert tensor(np.arange(3, dtype=np.uint8)).dtype == np.uint8
    assert tensor([1, 2]).dtype.kind == "i" and tensor([1.5]).dtype == np.float32


def test_a_complex_or_string_constant_in_arithmetic_is_refused():
    x = tensor(np.ones(2, np.float32))
    with pytest.raises(TypeError, match="expected a real number or array; got dtype complex"):
        x + 1j
    with pytest.raises(TypeError, match="got dtype <U"):
        x * "a"


# ---- integer tensors mixed with floating-point ones ----------------------------------------

@pytest.mark.parametrize("float_dtype", [np.float32, np.float64])
def test_integer_and_float_tensors_give_the_float_dtype_and_gradients(float_dtype):
    i_values = np.array([[1, -2, 3], [4, 5, -6]], np.int64)
    f_values = np.array([[0.5, 1.5, -2.0], [3.0, -0.25, 4.0]], float_dtype)
    for i_dtype in (np.int64, np.int32, np.uint8, np.bool_):
        iv = np.abs(i_values).astype(i_dtype) if i_dtype != np.bool_ else i_values != 0
        for op in (lambda a, b: a + b, lambda a, b: a - b, lambda a, b: a * b,
                   lambda a, b: a / b):
            for swap in (False, True):
                i, f = tensor(iv), tensor(f_values, requires_grad=True)
                z = op(f, i) if swap else op(i, f)
                assert z.dtype == float_dtype, (i_dtype, swap)
                a, b = iv.astype(np.float64), f_values.astype(np.float64)
                expected = op(b, a) if swap else op(a, b)  # on float64 arrays
                np.testing.assert_allclose(z.numpy(), expected, rtol=1e-6)
                z.sum().backward()
                assert f.grad.dtype == float_dtype and f.grad.shape == f.shape


def test_gradients_through_mixed_arithmetic_match_the_formulas():
    i = tensor(np.array([1, 2, 4], np.int64))
    f = tensor(np.array([0.5, -1.0, 2.0], np.float32), requires_grad=True)
    ((i * f) + (f / i) - i).sum().backward()  # d/df = i + 1 / i
    np.testing.assert_allclose(f.grad, [1 + 1 / 1, 2 + 1 / 2, 4 + 1 / 4], rtol=1e-6)
    assert f.grad.dtype == np.float32
    m = tensor(np.array([[1, 2], [3, 4]], np.int64))
    g = tensor(np.eye(2, dtype=np.float32), requires_grad=True)
    z = m @ g
    assert z.dtype == np.float32
    z.sum().backward()  # d/dg[k, j] of sum_{r, j} m[r, k] g[k, j] = sum_r m[r, k]
    np.testing.assert_allclose(g.grad, [[4, 4], [6, 6]])


def test_integer_tensors_with_float_numbers_are_not_truncated():
    i = tensor(np.arange(3))
    z = i + 0.5
    assert z.dtype == np.float32
    np.testing.assert_array_equal(z.numpy(), [0.5, 1.5, 2.5])
    np.testing.assert_array_equal((i * 1.5).numpy(), [0.0, 1.5, 3.0])
    assert (i + 2).dtype == np.int64  # integers stay integers
    np.testing.assert_array_equal((i + 2).numpy(), [2, 3, 4])
    q = tensor(np.array([1, 3])) / tensor(np.array([2, 4]))  # as PyTorch: float32, not float64
    assert q.dtype == np.float32
    np.testing.assert_array_equal(q.numpy(), [0.5, 0.75])
