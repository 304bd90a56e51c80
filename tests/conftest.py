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
