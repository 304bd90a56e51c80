"""SGD against the paper's update rule written out by hand, and the learning-rate schedule."""
import numpy as np
import pytest

from minialex.nn import Parameter
from minialex.optim import SGD, ReduceLROnPlateau


def quadratic_grad(w, target):
    return w - target  # dL/dw of L = |w - target|^2 / 2


def test_sgd_equals_the_papers_rule_at_constant_lr(rng):
    """§5: v <- 0.9 v - 0.0005 lr w - lr g;  w <- w + v  (written out here, element by element)."""
    target = rng.standard_normal(5)
    start = rng.standard_normal(5)
    lr, momentum, decay = 0.05, 0.9, 0.0005
    w_paper, v_paper = start.copy(), np.zeros(5)
    p = Parameter(start.copy())
    optimizer = SGD([p], lr=lr, momentum=momentum, weight_decay=decay)
    for _ in range(20):
        grad = quadratic_grad(w_paper, target)
        for i in range(5):
            v_paper[i] = momentum * v_paper[i] - decay * lr * w_paper[i] - lr * grad[i]
            w_paper[i] = w_paper[i] + v_paper[i]
        p.grad = quadratic_grad(p.data, target)
        optimizer.step()
    np.testing.assert_allclose(p.data, w_paper, rtol=1e-12, atol=1e-12)


def test_plain_sgd_is_w_minus_lr_g():
    p = Parameter(np.array([1.0, -2.0]))
    p.grad = np.array([0.5, 0.25])
    SGD([p], lr=0.1).step()
    np.testing.assert_allclose(p.data, [1.0 - 0.05, -2.0 - 0.025])


def test_parameters_without_gradient_are_left_alone():
    p, q = Parameter(np.ones(2)), Parameter(np.ones(2))
    p.grad = np.ones(2)
    optimizer = SGD([p, q], lr=0.1, momentum=0.9, weight_decay=0.1)
    optimizer.step()
    np.testing.assert_array_equal(q.data, np.ones(2))
    optimizer.zero_grad()
    assert p.grad is None


def test_step_updates_in_place_and_keeps_float32():
    p = Parameter(np.ones(4, np.float32))
    before = p.data
    p.grad = np.full(4, 0.5, np.float32)
    SGD([p], lr=0.1, momentum=0.9, weight_decay=5e-4).step()
    assert p.data is before and p.data.dtype == np.float32


def test_state_dict_resumes_exactly(rng):
    target = rng.standard_normal(3)

    def run(steps, optimizer, p):
        for _ in range(steps):
            p.grad = quadratic_grad(p.data, target)
            optimizer.step()

    p_full = Parameter(np.zeros(3))
    run(10, SGD([p_full], lr=0.1, momentum=0.9, weight_decay=1e-3), p_full)

    p_half = Parameter(np.zeros(3))
    first = SGD([p_half], lr=0.1, momentum=0.9, weight_decay=1e-3)
    run(5, first, p_half)
    state = first.state_dict()
    p_resumed = Parameter(p_half.data.copy())
    second = SGD([p_resumed], lr=0.5, momentum=0.0)
    second.load_state_dict(state)
    run(5, second, p_resumed)
    np.testing.assert_array_equal(p_resumed.data, p_full.data)


def test_velocity_of_the_wrong_shape_is_refused():
    state = SGD([Parameter(np.ones(3))], lr=0.1).state_dict()
    state["velocity"] = {"0": np.zeros(4)}
    with pytest.raises(ValueError, match=r"velocity 0 has shape \(4,\).*\(3,\)"):
        SGD([Parameter(np.ones(3))], lr=0.1).load_state_dict(state)


@pytest.mark.parametrize("kwargs, message", [
    (dict(lr=0.0), "lr > 0"), (dict(lr=0.1, momentum=-1), "momentum >= 0"),
])
def test_bad_hyperparameters(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SGD([Parameter(np.ones(1))], **kwargs)


def test_empty_parameter_list():
    with pytest.raises(ValueError, match="empty list of parameters"):
        SGD([], lr=0.1)


def test_plateau_divides_lr_by_ten_after_patience():
    optimizer = SGD([Parameter(np.ones(1))], lr=0.01)
    schedule = ReduceLROnPlateau(optimizer, factor=0.1, patience=2)
    losses = [1.0, 0.9, 0.9, 0.95, 0.91, 0.8]
    lrs = []
    for loss in losses:
        schedule.step(loss)
        lrs.append(optimizer.lr)
    # improvement at 1.0, 0.9; three epochs without (0.9, 0.95, 0.91) > patience 2 -> divide
    assert lrs[:4] == [0.01, 0.01, 0.01, 0.01]
    assert lrs[4] == pytest.approx(0.001) and lrs[5] == pytest.approx(0.001)
