"""Fuzzing minialex.load with damaged copies of a real checkpoint: whatever the damage, load
either returns something or raises a ValueError (the callers catch ValueError and OSError), never
another exception, a traceback from deep inside zipfile or NumPy, or a large allocation.

Seeded (numpy's default_rng), so each case can be replayed: a failure names its seed. Two
families: the file's bytes damaged as a disk or a transfer would (flips, truncation, insertion),
mostly where the structure is (zip headers and directory, .npy headers, the JSON index); and a
member's content damaged, then packed again into a valid zip (correct CRCs), so that the checks
behind the CRC (the .npy header, the index) are reached too.
"""
import io
import json
import zipfile

import numpy as np
import pytest

import minialex as mx
from minialex import nn, optim
from minialex.serialization import HEADER_MEMBER, load

CASES_PER_KIND = 150  # 6 kinds: 900 loads of a 6 KB file, about 2 s on one core


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The bytes of a real small checkpoint, as train_alexnet.py writes one: a model's
    state_dict, an optimizer's and a scheduler's, the random state and a history."""
    mx.random.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 5))
    optimizer = optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = mx.tensor(np.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype(np.float32))
    model(x).sum().backward()
    optimizer.step()  # fills the optimizer's velocity: a nested dict of arrays
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "schedule": optim.ReduceLROnPlateau(optimizer).state_dict(), "epoch": 3,
             "random_state": mx.random.get_state(), "step": np.int64(120),
             "history": [{"loss": 0.5, "top1": np.float32(0.25), "note": None}, (1, 2.5)]}
    path = tmp_path_factory.mktemp("fuzz") / "checkpoint.npz"
    mx.save(state, path)
    data = path.read_bytes()
    assert isinstance(load(path)["optimizer"]["velocity"]["0"], np.ndarray)
    return data


def structural_ranges(data):
    """(start, end) byte ranges where damage reaches the parsers, not only a CRC: each member's
    local header with the start of its content (the .npy header), the whole JSON index, and the
    central directory with the end record."""
    ranges = []
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            content_end = info.header_offset + 30 + len(info.filename) + 20 + info.compress_size
            span = info.compress_size if info.filename == HEADER_MEMBER else 128
            ranges.append((info.header_offset, min(content_end, info.header_offset + 80 + span)))
        ranges.append((archive.start_dir, len(data)))
    return ranges


def position(rng, data, ranges):
    """A byte offset: three times in four inside a structural range, else anywhere."""
    if rng.random() < 0.75:
        start, end = ranges[rng.integers(len(ranges))]
        return int(rng.integers(start, min(end, len(data))))
    return int(rng.integers(len(data)))


def flip(rng, data, ranges):
    damaged = bytearray(data)
    for _ in range(rng.integers(1, 4)):
        damaged[position(rng, data, ranges)] ^= int(rng.integers(1, 256))
    return bytes(damaged)


def truncate(rng, data, ranges):
    return data[:position(rng, data, ranges)]


def insert(rng, data, ranges):
    at = position(rng, data, ranges)
    return data[:at] + rng.bytes(int(rng.integers(1, 17))) + data[at:]


def repack(data, member, new_content):
    """The archive again, with `member`'s content replaced, every CRC correct."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as source, zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            content = new_content if info.filename == member else source.read(info)
            target.writestr(info.filename, content)
    return out.getvalue()


