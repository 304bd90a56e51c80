"""Data-parallel training on several processes with MPI (mpi4py), PyTorch-like and small.

    from minialex import distributed as dist
    dist.init()                              # once, before the model is built
    dist.broadcast_parameters(model)         # rank 0's initial weights everywhere
    dist.overlap_gradients(model)            # optional: gradients travel during backward
    loader = dist.ShardedLoader(train, batch_size, transform, seed=seed)
    for x, labels in loader:                 # this rank's part of each global batch
        loss.backward()
        dist.average_gradients(model)        # then optimizer.step(), the same on every rank

Every rank holds the whole model and takes `batch_size` images of each global batch of
world_size() x batch_size. The gradients are summed across ranks in one flat float32 buffer and
one Allreduce (a few large messages are far cheaper than one per parameter), then divided by the
world size: with the loss a mean over the local batch, that is the gradient of the mean over
the global batch, so a run on N ranks computes what one process with the global batch computes,
up to the order of float32 sums. The ranks then take the same step from the same bits, and stay
bit-identical; parameter_checksum() lets them check it.

A global batch is exactly the images one process with the global batch would take at that step
(shard_order), and each image's augmentation is drawn from (seed, epoch, image) as in
minialex/data/loader.py, whichever rank transforms it.

Importing this module does not import mpi4py: init() does, so that minialex runs without it.
"""
import os
import time
import zlib

import numpy as np

from . import backend
from .data.loader import DataLoader

INSTALL_HINT = ("pip install -e '.[distributed]' (mpi4py and mpich), then launch with "
                "mpiexec -n 2 python -m mpi4py examples/train_alexnet.py --distributed")
# Variables a launcher (MPICH's Hydra, Open MPI, Slurm, Intel MPI) sets in every process
LAUNCHER_VARIABLES = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE",
                      "MPI_LOCALNRANKS", "SLURM_PROCID")

_comm = None          # COMM_WORLD once init() ran
_local_size = 1       # ranks on this node
_local_rank = 0
_blas_limit = None    # threadpoolctl's limit, kept alive for the whole run
_nccl = None          # the NCCL communicator of a GPU run
_watcher = None       # the pipe to this rank's watcher process


class DistributedError(RuntimeError):
    """MPI is missing, the process was not launched by mpiexec, or the ranks diverged."""


def launched_by_mpi():
    return any(name in os.environ for name in LAUNCHER_VARIABLES)


