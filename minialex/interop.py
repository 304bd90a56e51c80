"""PyTorch's weights without PyTorch: `load_torch_state_dict(path)` reads a `.pth` file written by
`torch.save(model.state_dict(), path)` (torchvision's alexnet-owt-7be5be79.pth is one) into a
dict of NumPy arrays, and `load_weights(model, path)` puts such a file into a minialex model.

The file (PyTorch's documentation, "Serialization semantics", and torch/serialization.py):

    a zip archive, every member stored (not compressed):
    <prefix>/data.pkl     a pickle (protocol 2) of the state dict; <prefix> varies with the writer
    <prefix>/data/<key>   each storage's raw bytes, numel x itemsize of them, little-endian
    <prefix>/byteorder    "little" (absent in files from before PyTorch 2.1)
    <prefix>/version, ...  small members that are not needed here

In the pickle an OrderedDict maps each name to a call
`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)`, whose
storage is a persistent id `('storage', torch.FloatStorage, key, 'cpu', numel)`; the tensor is
the view `storage[offset + sum(i_d * stride_d)]` for 0 <= i_d < size_d.

Unpickling can run any code that the file's author wrote, so this reader is a security boundary:
every way a pickle names a global (GLOBAL, STACK_GLOBAL, INST, EXT) goes through `find_class`,
which returns only stand-ins from a fixed table (_SafeUnpickler.allowed: our own functions,
never torch's); a persistent id must be a storage; REDUCE can call only those stand-ins, and
BUILD can only give an OrderedDict its `_metadata`. Before unpickling, the opcodes are read
without running them (_check_opcodes). Memory is bounded as in minialex.load: the pickle is at
most MAX_PICKLE_BYTES; a storage member must be stored, of exactly numel x itemsize bytes, and
is read into memory of that size only after the zip directory says so; no more bytes are read
in all than the file holds, and views that are not plain slices are copied within that budget.
"""
import io
import pathlib
import pickle
import pickletools
import re
import zipfile

import numpy as np

from . import serialization
from .serialization import (CORRUPT_ZIP_ERRORS, ENCRYPTED_OR_PATCHED, READ_CHUNK_BYTES,
                            ZIP_MAGICS)

# data.pkl: torchvision AlexNet's takes 1.6 KB. A crafted one of this size makes at most about
# 230 MiB of Python objects (measured: 1 MiB of EMPTY_SET opcodes)
MAX_PICKLE_BYTES = 2**20
MAX_DIMENSIONS = 32
# torch's storage types and the little-endian NumPy dtypes of their bytes
STORAGE_DTYPES = {"FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2",
                  "LongStorage": "<i8", "IntStorage": "<i4", "ShortStorage": "<i2",
                  "CharStorage": "i1", "ByteStorage": "u1"}
LOCATION = re.compile(r"cpu|cuda(:[0-9]+)?")  # where the tensor was; it comes back on the CPU
IMAGENET_CLASSES_FILE = "data/imagenet_classes.txt"  # beside this file; torchvision's order


class UnsafeOrCorruptFile(ValueError):
    """Raised inside the unpickler; load_torch_state_dict adds the file's name."""


class _Allowed:
    """A global of ALLOWED_GLOBALS as the pickle sees it: REDUCE may call it (when it has a
    function) and nothing may give it state (BUILD)."""

    def __init__(self, name, function=None, dtype=None):
        self.name, self.function, self.dtype = name, function, dtype

    def __call__(self, *args):
        if self.function is None:
            raise UnsafeOrCorruptFile(f"the pickle calls {self.name}, which a state dict only "
                                      "names inside a storage's persistent id")
        return self.function(*args)

    def __setstate__(self, state):
        raise UnsafeOrCorruptFile(f"the pickle gives state (BUILD) to {self.name}")


class _Value:
    """A storage or a tensor made while unpickling: BUILD cannot change it."""

    def __init__(self, what, array):
        self.what, self.array = what, array

    def __setstate__(self, state):
        raise UnsafeOrCorruptFile(f"the pickle gives state (BUILD) to a {self.what}")


class _StateDict(dict):
    """collections.OrderedDict's stand-in (a dict keeps its order). torch.save pickles the
    `_metadata` attribute of a state dict (each module's version) through BUILD: it is dropped."""

    def __setstate__(self, state):
        if not (type(state) is dict and set(state) <= {"_metadata"}):
            raise UnsafeOrCorruptFile("the pickle gives an OrderedDict state (BUILD) other than "
                                      "a state dict's _metadata")


