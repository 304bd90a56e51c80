"""The paper's data augmentation (§4.1) and test-time crops, on NumPy arrays.

Notation
    H, W    height and width of the dataset's image (256 x 256 after ImageFolder)
    S       crop_size, the network's input side (227 for the `paper` and `seed` variants)
    image   uint8 (H, W, 3), RGB, pixel values 0..255
    x       float32 (3, S, S), what the network sees

A transform is a callable `transform(image, rng) -> x`, rng being a numpy Generator that belongs
to that one sample (the loader makes it from (seed, epoch, index)), so the same sample in the
same epoch gets the same crop, flip and colour however the loader's threads are scheduled.

Training (§4.1): a random S x S crop of the 256 x 256 image, flipped left-right with
probability 1/2, and "PCA colour" lighting: to every pixel add

    [p1 p2 p3] [a1 l1, a2 l2, a3 l3]^T,    a_i ~ N(0, 0.1) drawn per image, each time it is used,

where p_i, l_i are the eigenvectors and eigenvalues of the 3 x 3 covariance of the training
set's RGB pixel values. Test (§4.1): the centre crop, or ten crops (4 corners and the centre,
and their mirror images) whose softmax outputs are averaged.

Two choices the paper leaves open, made here:
- The scale of the lighting. An eigenvalue is a variance, so p a l changes with the pixel scale
  squared: on the 0..255 scale the formula would move pixels by about a thousand grey levels.
  On the 0..1 scale (pixel / 255) it moves them by a few grey levels, a small change of
  illumination, which is what the paper describes. So `pca_lighting_basis` works on pixel / 255
  (for ImageNet it gives l of about 0.2, 0.02, 0.005, the values fb.resnet.torch uses), and the
  lighting offset is multiplied by 255 when it is added to 0..255 pixels.
- The input scale. The paper subtracts the mean and feeds 0..255 values. Here the result is
  also divided by `scale` = 64 (ImageNet's per-channel standard deviation is about 58), so
  the inputs are of order 1 and the usual initialisations and learning rates fit:
      x = (pixel - mean) / 64.
  One constant for the three channels keeps the colours' proportions; any constant is
  equivalent to the paper up to a rescaling of conv1's weights. `scale` may also be 3 numbers
  (a per-channel standard deviation).
Statistics are accumulated in float64 (sums over millions of pixels); every array a transform
returns is float32.
"""
from concurrent.futures import ThreadPoolExecutor

import numpy as np

PIXEL_SCALE = 64.0   # x = (pixel - mean) / PIXEL_SCALE: inputs of order 1
LIGHTING_STD = 0.1   # the standard deviation of a_i (§4.1)


def _check_image(name, image, crop_size):
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < crop_size:
        raise ValueError(f"{name}: image must be (H, W, 3) with H, W >= crop_size {crop_size}; "
                         f"got shape {image.shape}")


def _check_crop_size(name, crop_size):
    if int(crop_size) != crop_size or crop_size < 1:
        raise ValueError(f"{name}: crop_size must be a positive integer; got {crop_size!r}")
    return int(crop_size)


def _per_channel(name, what, values):
    values = np.asarray(values, dtype=np.float32).reshape(-1)
    if values.size == 1:
        values = np.repeat(values, 3)
    if values.shape != (3,):
        raise ValueError(f"{name}: {what} must be one number or 3 (R, G, B); got {values.size}")
    return values


def to_network_input(pixels, shift, inv_scale):
    """(pixels - shift) * inv_scale from uint8 (..., S, S, 3) to float32 (..., 3, S, S).

    shift, inv_scale: float32 (3,). One pass writes the channel-first result; a second scales it.
    """
    channels_first = np.moveaxis(pixels, -1, -3)               # a view: (..., 3, S, S)
    x = np.empty(channels_first.shape, dtype=np.float32)
    np.subtract(channels_first, shift[:, None, None], out=x)
    x *= inv_scale[:, None, None]
    return x


class CenterCrop:
    """The central size x size window of an (H, W, ...) array, as a view."""

    def __init__(self, size):
        if size < 1:
            raise ValueError(f"CenterCrop: size must be >= 1; got {size}")
        self.size = size

    def __call__(self, image, rng=None):
        height, width = image.shape[:2]
        if min(height, width) < self.size:
            raise ValueError(f"CenterCrop: image must be at least {self.size} x {self.size}; "
                             f"got shape {image.shape}")
        top, left = (height - self.size) // 2, (width - self.size) // 2
        return image[top:top + self.size, left:left + self.size]


class PCALighting:
    """Add p @ (alpha * eigenvalues) to every pixel, alpha ~ N(0, std) per call (§4.1).

    eigenvalues (3,) and eigenvectors (3, 3) (columns p_i) as from `pca_lighting_basis`, on the
    0..1 pixel scale: call it on images in that scale, or add 255 * offset(rng) to 0..255 ones.
    """

    def __init__(self, eigenvalues, eigenvectors, std=LIGHTING_STD):
        self.eigenvalues = np.asarray(eigenvalues, dtype=np.float32)    # (3,): l_i
        self.eigenvectors = np.asarray(eigenvectors, dtype=np.float32)  # (3, 3): column i = p_i
        if self.eigenvalues.shape != (3,) or self.eigenvectors.shape != (3, 3) or std < 0:
            raise ValueError(f"PCALighting: needs eigenvalues (3,), eigenvectors (3, 3) and "
                             f"std >= 0; got {self.eigenvalues.shape}, "
                             f"{self.eigenvectors.shape}, std={std}")
        self.std = std

    def offset(self, rng):
        """The RGB shift of one image: float32 (3,), alpha drawn from rng (3 normal draws)."""
        alpha = rng.normal(0.0, self.std, 3).astype(np.float32)
        return self.eigenvectors @ (alpha * self.eigenvalues)

    def __call__(self, image, rng):
        """image (H, W, 3) or (3, H, W) (channels last if the last axis has 3 entries)."""
        offset = self.offset(rng)
        if image.shape[-1] == 3:
            return image + offset
        if image.ndim == 3 and image.shape[0] == 3:
            return image + offset[:, None, None]
        raise ValueError(f"PCALighting: image must be (H, W, 3) or (3, H, W); got {image.shape}")