def init():
    """Join the MPI job (imports mpi4py), and share this node's cores among its ranks.

    With N ranks on a node of C cores, each rank's fast paths cut their work in max(1, C // N)
    threads and BLAS runs on as many: N ranks each cutting their work for all C cores would
    run N times more threads than there are cores, which then take turns.
    Raises DistributedError, in one line that says how to install and launch, without mpi4py,
    or in a process that mpiexec did not start.
    """
    global _comm, _local_size, _local_rank, _blas_limit
    if _comm is not None:
        return
    try:
        from mpi4py import MPI
    except ImportError as error:
        raise DistributedError(f"--distributed needs mpi4py, which is not installed: "
                               f"{INSTALL_HINT}") from error
    comm = MPI.COMM_WORLD
    if comm.Get_size() == 1 and not launched_by_mpi():
        raise DistributedError(f"--distributed: this process was not started by mpiexec; "
                               f"{INSTALL_HINT}")
    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    _local_size, _local_rank = local.Get_size(), local.Get_rank()
    local.Free()
    _comm = comm
    _watch_this_rank(comm)
    from .fast import threads
    threads.THREADS = max(1, (_cores() or 1) // _local_size)
    try:
        from threadpoolctl import threadpool_limits
        _blas_limit = threadpool_limits(limits=threads.THREADS, user_api="blas")
    except ImportError:  # then BLAS keeps its own threads, as without MPI
        pass


def is_initialized():
    return _comm is not None


def rank():
    return _comm.Get_rank() if _comm is not None else 0


def world_size():
    return _comm.Get_size() if _comm is not None else 1


def local_rank():
    """This rank's index among the ranks of its node: the GPU it uses."""
    return _local_rank


def barrier():
    if _comm is not None:
        _comm.Barrier()


def broadcast_object(value, root=0):
    """Rank `root`'s value (any picklable object) on every rank."""
    return value if _comm is None else _comm.bcast(value, root=root)


def process_ids():
    """["HOST:PID" of each rank], in rank order: mpiexec names a killed process by its PID."""
    import socket
    me = f"{socket.gethostname()}:{os.getpid()}"
    return [me] if _comm is None else _comm.allgather(me)


def abort(code=1):
    """End every process of the job (never returns)."""
    _tell_watcher(b"ab")  # this rank said why; the others, ended by mpiexec, need not
    if _comm is not None:
        # mpiexec forwards a rank's output on its own time, and MPI_Abort tears the job down at
        # once: without this pause a line just printed was sometimes lost (1 in about 30 runs)
        time.sleep(0.5)
        _comm.Abort(code)
    os._exit(code)


# A killed rank cannot say so (mpiexec then kills the others, with SIGKILL too, and names the
# dead process by its PID), so each rank starts a small process that waits on a pipe from it:
# b"ok" at a normal exit, b"ab" when the rank reports its own error; the pipe closing without
# a word means the rank was killed. The first watcher of the machine to see its rank end takes
# an abstract Unix socket name for the job, so the ranks that mpiexec ends next stay silent.
WATCHER = r"""
import os, socket, sys, time
fd, name, line = int(sys.argv[1]), sys.argv[2], sys.argv[3]
said = os.read(fd, 2)
if said == b"ok":
    sys.exit(0)
claim = socket.socket(socket.AF_UNIX)
try:
    claim.bind("\0" + name)
except OSError:
    sys.exit(0)
if said == b"":
    os.write(2, line.encode())
os.close(2)
time.sleep(5)
"""


def _watch_this_rank(comm):
    global _watcher
    import atexit
    import socket
    import subprocess
    import sys
    job = comm.bcast(f"{socket.gethostname()}-{os.getpid()}" if comm.Get_rank() == 0 else None)
    line = (f"error: rank {comm.Get_rank()} of {comm.Get_size()} (PID {os.getpid()} on "
            f"{socket.gethostname()}) ended without a word: it was killed (kill -9, or the "
            f"out-of-memory killer?); mpiexec ends the others\n")
    read_end, _watcher = os.pipe()
    subprocess.Popen([sys.executable, "-c", WATCHER, str(read_end), f"minialex-{job}", line],
                     pass_fds=(read_end,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    os.close(read_end)
    atexit.register(_tell_watcher, b"ok")


def _tell_watcher(word):
    global _watcher
    if _watcher is not None:
        os.write(_watcher, word)
        os.close(_watcher)
        _watcher = None


# ---- parameters and gradients -------------------------------------------------------------

def _flat(arrays):
    xp = backend.get_array_module(arrays[0])
    return xp.concatenate([a.reshape(-1) for a in arrays]).astype(np.float32, copy=False)


def _scatter(flat, arrays):
    offset = 0
    for a in arrays:
        a[...] = flat[offset:offset + a.size].reshape(a.shape)
        offset += a.size


def _allreduce_sum(flat):
    """Sum a flat float32 buffer across ranks, in place; the result is on every rank."""
    if _nccl is not None:
        import cupy
        from cupy.cuda import nccl
        _nccl.allReduce(flat.data.ptr, flat.data.ptr, flat.size, nccl.NCCL_FLOAT32,
                        nccl.NCCL_SUM, cupy.cuda.get_current_stream().ptr)
        return
    from mpi4py import MPI
    _comm.Allreduce(MPI.IN_PLACE, backend.as_numpy(flat), op=MPI.SUM)


def broadcast_parameters(model, root=0):
    """Rank `root`'s parameters (and buffers held as parameters) on every rank."""
    if world_size() == 1:
        return
    parameters = [p.data for p in model.parameters()]
    flat = backend.as_numpy(_flat(parameters))
    _comm.Bcast(flat, root=root)
    xp = backend.get_array_module(parameters[0])
    _scatter(xp.asarray(flat), parameters)


def average_gradients(model):
    """Replace every gradient by its mean across ranks: one flat buffer, one Allreduce. After
    overlap_gradients(model), finish the averaging that backward started instead."""
    size = world_size()
    if size == 1:
        return
    if getattr(model, "_gradient_buckets", None) is not None:
        return model._gradient_buckets.wait()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = _flat(grads)
    _allreduce_sum(flat)
    flat /= np.float32(size)
    _scatter(flat, grads)


BUCKET_BYTES = 25 * 2**20  # PyTorch DDP's default bucket: few messages, yet an early start


def overlap_gradients(model, bucket_bytes=BUCKET_BYTES, thread=None):
    """Average the gradients while backward still runs, as PyTorch DDP does: each bucket of
    parameters is sent as soon as backward has produced all its gradients, and the sums travel
    while backward computes the earlier layers. Then average_gradients(model) only waits.

    Backward produces fc8's gradients first and conv1's last, and the classifier holds 96% of
    AlexNet's 244 MB of gradients, so almost all of them travel during the convolutions'
    backward. Each parameter must get its gradient once per backward (no shared weights).

    thread: on the CPU, whether a thread sends the buckets during backward (True), or backward
    sends each one itself, as it completes (False). None: a thread only where the node has a
    core to spare beyond its ranks' compute threads. Without one, the sending thread takes
    turns on the computing cores, and MPICH's blocking Allreduce polls while it waits for the
    other ranks: on this 2-core machine, 2 ranks with a thread took 641-680 ms a step, against
    578-642 ms without (benchmarks/results/distributed-2-cores.md). Sent inline, the buckets
    still save the packing and unpacking of the plain average_gradients."""
    if isinstance(bucket_bytes, bool) or not isinstance(bucket_bytes, int) or bucket_bytes < 1:
        raise ValueError(f"overlap_gradients: bucket_bytes must be a positive int; got "
                         f"{bucket_bytes!r}")
    if world_size() > 1:
        if thread is None:
            from .fast import threads
            thread = _cores() > _local_size * threads.THREADS
        model._gradient_buckets = GradientBuckets(list(model.parameters()), bucket_bytes,
                                                  thread)
    return model


def _cores():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def buckets_of(parameters, bucket_bytes):
    """[[parameter, ...], ...]: runs of the parameters in reverse order, each closed once it
    holds bucket_bytes or before a parameter of bucket_bytes or more, which goes alone."""
    buckets, current = [], []
    for p in reversed([p for p in parameters if p.requires_grad]):
        if current and (p.data.nbytes >= bucket_bytes or p.dtype != current[0].dtype
                        or sum(q.data.nbytes for q in current) >= bucket_bytes):
            buckets.append(current)
            current = []
        current.append(p)
    return buckets + [current] if current else buckets


class GradientBuckets:
    """Parameters in buckets of about bucket_bytes, in the order backward reaches them (the
    reverse of model.parameters()); a parameter of bucket_bytes or more is a bucket of its own,
    reduced in place in its .grad, with no copy. Buckets are sent strictly in order, so that
    every rank starts the same collectives in the same order. On the CPU, one thread sends them
    with blocking Allreduces (mpi4py lets go of the GIL meanwhile), or backward itself does
    (thread=False); with NCCL, a second CUDA stream does, after an event of the compute
    stream."""

    def __init__(self, parameters, bucket_bytes, thread=True):
        self.buckets = buckets_of(parameters, bucket_bytes)
        self.bucket_of = {id(p): k for k, bucket in enumerate(self.buckets) for p in bucket}
        for p in parameters:
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(self._ready)
        self._reset()
        self._sender = None if _nccl is not None else _Sender(thread)

    def _reset(self):
        self.ready = [set() for _ in self.buckets]
        self.flat = [None] * len(self.buckets)
        self.sent = 0  # buckets 0 .. sent-1 are on their way

    def _ready(self, p):
        k = self.bucket_of[id(p)]
        if id(p) in self.ready[k] or k < self.sent:
            if self._sender is not None:  # what is on its way arrives before the error leaves
                self._sender.wait()
            raise DistributedError(f"a parameter of shape {p.shape} got a second gradient before "
                                   f"average_gradients(model): overlap_gradients needs each "
                                   f"parameter used once per backward, and average_gradients "
                                   f"after each backward")
        self.ready[k].add(id(p))
        while self.sent < len(self.buckets) and \
                len(self.ready[self.sent]) == len(self.buckets[self.sent]):
            self._send(self.sent)

    def _send(self, k):
        bucket, self.sent = self.buckets[k], k + 1
        xp = backend.get_array_module(bucket[0].data)
        for p in bucket:  # a parameter that got no gradient sends zeros, as PyTorch DDP does
            if p.grad is None:
                p.grad = xp.zeros_like(p.data)
        if len(bucket) == 1:
            p = bucket[0]
            p.grad = xp.ascontiguousarray(p.grad)
            self.flat[k] = p.grad.reshape(-1)
        else:
            self.flat[k] = xp.concatenate([p.grad.reshape(-1) for p in bucket])
        if self._sender is not None:
            self._sender.put(self.flat[k])
        else:
            _nccl_average_async(self.flat[k])

    def wait(self):
        """Send what backward left unsent, wait for every bucket, and put each average in
        .grad (a view of the bucket's buffer: no copy back)."""
        while self.sent < len(self.buckets):
            self._send(self.sent)
        if self._sender is not None:
            self._sender.wait()
        else:
            _nccl_wait()
        for bucket, flat in zip(self.buckets, self.flat):
            if len(bucket) > 1:
                offset = 0
                for p in bucket:
                    p.grad = flat[offset:offset + p.size].reshape(p.shape)
                    offset += p.size
        self._reset()


class _Sender:
    """Sums buffers across ranks in order with blocking Allreduces and divides them by the
    world size: on a thread of its own, whose first error wait() raises again, or at once."""

    def __init__(self, thread):
        import queue
        import threading
        self.queue, self.error, self.thread = queue.Queue(), None, thread
        if thread:
            threading.Thread(target=self._run, daemon=True, name="minialex-allreduce").start()

    def put(self, flat):
        if self.thread:
            self.queue.put(flat)
        else:
            self._average(flat)

    @staticmethod
    def _average(flat):
        from mpi4py import MPI
        _comm.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM)
        flat /= flat.dtype.type(world_size())

    def _run(self):
        while True:
            flat = self.queue.get()
            try:
                if self.error is None:
                    self._average(flat)
            except BaseException as error:  # noqa: BLE001 - handed to the main thread
                self.error = error
            finally:
                self.queue.task_done()

    def wait(self):
        self.queue.join()
        if self.error is not None:
            error, self.error = self.error, None
            raise DistributedError(f"averaging the gradients failed: {error}") from error


def parameter_checksum(model):
    """A CRC-32 of every parameter's bytes: a few milliseconds for AlexNet at 1/8 width."""
    checksum = 0
    for p in model.parameters():
        checksum = zlib.crc32(np.ascontiguousarray(backend.as_numpy(p.data)).tobytes(), checksum)
    return checksum


def check_same_parameters(model, when):
    """Compare the ranks' parameter checksums; a DistributedError, on every rank, names the
    ranks that differ from rank 0."""
    if world_size() == 1:
        return
    checksums = _comm.allgather(parameter_checksum(model))
    differ = [r for r, c in enumerate(checksums) if c != checksums[0]]
    if differ:
        raise DistributedError(f"{when}: the parameters of rank(s) {differ} differ from rank "
                               f"0's (checksums {checksums}); stopped, the ranks diverged")


def sum_across_ranks(values):
    """Element-wise sums of a list of numbers over the ranks, as float64 (exact for counts)."""
    values = np.asarray(values, dtype=np.float64)
    if world_size() > 1:
        from mpi4py import MPI
        _comm.Allreduce(MPI.IN_PLACE, values, op=MPI.SUM)
    return values.tolist()


# ---- data ---------------------------------------------------------------------------------

def shard_order(order, batch_size, world, rank):
    """This rank's images of an epoch, in order: its `batch_size` slot of every global batch of
    world x batch_size consecutive images of `order`; the last, partial global batch is left
    out, as one process with drop_last leaves it out."""
    steps = len(order) // (world * batch_size)
    return order[:steps * world * batch_size].reshape(steps, world, batch_size)[:, rank].ravel()


class ShardedLoader(DataLoader):
    """A training DataLoader (shuffled, drop_last) that yields this rank's part of each global
    batch: batch t of rank r is images [r * B, (r + 1) * B) of the global batch t that a single
    DataLoader with batch size world x B would yield."""

    def __init__(self, dataset, batch_size, transform, seed=0, num_threads=2, prefetch=2,
                 world=None, which_rank=None):
        super().__init__(dataset, batch_size, transform, shuffle=True, seed=seed,
                         drop_last=True, num_threads=num_threads, prefetch=prefetch)
        self.world = world_size() if world is None else world
        self.rank = rank() if which_rank is None else which_rank

    def __len__(self):
        return len(self.dataset) // (self.world * self.batch_size)

    def order(self, epoch):
        return shard_order(super().order(epoch), self.batch_size, self.world, self.rank)


class ValidationShard(DataLoader):
    """Every world-th validation image, from this rank's index on: each image is evaluated by
    exactly one rank; the sums of losses and counts are then added across ranks."""

    def __init__(self, dataset, batch_size, transform, seed=0, num_threads=2, ten_crop=False,
                 world=None, which_rank=None):
        super().__init__(dataset, batch_size, transform, shuffle=False, seed=seed,
                         num_threads=num_threads, ten_crop=ten_crop)
        self.world = world_size() if world is None else world
        self.rank = rank() if which_rank is None else which_rank

    def __len__(self):
        return -(-len(self.order(0)) // self.batch_size)

    def order(self, epoch):
        return np.arange(self.rank, len(self.dataset), self.world)


# ---- GPUs: NCCL ---------------------------------------------------------------------------

_side = {}  # NCCL's stream and its last event


def _nccl_average_async(flat):
    """NOT RUN YET. Sum on NCCL's own stream once the compute stream has made `flat`."""
    import cupy
    from cupy.cuda import nccl
    compute = cupy.cuda.get_current_stream()
    if "stream" not in _side:  # one stream for the run (setdefault would make one every call)
        _side["stream"] = cupy.cuda.Stream(non_blocking=True)
    stream = _side["stream"]
    stream.wait_event(compute.record())
    _nccl.allReduce(flat.data.ptr, flat.data.ptr, flat.size, nccl.NCCL_FLOAT32, nccl.NCCL_SUM,
                    stream.ptr)
    with stream:
        flat /= flat.dtype.type(world_size())
    _side["done"] = stream.record()


def _nccl_wait():
    """NOT RUN YET. The compute stream waits (on the device, not the host) for the sums."""
    import cupy
    if "done" in _side:
        cupy.cuda.get_current_stream().wait_event(_side.pop("done"))


def init_gpu():
    """Use GPU local_rank() and reduce gradients with NCCL (cupy.cuda.nccl) instead of MPI;
    rank 0 draws NCCL's unique id and MPI carries it to the others.

    NOT RUN YET: written without a GPU at hand; the CPU path above is the tested one."""
    global _nccl
    import cupy
    from cupy.cuda import nccl
    if not nccl.available:  # cupy.cuda.nccl then has no get_unique_id: an AttributeError
        raise DistributedError("--distributed --device cuda needs NCCL, which CuPy did not find: "
                               "pip install nvidia-nccl-cu13 (nvidia-nccl-cu12 for CUDA 12)")
    cupy.cuda.Device(local_rank()).use()
    unique_id = broadcast_object(nccl.get_unique_id() if rank() == 0 else None)
    _nccl = nccl.NcclCommunicator(world_size(), unique_id, rank())


# ---- test-only failures -------------------------------------------------------------------

def fail_for_test(step):
    """TEST ONLY: MINIALEX_TEST_FAIL="RANK:STEP:raise|exit|kill" makes rank RANK, after its
    training step STEP (counted from 1 over the whole run), raise an exception, call
    sys.exit(3) or kill itself with SIGKILL; tests/test_distributed.py checks that the whole
    job then ends. Not for users."""
    spec = os.environ.get("MINIALEX_TEST_FAIL")
    if not spec:
        return
    which, at, how = spec.split(":")
    if int(which) != rank() or int(at) != step:
        return
    if how == "raise":
        raise RuntimeError(f"test failure at step {step}")
    if how == "exit":
        raise SystemExit(3)
    import signal
    os.kill(os.getpid(), signal.SIGKILL)
