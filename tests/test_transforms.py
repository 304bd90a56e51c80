"""The augmentation of §4.1 against naive loops written from its description.

The expected values redraw the transform's random numbers from a generator with the same seed,
in the documented order (crop top, crop left, flip, lighting alpha), and then build every output
element by index.
"""
import numpy as np
import pytest
from hypothesis import given, strategies as st

from minialex.data.transforms import (
    PIXEL_SCALE, CenterCrop, EvalTransform, PCALighting, TenCrop, TrainTransform, channel_mean,
    pca_lighting_basis)


def random_image(height, width, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def naive_network_input(image, top, left, size, flip, mean, scale, offset=(0.0, 0.0, 0.0)):
    """x[c, i, j] = (pixel + 255 * offset[c] - mean[c]) / scale[c] of the (flipped) crop."""
    x = np.zeros((3, size, size), dtype=np.float64)
    for c, i, j in np.ndindex(x.shape):
        column = left + (size - 1 - j if flip else j)
        pixel = float(image[top + i, column, c])
        x[c, i, j] = (pixel + 255 * float(offset[c]) - float(mean[c])) / float(scale[c])
    return x


def naive_offset(eigenvalues, eigenvectors, alpha):
    """[p1 p2 p3] [a1 l1, a2 l2, a3 l3]^T, one channel at a time."""
    return [sum(float(eigenvectors[c, i]) * float(alpha[i]) * float(eigenvalues[i])
                for i in range(3)) for c in range(3)]


class ListDataset:
    """A dataset over a list of images; None items stand for corrupt files."""

    def __init__(self, images):
        self.images = images
        self.classes = ["only"]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        image = self.images[index]
        return None if image is None else (image, 0)


crop_cases = st.tuples(st.integers(1, 9), st.integers(0, 5), st.integers(0, 5),
                       st.integers(0, 2**32 - 1))  # crop size, extra rows, extra columns, seed


@given(crop_cases)
def test_center_crop_matches_a_loop(case):
    size, extra_rows, extra_columns, seed = case
    image = random_image(size + extra_rows, size + extra_columns, seed)
    top, left = extra_rows // 2, extra_columns // 2
    expected = np.zeros((size, size, 3), dtype=np.uint8)
    for i, j, c in np.ndindex(expected.shape):
        expected[i, j, c] = image[top + i, left + j, c]
    np.testing.assert_array_equal(CenterCrop(size)(image), expected)


@given(crop_cases, st.booleans())
def test_train_transform_crop_and_flip_match_a_loop(case, flip):
    size, extra_rows, extra_columns, seed = case
    image = random_image(size + extra_rows, size + extra_columns, seed)
    mean = [120.5, 110.0, 100.25]
    x = TrainTransform(size, mean, flip=flip)(image, np.random.default_rng(seed))
    draws = np.random.default_rng(seed)
    top, left = draws.integers(0, extra_rows + 1), draws.integers(0, extra_columns + 1)
    flipped = flip and draws.random() < 0.5
    expected = naive_network_input(image, top, left, size, flipped, mean, [PIXEL_SCALE] * 3)
    assert x.dtype == np.float32 and x.shape == (3, size, size) and x.flags.c_contiguous
    np.testing.assert_allclose(x, expected, rtol=1e-6, atol=1e-6)


@given(crop_cases)
def test_train_transform_with_lighting_matches_a_loop(case):
    size, extra_rows, extra_columns, seed = case
    image = random_image(size + extra_rows, size + extra_columns, seed)
    mean, scale = [100.0, 90.0, 80.0], [50.0, 60.0, 70.0]
    eigenvalues = [0.2, 0.02, 0.005]
    eigenvectors = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))[0]
    lighting = PCALighting(eigenvalues, eigenvectors)
    x = TrainTransform(size, mean, lighting, scale=scale)(image, np.random.default_rng(seed))
    draws = np.random.default_rng(seed)
    top, left = draws.integers(0, extra_rows + 1), draws.integers(0, extra_columns + 1)
    flipped = draws.random() < 0.5
    alpha = draws.normal(0.0, 0.1, 3)
    offset = naive_offset(eigenvalues, eigenvectors, alpha)
    expected = naive_network_input(image, top, left, size, flipped, mean, scale, offset)
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-5)


