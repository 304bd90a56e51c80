"""A stand-in for the cupy module on a machine without a GPU: "device" arrays are NumPy arrays
of a subclass, so minialex takes its GPU branches (backend.device_of says "cuda") and the test
can watch what a GPU run would do:

  - every device-to-host transfer: cupy.asnumpy, ndarray.get, and the implicit ones that
    make the host wait for the GPU (float(a), int(a), bool(a), a.item(), a.tolist());
  - every CuPy kernel launch minialex causes besides its own (cuda.launch, which the test
    intercepts): each ufunc call or reduction (one elementwise or reduction kernel in CuPy),
    each copy (ascontiguousarray of a strided array, astype, copy) and each fill (ones);
  - streams, events and pinned memory: each copy, record, wait and synchronize, in order
    (and each NCCL allReduce, with its stream's pointer);
  - each launch of a RawModule's kernel (cuda.launch when the test does not intercept it).

What CuPy 14 refuses, the fake refuses too, with the same signatures: a host array mixed into
a device computation or given to ascontiguousarray, concatenate or stack; ndarray.set from
anything but a NumPy array of the same dtype and shape; a RawKernel launched with grid or
block not tuples, or with an argument of another C type than the kernel's parameter (what
CUDA would misread); NcclCommunicator without the bytes of get_unique_id.

    cupy = fake_cupy.install(monkeypatch)  # backend now takes it for CuPy
    cupy.log.transfers_to_host, cupy.log.launches, cupy.log.stream_events
    cupy.log.kernel_launches
"""
import sys
import types

import numpy as np


class Log:
    def __init__(self):
        self.transfers_to_host, self.launches, self.stream_events = [], [], []
        self.kernel_launches = []  # (name, grid, block, args) of each RawKernel call

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

    def set(self, arr, stream=None):  # as cupy.ndarray.set: the same dtype and shape only
        if not isinstance(arr, np.ndarray) or isinstance(arr, ndarray):
            raise TypeError("Only numpy.ndarray can be set to cupy.ndarray")
        if arr.dtype != self.dtype:
            raise TypeError(f"{arr.dtype} array cannot be set to {self.dtype} array")
        if arr.shape != self.shape:
            raise ValueError(f"Shape mismatch. Old shape: {self.shape}, new shape: {arr.shape}")
        if stream is not None and not isinstance(stream, Stream):
            raise TypeError(f"fake cupy: ndarray.set takes a cupy.cuda.Stream; got {stream!r}")
        log.stream_events.append(("copy to device", stream))
        self.view(np.ndarray)[...] = arr

    @property
    def data(self):  # a cupy.cuda.MemoryPointer: .ptr is the first element's address
        return types.SimpleNamespace(ptr=self.ctypes.data)

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
        inputs = list(args[0]) if name in ("concatenate", "stack") else args[:1]
        if name in ("ascontiguousarray", "concatenate", "stack") and not all(
                isinstance(a, ndarray) for a in inputs):  # CuPy: TypeError, not a copy
            raise TypeError(f"fake cupy: {name} takes cupy arrays only (CuPy's does too)")
        host_args = [_host(a) for a in args]
        if name in ("concatenate", "stack"):
            host_args[0] = [_host(a) for a in args[0]]
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


class Event:  # the signatures below are CuPy 14's (cupy/cuda/stream.pyx, function.pyx, ...)
    def __init__(self, block=False, disable_timing=False, interprocess=False):
        self.stream = None  # the stream that last recorded it

    def record(self, stream=None):
        (stream or get_current_stream()).record(self)

    def synchronize(self):
        log.stream_events.append(("host waits on event", self))

    @property
    def done(self):
        return True


class Stream:
    def __init__(self, null=False, non_blocking=False, ptds=False, priority=None):
        self.name, self.ptr = "null" if null else "copy", 0 if null else id(self)

    def record(self, event=None):
        if event is not None and not isinstance(event, Event):
            raise TypeError(f"fake cupy: Stream.record takes a cupy.cuda.Event; got {event!r}")
        event = Event() if event is None else event
        event.stream = self
        log.stream_events.append(("record", self, event))
        return event

    def wait_event(self, event):
        if not isinstance(event, Event):
            raise TypeError(f"fake cupy: Stream.wait_event takes a cupy.cuda.Event; got {event!r}")
        log.stream_events.append(("stream waits on event", self, event))

    def synchronize(self):
        log.stream_events.append(("host waits on stream", self))

    def __enter__(self):  # `with stream:` makes it the current stream
        _current.append(self)
        return self

    def __exit__(self, *exception):
        _current.pop()

    def __repr__(self):
        return f"<fake stream {self.name}>"


COMPUTE_STREAM = Stream(null=True)
COMPUTE_STREAM.name = "compute"
_current = [COMPUTE_STREAM]


def get_current_stream(device_id=-1):
    return _current[-1]


def _synchronize_device():
    log.stream_events.append(("host waits on device", None))


