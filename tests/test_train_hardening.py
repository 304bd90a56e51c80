"""examples/train_alexnet.py and examples/predict.py against what goes wrong around a run: a
diverging run (NaN), flags out of range, more memory than there is, an --out that cannot be
written or that another run holds, a --data folder that cannot be listed, checkpoints that
unzip fine but hold wrong contents, an image too large to decode, --resume with a new --lr.

Each is one line `error: ...`, exit status 2, and what is on disk is left alone. The runs are
tiny (width 1/16, 10 images, one batch of 10 per epoch); what needs no training runs in this
process (the script imported as a module), which also lets a test simulate a PermissionError
that root, who ignores file permissions, would never get.
"""
import importlib.util
import os
import pathlib
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest

from minialex.serialization import load, save
import test_train_script as train_script
from test_train_script import ENV, PREDICT, ROOT, TRAIN, command, predict  # noqa: F401

pytestmark = pytest.mark.slow

# one step per epoch: a NaN made by the step is seen by the check before the checkpoint
TINY = ["--width", "0.0625", "--per-class", "1", "--batch-size", "10", "--threads", "1",
        "--no-progress"]


def train(out, *args, expect_success=True):
    """test_train_script.train with this file's TINY (batches of 10: one step per epoch)."""
    return train_script.train(out, *TINY, *args, expect_success=expect_success)


def assert_one_line_error(returncode, stderr, *phrases):
    assert returncode == 2, (returncode, stderr)
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])


def assert_fails(result, *phrases):
    assert_one_line_error(result.returncode, result.stderr, *phrases)


def file_bytes(folder):
    return {path.name: path.read_bytes() for path in sorted(pathlib.Path(folder).iterdir())}


@pytest.fixture(scope="module")
def script():
    """examples/train_alexnet.py imported as a module, to call main() in this process."""
    spec = importlib.util.spec_from_file_location("train_alexnet_script", TRAIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_in_process(script, capsys, *args):
    status = script.main(list(map(str, args)))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One epoch of the tiny run: its folder."""
    out = tmp_path_factory.mktemp("tiny")
    train(out, "--epochs", 1)
    return out


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    return shutil.copytree(tiny_run, tmp_path / "run")


# ----------------------------------------------------------------------------------------------
# A diverging run: stopped, and the last good checkpoint left alone

def test_a_run_whose_weights_become_nan_stops_and_saves_nothing(tmp_path):
    # 1e39 is a finite float, but infinite in float32: the first step makes the weights NaN
    out = tmp_path / "out"
    result = train(out, "--epochs", 1, "--lr", "1e39", expect_success=False)
    assert_fails(result, "parameter features.0.weight", "NaN or infinite", "epoch 1",
                 "step 1", "nothing was saved", "smaller --lr")
    assert not (out / "checkpoint.npz").exists()


def test_a_resumed_run_that_diverges_leaves_the_last_good_checkpoint(run_copy):
    before = file_bytes(run_copy)
    result = train(run_copy, "--epochs", 2, "--resume", "--lr", "1e39", expect_success=False)
    assert "the learning rate is now 1e+39" in result.stdout
    assert_fails(result, "NaN or infinite", "end of epoch 2", "checkpoint.npz (epoch 1) is "
                 "left as it was", "smaller --lr (now 1e+39)")
    assert file_bytes(run_copy) == before


@pytest.mark.parametrize("flag, value", [("--lr", "nan"), ("--lr", "inf"),
                                         ("--momentum", "nan"), ("--weight-decay", "inf"),
                                         ("--width", "nan"), ("--width", "inf"),
                                         ("--dropout", "nan")])
def test_non_finite_flags_are_refused_up_front(script, capsys, tmp_path, flag, value):
    with pytest.raises(SystemExit) as exit_:
        script.parse_args(["--out", str(tmp_path / "out"), flag, value])
    assert_one_line_error(exit_.value.code, capsys.readouterr().err, flag,
                          "must be a finite number")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------
# Fail early: size, memory, --out

def test_a_width_too_large_is_refused_with_its_size(script, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        script.parse_args(["--out", str(tmp_path / "out"), "--width", "7"])
    assert_one_line_error(exit_.value.code, capsys.readouterr().err, "--width 7",
                          "parameters x 12 bytes", "GiB")


def test_more_images_than_memory_are_refused_before_anything_is_built(script, capsys,
                                                                        tmp_path):
    out = tmp_path / "out"
    status, stdout, stderr = run_in_process(script, capsys, "--out", out, "--per-class",
                                            1_000_000_000, "--epochs", 1)
    assert_one_line_error(status, stderr, "of memory", "12,500,000,000 bundled images x "
                          "196,608 bytes", "--per-class")
    assert stdout == "" and not out.exists()


def test_a_model_larger_than_memory_is_refused(script, capsys, tmp_path, monkeypatch):
    # 512 MiB of memory: the real AlexNet (58 million parameters here, 0.7 GiB) does not fit
    monkeypatch.setattr(script, "available_memory", lambda: 2**29)
    status, stdout, stderr = run_in_process(script, capsys, "--out", tmp_path, "--width", 1,
                                            "--per-class", 1)
    assert_one_line_error(status, stderr, "more than the 512.0 MiB available", "--width 1 has",
                          "parameters x 12 bytes")
    assert stdout == ""


@pytest.mark.parametrize("where", ["/proc/self", "under a file"])
def test_an_out_folder_that_cannot_be_written(script, capsys, tmp_path, where):
    out = "/proc/self" if where == "/proc/self" else tmp_path / "file" / "sub"
    (tmp_path / "file").write_text("a file, not a folder")
    status, stdout, stderr = run_in_process(script, capsys, "--out", out, *TINY)
    assert_one_line_error(status, stderr, f"--out {out}", "cannot write there")
    assert stdout == ""                      # before the data, the model and the first step


def test_an_out_folder_without_write_permission(script, capsys, tmp_path, monkeypatch):
    """chmod would not stop root: the probe file's creation raises PermissionError instead."""
    real_open = os.open

    def refusing_open(path, *args, **kwargs):
        if ".write-test-" in os.fspath(path):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, *args, **kwargs)
    monkeypatch.setattr(os, "open", refusing_open)
    status, stdout, stderr = run_in_process(script, capsys, "--out", tmp_path / "out", *TINY)
    assert_one_line_error(status, stderr, f"--out {tmp_path / 'out'}", "Permission denied")
    assert stdout == "" and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------
