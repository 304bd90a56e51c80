"""Tests for minialex.serialization: save/load round trips, the file format, atomic saving, and
loading files that are missing, truncated, foreign, from the future, or malicious."""
import bz2
import io
import json
import math
import os
import pathlib
import struct
import subprocess
import sys
import zipfile
import zlib
from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from minialex import random as mx_random
from minialex import serialization
from minialex.serialization import load, save
from minialex.tensor import tensor

HEADER = "__minialex__.json"


# --------------------------------------------------------------------------------------------
# Helpers

def assert_same(expected, actual, where="top"):
    """`actual` is what loading `expected` must give: same nesting, types, dtypes and bytes.

    Tuples come back as lists and Tensors as the NumPy array of their data.
    """
    if hasattr(expected, "requires_grad"):  # a Tensor
        expected = expected.data
    if isinstance(expected, np.ndarray):
        assert type(actual) is np.ndarray, where
        assert actual.dtype == expected.dtype, where
        assert actual.shape == expected.shape, where
        assert actual.tobytes() == expected.tobytes(), where  # bit-exact, NaN included
        assert np.array_equal(actual, expected, equal_nan=expected.dtype.kind in "fc"), where
    elif isinstance(expected, np.generic):
        assert type(actual) is type(expected), where
        assert actual.dtype == expected.dtype, where
        assert actual.tobytes() == expected.tobytes(), where
    elif isinstance(expected, dict):
        assert type(actual) is dict, where
        assert list(actual) == list(expected), where  # same keys, same order
        for key in expected:
            assert_same(expected[key], actual[key], f"{where}/{key}")
    elif isinstance(expected, (list, tuple)):
        assert type(actual) is list, where
        assert len(actual) == len(expected), where
        for index, (e, a) in enumerate(zip(expected, actual)):
            assert_same(e, a, f"{where}/{index}")
    else:
        assert type(actual) is type(expected), where
        if isinstance(expected, float) and math.isnan(expected):
            assert math.isnan(actual), where
        else:
            assert actual == expected, where


def round_trip(obj, tmp_path):
    path = tmp_path / "checkpoint.npz"
    save(obj, path)
    return load(path)


def write_zip(path, members):
    """A zip archive written by hand: {member name: bytes or str or ndarray (as .npy)}."""
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members.items():
            if isinstance(content, np.ndarray):
                with archive.open(name, "w") as member:
                    np.lib.format.write_array(member, content, allow_pickle=False)
            else:
                archive.writestr(name, content)


def header(tree, version=1, format_name="minialex"):
    return json.dumps({"format": format_name, "version": version, "tree": tree})


def files_in(directory):
    return sorted(os.listdir(directory))


# --------------------------------------------------------------------------------------------
# Round trips

def test_round_trip_nested_tree_of_every_supported_kind(tmp_path):
    rng = np.random.default_rng(0)
    obj = {
        "model": {
            "conv1.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
            "conv1.bias": rng.standard_normal(4),                        # float64
            "fc.weight": np.asfortranarray(rng.standard_normal((3, 5)).astype(np.float32)),
        },
        "counts": np.arange(-3, 9, dtype=np.int64).reshape(3, 4),
        "mask": rng.random((2, 3)) > 0.5,                                # bool
        "zero_d": np.array(2.5, dtype=np.float32),
        "zero_d_int": np.array(7, dtype=np.int64),
        "empty": np.zeros((0, 3), dtype=np.float32),
        "empty_1d": np.array([], dtype=np.int64),
        "special": np.array([np.nan, np.inf, -np.inf, -0.0], dtype=np.float64),
        "small_types": [np.arange(3, dtype=t) for t in (np.uint8, np.int8, np.int16,
                                                          np.uint64, np.float16, np.complex64)],
        "step": 1200, "lr": 0.01, "nesterov": False, "name": "alexnet", "scheduler": None,
        "milestones": [30, 60, 90], "betas": (0.9, 0.999),
        "deep": {"a": {"b": {"c": {"d": [{"e": np.ones(2)}, [], {}]}}}},
        "ordered": OrderedDict([("z", np.ones(1)), ("a", 2)]),  # comes back as a dict
    }
    assert_same(obj, round_trip(obj, tmp_path))


def test_python_numbers_keep_their_exact_type_and_value(tmp_path):
    values = [0, -1, 2**100, -(2**70), 0.0, -0.0, 0.1, 1e-300, 5e-324, 1e300, 1.0, 3.0,
              float("inf"), float("-inf"), float("nan"), True, False, None, "", "héllo ✓"]
    loaded = round_trip(values, tmp_path)
    assert_same(values, loaded)
    assert math.copysign(1.0, loaded[5]) == -1.0  # -0.0 keeps its sign


