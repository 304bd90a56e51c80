"""Batches of transformed samples, prepared by background threads while the model computes.

    loader = DataLoader(ImageFolder(root, "train"), 128, TrainTransform(227, mean, lighting))
    for epoch in range(start_epoch, epochs):
        loader.set_epoch(epoch)
        for x, labels in loader:        # x float32 (N, 3, S, S), labels int64 (N,)
            ...

Reproducible, whatever the threads do. The order of an epoch is a permutation drawn from
default_rng([seed, epoch]), and sample i of that epoch is transformed with its own generator
default_rng([seed, epoch, i]). So a run resumed at an epoch boundary sees exactly the batches
of an uninterrupted one, and the batches do not depend on num_threads or thread timing.

In the background. Each sample is one task for a pool of `num_threads` threads (decoding a JPEG
in Pillow and array work in NumPy release the GIL, so threads run in parallel); it writes its
slot of its batch's array, so a finished batch is ready to use without another copy. While the
caller works on one batch, the next `prefetch` batches are being prepared. Batches come out in
order. If the caller stops early (a `break`), or a task raises (the caller gets that exception),
the pending tasks are cancelled and the threads end.

Corrupt images: a dataset returns None for one it cannot read (see folder.py); that sample is
left out, so its batch is one smaller, and a batch left with no sample at all is not yielded.
"""
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np


class _Batch:
    """One batch being prepared: its samples' tasks and the arrays they fill."""

    def __init__(self, indices):
        self.indices = indices                              # (N,): dataset indices
        self.x = None          # (N, 3, S, S) or (N, 10, 3, S, S): made by the first sample done
        self.labels = np.empty(len(indices), dtype=np.int64)          # (N,)
        self.present = np.ones(len(indices), dtype=bool)    # (N,): False where skipped (None)
        self.lock = threading.Lock()
        self.tasks = []

    def result(self):
        """(x, labels) without the skipped samples; None if every sample was skipped."""
        for task in self.tasks:
            task.result()                                   # re-raises a task's exception
        if self.present.all():
            return self.x, self.labels
        if not self.present.any():
            return None
        return self.x[self.present], self.labels[self.present]


class DataLoader:
    """Batches of `batch_size` samples of `dataset`, each through `transform(image, rng)`.

    shuffle: a new order each epoch (else 0..n-1); drop_last: leave out a last, smaller batch;
    ten_crop: the transform returns ten crops (10, 3, S, S) (TenCrop), so x is (N, 10, 3, S, S).
    """

    def __init__(self, dataset, batch_size, transform, shuffle=True, seed=0, drop_last=False,
                 num_threads=2, prefetch=2, ten_crop=False):
        if batch_size < 1 or num_threads < 1 or prefetch < 0:
            raise ValueError(f"DataLoader: needs batch_size >= 1, num_threads >= 1 and prefetch "
                             f">= 0; got {batch_size}, {num_threads}, {prefetch}")
        self.dataset, self.batch_size, self.transform = dataset, batch_size, transform
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.num_threads, self.prefetch, self.ten_crop = num_threads, prefetch, ten_crop
        self.epoch = 0

    def set_epoch(self, epoch):
        """Which epoch the next iteration is: it decides the order and the augmentation."""
        self.epoch = epoch

    def __len__(self):
        """The number of batches in an epoch (skipped images can only make batches smaller)."""
        full, rest = divmod(len(self.dataset), self.batch_size)
        return full + (rest > 0 and not self.drop_last)

    def order(self, epoch):
        """The dataset indices of an epoch, in the order they are used: int64 (n,)."""
        if self.shuffle:
            return np.random.default_rng([self.seed, epoch]).permutation(len(self.dataset))
        return np.arange(len(self.dataset))

    def __iter__(self):
        return self.batches(self.epoch)

    def batches(self, epoch):
        """Yield the batches of `epoch`: (x float32, labels int64 (N,))."""
        order = self.order(epoch)
        all_indices = [order[start:start + self.batch_size]
                       for start in range(0, len(self) * self.batch_size, self.batch_size)]
        pending = deque()                                   # batches submitted, in order
        submitted = 0
        pool = ThreadPoolExecutor(self.num_threads, thread_name_prefix="minialex-loader")
        try:
            for k in range(len(all_indices)):
                # batches k .. k + prefetch in the works: the caller uses k while the rest load
                while submitted < min(k + self.prefetch + 1, len(all_indices)):
                    pending.append(self._submit(pool, all_indices[submitted], epoch))
                    submitted += 1
                ready = pending.popleft().result()
                if ready is not None:
                    yield ready
        finally:
            # Reached when the epoch ends, when a task raised, and when the caller drops the
            # iterator early (Python then closes the generator): stop the work, end the threads.
            pool.shutdown(wait=True, cancel_futures=True)

    def _submit(self, pool, indices, epoch):
        batch = _Batch(indices)
        batch.tasks = [pool.submit(self._load_sample, batch, slot, epoch)
                       for slot in range(len(indices))]
        return batch

    def _load_sample(self, batch, slot, epoch):
        """Load, transform and store sample `slot` of `batch` (runs in a pool thread)."""
        index = int(batch.indices[slot])
        item = self.dataset[index]
        if item is None:                                    # unreadable: leave it out
            batch.present[slot] = False
            return
        image, label = item
        x = np.asarray(self.transform(image, np.random.default_rng([self.seed, epoch, index])),
                       dtype=np.float32)
        expected_ndim = 4 if self.ten_crop else 3
        if x.ndim != expected_ndim:
            raise ValueError(f"DataLoader: with ten_crop={self.ten_crop} the transform must "
                             f"return a {expected_ndim}-D array ({'10, ' * self.ten_crop}3, S, "
                             f"S); got shape {x.shape} for sample {index}")
        with batch.lock:
            if batch.x is None:
                batch.x = np.empty((len(batch.indices),) + x.shape, dtype=np.float32)
        if x.shape != batch.x.shape[1:]:
            raise ValueError(f"DataLoader: the transform returned shape {x.shape} for sample "
                             f"{index} but {batch.x.shape[1:]} for another; they must match")
        batch.x[slot] = x
        batch.labels[slot] = label
