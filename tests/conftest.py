"""Shared test settings.

Hypothesis draws shapes; every example runs a float64 gradient check, so the number of examples
is kept modest and deadlines are off (a 2-core CI machine is slow and noisy).
"""
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
