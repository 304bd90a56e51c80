"""minialex/interop.py: PyTorch's .pth files read without torch, as a security boundary.

The first half needs no torch: the files are written here by hand (zipfile, and pickles spelled
out opcode by opcode from the pickle format), the good ones and the malicious ones; each
malicious one must be refused with one clear error and its payload, which would create a marker
file, must never run (and a plain pickle.loads of the same bytes shows that it would). The
second half runs only where torch is installed: a torchvision-architecture AlexNet built with
torch.nn and saved with torch.save gives the same logits in minialex as in torch, and
examples/predict.py --weights prints torch's softmax for images prepared here from torchvision's
formula (resize the shorter side to 256, centre crop 224, ImageNet mean and std).
"""
import pathlib
import pickle
import struct
import subprocess
import sys
import tracemalloc
import zipfile

import numpy as np
import pytest
from PIL import Image

import minialex as mx
from minialex import interop
from test_train_script import parse_predictions

ROOT = pathlib.Path(__file__).resolve().parents[1]
PREDICT = str(ROOT / "examples" / "predict.py")

# torchvision/models/alexnet.py: every parameter of AlexNet() and its shape (61,100,840 in all)
TORCHVISION_SHAPES = {
    "features.0.weight": (64, 3, 11, 11), "features.0.bias": (64,),
    "features.3.weight": (192, 64, 5, 5), "features.3.bias": (192,),
    "features.6.weight": (384, 192, 3, 3), "features.6.bias": (384,),
    "features.8.weight": (256, 384, 3, 3), "features.8.bias": (256,),
    "features.10.weight": (256, 256, 3, 3), "features.10.bias": (256,),
    "classifier.1.weight": (4096, 9216), "classifier.1.bias": (4096,),
    "classifier.4.weight": (4096, 4096), "classifier.4.bias": (4096,),
    "classifier.6.weight": (1000, 4096), "classifier.6.bias": (1000,)}


# ----------------------------------------------------------------------------------------------
# Writing .pth files by hand: the pickle opcodes (Lib/pickletools.py documents each one)

MARK, TUPLE, REDUCE, SETITEMS, BUILD, STOP = b"(", b"t", b"R", b"u", b"b", b"."
EMPTY_TUPLE, EMPTY_DICT, EMPTY_LIST, APPEND, NEWFALSE = b")", b"}", b"]", b"a", b"\x89"
BINPERSID, STACK_GLOBAL, PROTO2, PROTO4 = b"Q", b"\x93", b"\x80\x02", b"\x80\x04"


def text(value):
    """BINUNICODE: a str."""
    data = value.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def integer(value):
    """BININT: a signed 4-byte int."""
    return b"J" + struct.pack("<i", value)


def global_(module, name):
    """GLOBAL: push module.name (protocol 0's way; find_class is asked for it)."""
    return b"c" + f"{module}\n{name}\n".encode()


def ints(values):
    return MARK + b"".join(integer(v) for v in values) + TUPLE


