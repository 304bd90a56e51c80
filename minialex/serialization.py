"""Saving and loading checkpoints without pickle: `save(obj, path)` and `load(path)`.

PyTorch's `torch.save` uses pickle, and unpickling a file can run any code its author put in it.
A minialex file holds only data, so loading a checkpoint from a stranger cannot run code.

What can be saved (the "tree"):
    dict            with str keys (any characters, "/" included), nested up to MAX_DEPTH; an
                    OrderedDict comes back as a plain dict, in the same order
    list, tuple     of savable values; a tuple comes back as a list (JSON has no tuples)
    arrays          NumPy or CuPy arrays, and Tensors (their .data), of a dtype among bool,
                    int8-64, uint8-64, float16/32/64, complex64/128, in either byte order
                    (SAVABLE_DTYPES; not longdouble, whose layout differs between machines);
                    they always come back as NumPy arrays (so a state_dict's values are arrays),
                    with the same dtype, shape and bytes
    numpy scalars   np.float32(1.5) and the like; they come back with the same dtype
    int, float, bool, str, None   come back as the same Python type (floats exactly, NaN and
                    infinities included)

The file is a zip archive that np.load can open (an .npz file):

    a0.npy, a1.npy, ...   every array in the order it is met, written by np.lib.format without
                          pickle; members are numbered, never named after keys, so any key works
    __minialex__.json     {"format": "minialex", "version": 1, "tree": ...}

The tree mirrors the saved object. Strings, numbers, booleans and None are written inline; every
other node is a JSON object with exactly one key that says what it is:

    {"dict": {"conv1.weight": {"array": "a0"}, "lr": 0.01}}     {"list": [1, 2.5, null]}
    {"array": "a3"}     {"scalar": "a4"}   (a numpy scalar, stored as a 0-d array)

Tagging the containers means a user's key can never be mistaken for a marker.

Limits, the same on save and load, so that whatever save writes loads: at most MAX_DEPTH dicts
and lists inside one another, and at most MAX_INDEX_BYTES of JSON (store long lists of numbers
as arrays).

`load` reads files from strangers, so it accepts only what `save` writes and refuses anything
else with a ValueError naming the file and the reason: members compressed or encrypted (save
stores them plain), a .npy member whose header's shape x itemsize differs from the member's
size, a dtype outside SAVABLE_DTYPES, an index over MAX_INDEX_BYTES. It reads each header before
it allocates, never reads a member past its declared size, and never reads more bytes in all
than the file holds (members that overlap or are referred to twice would), so its memory stays
within a small constant of the arrays it returns, however the file was crafted.

Two promises about the file system:
  * `save` is atomic. It writes a temporary file beside the target, flushes it to disk, then
    renames it over the target (os.replace), so a crash mid-save never leaves a half-written file
    at `path` and never destroys the previous checkpoint.
  * `load` reads every array into memory and closes the file before it returns (no memory map),
    so the file can be overwritten right away, on every platform.

Unlike np.savez, `save` writes exactly to `path`: it does not append ".npz".
"""
import contextlib
import io
import json
import math
import os
import zipfile

import numpy as np

from . import backend
from .tensor import Tensor

FORMAT_NAME = "minialex"
FORMAT_VERSION = 1
HEADER_MEMBER = "__minialex__.json"  # the zip member that holds the tree
ZIP_MAGIC = b"PK\x03\x04"              # every non-empty zip archive starts with these bytes
ZIP_MAGICS = (ZIP_MAGIC, b"PK\x05\x06")  # ... and an empty one with these

SUPPORTED = ("dict with str keys, list, tuple, NumPy/CuPy array or Tensor of a numeric or bool "
             "dtype, numpy scalar, int, float, bool, str, None")
