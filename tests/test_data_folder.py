"""ImageFolder: the layout, the paper's resize and centre crop (§2), corrupt files, its errors."""
import threading
import warnings

import numpy as np
import pytest
from PIL import Image

from minialex.data.folder import ImageFolder
from minialex.data.loader import DataLoader
from minialex.data.transforms import EvalTransform


def write_image(path, width, height, seed=0, mode="RGB"):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).convert(mode).save(path)
    return path


def make_tree(root, classes=("cat", "dog"), per_class=2, splits=("train", "val")):
    for split in splits:
        for name in classes:
            for k in range(per_class):
                write_image(root / split / name / f"{k}.jpg", 24, 20, seed=k)
    return root


def naive_resize_and_center_crop(path, size):
    """Shorter side to `size` (Pillow's bilinear), then the central size x size, pixel by pixel."""
    image = Image.open(path).convert("RGB")
    width, height = image.size
    if width <= height:
        new_width, new_height = size, round(height * size / width)
    else:
        new_width, new_height = round(width * size / height), size
    resized = np.asarray(image.resize((new_width, new_height), Image.Resampling.BILINEAR))
    top, left = (new_height - size) // 2, (new_width - size) // 2
    expected = np.zeros((size, size, 3), dtype=np.uint8)
    for i, j, c in np.ndindex(expected.shape):
        expected[i, j, c] = resized[top + i, left + j, c]
    return expected


def test_classes_are_sorted_folders_and_samples_are_labelled(tmp_path):
    for name in ("zebra", "ant", "moth"):
        for split in ("train", "val"):
            write_image(tmp_path / split / name / "a.jpg", 20, 20)
    write_image(tmp_path / "train" / "ant" / "b.PNG", 20, 20)      # extensions in any case
    write_image(tmp_path / "train" / "ant" / "c.PpM", 20, 20)
    (tmp_path / "train" / "ant" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / "ant" / "._a.jpg").write_bytes(b"macOS metadata")
    (tmp_path / "train" / ".cache").mkdir()
    data = ImageFolder(tmp_path, "train", image_size=16)
    assert data.classes == ["ant", "moth", "zebra"]
    names = [(p.replace(str(tmp_path), ""), label) for p, label in data.samples]
    assert names == [("/train/ant/a.jpg", 0), ("/train/ant/b.PNG", 0), ("/train/ant/c.PpM", 0),
                     ("/train/moth/a.jpg", 1), ("/train/zebra/a.jpg", 2)]
    assert len(data) == 5 and data.skipped == 0
    assert [data[i][1] for i in range(5)] == [0, 0, 0, 1, 2]


@pytest.mark.parametrize("width, height", [(30, 20), (20, 30), (17, 17), (16, 41), (8, 5)])
def test_shorter_side_resized_then_centre_crop(tmp_path, width, height):
    path = write_image(tmp_path / "train" / "a" / "x.png", width, height, seed=width * height)
    image, label = ImageFolder(tmp_path, "train", image_size=16)[0]
    assert image.dtype == np.uint8 and image.shape == (16, 16, 3) and label == 0
    np.testing.assert_array_equal(image, naive_resize_and_center_crop(path, 16))


def test_a_solid_colour_stays_that_colour_and_grey_becomes_rgb(tmp_path):
    folder = tmp_path / "train" / "a"
    folder.mkdir(parents=True)
    Image.new("RGB", (37, 23), (200, 30, 70)).save(folder / "a.png")
    Image.new("L", (23, 37), 90).save(folder / "b.png")
    Image.new("RGBA", (20, 20), (1, 2, 3, 0)).save(folder / "c.png")
    data = ImageFolder(tmp_path, "train", image_size=16)
    np.testing.assert_array_equal(data[0][0], np.broadcast_to([200, 30, 70], (16, 16, 3)))
    np.testing.assert_array_equal(data[1][0], np.full((16, 16, 3), 90))
    np.testing.assert_array_equal(data[2][0], np.broadcast_to([1, 2, 3], (16, 16, 3)))