def _is_index(value):
    return type(value) is int and 0 <= value < 2**63


def _is_indices(value):  # a size or a stride
    return type(value) is tuple and len(value) <= MAX_DIMENSIONS and all(map(_is_index, value))


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles data.pkl with ALLOWED_GLOBALS only; storages come from the zip archive."""

    def __init__(self, data, archive_reader):
        super().__init__(io.BytesIO(data))
        self.reader, self.storages = archive_reader, {}  # storages: key -> _Value
        self.allowed = {
            ("collections", "OrderedDict"): _Allowed("collections.OrderedDict", _StateDict),
            ("torch._utils", "_rebuild_tensor_v2"):
                _Allowed("torch._utils._rebuild_tensor_v2", self.rebuild_tensor),
            ("torch._utils", "_rebuild_parameter"):
                _Allowed("torch._utils._rebuild_parameter", self.rebuild_parameter)}
        for name, dtype in STORAGE_DTYPES.items():
            self.allowed["torch", name] = _Allowed(f"torch.{name}", dtype=np.dtype(dtype))

    def find_class(self, module, name):
        allowed = self.allowed.get((module, name))
        if allowed is None:
            names = ", ".join(sorted(f"{m}.{n}" for m, n in self.allowed))
            raise UnsafeOrCorruptFile(f"the pickle names the global {module}.{name}, which a "
                                      f"state dict never needs (allowed: {names}); refused "
                                      "without running it")
        return allowed

    def persistent_load(self, pid):
        if not (type(pid) is tuple and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _Allowed) and pid[1].dtype is not None
                and type(pid[2]) is str and re.fullmatch("[0-9]{1,20}", pid[2])
                and type(pid[3]) is str and LOCATION.fullmatch(pid[3]) and _is_index(pid[4])):
            raise UnsafeOrCorruptFile("the pickle holds a persistent id that is not "
                                      "('storage', torch.<Type>Storage, key, 'cpu', numel)")
        _, storage_type, key, _, numel = pid
        if key not in self.storages:
            nbytes = numel * storage_type.dtype.itemsize
            array = self.reader.read(f"data/{key}", nbytes)
            if array.size != nbytes:
                raise UnsafeOrCorruptFile(f"storage data/{key} holds {array.size} bytes; its "
                                          f"persistent id says numel x itemsize = {nbytes}")
            self.storages[key] = _Value("storage", array.view(storage_type.dtype))
        storage = self.storages[key]
        if storage.array.dtype != storage_type.dtype or storage.array.size != numel:
            raise UnsafeOrCorruptFile(f"storage {key} is named twice with different types or "
                                      "sizes")
        return storage

    def rebuild_tensor(self, storage, offset, size, stride, requires_grad=False, hooks=None,
                       metadata=None):
        """The view storage[offset + sum(i_d * stride_d)], 0 <= i_d < size_d, checked to stay
        inside the storage; copied (within the read budget) unless it is a plain slice."""
        if not (isinstance(storage, _Value) and storage.what == "storage" and _is_index(offset)
                and _is_indices(size) and _is_indices(stride) and len(size) == len(stride)
                and type(requires_grad) is bool and type(hooks) in (dict, _StateDict)
                and not hooks and (metadata is None or type(metadata) in (dict, _StateDict))):
            raise UnsafeOrCorruptFile("the pickle calls torch._utils._rebuild_tensor_v2 with "
                                      "arguments other than (storage, offset, size, stride, "
                                      "requires_grad, OrderedDict())")
        array = storage.array
        if 0 not in size:  # an empty tensor reaches nothing
            last = offset + sum((n - 1) * step for n, step in zip(size, stride))
            if last >= array.size:
                raise UnsafeOrCorruptFile(
                    f"a tensor of size {size}, stride {stride} at offset {offset} reaches "
                    f"element {last} of a storage of {array.size}")
        else:
            offset = 0
        view = np.lib.stride_tricks.as_strided(
            array[offset:], size, [step * array.itemsize for step in stride], writeable=False)
        if view.flags.c_contiguous:  # a plain slice: shares the storage's memory, as in torch
            return _Value("tensor", array[offset:offset + view.size].reshape(size))
        self.reader.spend(view.nbytes, "tensors that are not plain views of their storage")
        return _Value("tensor", np.ascontiguousarray(view))

    def rebuild_parameter(self, data, requires_grad, hooks):
        if not (isinstance(data, _Value) and data.what == "tensor"):
            raise UnsafeOrCorruptFile("torch._utils._rebuild_parameter is given no tensor")
        return data


class _ArchiveReader:
    """The zip's members, each checked against the directory before it is read; no more bytes
    are read (or copied) in all than the file holds."""

    def __init__(self, archive, prefix, file_bytes):
        self.archive, self.prefix = archive, prefix
        self.file_bytes = self.bytes_left = file_bytes

    def spend(self, size, what):
        self.bytes_left -= size
        if self.bytes_left < 0:
            raise UnsafeOrCorruptFile(f"{what} take more bytes than the file's {self.file_bytes}"
                                      " (members overlap, or views are copied too often)")

    def read(self, name, max_bytes):
        """The member's bytes: stored, unencrypted, at most max_bytes."""
        member = f"{self.prefix}/{name}"
        if member not in self.archive.NameToInfo:
            raise UnsafeOrCorruptFile(f"member {member} is missing")
        info = self.archive.getinfo(member)
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & ENCRYPTED_OR_PATCHED:
            raise UnsafeOrCorruptFile(f"member {member} is compressed or encrypted (zip method "
                                      f"{info.compress_type}); torch.save stores every member")
        if info.file_size > max_bytes or info.file_size != info.compress_size:
            raise UnsafeOrCorruptFile(f"member {member} holds {info.file_size} bytes "
                                      f"({info.compress_size} stored); expected {max_bytes}")
        self.spend(info.file_size, f"member {member} and those before it")
        content = np.empty(info.file_size, dtype=np.uint8)
        buffer, filled = memoryview(content), 0
        with self.archive.open(info) as stream:
            while filled < info.file_size:
                chunk = stream.read(min(READ_CHUNK_BYTES, info.file_size - filled))
                if not chunk:
                    raise UnsafeOrCorruptFile(f"member {member} ends early")
                buffer[filled:filled + len(chunk)] = chunk
                filled += len(chunk)
            if stream.read(1):  # also makes zipfile check the CRC
                raise UnsafeOrCorruptFile(f"member {member} is longer than declared")
        return content