def test_numpy_scalars_come_back_with_their_dtype(tmp_path):
    scalars = {"f32": np.float32(1.1), "f64": np.float64(0.1), "f16": np.float16(-2.5),
               "i8": np.int8(-7), "i64": np.int64(2**62), "u32": np.uint32(4_000_000_000),
               "b": np.bool_(True), "c": np.complex128(1 - 2j), "nan": np.float32("nan")}
    assert_same(scalars, round_trip(scalars, tmp_path))


def test_tuples_come_back_as_lists(tmp_path):
    assert round_trip({"shape": (3, (224, 224))}, tmp_path) == {"shape": [3, [224, 224]]}


def test_keys_with_slashes_and_unusual_characters_round_trip(tmp_path):
    keys = ["a/b", "/", "", "a0", "a0.npy", HEADER, "dict", "array", "scalar", "list", "..",
            "../escape", "spaces and\ttabs\n", "ünïcödé ✓", "x" * 300, "null", "0"]
    obj = {key: np.full(2, index, dtype=np.int64) for index, key in enumerate(keys)}
    obj["nested/dict"] = {key: index for index, key in enumerate(keys)}
    assert_same(obj, round_trip(obj, tmp_path))


def test_member_names_are_numbered_never_derived_from_keys(tmp_path):
    path = tmp_path / "checkpoint"
    save({"../evil": np.ones(1), "a/b": {"c": np.zeros(2)}, "s": np.float32(1)}, path)
    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == sorted(["a0.npy", "a1.npy", "a2.npy", HEADER])


def test_state_dict_of_60_tensors_loads_as_arrays_in_order(tmp_path):
    rng = np.random.default_rng(1)
    state = {}
    for layer in range(30):
        state[f"features.{layer}.weight"] = tensor(
            rng.standard_normal((layer % 5 + 1, 3)).astype(np.float32), requires_grad=True)
        state[f"features.{layer}.bias"] = tensor(rng.standard_normal(layer % 5 + 1))
    assert len(state) == 60
    loaded = round_trip(state, tmp_path)
    assert list(loaded) == list(state)
    for key, value in state.items():
        assert type(loaded[key]) is np.ndarray
        assert loaded[key].dtype == value.dtype and loaded[key].shape == value.shape
        assert np.array_equal(loaded[key], value.data)


def test_random_generator_state_round_trips(tmp_path):
    """A checkpoint can hold the generator state: its integers exceed 64 bits."""
    mx_random.manual_seed(123)
    state = mx_random.get_state()
    expected = mx_random.generator().random(5)
    mx_random.set_state(round_trip({"rng": state}, tmp_path)["rng"])
    assert np.array_equal(mx_random.generator().random(5), expected)


savable_dtypes = st.sampled_from([
    np.dtype(name).newbyteorder(order)
    for name in ("bool", "int8", "uint16", "int32", "int64", "uint64", "float16", "float32",
                 "float64", "complex128")
    for order in ("<", ">")])


@given(array=hnp.arrays(savable_dtypes, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0,
                                                          max_side=4)),
       transpose=st.booleans())
def test_any_numeric_array_round_trips_bit_exact(tmp_path_factory, array, transpose):
    if transpose:
        array = array.T  # a non-contiguous view (Fortran order for 2-D)
    loaded = round_trip({"x": array}, tmp_path_factory.mktemp("rt"))["x"]
    assert_same(array, loaded)


# --------------------------------------------------------------------------------------------
# The format, as the module docstring specifies it

def test_written_file_follows_the_documented_format(tmp_path):
    path = tmp_path / "checkpoint.npz"
    weight = np.arange(6, dtype=np.float32).reshape(2, 3)
    save({"w": weight, "lr": 0.1, "k": ("a", None), "s": np.int16(3)}, path)
    with zipfile.ZipFile(path) as archive:
        written = json.loads(archive.read(HEADER))
    assert written == {"format": "minialex", "version": 1, "tree": {"dict": {
        "w": {"array": "a0"}, "lr": 0.1, "k": {"list": ["a", None]}, "s": {"scalar": "a1"}}}}
    with np.load(path, allow_pickle=False) as npz:  # an ordinary .npz for NumPy
        assert npz["a0"].dtype == np.float32 and np.array_equal(npz["a0"], weight)
        assert npz["a1"].shape == () and npz["a1"].dtype == np.int16 and npz["a1"] == 3


def test_load_reads_a_file_written_by_hand_from_the_specification(tmp_path):
    path = tmp_path / "by_hand.npz"
    write_zip(path, {"a0.npy": np.arange(4, dtype=np.int32), "a1.npy": np.array(0.5),
                     HEADER: header({"dict": {"x": {"list": [{"array": "a0"}, 3, "s", None]},
                                              "y": {"scalar": "a1"}}})})
    assert_same({"x": [np.arange(4, dtype=np.int32), 3, "s", None], "y": np.float64(0.5)},
                load(path))


