"""DataLoader: reproducible order and augmentation, every sample once, background threads that
overlap the caller's work and end cleanly, errors and corrupt samples."""
import gc
import threading
import time

import numpy as np
import pytest

from minialex.data.loader import DataLoader
from minialex.data.transforms import PCALighting, TenCrop, TrainTransform


class NumberedImages:
    """Image i is random pixels seeded by i, and its label is i, so batches show their order.

    sleep: seconds each item takes; broken: indices that raise; corrupt: indices that give None.
    """

    def __init__(self, count, size=12, sleep=0.0, broken=(), corrupt=()):
        self.classes = ["any"]
        self.count, self.size, self.sleep = count, size, sleep
        self.broken, self.corrupt = set(broken), set(corrupt)

    def __len__(self):
        return self.count

    def __getitem__(self, index):
        if self.sleep:
            time.sleep(self.sleep)
        if index in self.broken:
            raise RuntimeError(f"disk on fire at item {index}")
        if index in self.corrupt:
            return None
        rng = np.random.default_rng(index)
        return rng.integers(0, 256, (self.size, self.size, 3), dtype=np.uint8), index


def augmentation():
    lighting = PCALighting([0.2, 0.02, 0.005], np.linalg.qr(np.arange(9.0).reshape(3, 3))[0])
    return TrainTransform(8, [120, 115, 100], lighting)


def one_epoch(loader, epoch):
    loader.set_epoch(epoch)
    return list(loader)


def test_batches_are_bit_for_bit_the_same_whatever_the_threads():
    data = NumberedImages(23)
    one_thread = DataLoader(data, 5, augmentation(), seed=4, num_threads=1, prefetch=0)
    three_threads = DataLoader(data, 5, augmentation(), seed=4, num_threads=3, prefetch=3)
    for epoch in (0, 1):
        batches1, batches3 = one_epoch(one_thread, epoch), one_epoch(three_threads, epoch)
        assert len(batches1) == len(batches3) == 5
        for (x1, labels1), (x3, labels3) in zip(batches1, batches3):
            assert x1.dtype == np.float32 and labels1.dtype == np.int64
            np.testing.assert_array_equal(labels1, labels3)
            assert x1.tobytes() == x3.tobytes()


def test_each_sample_is_transformed_with_its_own_seed_epoch_index_generator():
    data, transform = NumberedImages(9), augmentation()
    loader = DataLoader(data, 4, transform, seed=11)
    for x, labels in one_epoch(loader, 3):
        for sample, index in zip(x, labels):
            rng = np.random.default_rng([11, 3, int(index)])
            np.testing.assert_array_equal(sample, transform(data[index][0], rng))


def test_every_sample_once_per_epoch_and_a_new_order_each_epoch():
    loader = DataLoader(NumberedImages(50), 8, augmentation(), seed=0)
    orders = [np.concatenate([labels for _, labels in one_epoch(loader, epoch)])
              for epoch in range(3)]
    for order in orders:
        np.testing.assert_array_equal(np.sort(order), np.arange(50))
    assert not np.array_equal(orders[0], orders[1])
    assert not np.array_equal(orders[1], orders[2])
    other_seed = DataLoader(NumberedImages(50), 8, augmentation(), seed=1)
    assert not np.array_equal(np.concatenate([y for _, y in one_epoch(other_seed, 0)]), orders[0])


def test_a_resumed_run_sees_the_same_epoch():
    uninterrupted = DataLoader(NumberedImages(13), 4, augmentation(), seed=2)
    for epoch in range(2):
        one_epoch(uninterrupted, epoch)
    expected = one_epoch(uninterrupted, 2)
    resumed = one_epoch(DataLoader(NumberedImages(13), 4, augmentation(), seed=2), 2)
    assert len(expected) == len(resumed) == 4
    for (x, labels), (x_resumed, labels_resumed) in zip(expected, resumed):
        np.testing.assert_array_equal(labels, labels_resumed)
        np.testing.assert_array_equal(x, x_resumed)


def test_without_shuffle_the_order_is_the_dataset_order():
    loader = DataLoader(NumberedImages(7), 3, augmentation(), shuffle=False)
    assert [labels.tolist() for _, labels in loader] == [[0, 1, 2], [3, 4, 5], [6]]