# The dtypes save writes and load accepts: {kind: item sizes}, in either byte order
SAVABLE_DTYPES = {"b": (1,), "i": (1, 2, 4, 8), "u": (1, 2, 4, 8), "f": (2, 4, 8), "c": (8, 16)}
SAVABLE_DTYPES_TEXT = "bool, int8-64, uint8-64, float16/32/64, complex64/128"
MAX_DEPTH = 100                  # dicts and lists inside one another; deeper is refused
MAX_INDEX_BYTES = 4 * 2**20      # the JSON index; a real checkpoint's takes a few KB
READ_CHUNK_BYTES = 2**20         # an array is read into its own memory this much at a time
NPY_VERSIONS = ((1, 0), (2, 0))  # what np.lib.format.write_array writes for SAVABLE_DTYPES
ENCRYPTED_OR_PATCHED = 0x1 | 0x20 | 0x40  # zip flag bits: encrypted, patch data, strong crypto
# What zipfile raises on a damaged archive (OverflowError: an offset past 2**63)
CORRUPT_ZIP_ERRORS = (zipfile.BadZipFile, EOFError, OSError, ValueError, OverflowError)


# --------------------------------------------------------------------------------------------
# Saving

def save(obj, path):
    """Write `obj` (a state_dict, or nested dicts/lists of arrays and numbers) to `path`.

    `path` is a str or os.PathLike and is used exactly as given (no ".npz" is appended). Raises a
    TypeError naming the key path of the first value that cannot be saved; nothing is written then.
    """
    path = _check_path(path, "save")
    arrays = []  # filled by _encode: the NumPy arrays, in the order of their names a0, a1, ...
    tree = _encode(obj, "", arrays, containers_on_path=set(), depth=1)
    header = json.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION, "tree": tree})
    if len(header) > MAX_INDEX_BYTES:  # ASCII (json.dumps escapes the rest): 1 char, 1 byte
        raise ValueError(f"save: the index of this object (its JSON, everything but the arrays) "
                         f"takes {len(header)} bytes, over the {MAX_INDEX_BYTES} that load "
                         "accepts; store long lists of numbers as arrays")

    # Write beside the target (same directory, so same file system: os.replace is then an
    # atomic rename), under a name that cannot be mistaken for a finished checkpoint.
    directory, name = os.path.split(os.path.abspath(path))
    temp_path = os.path.join(directory, f".{name}.tmp-{os.getpid()}")
    try:
        with open(temp_path, "wb") as file:
            _write_archive(file, arrays, header)
            file.flush()
            os.fsync(file.fileno())  # the bytes are on disk before the rename makes them visible
        os.replace(temp_path, path)
    except BaseException:  # KeyboardInterrupt too: never leave the temporary file behind
        if os.path.exists(temp_path):
            os.remove(temp_path)
        raise
    _fsync_directory(directory)