def test_random_crops_reach_every_position_and_flip_half_the_time():
    height, width, size = 7, 6, 4
    # every pixel its own value, so a crop's first pixel tells where it came from
    image = np.arange(height * width * 3).reshape(height, width, 3).astype(np.uint8)
    transform = TrainTransform(size, [0, 0, 0], scale=1)
    corners, flips = set(), 0
    for seed in range(600):
        x = transform(image, np.random.default_rng(seed))
        flipped = x[0, 0, 0] > x[0, 0, -1]
        first = x[0, 0, -1] if flipped else x[0, 0, 0]
        corners.add(divmod(int(first) // 3, width))
        flips += flipped
    assert corners == {(top, left) for top in range(4) for left in range(3)}
    assert 240 < flips < 360                      # p = 1/2: 300 expected, sd 12


def test_no_flip_when_flip_is_off():
    image = random_image(5, 5)
    transform = TrainTransform(5, [0, 0, 0], flip=False, scale=1)
    for seed in range(50):
        np.testing.assert_array_equal(transform(image, np.random.default_rng(seed)),
                                      image.transpose(2, 0, 1).astype(np.float32))


@pytest.mark.parametrize("layout", ["HWC", "CHW"])
def test_lighting_adds_p_times_alpha_lambda_to_every_pixel(layout):
    eigenvalues = np.array([0.3, 0.05, 0.01], dtype=np.float32)
    eigenvectors = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))[0]
    image = np.random.default_rng(2).random((4, 5, 3)).astype(np.float32)
    if layout == "CHW":
        image = np.ascontiguousarray(image.transpose(2, 0, 1))
    lit = PCALighting(eigenvalues, eigenvectors, std=0.1)(image, np.random.default_rng(7))
    offset = naive_offset(eigenvalues, eigenvectors, np.random.default_rng(7).normal(0, 0.1, 3))
    expected = np.zeros(image.shape)
    for index in np.ndindex(image.shape):
        channel = index[2] if layout == "HWC" else index[0]
        expected[index] = image[index] + offset[channel]
    assert lit.dtype == np.float32
    np.testing.assert_allclose(lit, expected, rtol=1e-6, atol=1e-6)


def test_lighting_alpha_has_the_papers_standard_deviation():
    lighting = PCALighting(np.ones(3), np.eye(3))       # then the offset is alpha itself
    rng = np.random.default_rng(0)
    alphas = np.array([lighting.offset(rng) for _ in range(20000)])  # (20000, 3)
    assert np.all(np.abs(alphas.mean(axis=0)) < 0.003)               # standard error 0.0007
    assert np.all(np.abs(alphas.std(axis=0) - 0.1) < 0.003)          # standard error 0.0005


def test_eval_transform_is_the_centre_crop_normalized():
    image = random_image(9, 12)
    mean = [10.0, 20.0, 30.0]
    x = EvalTransform(5, mean)(image)
    expected = naive_network_input(image, 2, 3, 5, False, mean, [PIXEL_SCALE] * 3)
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, expected, rtol=1e-6, atol=1e-6)


