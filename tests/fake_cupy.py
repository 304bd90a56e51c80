"""A stand-in for the cupy module on a machine without a GPU: "device" arrays are NumPy arrays
of a subclass, so minialex takes its GPU branches (backend.device_of says "cuda") and the test
can watch what a GPU run would do:

  - every device-to-host transfer: cupy.asnumpy, ndarray.get, and the implicit ones that
    make the host wait for the GPU (float(a), int(a), bool(a), a.item(), a.tolist());
  - every CuPy kernel launch minialex causes besides its own (cuda.launch, which the test
    intercepts): each ufunc call or reduction (one elementwise or reduction kernel in CuPy),
    each copy (ascontiguousarray of a strided array, astype, copy) and each fill (ones);
  - streams, events and pinned memory: each copy, record, wait and synchronize, in order.

Mixing a host array into a device computation raises TypeError, as CuPy does.

    cupy = fake_cupy.install(monkeypatch)  # backend now takes it for CuPy
    cupy.log.transfers_to_host, cupy.log.launches, cupy.log.stream_events
"""
import sys
import types

import numpy as np


class Log:
    def __init__(self):
        self.transfers_to_host, self.launches, self.stream_events = [], [], []

    def clear(self):
        self.__init__()


log = Log()


def _host(value):
    return value.view(np.ndarray) if isinstance(value, ndarray) else value


def _device(value):
    if isinstance(value, np.ndarray) and not isinstance(value, ndarray):
        return value.view(ndarray)
    return value


class ndarray(np.ndarray):  # noqa: N801 (the name CuPy gives it)
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        arrays = inputs + tuple(kwargs.get("out", ()))
        if any(isinstance(a, np.ndarray) and not isinstance(a, ndarray) for a in arrays):
            raise TypeError(f"fake cupy: {ufunc.__name__} mixes a NumPy array into a device "
                            "computation (CuPy refuses this)")
        log.launches.append(f"{ufunc.__name__}.{method}" if method != "__call__"
                            else ufunc.__name__)
        out = kwargs.get("out")
        if out is not None:
            kwargs["out"] = tuple(_host(a) for a in out)
        result = getattr(ufunc, method)(*(_host(a) for a in inputs), **kwargs)
        if out is not None:
            return out[0] if len(out) == 1 else out
        if isinstance(result, tuple):
            return tuple(_device(np.asarray(r)) for r in result)
        return _device(np.asarray(result)) if isinstance(result, (np.ndarray, np.generic)) \
            else result

    def _to_host(self, how):
        log.transfers_to_host.append(how)
        return self.view(np.ndarray)

    def __float__(self):
        return float(self._to_host("float()"))

    def __int__(self):
        return int(self._to_host("int()"))

    def __bool__(self):
        return bool(self._to_host("bool()"))

    def item(self, *args):
        return self._to_host("item()").item(*args)

    def tolist(self):
        return self._to_host("tolist()").tolist()

    def get(self, stream=None):
        return self._to_host("get()").copy()

    def set(self, host, stream=None):
        log.stream_events.append(("copy to device", stream))
        self.view(np.ndarray)[...] = host

    def argmax(self, *args, **kwargs):  # a reduction kernel in CuPy, not a ufunc
        log.launches.append("argmax")
        return _device(np.asarray(self.view(np.ndarray).argmax(*args, **kwargs)))

    def copy(self, order="C"):
        log.launches.append("copy")
        return _device(self.view(np.ndarray).copy(order))

    def astype(self, dtype, order="K", casting="unsafe", subok=True, copy=True):
        if not copy and np.dtype(dtype) == self.dtype:
            return self
        log.launches.append("astype")
        return _device(self.view(np.ndarray).astype(dtype, order, casting))


def _wrapped(name):
    function = getattr(np, name)

    def call(*args, **kwargs):
        host_args = [_host(a) for a in args]
        result = function(*host_args, **kwargs)
        if name in ("ascontiguousarray", "stack", "concatenate") and not any(
                isinstance(a, np.ndarray) and np.may_share_memory(a, result) for a in host_args):
            log.launches.append(name)
        elif name in ("ones", "ones_like", "full", "full_like"):
            log.launches.append(name)
        return _device(result) if isinstance(result, np.ndarray) else result
    return call


def asarray(array, dtype=None):
    if isinstance(array, ndarray):
        return array.astype(dtype, copy=False) if dtype is not None else array
    if isinstance(array, np.ndarray):  # a host-to-device copy
        log.stream_events.append(("copy to device", None))
    return _device(np.array(array, dtype=dtype))


def asnumpy(array, stream=None):
    return array.get() if isinstance(array, ndarray) else np.asarray(array)


class Event:
    def __init__(self, stream):
        self.stream = stream

    def synchronize(self):
        log.stream_events.append(("host waits on event", self))

    @property
    def done(self):
        return True


class Stream:
    def __init__(self, non_blocking=False, name="copy"):
        self.name = name

    def record(self, event=None):
        event = Event(self)
        log.stream_events.append(("record", self, event))
        return event

    def wait_event(self, event):
        log.stream_events.append(("stream waits on event", self, event))

    def synchronize(self):
        log.stream_events.append(("host waits on stream", self))

    def __repr__(self):
        return f"<fake stream {self.name}>"


COMPUTE_STREAM = Stream(name="compute")


def _synchronize_device():
    log.stream_events.append(("host waits on device", None))


cuda = types.SimpleNamespace(
    Stream=Stream, Event=Event, get_current_stream=lambda: COMPUTE_STREAM,
    alloc_pinned_memory=lambda nbytes: bytearray(nbytes),
    Device=lambda *a: types.SimpleNamespace(id=0, synchronize=_synchronize_device),
    runtime=types.SimpleNamespace(
        getDeviceCount=lambda: 1, deviceSynchronize=_synchronize_device,
        getDeviceProperties=lambda device: {"multiProcessorCount": 132, "name": b"fake GPU"}))


def _module():
    module = types.ModuleType("cupy")
    module.ndarray, module.asarray, module.asnumpy, module.cuda = ndarray, asarray, asnumpy, cuda
    module.log = log
    module.__getattr__ = lambda name: getattr(np, name) if isinstance(
        getattr(np, name), type) or not callable(getattr(np, name)) else _wrapped(name)
    return module


def install(monkeypatch):
    """Make minialex (backend.py) take this module for CuPy; returns it, its log cleared."""
    from minialex import backend
    module = _module()
    log.clear()
    monkeypatch.setitem(sys.modules, "cupy", module)
    monkeypatch.setattr(backend, "_cupy", module)
    return module
