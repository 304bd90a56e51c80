"""The autograd core: graph order, accumulation, broadcasting, no_grad, errors."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from minialex.functions import basic
from minialex.gradcheck import gradcheck
from minialex.tensor import Tensor, no_grad, tensor


def test_a_tensor_used_twice_gets_the_sum_of_both_gradients():
    x = tensor([1.0, -2.0, 3.0], requires_grad=True)
    (x * x + x).sum().backward()  # d/dx (x^2 + x) = 2x + 1
    np.testing.assert_allclose(x.grad, 2 * x.data + 1)


def test_backward_twice_accumulates_into_grad():
    x = tensor([1.0, 2.0], requires_grad=True)
    (x * 3.0).sum().backward()
    (x * 3.0).sum().backward()
    np.testing.assert_allclose(x.grad, [6.0, 6.0])


def test_diamond_graph_sums_both_paths_before_going_further():
    """a -> b -> (c, d) -> e: b's gradient must be complete before it flows into a."""
    a = tensor(np.array([0.5, -1.5, 2.0]), requires_grad=True)
    b = a * a                      # db/da = 2a
    c = b * 3.0
    d = (b + 1.0) * b              # dd/db = 2b + 1
    e = (c + d).sum()              # de/db = 3 + 2b + 1
    e.backward()
    expected = (3 + 2 * a.data ** 2 + 1) * 2 * a.data
    np.testing.assert_allclose(a.grad, expected)


def test_a_long_chain_does_not_hit_the_recursion_limit():
    x = tensor(np.ones(3), requires_grad=True)
    y = x
    for _ in range(3000):
        y = y + 1.0
    y.sum().backward()
    np.testing.assert_allclose(x.grad, np.ones(3))


broadcast_pairs = st.sampled_from([
    ((3, 4), (4,)), ((3, 4), (3, 1)), ((2, 3, 4), (1, 3, 1)), ((3, 1), (1, 4)), ((5,), ()),
    ((2, 1, 4), (3, 1)),
])


@given(broadcast_pairs, st.sampled_from(["add", "sub", "mul", "div"]))
def test_broadcasting_gradients_match_finite_differences(shapes, op):
    rng = np.random.default_rng(1)
    x = tensor(rng.standard_normal(shapes[0]), requires_grad=True)
    y = tensor(rng.uniform(0.5, 2.0, shapes[1]), requires_grad=True)  # away from 0 for div
    assert gradcheck(getattr(basic, op), [x, y])


@pytest.mark.parametrize("fn", [
    lambda x: x.sum(axis=1), lambda x: x.mean(axis=(0, 2), keepdims=True),
    lambda x: x.reshape(6, 4), lambda x: x.transpose(2, 0, 1), lambda x: x[:, 1:, ::2],
    lambda x: x[np.array([0, 0, 1])], lambda x: x.exp(), lambda x: (x * x + 1.0).log(),
    lambda x: x ** 3, lambda x: x.max(axis=2), lambda x: 2.0 / (x * x + 1.0),
    lambda x: x.reshape(6, 4) @ tensor(np.arange(12.0).reshape(4, 3)),
])
def test_basic_op_gradients(fn, rng):
    x = tensor(rng.standard_normal((2, 3, 4)), requires_grad=True)
    assert gradcheck(fn, [x])


def test_no_grad_records_nothing():
    x = tensor([1.0, 2.0], requires_grad=True)
    with no_grad():
        y = x * 2.0
    assert not y.requires_grad and y.creator is None
    assert (x * 2.0).requires_grad  # and it switches back on


def test_float_lists_become_float32_and_float64_arrays_stay_float64():
    assert tensor([1.0, 2.0]).dtype == np.float32
    assert tensor(np.zeros(2)).dtype == np.float64
    x = tensor(np.zeros(2, np.float32), requires_grad=True)
    y = x * 0.5 + 1.0 - 2.0 / (x + 1.0)
    assert y.dtype == np.float32  # Python numbers never promote float32 to float64
    y.sum().backward()
    assert x.grad.dtype == np.float32


def test_backward_from_a_non_scalar_needs_a_gradient():
    y = tensor(np.ones((2, 3)), requires_grad=True) * 2.0
    with pytest.raises(ValueError, match=r"single-value tensor .* got shape \(2, 3\)"):
        y.backward()
    with pytest.raises(ValueError, match=r"grad has shape \(3,\), but the tensor has shape"):
        y.backward(np.ones(3))
    y.backward(np.ones((2, 3)))  # with a gradient of the right shape it works


def test_backward_without_requires_grad_is_explained():
    with pytest.raises(RuntimeError, match="does not require a gradient"):
        (tensor([1.0]) * 2.0).sum().backward()


def test_a_freed_graph_cannot_be_walked_twice_unless_retained():
    x = tensor([1.0, 2.0], requires_grad=True)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad, 4 * x.data)
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        y.backward()


def test_integer_tensors_cannot_require_gradients():
    with pytest.raises(TypeError, match="only floating-point tensors"):
        tensor(np.array([1, 2]), requires_grad=True)


class _FakeCudaTensor(Tensor):
    """Stands for a GPU tensor on a machine without one: only its device name differs."""

    @property
    def device(self):
        return "cuda"


def test_tensors_on_different_devices_are_refused():
    cpu = tensor(np.ones((2, 2), np.float32))
    cuda = _FakeCudaTensor(np.ones((2, 2), np.float32))
    with pytest.raises(ValueError, match=r"Add: inputs are on different devices \(cpu .*cuda"):
        cpu + cuda


def test_mixed_float_dtypes_are_refused():
    with pytest.raises(TypeError, match=r"Mul: inputs have different dtypes"):
        tensor(np.ones(2, np.float32)) * tensor(np.ones(2, np.float64))


def test_unknown_device_is_named():
    with pytest.raises(ValueError, match=r"unknown device 'gpu'"):
        tensor([1.0], device="gpu")


@pytest.mark.parametrize("fn", [
    lambda x: x.max(axis=1), lambda x: x.mean(axis=0), lambda x: x[[0, 0]], lambda x: x ** 2,
    lambda x: x.sum(), lambda x: (x * x + 1.0).log(), lambda x: x.exp() / 3.0,
])
def test_float32_gradients_stay_float32(fn):
    x = tensor(np.arange(6, dtype=np.float32).reshape(2, 3), requires_grad=True)
    y = fn(x)
    assert y.dtype == np.float32
    y.sum().backward()
    assert x.grad.dtype == np.float32