def damage_npy_header(rng, data, ranges):
    """One array member's .npy header (its first 128 bytes) flipped, truncated or grown."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = [name for name in archive.namelist() if name.endswith(".npy")]
        member = names[rng.integers(len(names))]
        content = bytearray(archive.read(member))
    at = int(rng.integers(min(128, len(content))))
    choice = rng.integers(3)
    if choice == 0:
        content[at] ^= int(rng.integers(1, 256))
    elif choice == 1:
        content = content[:at]
    else:
        content[at:at] = rng.bytes(int(rng.integers(1, 9)))
    return repack(data, member, bytes(content))


INDEX_WORDS = [b'{"dict": {}}', b'{"list": []}', b'{"array": "a0"}', b'{"scalar": "a1"}',
               b'{"array": "a0.npy"}', b'{"list": [', b"]}", b"1e999", b'"a9"', b"null", b"[",
               b"-1", b"\xff", b'"\\ud800"', b"99999999999999999999"]
# Nodes that a damaged index may hold in place of a good one: arrays missing, named twice, of
# the wrong kind, not 0-d for a scalar; tags on the wrong content; untagged containers
BAD_NODES = [{"array": "a99"}, {"array": 5}, {"array": None}, {"array": "a0"}, {"scalar": "a0"},
             {"scalar": "a1"}, {"list": {}}, {"dict": []}, {"dict": {"a": 1}, "list": []},
             {"tensor": "a0"}, [1, 2], {}, 1e308, "a0", None, {"array": "__minialex__.json"}]


def node_slots(node, slots):
    """Every (container, key) in the parsed index whose value is a node of the tree."""
    if isinstance(node, dict):
        for key, value in node.items():
            slots.append((node, key))
            node_slots(value, slots)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            slots.append((node, index))
            node_slots(value, slots)
    return slots


def damage_index(rng, data, ranges):
    """The JSON index damaged: half the time a node of the parsed tree replaced by a bad one
    (so that the decoder, not only the JSON parser, meets it), else a piece of the text
    replaced by random bytes or a word of the format."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        text = archive.read(HEADER_MEMBER)
    if rng.random() < 0.5:
        index = json.loads(text)
        slots = node_slots(index, [])
        container, key = slots[rng.integers(len(slots))]
        container[key] = BAD_NODES[rng.integers(len(BAD_NODES))]
        return repack(data, HEADER_MEMBER, json.dumps(index).encode())
    start = int(rng.integers(len(text)))
    end = start + int(rng.integers(0, 12))
    piece = (INDEX_WORDS[rng.integers(len(INDEX_WORDS))] if rng.random() < 0.6
             else rng.bytes(int(rng.integers(1, 6))))
    return repack(data, HEADER_MEMBER, text[:start] + piece + text[end:])


DAMAGE = {"flip": flip, "truncate": truncate, "insert": insert,
          "flip-twice-more": lambda rng, data, ranges: flip(rng, flip(rng, data, ranges), ranges),
          "npy-header": damage_npy_header, "index": damage_index}


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_checkpoint_loads_or_raises_value_error(tmp_path, checkpoint, kind):
    ranges = structural_ranges(checkpoint)
    path = tmp_path / "damaged.npz"
    outcomes, failures = {"loaded": 0, "ValueError": 0}, []
    for case in range(CASES_PER_KIND):
        seed = [list(DAMAGE).index(kind), case]
        damaged = DAMAGE[kind](np.random.default_rng(seed), checkpoint, ranges)
        path.write_bytes(damaged)
        try:
            load(path)
            outcomes["loaded"] += 1  # harmless damage (inside float data, say) may load
        except ValueError as error:
            assert str(error).startswith(f"load: {path}"), (seed, error)
            outcomes["ValueError"] += 1
        except Exception as error:  # noqa: BLE001  the failure to report, with its seed
            failures.append(f"seed {seed}: {type(error).__name__}: {error}")
    print(kind, outcomes)
    assert not failures, "\n".join(failures[:10])
    assert outcomes["ValueError"] > CASES_PER_KIND // 4  # the damage did reach the checks


def test_encryption_bit_flipped_in_a_real_checkpoint(tmp_path, checkpoint):
    """One flipped bit that the fuzzing above may miss: the encryption flag in the directory
    gave zipfile's RuntimeError before load checked the flag; now a ValueError."""
    start = checkpoint.rindex(b"PK\x01\x02")  # the last member's central directory entry
    damaged = bytearray(checkpoint)
    damaged[start + 8] |= 0x01  # general purpose flags: bit 0, encrypted
    path = tmp_path / "encrypted.npz"
    path.write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match=r"is encrypted \(zip flag bits 0x1\)"):
        load(path)


def test_index_damage_reaches_the_tree_decoder(checkpoint):
    """The index family reaches the tree decoder, not only the JSON parser: some damaged indexes
    still parse (so a missing array, a bad node, a wrong scalar are exercised too)."""
    ranges = structural_ranges(checkpoint)
    parsed = 0
    for case in range(40):
        damaged = damage_index(np.random.default_rng([99, case]), checkpoint, ranges)
        with zipfile.ZipFile(io.BytesIO(damaged)) as archive:
            try:
                json.loads(archive.read(HEADER_MEMBER))
                parsed += 1
            except ValueError:
                pass
    assert parsed >= 10