def _write_archive(file, arrays, header):
    """The .npz layout: one uncompressed .npy member per array, then the JSON header."""
    with zipfile.ZipFile(file, mode="w", compression=zipfile.ZIP_STORED) as archive:
        for index, array in enumerate(arrays):
            # force_zip64: a member's size is not known before it is written, and may pass 2 GiB
            with archive.open(f"a{index}.npy", mode="w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)
        archive.writestr(HEADER_MEMBER, header)


def _fsync_directory(directory):
    """Make the rename itself durable (POSIX); Windows cannot open a directory, nor needs to."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    try:
        descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:  # some file systems refuse it; the checkpoint itself is complete already
        pass
    finally:
        os.close(descriptor)


def _encode(value, key_path, arrays, containers_on_path, depth):
    """The JSON node for `value`; arrays are appended to `arrays` and referred to by name.

    `key_path` ("optimizer/param_groups/0") only serves error messages. `containers_on_path`
    holds the ids of the dicts and lists being encoded above this one, to catch cycles; `depth`
    counts them, plus one.
    """
    # numpy scalars first: np.float64 is also a Python float and np.bool_ is not a bool
    # (np.str_, a numpy scalar that is also a str, is saved as a plain str)
    if isinstance(value, np.generic) and not isinstance(value, str):
        _check_dtype(value.dtype, "numpy scalar", key_path)
        return {"scalar": _add_array(np.asarray(value), arrays)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Tensor):
        value = value.data
    if isinstance(value, np.ndarray) or backend.device_of(value) == "cuda":
        array = backend.as_numpy(value)
        _check_dtype(array.dtype, "array", key_path)
        return {"array": _add_array(array, arrays)}
    if isinstance(value, (dict, list, tuple)):
        if id(value) in containers_on_path:
            raise ValueError(f"save: the object contains itself at {_describe(key_path)}")
        if depth > MAX_DEPTH:  # refused here, not by a RecursionError, and load would refuse it
            raise ValueError(f"save: the object nests more than {MAX_DEPTH} dicts and lists "
                             f"inside one another, at {_describe(key_path)}")
        containers_on_path.add(id(value))
        if isinstance(value, dict):
            node = {"dict": {_check_key(key, key_path): _encode(
                item, _join(key_path, key), arrays, containers_on_path, depth + 1)
                             for key, item in value.items()}}
        else:
            node = {"list": [_encode(item, _join(key_path, index), arrays, containers_on_path,
                                     depth + 1)
                             for index, item in enumerate(value)]}
        containers_on_path.remove(id(value))
        return node
    raise TypeError(f"save: cannot save value of type {type(value).__name__} at "
                    f"{_describe(key_path)}; supported: {SUPPORTED}")


def _add_array(array, arrays):
    arrays.append(array)
    return f"a{len(arrays) - 1}"


def _is_savable(dtype):
    """Plain (not structured, not subarray) and in SAVABLE_DTYPES."""
    return (dtype.fields is None and dtype.subdtype is None
            and dtype.itemsize in SAVABLE_DTYPES.get(dtype.kind, ()))


def _check_dtype(dtype, what, key_path):
    if not _is_savable(dtype):
        raise TypeError(f"save: cannot save {what} of dtype {dtype} at {_describe(key_path)}; "
                        f"supported: {SAVABLE_DTYPES_TEXT} (object arrays would need pickle)")


def _check_key(key, key_path):
    if not isinstance(key, str):
        raise TypeError(f"save: dict keys must be str; got key {key!r} of type "
                        f"{type(key).__name__} at {_describe(key_path)}")
    return key


def _join(key_path, key):
    return f"{key_path}/{key}" if key_path else str(key)


def _describe(key_path):
    return f"'{key_path}'" if key_path else "the top level"


def _check_path(path, who):
    if isinstance(path, os.PathLike):
        path = os.fspath(path)
    if not isinstance(path, str):
        raise TypeError(f"{who}: path must be a str or os.PathLike; got {type(path).__name__} "
                        f"{path!r}")
    return path


# --------------------------------------------------------------------------------------------
# Loading

def load(path):
    """Read what `save` wrote; arrays come back as NumPy arrays, fully in memory.

    Never unpickles: a file holding a pickled (object) array is refused with a ValueError, and so
    is a file that is truncated, not a minialex file, from a newer format version, or holding
    anything that save never writes (see the module docstring).
    """
    path = _check_path(path, "load")
    try:
        file = open(path, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(f"load: no such file: {path!r}") from None
    with file:  # closed on return: every array is read into memory first (no memory map)
        if file.read(len(ZIP_MAGIC)) not in ZIP_MAGICS:
            raise ValueError(f"load: {path} is not a minialex file (not a zip archive; "
                             "expected a file written by minialex.save)")
        file.seek(0)
        try:
            archive = zipfile.ZipFile(file)  # reads the directory only; members on demand
        except CORRUPT_ZIP_ERRORS as error:
            raise ValueError(f"load: {path} is truncated or corrupt (not a valid zip archive); "
                             "was it written completely?") from error
        with archive:
            reader = _MemberReader(archive, path, os.fstat(file.fileno()).st_size)
            tree = _read_header(reader, path)
            return _decode(tree, "", reader, path, depth=1)


class _MemberReader:
    """Reads the archive's members, refusing any that save would not have written.

    The zip directory's sizes are checked against each other and against the file, and each
    member is read into memory allocated for its declared size, never past it. In all it reads
    no more bytes than the file holds, so members that overlap, or an array that the tree names
    twice, cannot make a small file take much memory.
    """

    def __init__(self, archive, path, file_bytes):
        self.archive, self.path, self.file_bytes = archive, path, file_bytes
        self.bytes_left = file_bytes

    def refuse(self, name, problem):
        raise ValueError(f"load: {self.path}: member {name!r} {problem}")

    def open(self, member, name, max_bytes=None):
        """The member's ZipInfo and an open stream on it, once its directory entry passes."""
        info = self.archive.getinfo(member)
        if max_bytes is not None and info.file_size > max_bytes:
            self.refuse(name, f"takes {info.file_size} bytes, over the {max_bytes} that "
                              "minialex.save writes at most")
        if info.compress_type != zipfile.ZIP_STORED:
            self.refuse(name, f"is compressed (zip method {info.compress_type}); "
                              "minialex.save stores members uncompressed")
        if info.flag_bits & ENCRYPTED_OR_PATCHED:
            self.refuse(name, f"is encrypted (zip flag bits {info.flag_bits:#x}); "
                              "minialex.save never encrypts")
        if info.file_size != info.compress_size:  # stored: both are the member's length
            self.refuse(name, f"is stored, yet its size {info.file_size} differs from its "
                              f"stored size {info.compress_size}; the file is corrupt")
        self.bytes_left -= info.file_size
        if self.bytes_left < 0:
            self.refuse(name, f"takes the bytes read so far past the file's {self.file_bytes} "
                              "(members overlap or are read twice); the file is corrupt")
        return info, self.archive.open(info)

    def read_into(self, stream, buffer, name):
        """Fill `buffer` (a writable byte view) from `stream`; the member must end right there."""
        filled = 0
        while filled < len(buffer):
            chunk = stream.read(min(READ_CHUNK_BYTES, len(buffer) - filled))
            if not chunk:
                raise EOFError(f"member {name!r} ends early")
            buffer[filled:filled + len(chunk)] = chunk
            filled += len(chunk)
        if stream.read(1):
            self.refuse(name, "holds more bytes than its zip directory entry declares; the "
                              "file is corrupt")

    def read_bytes(self, member, name):
        """A member's bytes (the JSON index), at most MAX_INDEX_BYTES of them."""
        with self.corrupt_as_value_error(name):
            info, stream = self.open(member, name, max_bytes=MAX_INDEX_BYTES)
            content = bytearray(info.file_size)
            with stream:
                self.read_into(stream, memoryview(content), name)
        return bytes(content)

    def read_array(self, member, name):
        """A .npy member as a writable NumPy array, its header checked before allocating."""
        with self.corrupt_as_value_error(name):
            info, stream = self.open(member, name)
            with stream:
                shape, fortran_order, dtype = _read_npy_header(stream, name, self.path)
                data_bytes = info.file_size - stream.tell()
                if math.prod(shape) * dtype.itemsize != data_bytes:
                    self.refuse(name, f"declares shape {shape} of {dtype} "
                                      f"({math.prod(shape) * dtype.itemsize} bytes) but holds "
                                      f"{data_bytes} bytes of data; the file is corrupt")
                flat = np.empty(data_bytes, dtype=np.uint8)
                self.read_into(stream, memoryview(flat), name)
        # the bytes are in the array's memory order: C, or Fortran when fortran_order says so
        return flat.view(dtype).reshape(shape, order="F" if fortran_order else "C")

    @contextlib.contextmanager
    def corrupt_as_value_error(self, name):
        try:
            yield
        except CORRUPT_ZIP_ERRORS as error:
            if isinstance(error, ValueError) and str(error).startswith("load: "):
                raise  # one of ours, which says what is wrong already
            raise ValueError(f"load: {self.path} is truncated or corrupt (member {name!r} cannot "
                             "be read); was it written completely?") from error


def _read_npy_header(stream, name, path):
    """(shape, fortran_order, dtype) from a .npy header, refusing what save never writes."""
    try:
        version = np.lib.format.read_magic(stream)
        if version not in NPY_VERSIONS:
            raise ValueError(f".npy format version {version}")
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran_order, dtype = read_header(stream)
    except Exception as error:  # noqa: BLE001  NumPy parses the header with ast.literal_eval,
        # tokenize and np.dtype, which raise many kinds of error on crafted text; any is corrupt
        raise ValueError(f"load: {path} is corrupt: member {name!r} is not a valid .npy array "
                         f"({type(error).__name__}: {str(error)[:200]})") from error
    if dtype.hasobject:
        raise ValueError(f"load: {path}: member {name!r} holds a pickled (object) array; "
                         "minialex files never do, so it is refused without unpickling "
                         "(it could run code)")
    if not _is_savable(dtype):
        raise ValueError(f"load: {path}: member {name!r} holds dtype {dtype}, which "
                         f"minialex.save never writes (it writes {SAVABLE_DTYPES_TEXT})")
    if any(side < 0 for side in shape):
        raise ValueError(f"load: {path} is corrupt: member {name!r} has shape {shape}")
    return shape, fortran_order, dtype


def _read_header(reader, path):
    if HEADER_MEMBER not in reader.archive.NameToInfo:
        raise ValueError(f"load: {path} is not a minialex file (no {HEADER_MEMBER})")
    text = reader.read_bytes(HEADER_MEMBER, HEADER_MEMBER)
    if text.startswith(np.lib.format.MAGIC_PREFIX):  # a .npy: refuse a pickle as such
        _read_npy_header(io.BytesIO(text), HEADER_MEMBER, path)
    try:
        header = json.loads(text)
    except (ValueError, TypeError, RecursionError) as error:  # ValueError: JSONDecodeError too
        raise ValueError(f"load: {path} is corrupt: {HEADER_MEMBER} is not valid JSON") from error
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise ValueError(f"load: {path} is not a minialex file ({HEADER_MEMBER} does not say "
                         f"\"format\": \"{FORMAT_NAME}\")")
    version = header.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"load: {path} is corrupt: format version {version!r} is not a "
                         "positive integer")
    if version > FORMAT_VERSION:
        raise ValueError(f"load: {path} has format version {version}, newer than this minialex "
                         f"reads (up to version {FORMAT_VERSION}); upgrade minialex to load it")
    if "tree" not in header:
        raise ValueError(f"load: {path} is corrupt: {HEADER_MEMBER} has no \"tree\"")
    return header["tree"]


