"""Data for training: datasets, the paper's augmentation (§4.1), and a background loader.

A dataset has `classes` (a list of names), `__len__`, and `__getitem__(i) -> (image, label)`,
the image a uint8 array (H, W, 3) in RGB, the label an int. Transforms turn an image into the
network's float32 (3, S, S) input; the loader batches them in background threads.
"""
from .folder import ImageFolder, load_image  # noqa: F401
from .loader import DataLoader  # noqa: F401
from .synthetic import SyntheticShapes  # noqa: F401
from .transforms import (  # noqa: F401
    CenterCrop, EvalTransform, PCALighting, TenCrop, TrainTransform, channel_mean,
    pca_lighting_basis)
