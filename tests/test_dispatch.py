"""dispatch.py: which fast path stands in for a reference op, set_fast and MINIALEX_FAST.
(conftest.py switches back whatever a test sets with set_fast.)"""
import os
import subprocess
import sys

import numpy as np
import pytest

import minialex
from minialex import dispatch, set_fast
from minialex.fast.conv import Conv2dOnThreads, LinearOnThreads
from minialex.fast.elementwise import ReLUOnThreads, SGDOnThreads
from minialex.fast.pool import MaxPool2dOnThreads
from minialex.fast.winograd import WinogradConv2d
from minialex.functions.activation import ReLU
from minialex.functions.conv import Conv2d
from minialex.functions.linear import Linear
from minialex.functions.pool import MaxPool2d
from minialex.optim import SGD
from minialex.tensor import tensor

CPU_PATHS = ["winograd", "pool", "elementwise", "sgd", "gemm", "memory"]


def test_fast_paths_are_listed_in_the_order_of_fast_init():
    names = list(minialex.fast_paths())
    assert names == CPU_PATHS + ["cuda-kernels"]
    assert all(isinstance(text, str) and text for text in minialex.fast_paths().values())


@pytest.mark.parametrize("setting, expected", [
    (True, set(CPU_PATHS) | {"cuda-kernels"}), (False, set()), (["gemm", "pool"], {"gemm", "pool"}),
    ("winograd, sgd", {"winograd", "sgd"}), ((), set()), ({"memory"}, {"memory"}),
])
def test_set_fast_switches_paths_and_returns_the_previous_setting(setting, expected):
    set_fast(["pool"])
    assert set_fast(setting) == {"pool"}
    assert minialex.enabled_paths() == expected
    assert all(dispatch.is_enabled(name) == (name in expected) for name in minialex.fast_paths())


@pytest.mark.parametrize("setting", [["winograd", "wingrad"], "gemm,nope", ["GEMM"]])
def test_an_unknown_name_is_a_clear_error_and_changes_nothing(setting):
    set_fast(["pool"])
    with pytest.raises(ValueError, match=r"set_fast: unknown fast path\(s\) '(wingrad|nope|GEMM)'"
                                         r"; expected 0, 1 or names from winograd, pool"):
        set_fast(setting)
    assert minialex.enabled_paths() == {"pool"}


@pytest.mark.parametrize("value, expected", [
    ("1", None), ("", None), ("all", None), ("ALL", None), ("0", set()), ("none", set()),
    (" 0 ", set()), ("winograd,gemm", {"winograd", "gemm"}), ("Pool, SGD", {"pool", "sgd"}),
])
def test_the_environment_variable_is_read_when_first_asked(value, expected, monkeypatch):
    monkeypatch.setenv("MINIALEX_FAST", value)
    monkeypatch.setattr(dispatch, "_enabled", None)  # as in a fresh process
    expected = set(minialex.fast_paths()) if expected is None else expected
    assert minialex.enabled_paths() == expected


def test_an_unknown_name_in_the_environment_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("MINIALEX_FAST", "winograd,fastest")
    monkeypatch.setattr(dispatch, "_enabled", None)
    with pytest.raises(ValueError, match=r"MINIALEX_FAST: unknown fast path\(s\) 'fastest'"):
        minialex.enabled_paths()


def test_a_fresh_process_with_a_bad_setting_fails_at_import_and_says_why():
    env = dict(os.environ, MINIALEX_FAST="winogard")
    result = subprocess.run([sys.executable, "-c", "import minialex"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "MINIALEX_FAST: unknown fast path(s) 'winogard'" in result.stderr


def arrays_for(op):
    f32 = np.float32
    if isinstance(op, Conv2d):
        kernel = 11 if op.SH == 4 else 3
        return np.ones((1, 3, 23, 23), f32), np.ones((2, 3, kernel, kernel), f32)
    if isinstance(op, Linear):
        return np.ones((2, 3), f32), np.ones((4, 3), f32)
    return (np.ones((1, 1, 4, 4), f32),)


CONV = ["winograd", "gemm"]  # the paths that stand in for Conv2d on the CPU


@pytest.mark.parametrize("make, fast, names, for_this_op", [
    (lambda: Conv2d((1, 1), (1, 1), 1), WinogradConv2d, ["winograd"], CONV),
    (lambda: Conv2d((1, 1), (1, 1), 1), Conv2dOnThreads, ["gemm"], CONV),  # without winograd
    (lambda: Conv2d((4, 4), (0, 0), 1), Conv2dOnThreads, CONV, CONV),  # conv1: no Winograd
    (lambda: Linear(), LinearOnThreads, ["gemm"], ["gemm"]),
    (lambda: MaxPool2d((3, 3), (2, 2), (0, 0), False), MaxPool2dOnThreads, ["pool"], ["pool"]),
    (lambda: ReLU(), ReLUOnThreads, ["elementwise"], ["elementwise"]),
])
def test_the_first_switched_on_path_that_applies_stands_in(make, fast, names, for_this_op):
    op = make()
    arrays = arrays_for(op)
    set_fast(names)
    stand_in = dispatch.fast_version(op, *arrays)
    assert type(stand_in) is fast
    if isinstance(stand_in, type(op)):  # a subclass with the same settings
        assert {k: v for k, v in vars(stand_in).items() if k in vars(op)} == vars(op)
    for setting in (False, [name for name in minialex.fast_paths() if name not in for_this_op]):
        set_fast(setting)
        assert dispatch.fast_version(op, *arrays) is op


def test_sgd_takes_its_fast_path_only_when_switched_on():
    sgd = SGD([tensor(np.ones(3, np.float32), requires_grad=True)], lr=0.1)
    set_fast(["sgd"])
    assert type(dispatch.fast_version(sgd, np.ones(3, np.float32))) is SGDOnThreads
    set_fast(False)
    assert dispatch.fast_version(sgd, np.ones(3, np.float32)) is sgd


def test_paths_are_chosen_by_the_device_of_the_first_array(monkeypatch):
    """A CPU fast path never stands in on the GPU: with device_of saying "cuda" and no float32
    CuPy array (cuda.uses_kernels is False), the reference runs."""
    op = ReLU()
    monkeypatch.setattr(dispatch, "device_of", lambda array: "cuda")
    assert dispatch.fast_version(op, np.ones(3, np.float32)) is op
