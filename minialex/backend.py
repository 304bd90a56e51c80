"""The one module that knows NumPy from CuPy.

Every op asks `get_array_module(x)` for its array module instead of importing NumPy or CuPy
itself, so the same forward and backward serve both devices. Devices are named "cpu" (NumPy)
and "cuda" (CuPy). CuPy is imported lazily: importing minialex never needs it.
"""
import sys

import numpy as np

DEVICES = ("cpu", "cuda")


_cupy = None  # the cupy module once it has been imported successfully


def _import_cupy():
    """Import CuPy on first use, with an error that says how to get it."""
    global _cupy
    if _cupy is None:
        try:
            import cupy
        except ImportError as error:
            raise RuntimeError(
                "device 'cuda' needs CuPy, which is not installed; install it with "
                "pip install -e '.[gpu]' (or pip install cupy-cuda13x) on a machine with an "
                "NVIDIA GPU") from error
        _cupy = cupy
    return _cupy


def cupy_available():
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        cupy = _import_cupy()
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no CuPy, no driver or no device: all mean "no GPU here"
        return False


def _imported_cupy():
    """The cupy module if anyone has imported it (minialex or the user, before or after
    minialex), else None: a CuPy array can only exist once its module is in sys.modules, so
    looking there recognises the user's arrays without importing CuPy ourselves."""
    global _cupy
    if _cupy is None:
        module = sys.modules.get("cupy")
        if module is not None and hasattr(module, "ndarray"):  # None: import blocked
            _cupy = module
    return _cupy


def get_array_module(*arrays):
    """numpy, or cupy if any of `arrays` is a CuPy array (tensors are unwrapped)."""
    cupy = _imported_cupy()
    for array in arrays:
        array = getattr(array, "data", array) if not isinstance(array, np.ndarray) else array
        if cupy is not None and isinstance(array, cupy.ndarray):
            return cupy
    return np


def device_of(array):
    """'cpu' or 'cuda' for a NumPy or CuPy array."""
    cupy = _imported_cupy()
    if cupy is not None and isinstance(array, cupy.ndarray):
        return "cuda"
    return "cpu"


def check_device(device):
    """Return a valid device name, or raise a ValueError that lists the valid ones."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; expected one of {DEVICES}")
    return device


def to_device(array, device):
    """Move a NumPy or CuPy array to `device` ('cpu' or 'cuda'); no copy if already there."""
    check_device(device)
    if device_of(array) == device:
        return array
    if device == "cpu":
        return _cupy.asnumpy(array)
    cupy = _import_cupy()
    try:
        devices = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # CUDARuntimeError: no driver, or a driver too old for CuPy
        raise RuntimeError(f"device 'cuda' was asked for, but CuPy finds no usable CUDA "
                           f"device ({error})") from error
    if devices == 0:
        raise RuntimeError("device 'cuda' was asked for, but CuPy sees no CUDA device")
    return cupy.asarray(array)


def as_numpy(array):
    """A NumPy array with the same values, wherever `array` lives."""
    return to_device(array, "cpu")


def address_of(array):
    """The address of an array's first element: a device pointer for CuPy (what a kernel's
    table of pointers holds), the host address for NumPy (the kernel shim's CPU runs)."""
    pointer = getattr(array.data, "ptr", None)  # cupy.cuda.MemoryPointer
    return int(pointer) if pointer is not None else int(array.ctypes.data)