# One run per --out

def test_a_second_run_on_the_same_out_is_refused_naming_the_first(tmp_path):
    out = tmp_path / "out"
    first = subprocess.Popen(command(TRAIN, "--out", out, *TINY, "--epochs", 2), cwd=ROOT,
                             env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        lock = out / ".lock"
        while not (lock.exists() and lock.read_text().split()[:1] == [str(first.pid)]):
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first run never took the lock"
            time.sleep(0.01)
        first.send_signal(signal.SIGSTOP)    # holds the lock while the others try
        try:
            for extra in ([], ["--resume"]):
                second = train(out, "--epochs", 2, *extra, expect_success=False)
                assert_fails(second, f"--out {out} is in use by another run",
                             f"PID {first.pid}", "another --out")
        finally:
            first.send_signal(signal.SIGCONT)
        stdout, stderr = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert first.returncode == 0, stderr
    assert "done in" in stdout
    assert load(out / "checkpoint.npz")["epoch"] == 1
    assert not (out / ".lock").exists()      # released when the run ended


def test_the_lock_of_a_dead_run_is_taken_over(run_copy):
    # what kill -9 leaves: the lock file, naming a process that no longer runs
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run_copy / ".lock").write_text(f"{dead.pid} somehost 2026-01-01T00:00:00\n")
    result = train(run_copy, "--epochs", 2, "--resume")
    assert f"PID {dead.pid} on somehost, no longer running); taken over" in result.stdout
    assert load(run_copy / "checkpoint.npz")["epoch"] == 1
    assert not (run_copy / ".lock").exists()


# ----------------------------------------------------------------------------------------------
# --data folders that cannot be listed

def make_data(root):
    from PIL import Image
    for split in ("train", "val"):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / split / name / "0.png")
    return root


def test_a_symbolic_link_loop_in_data(script, capsys, tmp_path):
    root = make_data(tmp_path / "data")
    os.symlink("loop", root / "train" / "loop")
    status, stdout, stderr = run_in_process(script, capsys, "--data", root, "--out",
                                            tmp_path / "out", *TINY)
    assert_one_line_error(status, stderr, str(root / "train" / "loop"),
                          "Too many levels of symbolic links")
    assert stdout == "" and not (tmp_path / "out").exists()


def test_a_class_folder_that_cannot_be_read(script, capsys, tmp_path, monkeypatch):
    """chmod 000 would not stop root: listing the folder raises PermissionError instead."""
    root = make_data(tmp_path / "data")
    unreadable = str(root / "train" / "b")
    real_scandir = os.scandir

    def refusing_scandir(path="."):
        if os.fspath(path) == unreadable:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)
    monkeypatch.setattr(os, "scandir", refusing_scandir)
    status, stdout, stderr = run_in_process(script, capsys, "--data", root, "--out",
                                            tmp_path / "out", *TINY)
    assert_one_line_error(status, stderr, unreadable, "Permission denied")
    assert stdout == "" and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------
# Checkpoints that unzip fine but hold wrong contents

def spoil(checkpoint, how):
    if how == "config a string":
        checkpoint["config"] = "paper"
    elif how == "unknown variant":
        checkpoint["config"]["variant"] = "vgg"
    elif how == "width nan":
        checkpoint["config"]["width"] = float("nan")
    elif how == "weights not matching":
        checkpoint["model"]["features.0.weight"] = np.zeros((2, 3), np.float32)
    elif how == "bad random state":
        checkpoint["random_state"] = {"bit_generator": "NoSuchGenerator", "state": 3}
    elif how == "no velocity":
        del checkpoint["optimizer"]["velocity"]
    elif how == "epoch a string":
        checkpoint["epoch"] = "0"
    return checkpoint