@pytest.mark.parametrize("drop_last, sizes", [(False, [4, 4, 2]), (True, [4, 4])])
def test_drop_last(drop_last, sizes):
    loader = DataLoader(NumberedImages(10), 4, augmentation(), drop_last=drop_last)
    batches = list(loader)
    assert len(loader) == len(sizes)
    assert [len(labels) for _, labels in batches] == sizes
    assert [x.shape for x, _ in batches] == [(size, 3, 8, 8) for size in sizes]


def test_ten_crop_batches():
    loader = DataLoader(NumberedImages(5), 2, TenCrop(8, [0, 0, 0]), ten_crop=True)
    assert [x.shape for x, _ in loader] == [(2, 10, 3, 8, 8), (2, 10, 3, 8, 8), (1, 10, 3, 8, 8)]


def test_corrupt_samples_are_left_out_and_an_empty_batch_is_skipped():
    data = NumberedImages(9, corrupt={0, 1, 5})
    loader = DataLoader(data, 2, augmentation(), shuffle=False)
    batches = list(loader)
    assert [labels.tolist() for _, labels in batches] == [[2, 3], [4], [6, 7], [8]]
    assert [len(x) for x, _ in batches] == [2, 1, 2, 1]
    np.testing.assert_array_equal(batches[1][0][0],
                                  augmentation()(data[4][0], np.random.default_rng([0, 0, 4])))


def loader_threads():
    return [t for t in threading.enumerate() if t.name.startswith("minialex-loader")]


def test_abandoning_the_iterator_ends_the_threads():
    baseline = threading.active_count()
    loader = DataLoader(NumberedImages(40, sleep=0.005), 4, augmentation(), num_threads=3)
    for batch_number, _ in enumerate(loader):
        assert loader_threads()                       # the work is in the background
        if batch_number == 2:
            break
    gc.collect()
    assert not loader_threads()
    assert threading.active_count() == baseline


def test_an_exception_in_a_worker_reaches_the_caller_and_ends_the_threads():
    baseline = threading.active_count()
    loader = DataLoader(NumberedImages(20, broken={13}), 4, augmentation(), shuffle=False)
    seen = []
    with pytest.raises(RuntimeError, match="disk on fire at item 13"):
        for _, labels in loader:
            seen += labels.tolist()
    assert seen == list(range(12))                    # the batches before the broken one
    gc.collect()
    assert threading.active_count() == baseline


def test_loading_overlaps_the_callers_work():
    # 8 batches, each 40 ms to load (4 items x 10 ms, one thread) and 40 ms to "train" on:
    # one after the other that is 640 ms; overlapped, about 40 + 8 x 40 = 360 ms.
    data = NumberedImages(32, sleep=0.010)
    loader = DataLoader(data, 4, augmentation(), num_threads=1, prefetch=2)
    start = time.perf_counter()
    for _ in loader:
        time.sleep(0.040)
    elapsed = time.perf_counter() - start
    print(f"overlapped: {elapsed:.3f} s against 0.640 s one after the other")
    assert elapsed < 0.8 * (32 * 0.010 + 8 * 0.040), f"took {elapsed:.3f} s"


def test_errors():
    with pytest.raises(ValueError, match="DataLoader: needs batch_size >= 1"):
        DataLoader(NumberedImages(3), 0, augmentation())
    with pytest.raises(ValueError, match=r"ten_crop=True the transform must return a 4-D array "
                                         r"\(10, 3, S, S\); got shape \(3, 8, 8\)"):
        list(DataLoader(NumberedImages(3), 2, augmentation(), ten_crop=True))
    with pytest.raises(ValueError, match=r"ten_crop=False the transform must return a 3-D"):
        list(DataLoader(NumberedImages(3), 2, TenCrop(8, [0, 0, 0])))

    def changing_size(image, rng):
        return np.zeros((3, 4 + int(rng.integers(2)), 4), np.float32)

    with pytest.raises(ValueError, match=r"the transform returned shape \(3, ., 4\) for sample"):
        list(DataLoader(NumberedImages(30), 30, changing_size))
