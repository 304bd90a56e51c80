"""examples/train_alexnet.py and examples/predict.py, run as a user runs them: in a subprocess.

The network is tiny (width 1/16, 10 training images, batches of 4), so that the runs, and not
the arithmetic, are what is tested: a resumed run, even one killed with SIGKILL at a random
moment, ends with the same bits as a run never interrupted; bad input gets a one-line error and
leaves what is on disk alone; a folder of images trains and leaves its results; predict.py
reads the checkpoint. The expensive runs are shared by module-scoped fixtures.
"""
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from minialex.data.folder import ImageFolder
from minialex.data.transforms import EvalTransform, TenCrop
from minialex.models.alexnet import alexnet
from minialex.serialization import load, save
from minialex.tensor import tensor

pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[1]
TRAIN = str(ROOT / "examples" / "train_alexnet.py")
PREDICT = str(ROOT / "examples" / "predict.py")
# as from a checkout that was not installed: minialex is found through PYTHONPATH
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                                 os.environ.get("PYTHONPATH")])))
TINY = ["--width", "0.0625", "--per-class", "1", "--batch-size", "4", "--threads", "1",
        "--no-progress"]
EPOCHS = 3   # of the reference run that the resumed ones must match


def command(script, *args):
    return [sys.executable, script, *map(str, args)]


def train(out, *args, expect_success=True):
    """Run the training script on the tiny configuration; returns the CompletedProcess."""
    result = subprocess.run(command(TRAIN, "--out", out, *TINY, *args), cwd=ROOT, env=ENV,
                            capture_output=True, text=True, timeout=300)
    if expect_success:
        assert result.returncode == 0, result.stderr
    return result


def predict(*args):
    return subprocess.run(command(PREDICT, *args), cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=120)