def add_corrupt_files(root):
    """A text file named .jpg, and a JPEG cut in half."""
    (root / "train" / "cat" / "text.jpg").write_text("this is not a picture")
    whole = write_image(root / "whole.jpg", 40, 40, seed=3).read_bytes()
    (root / "train" / "dog" / "truncated.jpg").write_bytes(whole[:len(whole) // 2])


def test_corrupt_files_warn_once_are_counted_and_give_none(tmp_path):
    add_corrupt_files(make_tree(tmp_path))
    data = ImageFolder(tmp_path, "train", image_size=16)
    paths = [path for path, _ in data.samples]
    bad = [paths.index(str(tmp_path / "train" / "cat" / "text.jpg")),
           paths.index(str(tmp_path / "train" / "dog" / "truncated.jpg"))]
    for index in bad:
        with pytest.warns(UserWarning, match=r"\.jpg: not a readable image .*; skipped") as record:
            assert data[index] is None
        assert data.samples[index][0] in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")              # a second time: no warning, same answer
        assert all(data[index] is None for index in bad)
    assert data.skipped == 2
    assert all(data[i] is not None for i in range(len(data)) if i not in bad)


def test_skipped_counts_each_file_once_across_threads(tmp_path):
    # a big truncated JPEG takes a while to fail, so the threads meet inside the decoder
    whole = write_image(tmp_path / "big.jpg", 600, 600).read_bytes()
    for k in range(3):
        path = tmp_path / "train" / "a" / f"truncated{k}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(whole[:len(whole) * 3 // 4])
    data = ImageFolder(tmp_path, "train", image_size=16)
    start = threading.Barrier(8)

    def read_everything():
        start.wait()
        for index in range(len(data)):
            assert data[index] is None

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        threads = [threading.Thread(target=read_everything) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert data.skipped == 3


def test_the_loader_leaves_corrupt_images_out(tmp_path):
    add_corrupt_files(make_tree(tmp_path, per_class=3))
    data = ImageFolder(tmp_path, "train", image_size=16)
    loader = DataLoader(data, 3, EvalTransform(12, [128, 128, 128]), num_threads=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batches = list(loader)
    assert sum(len(labels) for _, labels in batches) == len(data) - 2 == 6
    assert all(x.shape[1:] == (3, 12, 12) for x, _ in batches)
    assert data.skipped == 2


def test_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--data .*nowhere: folder not found; expected "
                                                r"DIR/train/<class>/\*\.jpg and DIR/val/"):
        ImageFolder(tmp_path / "nowhere")


def test_missing_split_folder(tmp_path):
    make_tree(tmp_path, splits=("train",))
    with pytest.raises(FileNotFoundError, match=r"no 'val' folder in it; expected DIR/train/"):
        ImageFolder(tmp_path, "val")


def test_no_class_folders(tmp_path):
    write_image(tmp_path / "train" / "loose.jpg", 20, 20)
    with pytest.raises(ValueError, match=r"train has no class folders; put each class's images"):
        ImageFolder(tmp_path, "train")


def test_empty_class_folder(tmp_path):
    make_tree(tmp_path)
    (tmp_path / "train" / "emu").mkdir()
    (tmp_path / "val" / "emu").mkdir()
    (tmp_path / "train" / "emu" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"class folder .*train/emu has no images \(.jpg .*\); "
                                         r"put images in it or remove it"):
        ImageFolder(tmp_path, "train")


@pytest.mark.parametrize("split", ["train", "val"])
def test_train_and_val_with_different_classes(tmp_path, split):
    make_tree(tmp_path)
    write_image(tmp_path / "val" / "emu" / "a.jpg", 20, 20)
    with pytest.raises(ValueError, match=r"(train and val|val and train) have different class "
                                         r"folders \(only in .*emu.*\); make the two lists"):
        ImageFolder(tmp_path, split)


def test_bad_image_size(tmp_path):
    make_tree(tmp_path)
    with pytest.raises(ValueError, match="ImageFolder: image_size must be >= 1; got 0"):
        ImageFolder(tmp_path, image_size=0)