def test_path_is_used_exactly_as_given_without_adding_a_suffix(tmp_path):
    for name in ("checkpoint", "model.pt", "weights.npz"):
        directory = tmp_path / name.replace(".", "_")
        directory.mkdir()
        save({"x": np.ones(2)}, str(directory / name))
        assert files_in(directory) == [name]  # no ".npz" appended, no temporary file left
        assert np.array_equal(load(str(directory / name))["x"], np.ones(2))


def test_path_can_be_a_pathlike(tmp_path):
    class MyPath:  # any os.PathLike, not only pathlib
        def __fspath__(self):
            return str(tmp_path / "custom")

    save([1, 2], MyPath())
    assert load(MyPath()) == [1, 2]
    assert load(pathlib.Path(tmp_path / "custom")) == [1, 2]


def test_loaded_arrays_are_in_memory_and_the_file_is_closed(tmp_path):
    path = tmp_path / "checkpoint.npz"
    save({"w": np.arange(1000.0)}, path)
    loaded = load(path)["w"]
    assert type(loaded) is np.ndarray and not isinstance(loaded, np.memmap)
    assert loaded.flags.writeable
    if os.path.isdir("/proc/self/fd"):  # Linux: no descriptor still points at the file
        open_files = {os.path.realpath(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")}
        assert os.path.realpath(path) not in open_files
    save({"w": np.zeros(3)}, path)  # replace it right after loading, then delete it
    os.remove(path)
    assert np.array_equal(loaded, np.arange(1000.0))  # the loaded values did not change


@pytest.mark.gpu
def test_cupy_arrays_and_cuda_tensors_are_saved_and_load_as_numpy(tmp_path):
    from minialex.backend import to_device
    weight = np.arange(12, dtype=np.float32).reshape(3, 4)
    obj = {"array": to_device(weight, "cuda"), "tensor": tensor(weight, device="cuda")}
    loaded = round_trip(obj, tmp_path)
    for key in obj:
        assert type(loaded[key]) is np.ndarray and loaded[key].dtype == np.float32
        assert np.array_equal(loaded[key], weight)


class FakeCupyArray:
    """Stands in for cupy.ndarray on a machine without a GPU: only the host copy is real."""

    def __init__(self, host):
        self.host = host


def test_device_arrays_are_copied_to_the_host_through_the_backend(tmp_path, monkeypatch):
    """The CPU twin of the test above: the backend is made to believe in a fake CuPy."""
    from minialex import backend
    fake_cupy = type("FakeCupy", (), {"ndarray": FakeCupyArray,
                                      "asnumpy": staticmethod(lambda array: array.host.copy())})
    monkeypatch.setattr(backend, "_cupy", fake_cupy)
    weight = np.arange(6, dtype=np.float32).reshape(2, 3)
    loaded = round_trip({"w": FakeCupyArray(weight), "b": [FakeCupyArray(np.ones(2))]}, tmp_path)
    assert_same({"w": weight, "b": [np.ones(2)]}, loaded)


# --------------------------------------------------------------------------------------------
# What save refuses

@pytest.mark.parametrize("obj, message", [
    ({"optimizer": {"param_groups": [{1, 2}]}},
     r"cannot save value of type set at 'optimizer/param_groups/0'; supported: dict"),
    ({"a": {"b": [1, 2, b"bytes"]}}, r"type bytes at 'a/b/2'"),
    (object(), r"type object at the top level"),
    ({"w": np.array([1, "x"], dtype=object)}, r"array of dtype object at 'w'"),
    ({"w": np.array(["a", "b"])}, r"array of dtype <U1 at 'w'"),
    ({"w": np.zeros(2, dtype=[("a", "f4")])}, r"dtype \[\('a', '<f4'\)\]"),
    ({"t": np.datetime64("2012-01-01")}, r"numpy scalar of dtype datetime64\[D\] at 't'"),
    ({"layers": {3: np.ones(1)}}, r"dict keys must be str; got key 3 of type int at 'layers'"),
])
def test_save_rejects_unsupported_values_naming_the_key_path(tmp_path, obj, message):
    with pytest.raises(TypeError, match=message):
        save(obj, tmp_path / "checkpoint")
    assert files_in(tmp_path) == []  # nothing written, not even a temporary file


def test_save_rejects_an_object_that_contains_itself(tmp_path):
    obj = {"a": [1]}
    obj["a"].append(obj)
    with pytest.raises(ValueError, match=r"contains itself at 'a/1'"):
        save(obj, tmp_path / "checkpoint")


def test_the_same_value_twice_is_not_a_cycle(tmp_path):
    shared = [np.ones(2)]
    assert_same({"x": shared, "y": shared}, round_trip({"x": shared, "y": shared}, tmp_path))


@pytest.mark.parametrize("path", [b"bytes/path", 3, None])
def test_save_and_load_reject_a_path_that_is_not_str_or_pathlike(path):
    with pytest.raises(TypeError, match=r"save: path must be a str or os.PathLike"):
        save({}, path)
    with pytest.raises(TypeError, match=r"load: path must be a str or os.PathLike"):
        load(path)


# --------------------------------------------------------------------------------------------
# Atomic saving: a failed save leaves the previous checkpoint untouched and no temporary file

def save_previous_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.npz"
    save({"epoch": 1, "w": np.arange(5.0)}, path)
    return path, path.read_bytes()


def test_failed_save_of_an_unsupported_value_keeps_the_previous_file(tmp_path):
    path, previous = save_previous_checkpoint(tmp_path)
    bad = {"epoch": 2, "w": np.arange(5.0) + 1, "deep": {"list": [1, {"x": {1j, 2j}}]}}
    with pytest.raises(TypeError, match=r"at 'deep/list/1/x'"):
        save(bad, path)
    assert path.read_bytes() == previous
    assert files_in(tmp_path) == ["checkpoint.npz"]


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_save_that_fails_while_writing_keeps_the_previous_file(tmp_path, monkeypatch, error):
    path, previous = save_previous_checkpoint(tmp_path)
    real_write_array = np.lib.format.write_array
    seen_while_writing = []

    def write_array_then_fail(file, array, *args, **kwargs):
        if len(seen_while_writing) == 1:  # the first array is written, the second one fails
            raise error
        real_write_array(file, array, *args, **kwargs)
        seen_while_writing.append(files_in(tmp_path))

    monkeypatch.setattr(np.lib.format, "write_array", write_array_then_fail)
    with pytest.raises(type(error)):
        save({"epoch": 2, "w": np.ones(100), "v": np.ones(100)}, path)
    # while writing, the data went to a temporary file beside the target ...
    assert seen_while_writing == [["." + path.name + f".tmp-{os.getpid()}", path.name]]
    # ... which is removed again, and the previous checkpoint is untouched
    assert files_in(tmp_path) == [path.name]
    assert path.read_bytes() == previous
    monkeypatch.undo()
    assert load(path)["epoch"] == 1


def test_save_that_fails_to_rename_keeps_the_previous_file(tmp_path, monkeypatch):
    path, previous = save_previous_checkpoint(tmp_path)

    def failing_replace(source, target):
        raise PermissionError("target is locked")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(PermissionError):
        save({"epoch": 2}, path)
    assert files_in(tmp_path) == [path.name]
    assert path.read_bytes() == previous


def test_save_syncs_the_data_to_disk_before_renaming(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def recording_fsync(descriptor):
        events.append("fsync")
        real_fsync(descriptor)

    def recording_replace(source, target):
        events.append(("replace", os.path.basename(source), os.path.basename(target)))
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    save({"w": np.ones(3)}, tmp_path / "checkpoint")
    assert events[:2] == ["fsync", ("replace", f".checkpoint.tmp-{os.getpid()}", "checkpoint")]


# --------------------------------------------------------------------------------------------
# What load refuses: each with a clear error naming the path and what was expected

def test_load_of_a_missing_file(tmp_path):
    path = tmp_path / "missing.npz"
    with pytest.raises(FileNotFoundError, match=r"load: no such file: .*missing\.npz"):
        load(path)


@pytest.mark.parametrize("fraction", [0.5, 0.1, 0.9])
def test_load_of_a_truncated_file(tmp_path, fraction):
    whole = tmp_path / "whole.npz"
    save({"w": np.arange(1000.0), "epoch": 3}, whole)
    data = whole.read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[:int(len(data) * fraction)])
    with pytest.raises(ValueError, match=r"load: .*cut\.npz is truncated or corrupt \(not a "
                                         r"valid zip archive\); was it written completely\?"):
        load(cut)


def test_load_of_a_file_with_a_damaged_array(tmp_path):
    path = tmp_path / "damaged.npz"
    save({"w": np.zeros(1000)}, path)
    data = bytearray(path.read_bytes())
    data[4000] ^= 0xFF  # a byte inside the array's data: the zip's CRC no longer matches
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"damaged\.npz is truncated or corrupt \(member 'a0'"):
        load(path)


def test_load_of_a_plain_text_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("these are not the weights you are looking for\n")
    with pytest.raises(ValueError, match=r"notes\.txt is not a minialex file \(not a zip"):
        load(path)


def test_load_of_a_bare_npy_file(tmp_path):
    path = tmp_path / "array.npy"
    np.save(path, np.ones(3))
    with pytest.raises(ValueError, match=r"array\.npy is not a minialex file"):
        load(path)


@pytest.mark.parametrize("members", [{"w.npy": np.ones(3)}, {}], ids=["npz", "empty-zip"])
def test_load_of_a_zip_without_the_minialex_header(tmp_path, members):
    path = tmp_path / "plain.npz"
    if members:
        np.savez(path, w=np.ones(3))
    else:
        write_zip(path, {})
    with pytest.raises(ValueError,
                       match=r"plain\.npz is not a minialex file \(no __minialex__\.json\)"):
        load(path)


def test_load_of_a_file_from_a_newer_format_version(tmp_path):
    path = tmp_path / "future.npz"
    write_zip(path, {"a0.npy": np.ones(2), HEADER: header({"array": "a0"}, version=2)})
    with pytest.raises(ValueError, match=r"future\.npz has format version 2, newer than this "
                                         r"minialex reads \(up to version 1\); upgrade"):
        load(path)


@pytest.mark.parametrize("header_text, message", [
    ("{not json", r"__minialex__\.json is not valid JSON"),
    (b"\xff\xfe\x00garbage", r"__minialex__\.json is not valid JSON"),
    (json.dumps([1, 2]), r"is not a minialex file \(__minialex__\.json does not say"),
    (header(None, format_name="other"), r"is not a minialex file \(__minialex__\.json does not"),
    (header(None, version="1"), r"format version '1' is not a positive integer"),
    (header(None, version=0), r"format version 0 is not a positive integer"),
    (json.dumps({"format": "minialex", "version": 1}), r"has no \"tree\""),
    (header({"array": "a7"}), r"the top level refers to array 'a7', which is not in the file"),
    (header({"dict": {"x": {"array": HEADER}}}), r"'x' refers to array '__minialex__\.json'"),
    (header({"list": [{"tensor": "a0"}]}), r"unexpected node \{\"tensor\": \"a0\"\} at '0'"),
    (header({"dict": {"x": [1, 2]}}), r"unexpected node \[1, 2\] at 'x'"),
    (header({"scalar": "a0"}), r"unexpected node"),  # a0 is not 0-d: not a scalar
    (header({"dict": [1]}), r"unexpected node"),
])
def test_load_of_a_corrupt_header(tmp_path, header_text, message):
    path = tmp_path / "corrupt.npz"
    write_zip(path, {"a0.npy": np.ones(2), HEADER: header_text})
    with pytest.raises(ValueError, match=r"load: .*corrupt\.npz .*" + message):
        load(path)


class CreateMarkerWhenUnpickled:
    """A pickle payload: unpickling it calls open(marker, "w"), which creates the marker file.
    A real attack would call os.system instead; the test only needs to see whether it runs."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_malicious_file(path, marker, where):
    """A file shaped like a minialex file whose array (or header) is a pickled object array."""
    payload = np.array([CreateMarkerWhenUnpickled(marker)], dtype=object)
    if where == "array":
        np.savez(path, a0=payload)  # np.savez pickles object arrays
        with zipfile.ZipFile(path, "a") as archive:
            archive.writestr(HEADER, header({"dict": {"w": {"array": "a0"}}}))
    else:  # the header member itself holds the pickled .npy
        with zipfile.ZipFile(path, "w") as archive, archive.open(HEADER, "w") as member:
            np.lib.format.write_array(member, payload, allow_pickle=True)


@pytest.mark.parametrize("where", ["array", "header"])
def test_load_refuses_a_pickled_payload_without_running_it(tmp_path, where):
    # First show that the payload is real: unpickling it (NumPy's allow_pickle=True) does run it.
    armed_marker = tmp_path / "armed_marker"
    write_malicious_file(tmp_path / "armed.npz", armed_marker, where)
    with np.load(tmp_path / "armed.npz", allow_pickle=True) as npz:
        unpickled = npz["a0" if where == "array" else HEADER]
    unpickled[0].close()  # the file object that the payload's open() returned
    assert armed_marker.exists()

    marker = tmp_path / "marker"
    path = tmp_path / "malicious.npz"
    write_malicious_file(path, marker, where)
    with pytest.raises(ValueError, match=r"malicious\.npz: member .* holds a pickled \(object\) "
                                         r"array; .* refused without unpickling"):
        load(path)
    assert not marker.exists()


# --------------------------------------------------------------------------------------------
# Hardening: what save never writes, load refuses with a ValueError before it allocates.
# Before these checks such files gave tracebacks (MemoryError, RuntimeError,
# NotImplementedError), took memory without bound, or loaded dtypes that save never writes.

def npy_bytes(array=None, header=None, data=b""):
    """A .npy file: that of `array`, or a hand-made header dict followed by `data`."""
    stream = io.BytesIO()
    if array is not None:
        np.lib.format.write_array(stream, array, allow_pickle=False)
    else:
        np.lib.format.write_array_header_1_0(stream, header)
        stream.write(data)
    return stream.getvalue()


def raw_zip(members):
    """A zip archive built byte by byte, so that its directory can say anything: `members` is a
    list of dicts with name, data (the bytes as stored), and optionally file_size and crc (of
    the uncompressed bytes; default: those of `data`), stored_size (default: len(data)),
    method (0: stored) and flags."""
    local_part, directory = b"", b""
    for member in members:
        name, data = member["name"].encode(), member["data"]
        fields = (20, member.get("flags", 0), member.get("method", 0), 0, 0,
                  member.get("crc", zlib.crc32(data)), member.get("stored_size", len(data)),
                  member.get("file_size", len(data)), len(name), 0)
        offset = len(local_part)
        local_part += struct.pack("<4s5HL2L2H", b"PK\x03\x04", *fields) + name + data
        directory += (struct.pack("<4s6HL2L5H2L", b"PK\x01\x02", 20, *fields, 0, 0, 0, 0,
                                  offset) + name)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, len(members), len(members),
                      len(directory), len(local_part), 0)
    return local_part + directory + end


def index_bytes(tree):
    return header(tree).encode()


def checkpoint_with(array_member, tree=None):
    """A minialex file whose only array member is `array_member` (a raw_zip member dict)."""
    return raw_zip([dict(array_member, name="a0.npy"),
                    {"name": HEADER, "data": index_bytes(tree or {"array": "a0"})}])


def deflated(data):
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate, as zip stores it
    return compressor.compress(data) + compressor.flush()


def json_bomb(inflated_bytes):
    """A deflated index of `inflated_bytes` spaces (a valid JSON prefix) in about 1/1000 of the
    size: the same flushed deflate block, repeated (a full flush makes each block stand alone)."""
    block_size = 2**20
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(b" " * block_size) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(inflated_bytes // block_size):
        crc = zlib.crc32(b" " * block_size, crc)
    stream = block * (inflated_bytes // block_size) + compressor.flush()
    return raw_zip([{"name": "a0.npy", "data": npy_bytes(np.zeros(2))},
                    {"name": HEADER, "data": stream, "method": zipfile.ZIP_DEFLATED,
                     "file_size": inflated_bytes, "crc": crc}])


def load_bytes(tmp_path, data, name="crafted.npz"):
    path = tmp_path / name
    path.write_bytes(data)
    return load(path)


def test_raw_zip_writes_a_file_that_load_reads(tmp_path):
    """The helper itself: a well-formed file built by hand loads."""
    data = checkpoint_with({"data": npy_bytes(np.arange(3.0))}, {"dict": {"w": {"array": "a0"}}})
    assert_same({"w": np.arange(3.0)}, load_bytes(tmp_path, data))


TEN_TO_THE_12 = 10**12
CRAFTED = {
    # the JSON index inflates to 1 GiB: it was inflated in full (4.8 GB of memory for 2 GB)
    "index-zip-bomb": (lambda: json_bomb(2**30),
                       r"member '__minialex__\.json' takes 1073741824 bytes, over the 4194304"),
    # a stored index over MAX_INDEX_BYTES: refused before it is read
    "index-too-large": (lambda: raw_zip([{"name": HEADER, "data": b" " * (4 * 2**20 + 1)}]),
                        r"'__minialex__\.json' takes 4194305 bytes, over the 4194304"),
    # a .npy header of 10**12 float64 and 100 bytes of data: was a MemoryError traceback
    "npy-declares-1e12-elements": (
        lambda: checkpoint_with({"data": npy_bytes(header={
            "descr": "<f8", "fortran_order": False, "shape": (TEN_TO_THE_12,)}, data=b"\0" * 100)}),
        r"member 'a0' declares shape \(1000000000000,\) of float64 \(8000000000000 bytes\) but "
        r"holds 100 bytes of data"),
    # the same, the zip directory agreeing with the header (size 4 GB) but not its stored size
    "directory-size-differs-from-stored-size": (
        lambda: checkpoint_with({"data": npy_bytes(header={
            "descr": "<f8", "fortran_order": False, "shape": (500_000_000,)}, data=b"\0" * 100),
            "file_size": 4_000_000_128}),
        r"member 'a0' is stored, yet its size 4000000128 differs from its stored size 228"),
    # a directory whose sizes agree with each other and the header, not with the file (4 GB)
    "member-larger-than-the-file": (
        lambda: checkpoint_with({"data": npy_bytes(header={
            "descr": "<f8", "fortran_order": False, "shape": (500_000_000,)}, data=b"\0" * 100),
            "file_size": 4_000_000_128, "stored_size": 4_000_000_128}),
        r"member 'a0' takes the bytes read so far past the file's \d+ \(members"),
    # one array named 60 times by the tree: each time a new copy, so far more than the file
    "array-named-many-times": (
        lambda: checkpoint_with({"data": npy_bytes(np.zeros(1000))},
                                {"list": [{"array": "a0"}] * 60}),
        r"member 'a0' takes the bytes read so far past the file's \d+ \(members overlap or "
        r"are read twice\); the file is corrupt"),
    # compression methods save never writes: were NotImplementedError (or inflated unbounded)
    "array-bzip2": (lambda: checkpoint_with({"data": bz2.compress(npy_bytes(np.zeros(2))),
                                             "method": zipfile.ZIP_BZIP2,
                                             "file_size": len(npy_bytes(np.zeros(2))),
                                             "crc": zlib.crc32(npy_bytes(np.zeros(2)))}),
                    r"member 'a0' is compressed \(zip method 12\); minialex\.save stores members"),
    "array-lzma": (lambda: checkpoint_with({"data": b"\0" * 20, "method": zipfile.ZIP_LZMA}),
                   r"member 'a0' is compressed \(zip method 14\)"),
    "array-deflated": (lambda: checkpoint_with({"data": deflated(npy_bytes(np.zeros(2))),
                                                "method": zipfile.ZIP_DEFLATED,
                                                "file_size": len(npy_bytes(np.zeros(2))),
                                                "crc": zlib.crc32(npy_bytes(np.zeros(2)))}),
                       r"member 'a0' is compressed \(zip method 8\)"),
    "compression-method-unknown-to-zipfile": (
        lambda: checkpoint_with({"data": b"\0" * 20, "method": 99}), r"\(zip method 99\)"),
    # the encryption flag: was RuntimeError "password required"
    "encrypted-flag": (lambda: checkpoint_with({"data": npy_bytes(np.zeros(2)), "flags": 0x1}),
                       r"member 'a0' is encrypted"),
    "strong-encryption-flag": (
        lambda: checkpoint_with({"data": npy_bytes(np.zeros(2)), "flags": 0x41}),
        r"member 'a0' is encrypted"),
    "encrypted-index": (lambda: raw_zip([{"name": HEADER, "data": index_bytes(None),
                                          "flags": 0x1}]),
                        r"member '__minialex__\.json' is encrypted"),
    "npy-version-3": (lambda: checkpoint_with({"data": npy_bytes(np.zeros(2)).replace(
        b"NUMPY\x01\x00", b"NUMPY\x03\x00", 1)}), r"'a0' is not a valid \.npy array \("),
    "npy-negative-shape": (lambda: checkpoint_with({"data": npy_bytes(header={
        "descr": "<f8", "fortran_order": False, "shape": (-1, -8)}, data=b"\0" * 64)}),
        r"member 'a0' has shape \(-1, -8\)"),
}


@pytest.mark.parametrize("case", CRAFTED)
def test_load_refuses_a_crafted_file_with_a_clear_error(tmp_path, case):
    make, message = CRAFTED[case]
    with pytest.raises(ValueError, match=r"load: .*crafted\.npz.*" + message):
        load_bytes(tmp_path, make())


FORBIDDEN_DTYPES = ["<U3", "|S3", "<M8[D]", "<m8[s]", "|V4", [("a", "<f4"), ("b", "<i4")],
                    ("<f4", (2,))] + (
    ["<f16", "<c32"] if np.dtype(np.longdouble).itemsize > 8 else [])  # longdouble (x86)


@pytest.mark.parametrize("dtype", FORBIDDEN_DTYPES, ids=str)
def test_load_refuses_each_dtype_that_save_never_writes(tmp_path, dtype):
    array_header = {"descr": dtype, "fortran_order": False, "shape": (2,)}
    itemsize = np.dtype(dtype).itemsize
    data = checkpoint_with({"data": npy_bytes(header=array_header, data=b"\0" * 2 * itemsize)})
    with pytest.raises(ValueError, match=r"crafted\.npz: member 'a0' holds dtype .*, which "
                                         r"minialex\.save never writes \(it writes bool, int8"):
        load_bytes(tmp_path, data)
    # and save refuses the same dtypes, so that what save writes is what load reads
    array = np.zeros(2, dtype=dtype)
    if array.dtype != np.dtype(dtype):  # a subarray dtype makes a plain array of more axes
        return
    with pytest.raises(TypeError, match=r"cannot save array of dtype .* supported: bool, int8"):
        save({"w": array}, tmp_path / "refused.npz")


@pytest.mark.parametrize("dtype", ["|b1", "<i1", "|u1", ">i2", "<u4", "<i8", ">u8", "<f2",
                                   ">f4", "<f8", "<c8", ">c16"])
def test_load_accepts_each_dtype_that_save_writes(tmp_path, dtype):
    array = np.arange(6).astype(dtype).reshape(2, 3)
    for order in "CF":
        data = checkpoint_with({"data": npy_bytes(np.asarray(array, order=order))})
        loaded = load_bytes(tmp_path, data)
        assert_same(array, loaded)
        assert loaded.flags.writeable and loaded.flags[order + "_CONTIGUOUS"]


def test_a_member_is_never_read_past_its_declared_size():
    """zipfile itself stops a stored member at its declared size; the reader checks anyway, in
    case a member stream ever gives more (here a plain stream of 10 bytes, 8 declared)."""
    reader = serialization._MemberReader(archive=None, path="crafted.npz", file_bytes=100)
    buffer = bytearray(8)
    with pytest.raises(ValueError, match=r"load: crafted\.npz: member 'a0' holds more bytes "
                                         r"than its zip directory entry declares"):
        reader.read_into(io.BytesIO(bytes(range(10))), memoryview(buffer), "a0")
    assert buffer == bytes(range(8))
    reader.read_into(io.BytesIO(bytes(range(8))), memoryview(buffer), "a0")  # exactly: fine


def test_index_over_the_limit_is_refused_by_save_too(tmp_path):
    many_floats = [0.123456789] * 400_000  # 5 MB of JSON
    with pytest.raises(ValueError, match=r"save: the index of this object .* takes \d+ bytes, "
                                         r"over the 4194304 that load accepts; store long lists"):
        save({"losses": many_floats}, tmp_path / "checkpoint")
    assert files_in(tmp_path) == []
    assert_same({"losses": np.array(many_floats)},
                round_trip({"losses": np.array(many_floats)}, tmp_path))


def nested_lists(depth):
    obj = leaf = []
    for _ in range(depth - 1):
        leaf.append([])
        leaf = leaf[0]
    return obj


@pytest.mark.parametrize("depth", [101, 600, 5000])
def test_save_refuses_a_tree_deeper_than_the_limit(tmp_path, depth):
    """600 deep was a RecursionError."""
    with pytest.raises(ValueError, match=r"save: the object nests more than 100 dicts and lists "
                                         r"inside one another, at '0/0/0/"):
        save(nested_lists(depth), tmp_path / "checkpoint")
    assert files_in(tmp_path) == []


def test_a_tree_at_the_depth_limit_round_trips(tmp_path):
    obj = nested_lists(100)
    obj[0][0].append({"w": np.ones(2)})
    obj[0][0][1]["inner"] = nested_lists(96)  # lists at depths 5 to 100
    assert_same(obj, round_trip(obj, tmp_path))


@pytest.mark.parametrize("depth", [101, 600, 5000])
def test_load_refuses_a_tree_deeper_than_the_limit(tmp_path, depth):
    tree = "null"  # the JSON text, built by hand: json.dumps would need as deep a recursion
    for level in range(depth):
        tree = f'{{"list": [{tree}]}}' if level % 2 else f'{{"dict": {{"k": {tree}}}}}'
    path = tmp_path / "deep.npz"
    write_zip(path, {HEADER: f'{{"format": "minialex", "version": 1, "tree": {tree}}}'})
    with pytest.raises(ValueError, match=r"deep\.npz is corrupt: (more than 100 dicts and lists "
                                         r"inside one another|__minialex__.json is not valid)"):
        load(path)


PEAK_MEMORY_SCRIPT = r"""
import json, resource, sys, tracemalloc
sys.path.insert(0, sys.argv[1])
from minialex.serialization import load
# A safety net: a regression fails here with a MemoryError instead of swapping the machine
with open("/proc/self/status") as status:
    virtual_kb = int(next(line for line in status if line.startswith("VmSize")).split()[1])
limit = virtual_kb * 1024 + 2**30
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
results = {}
for path in sys.argv[2:]:
    tracemalloc.start()
    try:
        load(path)
        outcome = "loaded"
    except Exception as error:
        outcome = f"{type(error).__name__}: {error}"
    results[path] = (outcome, tracemalloc.get_traced_memory()[1])
    tracemalloc.stop()
print(json.dumps(results))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads /proc (Linux)")
def test_crafted_2mb_files_take_little_memory(tmp_path):
    """Peak memory of load (tracemalloc sees Python's and NumPy's allocations), in a fresh
    process whose address space is capped at 1 GiB over what it has after import."""
    crafted = {"index-zip-bomb.npz": json_bomb(2**31),  # 2 GiB of index in a 2 MB file
               "index-of-many-small-objects.npz": raw_zip([{"name": HEADER, "data": (
                   b'{"format": "minialex", "version": 1, "tree": {"list": ['
                   + b",".join([b'{"list": []}'] * 170_000) + b"]}}")}]),
               "npy-declares-1e12-elements.npz": CRAFTED["npy-declares-1e12-elements"][0](),
               "member-larger-than-the-file.npz": CRAFTED["member-larger-than-the-file"][0]()}
    paths = []
    for name, data in crafted.items():
        assert len(data) < 2.5e6
        (tmp_path / name).write_bytes(data)
        paths.append(str(tmp_path / name))
    root = pathlib.Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", PEAK_MEMORY_SCRIPT, str(root), *paths],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout)
    for path, (outcome, peak_bytes) in results.items():
        print(f"{os.path.basename(path)}: peak {peak_bytes / 1e6:.1f} MB, {outcome[:150]}")
        expected = "loaded" if "many-small" in path else "ValueError: load: "
        assert outcome.startswith(expected), (path, outcome)
        assert peak_bytes < 100e6, (path, peak_bytes)
