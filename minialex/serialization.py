"""Saving and loading checkpoints without pickle: `save(obj, path)` and `load(path)`.

PyTorch's `torch.save` uses pickle, and unpickling a file can run any code its author put in it.
A minialex file holds only data, so loading a checkpoint from a stranger cannot run code.

What can be saved (the "tree"):
    dict            with str keys (any characters, "/" included), nested to any depth; an
                    OrderedDict comes back as a plain dict, in the same order
    list, tuple     of savable values; a tuple comes back as a list (JSON has no tuples)
    arrays          NumPy or CuPy arrays, and Tensors (their .data), of a numeric or bool dtype;
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

Two promises about the file system:
  * `save` is atomic. It writes a temporary file beside the target, flushes it to disk, then
    renames it over the target (os.replace), so a crash mid-save never leaves a half-written file
    at `path` and never destroys the previous checkpoint.
  * `load` reads every array into memory and closes the file before it returns (no memory map),
    so the file can be overwritten right away, on every platform.

Unlike np.savez, `save` writes exactly to `path`: it does not append ".npz".
"""
import json
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
SAVABLE_DTYPE_KINDS = "biufc"  # bool, signed int, unsigned int, float, complex


# --------------------------------------------------------------------------------------------
# Saving

def save(obj, path):
    """Write `obj` (a state_dict, or nested dicts/lists of arrays and numbers) to `path`.

    `path` is a str or os.PathLike and is used exactly as given (no ".npz" is appended). Raises a
    TypeError naming the key path of the first value that cannot be saved; nothing is written then.
    """
    path = _check_path(path, "save")
    arrays = []  # filled by _encode: the NumPy arrays, in the order of their names a0, a1, ...
    tree = _encode(obj, "", arrays, containers_on_path=set())
    header = json.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION, "tree": tree})

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


def _encode(value, key_path, arrays, containers_on_path):
    """The JSON node for `value`; arrays are appended to `arrays` and referred to by name.

    `key_path` ("optimizer/param_groups/0") only serves error messages. `containers_on_path`
    holds the ids of the dicts and lists being encoded above this one, to catch cycles.
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
        containers_on_path.add(id(value))
        if isinstance(value, dict):
            node = {"dict": {_check_key(key, key_path):
                             _encode(item, _join(key_path, key), arrays, containers_on_path)
                             for key, item in value.items()}}
        else:
            node = {"list": [_encode(item, _join(key_path, index), arrays, containers_on_path)
                             for index, item in enumerate(value)]}
        containers_on_path.remove(id(value))
        return node
    raise TypeError(f"save: cannot save value of type {type(value).__name__} at "
                    f"{_describe(key_path)}; supported: {SUPPORTED}")


def _add_array(array, arrays):
    arrays.append(array)
    return f"a{len(arrays) - 1}"


def _check_dtype(dtype, what, key_path):
    if dtype.kind not in SAVABLE_DTYPE_KINDS:
        raise TypeError(f"save: cannot save {what} of dtype {dtype} at {_describe(key_path)}; "
                        "supported: numeric or bool dtypes (object arrays would need pickle)")


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
    is a file that is truncated, not a minialex file, or from a newer format version.
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
            archive = np.load(file, allow_pickle=False)  # an NpzFile: reads members on demand
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as error:
            raise ValueError(f"load: {path} is truncated or corrupt (not a valid zip archive); "
                             "was it written completely?") from error
        with archive:
            tree = _read_header(archive, path)
            return _decode(tree, "", archive, path)


def _read_header(archive, path):
    if HEADER_MEMBER not in archive.files:
        raise ValueError(f"load: {path} is not a minialex file (no {HEADER_MEMBER})")
    text = _read_member(archive, HEADER_MEMBER, path)  # bytes (an ndarray if it is a .npy)
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


def _read_member(archive, name, path):
    """One member of the archive, with every way it can fail turned into a clear ValueError."""
    try:
        return archive[name]
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise ValueError(f"load: {path}: member {name!r} holds a pickled (object) array; "
                             "minialex files never do, so it is refused without unpickling "
                             "(it could run code)") from error
        raise ValueError(f"load: {path} is corrupt: member {name!r} is not a valid .npy array "
                         f"({error})") from error
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        raise ValueError(f"load: {path} is truncated or corrupt (member {name!r} cannot be "
                         "read); was it written completely?") from error


def _read_array(archive, name, key_path, path):
    """The array that the tree calls `name` ("a0", "a1", ...), read fully into memory."""
    if not isinstance(name, str) or name == HEADER_MEMBER or name not in archive.files:
        raise ValueError(f"load: {path} is corrupt: {_describe(key_path)} refers to array "
                         f"{name!r}, which is not in the file")
    array = _read_member(archive, name, path)
    if not isinstance(array, np.ndarray):  # a member that is not a .npy comes back as bytes
        raise ValueError(f"load: {path} is corrupt: member {name!r} is not a .npy array")
    return array


def _decode(node, key_path, archive, path):
    """The Python value for a JSON node written by `_encode`."""
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    if isinstance(node, dict) and len(node) == 1:
        (tag, content), = node.items()
        if tag == "dict" and isinstance(content, dict):
            return {key: _decode(item, _join(key_path, key), archive, path)
                    for key, item in content.items()}
        if tag == "list" and isinstance(content, list):
            return [_decode(item, _join(key_path, index), archive, path)
                    for index, item in enumerate(content)]
        if tag == "array":
            return _read_array(archive, content, key_path, path)
        if tag == "scalar":  # stored as a 0-d array; [()] gives the numpy scalar, same dtype
            array = _read_array(archive, content, key_path, path)
            if array.ndim == 0:
                return array[()]
    raise ValueError(f"load: {path} is corrupt: unexpected node {json.dumps(node)[:80]} at "
                     f"{_describe(key_path)}; expected a number, string, null, or an object "
                     "with one key among dict, list, array, scalar")