RESUME_SPOILS = {"config a string": "config is a str", "unknown variant": "'vgg'",
                 "width nan": "width nan", "weights not matching": "weights",
                 "bad random state": "random state", "no velocity": "velocities",
                 "epoch a string": "epoch '0'"}


@pytest.mark.parametrize("how", RESUME_SPOILS)
def test_resume_refuses_a_checkpoint_with_wrong_contents(run_copy, how):
    path = run_copy / "checkpoint.npz"
    save(spoil(load(path), how), path)
    before = file_bytes(run_copy)
    result = train(run_copy, "--epochs", 2, "--resume", expect_success=False)
    assert_fails(result, str(path), "bad checkpoint", RESUME_SPOILS[how], "another --out")
    assert file_bytes(run_copy) == before


PREDICT_SPOILS = {"config a string": "config is a str", "unknown variant": "'vgg'",
                  "width nan": "width nan", "weights not matching": "weights"}


@pytest.mark.parametrize("how", PREDICT_SPOILS)
def test_predict_refuses_a_checkpoint_with_wrong_contents(tiny_run, tmp_path, how):
    path = tmp_path / "checkpoint.npz"
    save(spoil(load(tiny_run / "checkpoint.npz"), how), path)
    result = predict(path, tiny_run / "curves.png")
    assert_fails(result, str(path), "bad checkpoint", PREDICT_SPOILS[how])


# ----------------------------------------------------------------------------------------------
# predict.py: an image too large to decode

def write_png_header(path, width, height):
    """A PNG that claims width x height 1-bit pixels: Pillow reads the size when it opens it,
    so it is as good as the real thing for its decompression-bomb check, and 70 bytes."""
    def chunk(kind, payload):
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload)))
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def test_predict_reports_an_image_too_large_and_goes_on(tiny_run, tmp_path):
    bomb = tmp_path / "bomb.png"
    write_png_header(bomb, 20000, 20000)
    good = tiny_run / "curves.png"
    result = predict(tiny_run / "checkpoint.npz", good, bomb, tiny_run / "conv1_filters.png")
    assert_fails(result, str(bomb), "too large to decode safely")
    answered = [line.split(": ")[0] for line in result.stdout.strip().splitlines()]
    assert answered == [str(good), str(tiny_run / "conv1_filters.png")]


# ----------------------------------------------------------------------------------------------
# --resume --lr

def test_resume_with_a_new_lr_trains_with_it_and_says_so(run_copy):
    result = train(run_copy, "--epochs", 2, "--resume", "--lr", "0.005")
    assert "--lr 0.005: the learning rate is now 0.005 (the checkpoint's was 0.01)" \
        in result.stdout
    checkpoint = load(run_copy / "checkpoint.npz")
    assert [record["lr"] for record in checkpoint["history"]] == [0.01, 0.005]


def test_resume_without_lr_keeps_the_checkpoints_rate(run_copy):
    path = run_copy / "checkpoint.npz"
    checkpoint = load(path)
    checkpoint["optimizer"]["lr"] = 0.001    # as the schedule would have left it
    save(checkpoint, path)
    result = train(run_copy, "--epochs", 2, "--resume")
    assert "learning rate is now" not in result.stdout
    assert load(path)["history"][-1]["lr"] == 0.001


def test_help_says_what_lr_does_on_resume(script, capsys):
    with pytest.raises(SystemExit):
        script.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "With --resume: without --lr the checkpoint's rate" in text


# ----------------------------------------------------------------------------------------------
# The pieces behind the checks

@pytest.mark.parametrize("variant", ["paper", "seed", "torchvision"])
@pytest.mark.parametrize("width", [0.0625, 0.3])
def test_the_parameter_estimate_counts_what_alexnet_builds(script, variant, width):
    from minialex.models.alexnet import alexnet
    model = alexnet(variant, num_classes=7, width=width)
    total, largest = script.parameter_count(variant, width, 7)
    assert total == model.num_parameters()
    sizes = {}
    for name, p in model.named_parameters():          # weight and bias of each layer
        layer = name.rsplit(".", 1)[0]
        sizes[layer] = sizes.get(layer, 0) + p.size
    assert largest == max(sizes.values())


def test_the_finite_check_is_not_fooled_by_an_overflowing_sum(script):
    with np.errstate(over="ignore", invalid="ignore"):
        huge = np.full(4, np.finfo(np.float64).max)    # finite, but the sum overflows
        assert not np.isfinite(huge.sum()) and script.is_finite(huge)
        assert script.is_finite(np.full(1000, np.finfo(np.float32).max, np.float32))
        for bad in (np.nan, np.inf, -np.inf):
            for dtype in (np.float32, np.float64):
                a = np.ones(1000, dtype)
                a[517] = bad
                assert not script.is_finite(a), (bad, dtype)