def tensor_opcodes(key, size, stride, offset=0, numel=None, storage_type="FloatStorage",
                   location="cpu", persistent_id=None):
    """_rebuild_tensor_v2(('storage', torch.<type>, key, location, numel), offset, size,
    stride, False, OrderedDict()), as torch.save writes it."""
    if persistent_id is None:
        numel = int(np.prod(size)) if numel is None else numel
        persistent_id = (MARK + text("storage") + global_("torch", storage_type) + text(key)
                         + text(location) + integer(numel) + TUPLE)
    return (global_("torch._utils", "_rebuild_tensor_v2") + MARK + persistent_id + BINPERSID
            + integer(offset) + ints(size) + ints(stride) + NEWFALSE
            + global_("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE + TUPLE + REDUCE)


def state_dict_pickle(entries, metadata=True):
    """OrderedDict(name -> tensor) with torch's `_metadata` given by BUILD, as torch.save does."""
    body = b"".join(text(name) + opcodes for name, opcodes in entries)
    pickled = (PROTO2 + global_("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE + MARK
               + body + SETITEMS)
    if metadata:
        pickled += (EMPTY_DICT + text("_metadata") + global_("collections", "OrderedDict")
                    + EMPTY_TUPLE + REDUCE + b"s" + BUILD)
    return pickled + STOP


def contiguous_strides(shape):
    strides, step = [], 1
    for side in reversed(shape):
        strides.insert(0, step)
        step *= side
    return strides


def write_pth(path, pickled, storages, compressed=(), byteorder=b"little", prefix="archive"):
    """The zip that torch.save writes: <prefix>/data.pkl, <prefix>/data/<key>, byteorder."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr(f"{prefix}/data.pkl", pickled)
        if byteorder is not None:
            archive.writestr(f"{prefix}/byteorder", byteorder)
        for key, data in storages.items():
            method = zipfile.ZIP_DEFLATED if key in compressed else zipfile.ZIP_STORED
            archive.writestr(f"{prefix}/data/{key}", data, compress_type=method)
        archive.writestr(f"{prefix}/version", b"3\n")
    return path


def write_state_dict(path, arrays):
    """A .pth of float32 arrays, each contiguous in its own storage, as torch.save writes it."""
    entries, storages = [], {}
    for key, (name, array) in enumerate(arrays.items()):
        array = np.ascontiguousarray(array, dtype="<f4")
        entries.append((name, tensor_opcodes(str(key), array.shape,
                                             contiguous_strides(array.shape))))
        storages[str(key)] = array.tobytes()
    return write_pth(path, state_dict_pickle(entries), storages)


# ----------------------------------------------------------------------------------------------
# Good files (no torch needed)

def test_a_hand_written_file_loads_with_views_offsets_and_shared_storages(tmp_path):
    storage = np.arange(24, dtype="<f4") * 0.5
    entries = [("plain", tensor_opcodes("0", (2, 3), (3, 1), numel=24)),
               ("transposed", tensor_opcodes("0", (3, 2), (1, 3), offset=4, numel=24)),
               ("strided", tensor_opcodes("0", (2, 2, 2), (12, 1, 5), offset=1, numel=24)),
               ("empty", tensor_opcodes("0", (0, 5), (5, 1), offset=0, numel=24)),
               ("int64", tensor_opcodes("1", (3,), (1,), storage_type="LongStorage"))]
    write_pth(tmp_path / "w.pth", state_dict_pickle(entries),
              {"0": storage.tobytes(), "1": np.array([7, -8, 2**40], "<i8").tobytes()})
    state = mx.load_torch_state_dict(tmp_path / "w.pth")
    assert list(state) == ["plain", "transposed", "strided", "empty", "int64"]

    def expected(offset, size, stride):  # element i = storage[offset + sum(i_d * stride_d)]
        out = np.empty(size, np.float32)
        for index in np.ndindex(*size):
            out[index] = storage[offset + sum(i * s for i, s in zip(index, stride))]
        return out

    for name, (offset, size, stride) in {"plain": (0, (2, 3), (3, 1)),
                                         "transposed": (4, (3, 2), (1, 3)),
                                         "strided": (1, (2, 2, 2), (12, 1, 5)),
                                         "empty": (0, (0, 5), (5, 1))}.items():
        assert state[name].dtype == np.float32 and state[name].shape == size
        assert np.array_equal(state[name], expected(offset, size, stride)), name
    assert state["int64"].dtype == np.int64 and state["int64"].tolist() == [7, -8, 2**40]


def test_torchvision_names_and_shapes_are_those_of_the_torchvision_variant():
    model = mx.models.alexnet("torchvision")
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert shapes == TORCHVISION_SHAPES
    assert sum(int(np.prod(s)) for s in TORCHVISION_SHAPES.values()) == 61_100_840


def torchvision_like_arrays(model, rng):
    return {name: rng.standard_normal(p.shape).astype(np.float32)
            for name, p in model.named_parameters()}


def test_weights_load_into_alexnet_by_torchvisions_names(tmp_path, rng):
    reference = mx.models.alexnet("torchvision", width=0.125, num_classes=7)
    arrays = torchvision_like_arrays(reference, rng)
    write_state_dict(tmp_path / "small.pth", arrays)
    model = mx.models.alexnet("torchvision", width=0.125, num_classes=7,
                              weights=tmp_path / "small.pth")
    for name, parameter in model.named_parameters():
        assert np.array_equal(parameter.data, arrays[name]), name


@pytest.mark.parametrize("how", ["classes", "variant"])
def test_a_file_of_another_shape_names_the_key_and_both_shapes(tmp_path, rng, how):
    other = (mx.models.alexnet("torchvision", width=0.125, num_classes=10) if how == "classes"
             else mx.models.alexnet("paper", width=0.125))
    write_state_dict(tmp_path / "other.pth", torchvision_like_arrays(other, rng))
    with pytest.raises(ValueError) as error:
        mx.models.alexnet("torchvision", width=0.125, weights=tmp_path / "other.pth")
    message = str(error.value)
    assert "\n" not in message and "other.pth" in message and "variant='torchvision'" in message
    if how == "classes":
        assert "classifier.6.weight: file has (10, 512), model has (1000, 512)" in message
    else:
        assert "features.0.weight: file has (12, 3, 11, 11), model has (8, 3, 11, 11)" in message


def test_minialex_files_load_too(tmp_path, rng):
    model = mx.models.alexnet("seed", width=0.0625, num_classes=3)
    arrays = torchvision_like_arrays(model, rng)
    mx.save(arrays, tmp_path / "state.npz")
    mx.save({"model": arrays, "epoch": 3}, tmp_path / "checkpoint.npz")
    for name in ("state.npz", "checkpoint.npz"):
        loaded = mx.models.alexnet("seed", width=0.0625, num_classes=3, weights=tmp_path / name)
        assert all(np.array_equal(p.data, arrays[n]) for n, p in loaded.named_parameters())


def test_the_class_names_are_imagenets_in_torchvisions_order():
    classes = interop.imagenet_classes()
    assert len(classes) == len(set(classes)) == 1000
    # indices known from torchvision/models/_meta.py (_IMAGENET_CATEGORIES)
    assert (classes[0], classes[1], classes[207], classes[281], classes[409], classes[999]) == (
        "tench", "goldfish", "golden retriever", "tabby", "analog clock", "toilet tissue")
    try:
        from torchvision.models._meta import _IMAGENET_CATEGORIES
    except ImportError:
        return
    assert classes == list(_IMAGENET_CATEGORIES)


# ----------------------------------------------------------------------------------------------
# Malicious and broken files: refused, one line, and the payload never runs

def payloads(marker):
    """{name: a pickle that creates `marker` when it is unpickled}: each way to name a global."""
    command = text(f"touch {marker}")
    python = text(f"open({str(marker)!r}, 'w').close()")
    return {
        "GLOBAL os.system": global_("os", "system") + MARK + command + TUPLE + REDUCE + STOP,
        "STACK_GLOBAL os.system": (PROTO4 + text("os") + text("system") + STACK_GLOBAL + MARK
                                   + command + TUPLE + REDUCE + STOP),
        "INST os.system": MARK + command + b"ios\nsystem\n" + STOP,
        "builtins.eval": global_("builtins", "eval") + MARK + python + TUPLE + REDUCE + STOP,
        "builtins.exec in a tensor": state_dict_pickle([(
            "w", global_("builtins", "exec") + MARK + python + TUPLE + REDUCE)]),
    }


def test_the_payloads_are_real(tmp_path):
    """Unpickled by plain pickle, each payload creates its marker: the refusals below matter."""
    for index, name in enumerate(payloads("x")):
        marker = tmp_path / f"marker{index}"
        try:
            pickle.loads(payloads(marker)[name])
        except Exception:  # noqa: BLE001 - a payload may fail after it has run
            pass
        assert marker.exists(), name


def refused(path, *phrases):
    with pytest.raises(ValueError) as error:
        mx.load_torch_state_dict(path)
    message = str(error.value)
    assert "\n" not in message and message.startswith("load_torch_state_dict: "), message
    for phrase in phrases:
        assert phrase in message, (phrase, message)
    return message


@pytest.mark.parametrize("name", list(payloads("x")))
def test_a_pickle_naming_another_global_is_refused_without_running(tmp_path, name):
    marker = tmp_path / "marker"
    write_pth(tmp_path / "evil.pth", payloads(marker)[name], {})
    global_name = name.split()[-1] if "tensor" not in name else "builtins.exec"
    refused(tmp_path / "evil.pth", f"names the global {global_name}", "refused")
    assert not marker.exists()


def test_a_plain_pickle_not_in_a_zip_is_refused_without_running(tmp_path):
    marker = tmp_path / "marker"
    (tmp_path / "legacy.pth").write_bytes(payloads(marker)["GLOBAL os.system"])
    refused(tmp_path / "legacy.pth", "not a zip archive")
    assert not marker.exists()


def one_storage_file(path, entry_opcodes, storage=np.zeros(6, "<f4").tobytes(), **options):
    return write_pth(path, state_dict_pickle([("w", entry_opcodes)]), {"0": storage}, **options)


BROKEN = {  # name: (tensor opcodes, options of write_pth, phrase of the error)
    "torch.load itself": (global_("torch", "load") + MARK + text("x.pth") + TUPLE + REDUCE,
                          {}, "names the global torch.load"),
    "persistent id not a storage": (tensor_opcodes("0", (6,), (1,), persistent_id=MARK + text(
        "module") + text("os") + TUPLE), {}, "persistent id that is not"),
    "persistent id of a str": (tensor_opcodes("0", (6,), (1,), persistent_id=text(
        "storage")), {}, "persistent id that is not"),
    "storage key not a number": (tensor_opcodes("../0", (6,), (1,)), {},
                                 "persistent id that is not"),
    "offset outside the storage": (tensor_opcodes("0", (6,), (1,), offset=1, numel=6), {},
                                   "reaches element 6 of a storage of 6"),
    "size outside the storage": (tensor_opcodes("0", (7,), (1,), numel=6), {},
                                 "reaches element 6 of a storage of 6"),
    "stride outside the storage": (tensor_opcodes("0", (2, 3), (4, 1), numel=6), {},
                                   "reaches element 6 of a storage of 6"),
    "compressed member": (tensor_opcodes("0", (6,), (1,)), {"compressed": ("0",)},
                          "is compressed"),
    "member longer than numel": (tensor_opcodes("0", (5,), (1,)), {},
                                 "holds 24 bytes (24 stored); expected 20"),
    "member shorter than numel": (tensor_opcodes("0", (7,), (1,)), {},
                                  "holds 24 bytes; its persistent id says"),
    "missing storage member": (tensor_opcodes("1", (6,), (1,)), {}, "data/1 is missing"),
    "big-endian": (tensor_opcodes("0", (6,), (1,)), {"byteorder": b"big"}, "not little"),
    "a storage type called (REDUCE)": (global_("torch", "FloatStorage") + EMPTY_TUPLE + REDUCE,
                                       {}, "calls torch.FloatStorage"),
    "REDUCE of a list": (EMPTY_LIST + EMPTY_TUPLE + REDUCE, {}, "not callable"),
    "a rebuild with odd arguments": (global_("torch._utils", "_rebuild_tensor_v2") + MARK
                                     + text("0") + integer(0) + ints([6]) + ints([1])
                                     + NEWFALSE + EMPTY_DICT + TUPLE + REDUCE, {},
                                     "_rebuild_tensor_v2 with arguments other than"),
    "BUILD on a tensor": (tensor_opcodes("0", (6,), (1,)) + EMPTY_DICT + BUILD, {},
                          "gives state (BUILD) to a tensor"),
    "BUILD on an allowed global": (global_("torch._utils", "_rebuild_tensor_v2") + EMPTY_DICT
                                   + BUILD, {}, "gives state (BUILD) to torch._utils"),
    "BUILD on an OrderedDict": (global_("collections", "OrderedDict") + EMPTY_TUPLE + REDUCE
                                + EMPTY_DICT + text("__class__") + integer(1) + b"s" + BUILD,
                                {}, "other than a state dict's _metadata"),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_a_broken_or_malicious_file_is_refused_in_one_line(tmp_path, name):
    opcodes, options, phrase = BROKEN[name]
    refused(one_storage_file(tmp_path / "bad.pth", opcodes, **options), phrase)


def test_a_storage_of_the_right_size_loads(tmp_path):
    """The control for BROKEN: the same file with a good tensor loads."""
    path = one_storage_file(tmp_path / "good.pth", tensor_opcodes("0", (2, 3), (3, 1)),
                            storage=np.arange(6, dtype="<f4").tobytes())
    assert mx.load_torch_state_dict(path)["w"].tolist() == [[0, 1, 2], [3, 4, 5]]


def test_a_memo_index_far_beyond_the_pickle_is_refused_before_allocating(tmp_path):
    # LONG_BINPUT 2**26: the C unpickler would size its memo to 2**27 pointers (1 GiB)
    pickled = EMPTY_DICT + b"r" + struct.pack("<I", 2**26) + STOP
    write_pth(tmp_path / "memo.pth", pickled, {})
    tracemalloc.start()
    try:
        refused(tmp_path / "memo.pth", "memo index 67108864")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20, peak


def test_a_deep_structure_is_refused_without_recursing(tmp_path):
    depth = 200_000  # far past Python's recursion limit: nothing may walk it recursively
    deep = EMPTY_LIST * depth + APPEND * (depth - 1)
    pickled = PROTO2 + EMPTY_DICT + text("w") + deep + b"s" + STOP
    write_pth(tmp_path / "deep.pth", pickled, {})
    refused(tmp_path / "deep.pth", "entry 'w' is a list")
    shallow_key = PROTO2 + EMPTY_DICT + EMPTY_TUPLE + b"\x85" * 5 + integer(1) + b"s" + STOP
    write_pth(tmp_path / "key.pth", shallow_key, {})
    refused(tmp_path / "key.pth", "entry of type tuple")


def test_deep_tuples_are_refused_before_python_hashes_them(tmp_path):
    """A dict key of 200,000 nested tuples makes plain pickle overflow the C stack (a crash,
    here in a subprocess); grown through the memo too (BINGET 0, TUPLE1, BINPUT 0, ...)."""
    depth = 200_000
    direct = PROTO2 + EMPTY_DICT + EMPTY_TUPLE + b"\x85" * depth + integer(1) + b"s" + STOP
    grow = b"h\x00\x85q\x00"  # BINGET 0, TUPLE1, BINPUT 0
    through_memo = (PROTO2 + EMPTY_DICT + EMPTY_TUPLE + b"q\x00" + grow * depth + integer(1)
                    + b"s" + STOP)
    for name, pickled in (("direct", direct), ("memo", through_memo)):
        write_pth(tmp_path / f"{name}.pth", pickled, {})
        script = ("import sys, minialex as mx\ntry:\n    mx.load_torch_state_dict(sys.argv[1])\n"
                  "except ValueError as error:\n    print(error)\n")
        result = subprocess.run([sys.executable, "-c", script, str(tmp_path / f"{name}.pth")],
                                cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, (name, result.returncode, result.stderr[-500:])
        assert "nests tuples more than 100 deep" in result.stdout, (name, result.stdout)


def test_a_pickle_over_the_limit_is_refused_before_it_is_read(tmp_path, monkeypatch):
    path = write_state_dict(tmp_path / "w.pth", {"w": np.zeros(3)})
    assert mx.load_torch_state_dict(path)["w"].tolist() == [0, 0, 0]
    monkeypatch.setattr(interop, "MAX_PICKLE_BYTES", 100)
    refused(path, "data.pkl holds", "expected 100")


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated", b"\x80\x02}q\x00."])
def test_a_file_that_is_no_torch_zip_is_one_line(tmp_path, content):
    (tmp_path / "x.pth").write_bytes(content)
    refused(tmp_path / "x.pth")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("readme.txt", "hello")
    refused(tmp_path / "other.zip", "0 members <prefix>/data.pkl")


# ----------------------------------------------------------------------------------------------
# Against PyTorch: the same logits, and predict.py --weights prints torch's softmax

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


@pytest.fixture(scope="module")
def torch_alexnet(tmp_path_factory):
    """(torch model in eval mode, path of its torch.save'd state dict): torchvision's AlexNet
    built with torch.nn, random He-initialised weights so that the logits depend on the image
    (PyTorch's default initialisation gives near-constant logits through eight layers)."""
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class TorchvisionAlexNet(nn.Module):  # torchvision/models/alexnet.py, layer for layer
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
                nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
                nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
                nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
                nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, 2))
            self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
            self.classifier = nn.Sequential(
                nn.Dropout(), nn.Linear(9216, 4096), nn.ReLU(), nn.Dropout(),
                nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 1000))

        def forward(self, x):
            return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

    torch.manual_seed(0)
    model = TorchvisionAlexNet().eval()
    for layer in model.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(layer.weight, 0, (2 / layer.weight[0].numel()) ** 0.5)
            nn.init.normal_(layer.bias, 0, 0.01)
    path = tmp_path_factory.mktemp("torch") / "alexnet-standin.pth"
    torch.save(model.state_dict(), path)
    return model, path


def smooth_image(seed, size):
    """A photo-like RGB image: random colours on a coarse grid, interpolated."""
    coarse = np.random.default_rng(seed).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)


@pytest.mark.slow
def test_torch_saved_alexnet_gives_torchs_logits(torch_alexnet, rng):
    torch = pytest.importorskip("torch")
    torch_model, path = torch_alexnet
    state = mx.load_torch_state_dict(path)
    assert {k: v.shape for k, v in state.items()} == TORCHVISION_SHAPES
    model = mx.models.alexnet("torchvision", weights=path).eval()
    for batch in (1, 3):
        x = rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)
        with torch.no_grad():
            expected = torch_model(torch.from_numpy(x)).numpy()
        with mx.no_grad():
            logits = model(mx.tensor(x)).numpy()
        error = np.abs(logits - expected).max() / np.abs(expected).max()
        print(f"batch {batch}: max |minialex - torch| / max |torch| = {error:.2e}")
        assert error < 1e-5
        assert np.array_equal(logits.argmax(1), expected.argmax(1))


