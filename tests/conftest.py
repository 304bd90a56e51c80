"""Shared test settings.

Hypothesis draws shapes; every example runs a float64 gradient check, so the number of examples
is kept modest and deadlines are off (a 2-core CI machine is slow and noisy).
"""
import collections
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "minialex", max_examples=int(os.environ.get("MINIALEX_EXAMPLES", "25")), deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("minialex")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


Launch = collections.namedtuple("Launch", "filename name grid block arguments")


@pytest.fixture
def kernel_launches(monkeypatch):
    """cuda.launch on the CPU, with the GPU's checks: the grid and block limits, each argument
    converted to its kernel parameter's C type, then the shim build of the .cu file
    (tests/kernel_shim) runs the kernel (nothing for an empty grid, as on a GPU). Returns the
    list of the Launch-es made."""
    from kernel_shim import harness
    from minialex import cuda
    launches = []

    def launch_on_the_cpu(filename, name, grid, block, *arguments):
        grid, block = cuda.check_launch_shape(name, grid, block)
        converted = cuda.convert_arguments(name, cuda.parameters_of(filename, name), arguments,
                                           np.ndarray)
        if 0 not in grid:
            launches.append(Launch(filename, name, grid, block, arguments))
            harness.load(cuda.KERNEL_DIR / filename).launch(name, grid, block, *converted)

    monkeypatch.setattr(cuda, "launch", launch_on_the_cpu)
    return launches


@pytest.fixture
def shim(kernel_launches, monkeypatch):
    """kernel_launches, and the ops' GPU branch on float32 NumPy arrays: dispatch.py picks the
    stand-ins of gpu.py by device, so float32 arrays count as "cuda", float64 ones stay "cpu"
    (the expected values)."""
    from minialex import backend, cuda, dispatch
    monkeypatch.setattr(cuda, "uses_kernels", lambda array: array.dtype == np.float32)
    monkeypatch.setattr(dispatch, "device_of", lambda array: "cuda" if getattr(
        array, "dtype", None) == np.float32 else backend.device_of(array))
    return kernel_launches


def names_launched(launches):
    return [launch.name for launch in launches]


@pytest.fixture(autouse=True)
def _restore_fast_paths():
    """A test may switch fast paths with minialex.set_fast; the next one starts with what was
    switched on before it (what MINIALEX_FAST chose)."""
    from minialex import dispatch
    previous = dispatch.enabled_paths()
    yield
    dispatch.set_fast(previous)


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` skip cleanly without CuPy and a device, unless MINIALEX_REQUIRE_GPU=1:
    then they run and fail, so that a GPU run can never pass by skipping."""
    if os.environ.get("MINIALEX_REQUIRE_GPU") == "1":
        return
    from minialex.backend import cupy_available
    if cupy_available():
        return
    skip = pytest.mark.skip(reason="needs CuPy and a CUDA device (MINIALEX_REQUIRE_GPU=1 to "
                                   "make this a failure)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
