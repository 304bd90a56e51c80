"""The random numbers minialex draws (weight initialisation, dropout masks), from one seedable
generator per device, so that `manual_seed(0)` makes a run repeatable and a checkpoint can save
and restore the exact state (`get_state` / `set_state`).
"""
import numpy as np

from . import backend

_cpu_generator = np.random.default_rng()
_cuda_generator = None  # created from the CPU generator the first time the GPU needs one


def manual_seed(seed):
    """Seed every generator minialex uses."""
    global _cpu_generator, _cuda_generator
    _cpu_generator = np.random.default_rng(seed)
    _cuda_generator = None


def generator(xp=np):
    """The generator for arrays of module `xp` (numpy or cupy)."""
    global _cuda_generator
    if xp is np:
        return _cpu_generator
    if _cuda_generator is None:
        _cuda_generator = xp.random.default_rng(int(_cpu_generator.integers(2**63)))
    return _cuda_generator


def get_state():
    """The CPU generator's state as a dict of plain numbers (JSON-safe)."""
    return _cpu_generator.bit_generator.state


def set_state(state):
    _cpu_generator.bit_generator.state = state


def device_generator(device):
    return generator(np if device == "cpu" else backend._import_cupy())
