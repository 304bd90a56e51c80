"""Where a fast path takes over a reference op: one table, consulted in one place.

The reference ops (functions/*.py, optim.SGD) are the algorithm a student reads, in plain
NumPy/CuPy code that runs on both devices. A fast path computes the same thing faster on one
device: Winograd and the threaded passes on the CPU (minialex/fast/), our CUDA kernels on the
GPU (minialex/gpu.py). Each registers, under (reference class, device), a function that takes
the reference op and its input arrays and returns a stand-in (usually a subclass of the
reference op with the same settings), or None where it does not apply (a dtype, a shape).
`Function.__call__` (tensor.py) and `SGD.step` (optim.py) ask `fast_version` before they run
anything; nothing else in the reference knows that fast paths exist.

Which fast paths run: all of them by default; none with MINIALEX_FAST=0 in the environment or
`minialex.set_fast(False)`; a chosen few with MINIALEX_FAST=winograd,gemm or
`set_fast(["winograd", "gemm"])` (`fast_paths()` lists the names, in the order of
minialex/fast/__init__.py). The benchmark switches them on one at a time to show what each buys.
"""
import os

from .backend import device_of

_TABLE = {}    # (reference class, device) -> [(name, make), ...], tried in order
_NAMES = {}    # name -> what it speeds up, in registration order
_enabled = None  # the set of names switched on; None: not decided yet (the environment says)


def register(reference, device, name, speeds_up):
    """Decorator: `make(op, *arrays)` may stand in for `reference` ops on `device`."""
    def decorator(make):
        _TABLE.setdefault((reference, device), []).append((name, make))
        _NAMES.setdefault(name, speeds_up)
        return make
    return decorator


def declare(name, speeds_up):
    """A fast path that is not a stand-in for an op (a process-wide setting)."""
    _NAMES.setdefault(name, speeds_up)


def fast_paths():
    """{name: what it speeds up} of every registered fast path, in order."""
    return dict(_NAMES)


def _parse(value, source):
    if value is True or value in ("1", "", "all"):
        return set(_NAMES)
    if value is False or value in ("0", "none"):
        return set()
    names = [n.strip() for n in value.split(",")] if isinstance(value, str) else list(value)
    unknown = [n for n in names if n not in _NAMES]
    if unknown:
        raise ValueError(f"{source}: unknown fast path(s) {', '.join(map(repr, unknown))}; "
                         f"expected 0, 1 or names from {', '.join(_NAMES)}")
    return set(names)


def set_fast(enabled=True):
    """True: every fast path (the default); False: the reference alone, on CPU and GPU;
    a list of names: only those (see fast_paths()). Returns the previous setting, a set."""
    global _enabled
    previous = enabled_paths()
    _enabled = _parse(enabled, "set_fast")
    return previous


def enabled_paths():
    """The names of the fast paths now switched on."""
    global _enabled
    if _enabled is None:
        _enabled = _parse(os.environ.get("MINIALEX_FAST", "1").strip().lower(), "MINIALEX_FAST")
    return set(_enabled)


def is_enabled(name):
    return name in (_enabled if _enabled is not None else enabled_paths())


def fast_version(op, *arrays):
    """The first switched-on fast path's stand-in for `op` on these arrays, or `op` itself."""
    device = device_of(arrays[0]) if arrays else "cpu"
    for name, make in _TABLE.get((type(op), device), ()):
        if is_enabled(name):
            stand_in = make(op, *arrays)
            if stand_in is not None:
                return stand_in
    return op


def same_settings(cls, op):
    """An instance of `cls` (a subclass of op's class) with op's settings, not calling
    __init__: the stand-in then runs its own forward and backward on the same arguments."""
    stand_in = cls.__new__(cls)
    stand_in.__dict__.update(op.__dict__)
    return stand_in