def assert_one_line_error(result, *phrases):
    """Exit status 2 and, on stderr, one line `error: ...` holding every phrase; no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for phrase in phrases:
        assert phrase in lines[0], (phrase, lines[0])


def assert_same_training_state(a, b):
    """The weights, the optimizer's velocities, the schedule and the dropout generator: equal
    bit for bit (and dtype for dtype)."""
    assert a["epoch"] == b["epoch"]
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert a["model"][name].dtype == b["model"][name].dtype, name
        assert np.array_equal(a["model"][name], b["model"][name]), f"weights {name} differ"
    velocity_a, velocity_b = a["optimizer"]["velocity"], b["optimizer"]["velocity"]
    assert len(velocity_a) == len(a["model"]) and velocity_a.keys() == velocity_b.keys()
    for key in velocity_a:
        assert np.array_equal(velocity_a[key], velocity_b[key]), f"velocity {key} differs"
    assert a["optimizer"]["lr"] == b["optimizer"]["lr"]
    assert a["schedule"] == b["schedule"]
    assert a["random_state"] == b["random_state"], "the dropout generator's state differs"
    losses = [(r["train_loss"], r["val_loss"]) for r in a["history"]]
    assert losses == [(r["train_loss"], r["val_loss"]) for r in b["history"]]


def file_bytes(folder):
    """Every file in `folder` with its bytes, to show that nothing was changed."""
    return {path.name: path.read_bytes() for path in sorted(pathlib.Path(folder).iterdir())}


def make_image_folder(root, classes=("blue", "green", "red"), per_class=3):
    """root/train/<class>/*.png (per_class each) and root/val/<class>/0.png: 64 x 64 noise
    with the class's colour channel turned up, so the classes differ."""
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("val", 1)):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 200, (64, 64, 3), dtype=np.uint8)
                pixels[..., "rgb".index(name[0])] += 55
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def load_json(path):
    return json.loads(pathlib.Path(path).read_text())


# ----------------------------------------------------------------------------------------------
# Shared runs

@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run of EPOCHS epochs, seed 0: its folder."""
    out = tmp_path_factory.mktemp("reference")
    train(out, "--epochs", EPOCHS)
    return out


@pytest.fixture
def finished_run(reference, tmp_path):
    """A copy of the reference run's folder, for a test to try to spoil."""
    return shutil.copytree(reference, tmp_path / "run")


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """One epoch on a folder of PNGs with one text file named .jpg among the training images.
    Returns (the data folder, the output folder, the CompletedProcess)."""
    root = make_image_folder(tmp_path_factory.mktemp("data"))
    (root / "train" / "blue" / "broken.jpg").write_text("this is not a JPEG")
    out = tmp_path_factory.mktemp("folder_run")
    return root, out, train(out, "--data", root, "--epochs", 1)


# ----------------------------------------------------------------------------------------------
# Resume

def test_a_resumed_run_ends_with_the_same_bits_as_an_uninterrupted_one(reference, tmp_path):
    out = tmp_path / "resumed"
    train(out, "--epochs", 1)
    after_one_epoch = load(out / "checkpoint.npz")
    result = train(out, "--epochs", EPOCHS, "--resume")
    assert "resumed from" in result.stdout
    assert_same_training_state(load(out / "checkpoint.npz"), load(reference / "checkpoint.npz"))

    # The comparison can fail: another seed gives other weights after the same epoch.
    other_seed = tmp_path / "other_seed"
    train(other_seed, "--epochs", 1, "--seed", 1)
    other = load(other_seed / "checkpoint.npz")
    weights = [name for name, w in after_one_epoch["model"].items() if w.ndim > 1]
    assert weights and not any(np.array_equal(after_one_epoch["model"][name],
                                              other["model"][name]) for name in weights)
    with pytest.raises(AssertionError):
        assert_same_training_state(after_one_epoch, other)


def test_a_run_killed_at_a_random_moment_resumes_to_the_same_bits(reference, tmp_path):
    out = tmp_path / "killed"
    process = subprocess.Popen(command(TRAIN, "--out", out, *TINY, "--epochs", EPOCHS),
                               cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        # the last file of epoch 1: from here on the process is in epoch 2 (or saving it)
        deadline = time.monotonic() + 120
        while not (out / "conv1_filters.png").exists():
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "epoch 1 never finished"
            time.sleep(0.01)
        delay = random.uniform(0.0, 0.3)
        time.sleep(delay)
        assert process.poll() is None, f"the run ended within {delay:.2f} s: kill it sooner"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL

    survivor = load(out / "checkpoint.npz")          # whole, whenever the kill came
    assert survivor["epoch"] < EPOCHS - 1, f"killed after the last epoch ({delay:.2f} s)"
    assert survivor["model"].keys() == load(reference / "checkpoint.npz")["model"].keys()
    # the killed run's lock is left in --out, naming it; the resumed run takes it over
    assert (out / ".lock").read_text().split()[0] == str(process.pid)
    resumed = train(out, "--epochs", EPOCHS, "--resume")
    assert f"PID {process.pid} on" in resumed.stdout and "taken over" in resumed.stdout
    assert not (out / ".lock").exists()
    assert_same_training_state(load(out / "checkpoint.npz"), load(reference / "checkpoint.npz"))


def test_resuming_a_finished_run_says_so_and_changes_nothing(finished_run):
    before = file_bytes(finished_run)
    result = train(finished_run, "--epochs", EPOCHS, "--resume", expect_success=False)
    assert_one_line_error(result, f"finished {EPOCHS} epochs already", f"--epochs {EPOCHS + 1}")
    assert file_bytes(finished_run) == before


# ----------------------------------------------------------------------------------------------
# --reference: the reference ops alone

def test_reference_ops_train_to_the_same_weights_as_the_fast_paths(tmp_path):
    """The fast paths (Winograd, threaded products, ...) compute what the reference ops do, in
    another order of float32 additions: after an epoch the weights and velocities agree to
    about 1e-7 of their largest value, far inside the tolerance."""
    fast = train(tmp_path / "fast", "--epochs", 1)
    reference = train(tmp_path / "reference", "--epochs", 1, "--reference")
    assert "fast paths: none (the reference ops)" in reference.stdout
    assert "fast paths: none" not in fast.stdout
    a, b = load(tmp_path / "fast" / "checkpoint.npz"), load(tmp_path / "reference" /
                                                            "checkpoint.npz")
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        np.testing.assert_allclose(a["model"][name], b["model"][name], rtol=1e-4, atol=1e-6,
                                   err_msg=f"weights {name}")
    for key in a["optimizer"]["velocity"]:
        np.testing.assert_allclose(a["optimizer"]["velocity"][key],
                                   b["optimizer"]["velocity"][key], rtol=1e-4, atol=1e-6,
                                   err_msg=f"velocity {key}")
    assert a["history"][0]["train_loss"] == pytest.approx(b["history"][0]["train_loss"],
                                                          rel=1e-5)


# ----------------------------------------------------------------------------------------------
# Bad input: one line, exit status 2, and nothing on disk changed

@pytest.mark.parametrize("args, phrases", [
    (["--width", "0.125"], ["--width 0.0625", "--width 0.125", "another --out"]),
    (["--variant", "seed"], ["--variant paper", "--variant seed", "another --out"]),
    (["--seed", "7"], ["--seed 0", "--seed 7"]),
    (["--dropout", "0.25"], ["--dropout 0.25", "another --out"]),
    (["--batch-size", "2", "--no-lighting"], ["--batch-size 2", "--no-lighting True"]),
])
def test_resume_refuses_a_checkpoint_of_other_settings(finished_run, args, phrases):
    before = file_bytes(finished_run)
    result = train(finished_run, "--epochs", EPOCHS + 1, "--resume", *args, expect_success=False)
    assert_one_line_error(result, *phrases)
    assert file_bytes(finished_run) == before


def test_starting_over_an_existing_checkpoint_is_refused(finished_run):
    before = file_bytes(finished_run)
    result = train(finished_run, "--epochs", 1, expect_success=False)
    assert_one_line_error(result, "already exists", "--resume", "another --out")
    assert file_bytes(finished_run) == before


def test_resume_with_nothing_to_resume(tmp_path):
    result = train(tmp_path, "--epochs", 1, "--resume", expect_success=False)
    assert_one_line_error(result, "nothing to resume", "without --resume")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("contents", ["garbage", "other minialex file"])
def test_resume_with_a_file_that_is_not_a_checkpoint(tmp_path, contents):
    path = tmp_path / "checkpoint.npz"
    if contents == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(1000))
    else:
        save({"weights": np.zeros(3)}, path)
    before = file_bytes(tmp_path)
    result = train(tmp_path, "--epochs", 1, "--resume", expect_success=False)
    assert_one_line_error(result, str(path), "another --out")
    assert file_bytes(tmp_path) == before


def test_data_folder_that_does_not_exist(tmp_path):
    out = tmp_path / "out"
    result = train(out, "--data", tmp_path / "missing", expect_success=False)
    assert_one_line_error(result, str(tmp_path / "missing"), "not found", "DIR/train/<class>")
    assert not out.exists()


def test_data_with_an_empty_class_folder(finished_run, tmp_path):
    root = make_image_folder(tmp_path / "data")
    for split in ("train", "val"):
        (root / split / "empty").mkdir()
    before = file_bytes(finished_run)
    result = train(finished_run, "--data", root, "--epochs", EPOCHS + 1, "--resume",
                   expect_success=False)
    assert_one_line_error(result, str(root / "train" / "empty"), "has no images")
    assert file_bytes(finished_run) == before


def test_batch_size_larger_than_the_training_set(tmp_path):
    result = train(tmp_path / "out", "--batch-size", 11, expect_success=False)
    assert_one_line_error(result, "--batch-size 11", "10 training images", "smaller")


# ----------------------------------------------------------------------------------------------
# A folder of images

def test_a_folder_of_images_trains_and_leaves_its_results(folder_run):
    root, out, result = folder_run
    assert "10 training and 3 validation images" in result.stdout   # files found, broken too
    metrics = load_json(out / "metrics.json")
    assert metrics["config"]["classes"] == ["blue", "green", "red"]
    final = metrics["final"]
    assert final["epochs"] == 1 and np.isfinite(final["train_loss"]) and final["train_loss"] > 0
    assert 0 <= final["val_top1"] <= 1
    assert final["val_top5"] == 1.0                  # 3 classes: the top 5 hold them all
    checkpoint = load(out / "checkpoint.npz")
    assert checkpoint["epoch"] == 0 and checkpoint["config"]["num_classes"] == 3
    assert checkpoint["model"]["classifier.6.weight"].shape[0] == 3
    for name, smallest in (("curves.png", (500, 200)), ("conv1_filters.png", (50, 50))):
        with Image.open(out / name) as picture:
            assert picture.format == "PNG" and picture.width >= smallest[0] \
                and picture.height >= smallest[1], (name, picture.size)


def test_an_image_that_is_not_an_image_is_skipped_with_a_warning(folder_run):
    root, out, result = folder_run
    broken = str(root / "train" / "blue" / "broken.jpg")
    warnings = [line for line in result.stderr.splitlines() if "not a readable image" in line]
    assert len(warnings) == 1 and broken in warnings[0] and "skipped" in warnings[0]
    assert "skipped 1 unreadable image file" in result.stdout


# ----------------------------------------------------------------------------------------------
# predict.py

def parse_predictions(stdout):
    """{image: [(class, probability), ...]} from lines `image: class p, class p, ...`."""
    predictions = {}
    for line in stdout.strip().splitlines():
        image, ranking = line.rsplit(": ", 1)
        predictions[image] = [(name, float(p)) for name, p in
                              (entry.rsplit(" ", 1) for entry in ranking.split(", "))]
    return predictions


def expected_probabilities(checkpoint_path, root, ten_crop):
    """{image path: softmax of the trained network} for the validation images, prepared as the
    training script's validation prepares them; the softmax in NumPy, from its formula."""
    checkpoint = load(checkpoint_path)
    config = checkpoint["config"]
    model = alexnet(config["variant"], num_classes=config["num_classes"], width=config["width"])
    model.load_state_dict(checkpoint["model"])
    model.eval()
    crops = TenCrop if ten_crop else EvalTransform
    transform = crops(model.input_size, checkpoint["mean"])
    images = ImageFolder(root, "val")
    expected = {}
    for index, (path, _) in enumerate(images.samples):
        x = transform(images[index][0])                       # (3, S, S) or (10, 3, S, S)
        logits = model(tensor(x if ten_crop else x[None])).numpy().astype(np.float64)
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        expected[path] = dict(zip(config["classes"], (exp / exp.sum(axis=1, keepdims=True))
                                  .mean(axis=0)))
    return expected


@pytest.mark.parametrize("ten_crop", [False, True])
def test_predict_prints_the_classes_by_probability(folder_run, ten_crop):
    root, out, _ = folder_run
    classes = ["blue", "green", "red"]
    images = [str(root / "val" / name / "0.png") for name in classes]
    # --top 3 is all the classes; with --ten-crop the default 5 is cut to the 3 there are
    options = ["--ten-crop"] if ten_crop else ["--top", 3]
    result = predict(out / "checkpoint.npz", *images, *options)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    predictions = parse_predictions(result.stdout)
    assert list(predictions) == images
    expected = expected_probabilities(out / "checkpoint.npz", root, ten_crop)
    for image, ranking in predictions.items():
        names, probabilities = zip(*ranking)
        assert sorted(names) == classes
        assert all(0 <= p <= 1 for p in probabilities)
        assert list(probabilities) == sorted(probabilities, reverse=True)
        assert sum(probabilities) == pytest.approx(1, abs=0.002)   # printed with 3 decimals
        for name, p in ranking:
            assert p == pytest.approx(expected[image][name], abs=0.0006), (image, name)


def test_predict_top_k_and_one_error_per_bad_image(folder_run, tmp_path):
    root, out, _ = folder_run
    good = str(root / "val" / "red" / "0.png")
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("hello")
    result = predict(out / "checkpoint.npz", good, tmp_path / "missing.png", not_an_image,
                     "--top", 2)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(parse_predictions(result.stdout)[good]) == 2    # the good image still answered
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 2 and all(line.startswith("error: ") for line in errors)
    assert str(tmp_path / "missing.png") in errors[0] and "No such file" in errors[0]
    assert str(not_an_image) in errors[1] and "not an image" in errors[1]


@pytest.mark.parametrize("contents", ["missing", "garbage", "other minialex file"])
def test_predict_refuses_a_file_that_is_not_a_checkpoint(folder_run, tmp_path, contents):
    root, _, _ = folder_run
    path = tmp_path / "checkpoint.npz"
    if contents == "garbage":
        path.write_bytes(b"not a zip archive at all")
    elif contents != "missing":
        save({"weights": np.zeros(3)}, path)
    result = predict(path, root / "val" / "red" / "0.png")
    assert_one_line_error(result, str(path), "train_alexnet.py")
