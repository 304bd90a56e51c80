"""backend.py: NumPy or CuPy, and device names. (The threads and the malloc setting that used to
live here are fast/threads.py and fast/memory.py: tests/test_threads.py.)"""
import numpy as np
import pytest

from minialex import backend
from minialex.tensor import tensor


def test_numpy_arrays_and_cpu_tensors_are_on_the_cpu():
    x = np.zeros(3, np.float32)
    assert backend.device_of(x) == "cpu"
    assert backend.get_array_module(x) is np
    assert backend.get_array_module(tensor(x), None, 2.0) is np


def test_to_device_cpu_does_not_copy_a_numpy_array():
    x = np.arange(4.0)
    assert backend.to_device(x, "cpu") is x
    assert backend.as_numpy(x) is x


@pytest.mark.parametrize("device", ["tpu", "CPU", "cuda:0", None])  # ("gpu" is a marker)
def test_unknown_devices_are_refused_with_the_valid_names(device):
    with pytest.raises(ValueError, match=r"expected one of \('cpu', 'cuda'\)"):
        backend.check_device(device)
    with pytest.raises(ValueError, match="unknown device"):
        backend.to_device(np.zeros(1), device)