class Device:
    compute_capability = "90"  # as CuPy gives it: a string, here an H100/H200's

    def __init__(self, device=None):
        self.id = 0 if device is None else int(device)
        if self.id != 0:
            raise RuntimeError(f"fake cupy: one device (0); got Device({device!r})")

    def use(self):
        pass

    def synchronize(self):
        _synchronize_device()


class RawKernel:
    """A kernel of a RawModule: records each launch, runs nothing. As CUDA, which reads
    sizeof(parameter) bytes behind each argument, it refuses an argument of another C type
    than the kernel's parameter (a Python int goes as a long long, a float as a double)."""

    def __init__(self, module, name, parameters):
        self.module, self.name, self.parameters = module, name, parameters

    def __call__(self, grid, block, args, *, shared_mem=0):
        if not (isinstance(grid, tuple) and isinstance(block, tuple) and 1 <= len(grid) <= 3
                and 1 <= len(block) <= 3):  # Function.__call__(tuple grid, tuple block, ...)
            raise TypeError(f"fake cupy: {self.name}: grid and block must be tuples of 1 to 3 "
                            f"ints; got {grid!r}, {block!r}")
        if len(args) != len(self.parameters):
            raise TypeError(f"fake cupy: {self.name} takes {len(self.parameters)} arguments; "
                            f"got {len(args)}")
        for param, arg in zip(self.parameters, args):
            wanted = _C_TYPES[param.base_type]
            if param.is_pointer:
                if not isinstance(arg, ndarray) or arg.dtype != wanted:
                    raise TypeError(f"fake cupy: {self.name}: {param.describe()} needs a cupy "
                                    f"array of {np.dtype(wanted)}; got {arg!r:.60}")
            elif not isinstance(arg, np.generic) or arg.dtype != wanted:
                size = arg.dtype.itemsize if isinstance(arg, np.generic) else 8
                raise TypeError(f"fake cupy: {self.name}: {param.describe()} reads "
                                f"{np.dtype(wanted).itemsize} bytes of a {size}-byte "
                                f"{type(arg).__name__} ({arg!r})")
        log.kernel_launches.append((self.name, grid, block, tuple(args)))


_C_TYPES = {"float": np.float32, "int": np.int32, "long long": np.int64,
            "unsigned char": np.uint8}


class RawModule:
    def __init__(self, *, code=None, path=None, options=(), backend="nvrtc",
                 translate_cucomplex=False, enable_cooperative_groups=False,
                 name_expressions=None, jitify=None):
        if (code is None) == (path is None) or not isinstance(options, tuple):
            raise TypeError("fake cupy: RawModule(*, code=str or path=str, options=tuple)")
        from kernel_shim import harness  # the entry points and their C parameter types
        self.code, self.options = code, options
        self.entry_points = harness.parse_entry_points(code)

    def get_function(self, name):
        if name not in self.entry_points:  # CUDA_ERROR_NOT_FOUND from cuModuleGetFunction
            raise RuntimeError(f"fake cupy: no extern \"C\" kernel {name} in the module")
        return RawKernel(self, name, self.entry_points[name])


def _get_unique_id():
    return bytes(range(128))  # CuPy 14: bytes (a tuple of ints before)


class NcclCommunicator:
    def __init__(self, ndev, commId, rank, config=None):  # noqa: N803 (CuPy's name)
        if not (isinstance(ndev, int) and isinstance(commId, bytes) and len(commId) == 128
                and isinstance(rank, int) and 0 <= rank < ndev):
            raise TypeError(f"fake cupy: NcclCommunicator(int ndev, bytes commId, int rank); "
                            f"got {ndev!r}, {commId!r:.40}, {rank!r}")

    def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):  # noqa: N802
        if not all(isinstance(a, int) and not isinstance(a, bool)
                   for a in (sendbuf, recvbuf, count, datatype, op, stream)):
            raise TypeError("fake cupy: allReduce takes ints (pointers, count, datatype, op, "
                            "stream pointer)")
        log.stream_events.append(("allreduce", stream, count))


nccl = types.SimpleNamespace(
    available=True, get_unique_id=_get_unique_id, NcclCommunicator=NcclCommunicator,
    NCCL_FLOAT32=7, NCCL_SUM=0)

cuda = types.SimpleNamespace(
    Stream=Stream, Event=Event, get_current_stream=get_current_stream,
    alloc_pinned_memory=lambda size: bytearray(size), Device=Device, nccl=nccl,
    get_elapsed_time=lambda start, end: 1.0,
    runtime=types.SimpleNamespace(
        getDeviceCount=lambda: 1, deviceSynchronize=_synchronize_device,
        getDeviceProperties=lambda device: {"multiProcessorCount": 132, "name": b"fake GPU"}))


def _module():
    module = types.ModuleType("cupy")
    module.ndarray, module.asarray, module.asnumpy, module.cuda = ndarray, asarray, asnumpy, cuda
    module.RawModule, module.RawKernel = RawModule, RawKernel
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
    monkeypatch.setitem(sys.modules, "cupy.cuda", cuda)  # from cupy.cuda import nccl
    monkeypatch.setattr(backend, "_cupy", module)
    return module
