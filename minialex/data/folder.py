"""ImageNet-style folders of images: DIR/train/<class>/*.jpg and DIR/val/<class>/*.jpg.

The paper's preprocessing (§2): "we down-sampled the images to a fixed resolution of 256 x 256.
Given a rectangular image, we first rescaled the image such that the shorter side was of length
256, and then cropped out the central 256 x 256 patch". Mean subtraction and the random crops
of §4.1 are the transforms' work (transforms.py), so an item here is the 256 x 256 image.

Classes are the sorted names of the class folders, so label i means the same class in train
and val. Files count as images by their extension (.jpg .jpeg .png .bmp .webp .ppm, any case);
other files, and names starting with "." (.DS_Store, macOS "._" twins), are ignored.

Corrupt images. The folder is scanned by name only: opening 1.28 million files to check them
would take longer than an epoch. A file that then fails to decode is found by `__getitem__`,
which cannot drop the index (that would change the dataset's length and every index after it),
so it returns None instead: it warns once per file ("... skipped"), counts the file in
`skipped`, and the loader leaves the sample out of its batch (a batch may come out smaller).
"""
import os
import threading
import warnings

import numpy as np
from PIL import Image

from .transforms import CenterCrop

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm")
LAYOUT = "expected DIR/train/<class>/*.jpg and DIR/val/<class>/*.jpg"
OTHER_SPLIT = {"train": "val", "val": "train"}


def _visible_entries(folder):
    return sorted((entry for entry in os.scandir(folder) if not entry.name.startswith(".")),
                  key=lambda entry: entry.name)


def _class_names(split_folder):
    return [entry.name for entry in _visible_entries(split_folder) if entry.is_dir()]


def _list_names(names, limit=5):
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def load_image(path, image_size=256):
    """The image file at `path` as the paper feeds it (§2): uint8 (image_size, image_size, 3) RGB.

    Decode, scale the shorter side to image_size (bilinear), take the centre square. Raises
    OSError (Pillow's UnidentifiedImageError is one) for a missing or unreadable file.
    """
    with Image.open(path) as image:
        # A JPEG can decode at 1/2, 1/4 or 1/8 scale for almost nothing; `draft` picks the
        # smallest of those that keeps both sides >= image_size: big photos decode much faster.
        image.draft("RGB", (image_size, image_size))
        image = _to_rgb(image)                          # decodes the file; errors surface here
    width, height = image.size
    scale = image_size / min(width, height)
    new_size = (max(image_size, round(width * scale)), max(image_size, round(height * scale)))
    image = image.resize(new_size, Image.Resampling.BILINEAR)
    return np.ascontiguousarray(CenterCrop(image_size)(np.asarray(image)))


def _to_rgb(image):
    """8-bit RGB. Pillow's convert("RGB") clips 16-bit grayscale (modes I;16, I;16B, I;16L;
    I from older Pillows) and float (F) images at 255, nearly all white; those are scaled to
    8 bits instead: v * 255 / 65535 (1.0 for F with values in [0, 1], 255 up to 255). Pillow
    itself reduces 16-bit RGB(A) PNGs to 8-bit RGB(A) correctly."""
    if not (image.mode.startswith("I") or image.mode == "F"):
        return image.convert("RGB")
    values = np.asarray(image, dtype=np.float64)
    top = values.max(initial=0)
    if image.mode == "F":
        full = 1.0 if top <= 1 else 255.0 if top <= 255 else 65535.0
    else:  # I;16*: 16 bits; I (32-bit): 16 bits too, unless its values go beyond
        full = 65535.0 if top <= 65535 else float(2 ** 31 - 1)
    pixels = np.rint(np.clip(values, 0, full) * (255 / full)).astype(np.uint8)
    return Image.fromarray(pixels).convert("RGB")


class ImageFolder:
    """The images of root/split/<class>/, each as a uint8 (image_size, image_size, 3) RGB array.

    classes: the class folders' names, sorted; samples: a list of (path, label); skipped: how
    many distinct files failed to decode so far (their items are None; see the module's text).
    """

    def __init__(self, root, split="train", image_size=256):
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"--data {root}: folder not found; {LAYOUT}")
        split_folder = os.path.join(root, split)
        if not os.path.isdir(split_folder):
            raise FileNotFoundError(f"--data {root}: no '{split}' folder in it; {LAYOUT}")
        if image_size < 1:
            raise ValueError(f"ImageFolder: image_size must be >= 1; got {image_size}")
        self.root, self.split, self.image_size = root, split, image_size
        self.classes = _class_names(split_folder)
        if not self.classes:
            raise ValueError(f"--data {root}: {split_folder} has no class folders; put each "
                             f"class's images in {split_folder}/<class>/")
        self._check_other_split_has_the_same_classes()
        self.samples = []                               # (path, label), class by class
        for label, name in enumerate(self.classes):
            class_folder = os.path.join(split_folder, name)
            paths = [entry.path for entry in _visible_entries(class_folder)
                     if entry.name.lower().endswith(IMAGE_EXTENSIONS) and entry.is_file()]
            if not paths:
                raise ValueError(f"--data {root}: class folder {class_folder} has no images "
                                 f"({' '.join(IMAGE_EXTENSIONS)}); put images in it or remove it")
            self.samples += [(path, label) for path in paths]
        self.skipped = 0
        self._corrupt = set()                           # indices whose file failed to decode
        self._lock = threading.Lock()                   # loader threads share `skipped`

    def _check_other_split_has_the_same_classes(self):
        other = OTHER_SPLIT.get(self.split)
        if other is None or not os.path.isdir(os.path.join(self.root, other)):
            return
        other_classes = _class_names(os.path.join(self.root, other))
        if other_classes != self.classes:
            only_here = sorted(set(self.classes) - set(other_classes))
            only_there = sorted(set(other_classes) - set(self.classes))
            raise ValueError(
                f"--data {self.root}: {self.split} and {other} have different class folders "
                f"(only in {self.split}: {_list_names(only_here) or '-'}; only in {other}: "
                f"{_list_names(only_there) or '-'}); make the two lists of folders the same")

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        """(image, label), the image uint8 (image_size, image_size, 3); None if it is corrupt."""
        path, label = self.samples[index]
        if index in self._corrupt:
            return None
        try:
            image = self.load(path)
        except Exception as error:  # noqa: BLE001 - Pillow raises many kinds on a bad file
            self._skip(index, path, error)
            return None
        return image, label

    def load(self, path):
        """The image at `path` as this folder serves it (see `load_image`)."""
        return load_image(path, self.image_size)

    def _skip(self, index, path, error):
        with self._lock:
            first_time = index not in self._corrupt
            if first_time:
                self._corrupt.add(index)
                self.skipped += 1
        if first_time:
            warnings.warn(f"{path}: not a readable image ({type(error).__name__}: {error}); "
                          f"skipped", stacklevel=2)