def test_tensors_of_every_kind_read_as_torch_reads_them(tmp_path):
    torch = pytest.importorskip("torch")
    shared = torch.randn(10)
    tensors = {"float": torch.randn(2, 3), "transposed": torch.randn(4, 5).t(),
               "sliced": torch.randn(7)[2:5], "shared_a": shared[3:9],
               "shared_b": shared.view(2, 5),
               "half": torch.randn(3).half(), "double": torch.randn(2).double(),
               "long": torch.arange(4), "empty": torch.zeros(0, 3),
               "scalar": torch.tensor(2.5), "parameter": torch.nn.Parameter(torch.randn(3))}
    torch.save(tensors, tmp_path / "kinds.pth")
    state = mx.load_torch_state_dict(tmp_path / "kinds.pth")
    assert list(state) == list(tensors)
    for name, tensor in tensors.items():
        expected = tensor.detach().numpy()
        assert state[name].dtype == expected.dtype and np.array_equal(state[name], expected)
    # and torch reads the files written by hand above as this reader does
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4)}
    write_state_dict(tmp_path / "hand.pth", arrays)
    by_torch = torch.load(tmp_path / "hand.pth", weights_only=True)
    assert all(np.array_equal(by_torch[k].numpy(), arrays[k]) for k in arrays)