class TrainTransform:
    """Random S x S crop, random flip, PCA lighting, (pixel - mean) / scale: float32 (3, S, S).

    rng draws, in this order: the crop's top row, its left column, the flip (rng.random() < 0.5
    flips), then the lighting's alpha. mean: 3 values on the 0..255 scale (`channel_mean`).
    """

    def __init__(self, crop_size, mean, lighting=None, flip=True, scale=PIXEL_SCALE):
        self.crop_size = _check_crop_size("TrainTransform", crop_size)
        self.lighting, self.flip = lighting, flip
        self.mean = _per_channel("TrainTransform", "mean", mean)
        self.inv_scale = 1 / _per_channel("TrainTransform", "scale", scale)

    def __call__(self, image, rng):
        _check_image("TrainTransform", image, self.crop_size)
        size = self.crop_size
        top = int(rng.integers(0, image.shape[0] - size + 1))
        left = int(rng.integers(0, image.shape[1] - size + 1))
        crop = image[top:top + size, left:left + size]                 # a view: (S, S, 3)
        if self.flip and rng.random() < 0.5:
            crop = crop[:, ::-1]
        shift = self.mean
        if self.lighting is not None:
            # pixel + 255 * offset - mean: the lighting folds into the one subtraction
            shift = shift - 255 * self.lighting.offset(rng)
        return to_network_input(crop, shift, self.inv_scale)


class EvalTransform:
    """The centre S x S crop, (pixel - mean) / scale: float32 (3, S, S). rng is not used."""

    def __init__(self, crop_size, mean, scale=PIXEL_SCALE):
        self.crop_size = _check_crop_size("EvalTransform", crop_size)
        self.center_crop = CenterCrop(self.crop_size)
        self.mean = _per_channel("EvalTransform", "mean", mean)
        self.inv_scale = 1 / _per_channel("EvalTransform", "scale", scale)

    def __call__(self, image, rng=None):
        _check_image("EvalTransform", image, self.crop_size)
        return to_network_input(self.center_crop(image), self.mean, self.inv_scale)


class TenCrop:
    """The ten test crops of §4.1: float32 (10, 3, S, S). rng is not used.

    Order: top-left, top-right, bottom-left, bottom-right, centre, then the same five mirrored.
    """

    def __init__(self, crop_size, mean, scale=PIXEL_SCALE):
        self.crop_size = _check_crop_size("TenCrop", crop_size)
        self.mean = _per_channel("TenCrop", "mean", mean)
        self.inv_scale = 1 / _per_channel("TenCrop", "scale", scale)

    def positions(self, height, width):
        """The (top, left) corners of the five crops."""
        bottom, right = height - self.crop_size, width - self.crop_size
        return [(0, 0), (0, right), (bottom, 0), (bottom, right), (bottom // 2, right // 2)]

    def __call__(self, image, rng=None):
        _check_image("TenCrop", image, self.crop_size)
        size = self.crop_size
        crops = np.stack([image[top:top + size, left:left + size]
                          for top, left in self.positions(*image.shape[:2])])  # (5, S, S, 3)
        crops = np.concatenate([crops, crops[:, :, ::-1]])                      # (10, S, S, 3)
        return to_network_input(crops, self.mean, self.inv_scale)


def _sample_images(dataset, max_images, seed, num_threads=4):
    """Up to max_images images of the dataset (chosen at random by seed), decoded by threads."""
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    indices = np.sort(np.random.default_rng(seed).choice(len(dataset), count, replace=False))
    with ThreadPoolExecutor(num_threads) as pool:
        for item in pool.map(dataset.__getitem__, indices.tolist()):
            if item is not None:                                   # a corrupt file: skipped
                yield item[0]


def channel_mean(dataset, max_images=1000, seed=0):
    """The mean R, G, B pixel value (0..255) over up to max_images training images: float32 (3,)."""
    total, count = np.zeros(3), 0
    for image in _sample_images(dataset, max_images, seed):
        total += image.reshape(-1, 3).sum(axis=0, dtype=np.float64)
        count += image.shape[0] * image.shape[1]
    if count == 0:
        raise ValueError("channel_mean: no readable image in the dataset")
    return (total / count).astype(np.float32)


def pca_lighting_basis(dataset, max_images=1000, seed=0):
    """The eigenvalues (3,), largest first, and eigenvectors (3, 3) (column i belongs to value
    i) of the covariance of the RGB values, on the 0..1 scale, of up to max_images images."""
    total, products, count = np.zeros(3), np.zeros((3, 3)), 0
    for image in _sample_images(dataset, max_images, seed):
        pixels = image.reshape(-1, 3).astype(np.float64) / 255              # (H*W, 3)
        total += pixels.sum(axis=0)
        products += pixels.T @ pixels
        count += len(pixels)
    if count < 2:
        raise ValueError("pca_lighting_basis: needs at least 2 readable pixels; got "
                         f"{count}")
    mean = total / count
    covariance = (products - count * np.outer(mean, mean)) / (count - 1)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)                # ascending
    order = np.argsort(eigenvalues)[::-1]
    return (eigenvalues[order].astype(np.float32),
            np.ascontiguousarray(eigenvectors[:, order]).astype(np.float32))