@given(crop_cases)
def test_ten_crop_positions_match_a_loop(case):
    size, extra_rows, extra_columns, seed = case
    height, width = size + extra_rows, size + extra_columns
    image = random_image(height, width, seed)
    mean = [1.0, 2.0, 3.0]
    x = TenCrop(size, mean)(image)
    corners = [(0, 0), (0, width - size), (height - size, 0), (height - size, width - size),
               ((height - size) // 2, (width - size) // 2)]
    assert x.shape == (10, 3, size, size) and x.dtype == np.float32
    for k, (top, left) in enumerate(corners):
        for flip in (False, True):
            expected = naive_network_input(image, top, left, size, flip, mean, [PIXEL_SCALE] * 3)
            np.testing.assert_allclose(x[k + 5 * flip], expected, rtol=1e-6, atol=1e-6)


def test_channel_mean_matches_a_loop_and_skips_corrupt_images():
    images = [random_image(3, 4, seed) for seed in range(4)]
    sums, count = [0.0, 0.0, 0.0], 0
    for image in images:
        for i, j in np.ndindex(image.shape[:2]):
            for c in range(3):
                sums[c] += float(image[i, j, c])
            count += 1
    mean = channel_mean(ListDataset(images[:2] + [None] + images[2:]))
    assert mean.dtype == np.float32 and mean.shape == (3,)
    np.testing.assert_allclose(mean, [s / count for s in sums], rtol=1e-6)


def test_channel_mean_of_a_sample_is_the_mean_of_those_images():
    images = [np.full((2, 2, 3), value, dtype=np.uint8) for value in (10, 50, 90, 130)]
    assert channel_mean(ListDataset(images), max_images=1, seed=3)[0] in (10, 50, 90, 130)
    np.testing.assert_allclose(channel_mean(ListDataset(images), max_images=4), [70] * 3)


def test_pca_basis_diagonalizes_the_covariance_computed_by_a_loop():
    rng = np.random.default_rng(0)
    mixing = np.array([[1.0, 0.5, 0.2], [0.0, 0.8, 0.3], [0.0, 0.0, 0.4]])
    images = [np.clip(128 + rng.normal(size=(3, 5, 3)) @ mixing * 30, 0, 255).astype(np.uint8)
              for _ in range(3)]
    pixels = [image[i, j] / 255 for image in images for i, j in np.ndindex(image.shape[:2])]
    mean = [sum(p[c] for p in pixels) / len(pixels) for c in range(3)]
    covariance = np.zeros((3, 3))
    for a, b in np.ndindex(3, 3):
        covariance[a, b] = (sum((p[a] - mean[a]) * (p[b] - mean[b]) for p in pixels)
                            / (len(pixels) - 1))
    eigenvalues, eigenvectors = pca_lighting_basis(ListDataset(images))
    assert eigenvalues.dtype == eigenvectors.dtype == np.float32
    assert eigenvalues[0] >= eigenvalues[1] >= eigenvalues[2] > 0
    np.testing.assert_allclose(eigenvectors.T @ eigenvectors, np.eye(3), atol=1e-6)
    for i in range(3):                                   # C p_i = l_i p_i
        np.testing.assert_allclose(covariance @ eigenvectors[:, i],
                                   eigenvalues[i] * eigenvectors[:, i], atol=1e-6)
    np.testing.assert_allclose(eigenvectors @ np.diag(eigenvalues) @ eigenvectors.T, covariance,
                               atol=1e-6)


def test_errors():
    with pytest.raises(ValueError, match=r"TrainTransform: image must be \(H, W, 3\) with H, W"
                                         r" >= crop_size 8; got shape \(6, 9, 3\)"):
        TrainTransform(8, [0, 0, 0])(random_image(6, 9), np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"TenCrop: image must be .*got shape \(8, 8\)"):
        TenCrop(4, [0, 0, 0])(np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="TrainTransform: crop_size must be a positive integer; "
                                         "got 0"):
        TrainTransform(0, [0, 0, 0])
    with pytest.raises(ValueError, match="TenCrop: crop_size must be a positive integer; got 2.5"):
        TenCrop(2.5, [0, 0, 0])
    with pytest.raises(ValueError, match="EvalTransform: mean must be one number or 3"):
        EvalTransform(4, [1, 2])
    with pytest.raises(ValueError, match="CenterCrop: image must be at least 5 x 5"):
        CenterCrop(5)(random_image(4, 9))
    with pytest.raises(ValueError, match=r"PCALighting: needs eigenvalues \(3,\)"):
        PCALighting(np.ones(4), np.eye(3))
    with pytest.raises(ValueError, match=r"PCALighting: image must be .*got \(4, 5\)"):
        PCALighting(np.ones(3), np.eye(3))(np.zeros((4, 5)), np.random.default_rng(0))
    with pytest.raises(ValueError, match="channel_mean: no readable image"):
        channel_mean(ListDataset([None, None]))