def imagenet_input(path):
    """torchvision's AlexNet_Weights.IMAGENET1K_V1 preprocessing, from its formula: resize the
    shorter side to 256 (the longer to int(256 * long / short)) bilinear, centre crop 224 at
    int(round((side - 224) / 2)), then /255, minus mean, over std; (3, 224, 224) float32."""
    with Image.open(path) as image:
        image = image.convert("RGB")
    width, height = image.size
    if width <= height:
        size = (256, int(256 * height / width))
    else:
        size = (int(256 * width / height), 256)
    pixels = np.asarray(image.resize(size, Image.Resampling.BILINEAR), dtype=np.float32)
    top, left = int(round((size[1] - 224) / 2.0)), int(round((size[0] - 224) / 2.0))
    crop = pixels[top:top + 224, left:left + 224] / 255
    return ((crop - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)


@pytest.mark.slow
def test_predict_with_weights_prints_torchs_top5_by_name(torch_alexnet, tmp_path):
    torch = pytest.importorskip("torch")
    torch_model, path = torch_alexnet
    images = [tmp_path / "wide.png", tmp_path / "tall.jpg", tmp_path / "square.png"]
    # 451 x 300: the long side is int(384.85) = 384, where rounding would give 385; 333 x 520:
    # int(399.76) = 399, and the crop's top at round(87.5) = 88, where flooring would give 87
    smooth_image(1, (451, 300)).save(images[0])
    smooth_image(2, (333, 520)).save(images[1], quality=95)
    smooth_image(3, (256, 256)).save(images[2])
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    arguments = [images[0], tmp_path / "broken.jpg", *images[1:]]
    result = subprocess.run([sys.executable, PREDICT, "--weights", path, *map(str, arguments)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    # the bad image is one line and the others go on; the exit status then says 2
    assert result.returncode == 2, result.stderr
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith(f"error: {tmp_path / 'broken.jpg'}: ")
    predictions = parse_predictions(result.stdout)
    assert list(predictions) == [str(image) for image in images]
    classes = (ROOT / "minialex" / "data" / "imagenet_classes.txt").read_text().splitlines()
    batch = torch.from_numpy(np.stack([imagenet_input(image) for image in images]))
    with torch.no_grad():
        expected = torch.softmax(torch_model(batch).double(), dim=1).numpy()
    for image, probabilities in zip(images, expected):
        best = np.argsort(-probabilities)[:5]
        printed = predictions[str(image)]
        assert [name for name, _ in printed] == [classes[i] for i in best], image
        for (_, p), index in zip(printed, best):
            assert p == pytest.approx(probabilities[index], abs=6e-4), (image, classes[index])
        assert printed[0][1] > 0.05  # the check means something: not a flat softmax


@pytest.mark.slow
def test_predict_draws_conv1_filters_from_the_weights(torch_alexnet, tmp_path):
    pytest.importorskip("matplotlib")
    torch_model, path = torch_alexnet
    result = subprocess.run([sys.executable, PREDICT, "--weights", str(path), "--filters",
                             str(tmp_path / "conv1_filters.png")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from train_alexnet import plot_filters
    finally:
        sys.path.remove(str(ROOT / "examples"))
    plot_filters(torch_model.features[0].weight.detach().numpy(), tmp_path / "expected.png")
    with Image.open(tmp_path / "conv1_filters.png") as drawn, \
            Image.open(tmp_path / "expected.png") as expected:
        assert drawn.size == expected.size
        assert np.array_equal(np.asarray(drawn), np.asarray(expected))


def test_predict_with_a_bad_weights_file_is_one_line(tmp_path):
    (tmp_path / "x.pth").write_bytes(b"\x80\x02}q\x00.")
    (tmp_path / "photo.png").write_bytes(b"")
    result = subprocess.run([sys.executable, PREDICT, "--weights", str(tmp_path / "x.pth"),
                             str(tmp_path / "photo.png")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "not a zip" in lines[0]