def _check_opcodes(data):
    """Read the pickle's opcodes without running any (pickletools.genops checks every length
    against the data) and refuse two things that would hurt while unpickling: a memo index
    beyond the pickle (the C unpickler sizes its memo by the largest index it is given), and
    tuples nested more than MAX_DEPTH deep (hashing one as a dict key recurses in C, and a deep
    enough one overflows the C stack). Tuples come only from these opcodes, so their depth is
    known from a simulation of the stack, as pickletools.dis keeps it: a depth per value."""
    stack, marks, memo = [], [], {}  # stack: each value's tuple depth; marks: stack lengths
    for opcode, argument, _ in pickletools.genops(data):
        name, before = opcode.name, opcode.stack_before
        if name in ("PUT", "BINPUT", "LONG_BINPUT") and not 0 <= argument <= len(data):
            raise UnsafeOrCorruptFile(f"the pickle stores into memo index {argument}, beyond "
                                      f"its {len(data)} bytes")
        popped = []
        if pickletools.markobject in before or (name == "POP" and marks
                                                 and len(stack) == marks[-1]):
            fence = marks.pop()  # IndexError without a MARK: refused as corrupt
            popped = stack[fence:]
            del stack[fence:]
            before = [] if name == "POP" else before[:before.index(pickletools.markobject)]
        if len(stack) - len(before) < (marks[-1] if marks else 0):
            raise UnsafeOrCorruptFile(f"the pickle's {name} finds too few values")
        if name == "MEMOIZE":
            before = []  # leaves the value where it is
        elif before:
            popped += stack[len(stack) - len(before):]
            del stack[len(stack) - len(before):]
        if name in ("TUPLE", "TUPLE1", "TUPLE2", "TUPLE3", "FROZENSET"):
            stack.append(1 + max(popped, default=0))
            if stack[-1] > serialization.MAX_DEPTH:
                raise UnsafeOrCorruptFile(f"the pickle nests tuples more than "
                                          f"{serialization.MAX_DEPTH} deep")
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo.get(argument, 0))
        elif name == "DUP":
            stack += popped * 2
        elif name == "MARK":
            marks.append(len(stack))
        elif name != "MEMOIZE":  # what REDUCE, BUILD, ... leave is never a tuple here
            stack += [0] * len(opcode.stack_after)
        if name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE") and stack:
            memo[len(memo) if name == "MEMOIZE" else argument] = stack[-1]