def _read_array(reader, name, key_path, path):
    """The array that the tree calls `name` ("a0", "a1", ...): the member "a0.npy"."""
    member = f"{name}.npy" if isinstance(name, str) else None
    if member not in reader.archive.NameToInfo:
        raise ValueError(f"load: {path} is corrupt: {_describe(key_path)} refers to array "
                         f"{name!r}, which is not in the file")
    return reader.read_array(member, name)


def _decode(node, key_path, reader, path, depth):
    """The Python value for a JSON node written by `_encode`; `depth` as in `_encode`."""
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    if isinstance(node, dict) and len(node) == 1:
        (tag, content), = node.items()
        if tag in ("dict", "list") and depth > MAX_DEPTH:
            raise ValueError(f"load: {path} is corrupt: more than {MAX_DEPTH} dicts and lists "
                             f"inside one another, at {_describe(key_path)}; save writes no "
                             "deeper")
        if tag == "dict" and isinstance(content, dict):
            return {key: _decode(item, _join(key_path, key), reader, path, depth + 1)
                    for key, item in content.items()}
        if tag == "list" and isinstance(content, list):
            return [_decode(item, _join(key_path, index), reader, path, depth + 1)
                    for index, item in enumerate(content)]
        if tag == "array":
            return _read_array(reader, content, key_path, path)
        if tag == "scalar":  # stored as a 0-d array; [()] gives the numpy scalar, same dtype
            array = _read_array(reader, content, key_path, path)
            if array.ndim == 0:
                return array[()]
    raise ValueError(f"load: {path} is corrupt: unexpected node {json.dumps(node)[:80]} at "
                     f"{_describe(key_path)}; expected a number, string, null, or an object "
                     "with one key among dict, list, array, scalar")
