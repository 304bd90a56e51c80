"""The bundled dataset: repeatable, balanced, a fixed split, and not solvable by colour."""
import numpy as np
import pytest

from minialex.data.synthetic import CLASSES, SyntheticShapes


def test_images_are_a_pure_function_of_seed_split_and_index():
    a, b = SyntheticShapes("train", per_class=2, seed=5), SyntheticShapes("train", 2, seed=5)
    for i in (0, 7, 19):
        image, label = a[i]
        again, label_again = b[i]
        np.testing.assert_array_equal(image, again)
        assert label == label_again == i % 10
    assert not np.array_equal(a[0][0], SyntheticShapes("train", 2, seed=6)[0][0])


def test_shape_dtype_and_balance():
    data = SyntheticShapes("val", per_class=3, image_size=96)
    image, _ = data[4]
    assert image.shape == (96, 96, 3) and image.dtype == np.uint8
    labels = [data[i][1] for i in range(len(data))]
    assert len(data) == 30 and np.bincount(labels).tolist() == [3] * len(CLASSES)


def test_train_and_validation_never_share_an_image():
    train = SyntheticShapes("train", per_class=5, image_size=64)
    val = SyntheticShapes("val", per_class=5, image_size=64)
    train_images = {train[i][0].tobytes() for i in range(len(train))}
    assert not any(val[i][0].tobytes() in train_images for i in range(len(val)))


def test_colour_alone_does_not_give_the_class():
    """Nearest-centroid on mean RGB, fitted on train, must stay near chance (10%) on val: the
    class lives in the shape, not in the colours."""
    train = SyntheticShapes("train", per_class=30, image_size=64)
    val = SyntheticShapes("val", per_class=10, image_size=64)

    def features(data):
        return np.array([data[i][0].reshape(-1, 3).mean(0) for i in range(len(data))])

    x_train, x_val = features(train), features(val)
    y_train = np.arange(len(train)) % 10
    y_val = np.arange(len(val)) % 10
    centroids = np.array([x_train[y_train == c].mean(0) for c in range(10)])
    predicted = np.argmin(((x_val[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (predicted == y_val).mean() < 0.3


@pytest.mark.parametrize("kwargs, message", [
    (dict(split="test"), "split must be one of"), (dict(per_class=0), "per_class >= 1"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SyntheticShapes(**kwargs)


def test_index_out_of_range():
    with pytest.raises(IndexError, match=r"index 20 out of range \[0, 20\)"):
        SyntheticShapes("train", per_class=2)[20]