def load_torch_state_dict(path):
    """{name: NumPy array} from a .pth file that torch.save wrote from a state dict, read
    without torch and without running anything the file holds. Anything else (a pickle that
    names another global, a bad storage, a tensor outside its storage, compressed members, not a
    zip) is refused with one ValueError naming the file and the reason."""
    path = serialization._check_path(path, "load_torch_state_dict")
    where = f"load_torch_state_dict: {path}"
    with open(path, "rb") as file:  # FileNotFoundError names the path
        if file.read(4) not in ZIP_MAGICS:
            raise ValueError(f"{where}: not a zip archive, so not a file of torch.save from "
                             "PyTorch 1.6 or newer (an older one: torch.save it again)")
        file.seek(0, io.SEEK_END)
        file_bytes = file.tell()
        try:
            with zipfile.ZipFile(file) as archive:
                pickles = [n for n in archive.namelist() if re.fullmatch(r"[^/]+/data\.pkl", n)]
                if len(pickles) != 1:
                    raise UnsafeOrCorruptFile(f"{len(pickles)} members <prefix>/data.pkl; a "
                                              "file of torch.save has one")
                reader = _ArchiveReader(archive, pickles[0][:-len("/data.pkl")], file_bytes)
                if reader.prefix + "/byteorder" in archive.NameToInfo:
                    order = reader.read("byteorder", 16).tobytes()
                    if order != b"little":
                        raise UnsafeOrCorruptFile(f"byteorder is {order[:16]!r}, not little")
                data = reader.read("data.pkl", MAX_PICKLE_BYTES).tobytes()
                _check_opcodes(data)
                state = _SafeUnpickler(data, reader).load()
        except UnsafeOrCorruptFile as error:
            raise ValueError(f"{where}: {error}") from None
        except Exception as error:  # noqa: BLE001 - a crafted pickle or zip raises many kinds
            reason = " ".join(str(error).split())[:200]
            raise ValueError(f"{where}: corrupt, or a pickle that a state dict never is "
                             f"({type(error).__name__}: {reason})") from None
    if type(state) not in (dict, _StateDict):
        raise ValueError(f"{where}: holds a {type(state).__name__}, not a state dict")
    for name, value in state.items():
        if type(name) is not str or not (isinstance(value, _Value) and value.what == "tensor"):
            described = repr(name[:80]) if type(name) is str else f"of type {type(name).__name__}"
            raise ValueError(f"{where}: entry {described} is a {type(value).__name__}; a state "
                             "dict maps names (str) to tensors")
    return {name: value.array for name, value in state.items()}


def load_weights(model, path):
    """Load a .pth of torch.save (torchvision's names: features.0.weight, ...), a state dict
    saved by minialex.save, or a checkpoint of examples/train_alexnet.py into `model`. A file
    of another shape is one ValueError naming the keys and shapes that disagree."""
    path = serialization._check_path(path, "load_weights")
    try:
        with zipfile.ZipFile(path) as archive:
            is_minialex = serialization.HEADER_MEMBER in archive.NameToInfo
    except CORRUPT_ZIP_ERRORS:
        is_minialex = False  # FileNotFoundError and the rest: load_torch_state_dict says what
    if is_minialex:
        state = serialization.load(path)
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            state = state["model"]  # a checkpoint of train_alexnet.py
    else:
        state = load_torch_state_dict(path)
    try:
        model.load_state_dict(state)
    except (TypeError, ValueError) as error:
        described = f"{type(model).__name__}({getattr(model, 'extra_repr', str)()})"
        raise ValueError(f"{path} does not fit this model, {described}: {error}") from None
    return model


def imagenet_classes():
    """The 1,000 ImageNet class names in the order of torchvision's classifiers' outputs
    (torchvision/models/_meta.py, _IMAGENET_CATEGORIES)."""
    text = (pathlib.Path(__file__).parent / IMAGENET_CLASSES_FILE).read_text(encoding="utf-8")
    return text.splitlines()
