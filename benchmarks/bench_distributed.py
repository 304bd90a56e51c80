"""Data parallelism on one machine: AlexNet's training step on 1 rank against 2 MPI ranks, the
allreduce of its gradients, and a cost model of the same step on n GPUs.

    python benchmarks/bench_distributed.py                 # about a minute on 2 idle cores
    python benchmarks/bench_distributed.py --width 0.0625 --batch 4 --steps 1 --warmup 1
    mpiexec -n 2 python -m mpi4py benchmarks/bench_distributed.py --child 2   # one 2-rank run

Needs mpi4py and an MPI's mpiexec: pip install -e '.[distributed]' (both; MPICH's from pip).
The script starts its own ranks with `mpiexec -n 2` in a subprocess; --child is that process's
flag (run by hand, as above, it prints one line of raw times). On a busy machine each series
first waits up to a minute for the CPU to be quiet (--quiet-wait).

Method.
- The same global batch (--batch, 32) and the same cores (--threads, os.cpu_count()) both ways:
  1 rank of batch 32 with 2 threads ("1x2"), against 2 ranks of batch 16 with 1 thread each
  ("2x1"). Each rank holds its threads to --threads / ranks before it builds anything: BLAS
  through threadpoolctl's threadpool_limits, minialex's own thread pool through
  minialex.fast.threads.THREADS (and OMP_NUM_THREADS / OPENBLAS_NUM_THREADS in its environment).
- The model: minialex's AlexNet (--variant paper, --width 1), the same seeded weights on every
  rank, each rank its own random images. A step: forward, cross_entropy, zero_grad, backward,
  then (2 ranks) the gradients' allreduce, then SGD(lr=0.01, momentum=0.9, weight_decay=5e-4).
- The allreduce, as a data-parallel trainer does it in its simplest form: every gradient copied
  into one flat float32 buffer ("pack"), MPI.COMM_WORLD.Allreduce in place (a sum), then
  multiplied by 1 / world size on the way back into the gradients ("unpack", one pass). A
  Barrier before it is timed apart ("wait"): the time one rank waits for the slower one, load
  imbalance rather than communication. "Allreduce share" = (pack + allreduce + unpack) / step,
  of the medians. A step's time is the slower rank's.
- Bandwidth: after its steps the 2-rank run times --bandwidth-repeats allreduces alone (after a
  Barrier) of a buffer of AlexNet's gradient size (paper, width 1: 60,965,224 float32, 244 MB)
  whatever --width is. Algorithm bandwidth = bytes / time; bus bandwidth = 2 (n - 1) / n x
  bytes / time, what each rank's link carries in a ring allreduce (comparable across n).
- Noise: each configuration runs in a fresh process (or pair of processes), --warmup untimed
  steps and then --steps timed ones: one series. --series series each (3), the configurations
  alternating (1x2, 2x1, 2x1 without allreduce, 1x2, ...) so that a noisy machine slows them
  alike. Reported: the median over every timed step of a configuration, and each series' own
  img/s beside the 1-minute load average and the share of CPU time busy (/proc/stat, over
  0.5 s with nothing of ours running) just before it: a series that someone else's work slowed
  shows as such (the load average, a minute's mean, lags and counts our own last run too).
  Before each series the script waits up to --quiet-wait seconds (60) for that share to fall
  below --quiet-below (15%): on a shared machine, the series then run in the quieter moments.
- "2x1, no allreduce": the same two ranks, their allreduce left out. Against 1x2 it shows what
  two processes cost each other on the same cores (memory bandwidth, caches), apart from the
  communication.
- Per layer (the first 1-rank series): every layer of the model alone on its real input, its
  backward timed (median of 3): the time from the start of backward until each weighted layer's
  gradient is ready, which the cost model's overlap needs.

The cost model (printed, and in README.md, "Scaling out: the cost model"): weak scaling, a fixed
batch per GPU. Step time = compute + allreduce time, the ring allreduce moving 2 (n - 1) / n of
the gradient bytes per rank over a link of --links Gbit/s (latency left out: 2 (n - 1) messages
of a few microseconds each are far below the bandwidth term at 244 MB). Compute per step:
an ASSUMED --gpu-step-ms (20) ms per step of --gpu-batch (128) images on one GPU, a round
figure and not a measurement; and, for comparison, the 1-rank step measured here. Overlap
(buckets sent as soon as their layer's gradients are ready, as PyTorch's DDP does): a layer's
gradient becomes ready at its share of backward (the measured per-layer split), buckets go out
one after the other on the link, and the step ends when backward and the last bucket are done.

Output: the tables on the console, and in --out (runs/bench_distributed) results.json
(everything, every step's times included) and results.md (the same tables).
"""
import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

SCRIPT = pathlib.Path(__file__).resolve()
ROOT = SCRIPT.parents[1]
sys.path.insert(0, str(ROOT))  # minialex from this checkout, installed or not
CHILD_TAG = "bench_distributed child: "  # the line a child's results follow
INSTALL_HINT = "mpi4py is not installed: pip install -e '.[distributed]'"
NUM_CLASSES = 1000
SGD_SETTINGS = {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4}
PAPER_GRADIENT_FLOATS = 60_965_224  # paper AlexNet, width 1: checked in the tests
NO_ALLREDUCE = "no allreduce"  # the key of the ranks' run without their allreduce
OVERLAPPED = "overlapped"      # the ranks' run with minialex.distributed.overlap_gradients
INLINE = "buckets inline"      # the same buckets, sent by backward itself (thread=False)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.split("\n")[2:]))
    p.add_argument("--variant", default="paper", help="AlexNet variant (default paper)")
    p.add_argument("--width", type=float, default=1.0,
                   help="channel multiplier of the model: 1 is the real AlexNet")
    p.add_argument("--batch", type=int, default=32,
                   help="global batch, split evenly over the ranks (default 32)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per series (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument("--series", type=int, default=3,
                   help="processes per configuration, the configurations alternating (default 3)")
    p.add_argument("--ranks", type=int, default=2, help="ranks of the MPI run (default 2)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="cores used in all, split evenly over the ranks (default: all)")
    p.add_argument("--quiet-wait", type=float, default=60.0,
                   help="seconds to wait at most, before each series, for the CPU to be less than "
                   "--quiet-below busy (default 60; 0: no wait)")
    p.add_argument("--quiet-below", type=float, default=0.15,
                   help="CPU busy fraction (someone else's load) a series waits to go below "
                   "(default 0.15)")
    p.add_argument("--bandwidth-repeats", type=int, default=3,
                   help="allreduces of AlexNet's gradient size alone (default 3)")
    p.add_argument("--gpu-step-ms", type=float, default=20.0,
                   help="ASSUMED compute time of one GPU's step, for the cost model (default 20)")
    p.add_argument("--gpu-batch", type=int, default=128,
                   help="images per GPU per step of that assumption (default 128)")
    p.add_argument("--links", default="25,100,400",
                   help="link speeds of the cost model, Gbit/s (default 25,100,400)")
    p.add_argument("--gpus", default="1,2,4,8,16,32,64",
                   help="GPU counts of the cost model (default 1,2,4,8,16,32,64)")
    p.add_argument("--out", default="runs/bench_distributed",
                   help="folder for results.json and results.md")
    # One configuration's process (see run_child); its value is the world size expected
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-layers", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--child-no-allreduce", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--child-overlap", choices=["thread", "inline"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name in ("batch", "steps", "series", "threads", "gpu_batch", "bandwidth_repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}")
    if args.ranks < 2:
        p.error(f"--ranks must be >= 2; got {args.ranks}")
    if args.warmup < 0:
        p.error(f"--warmup must be >= 0; got {args.warmup}")
    if not args.width > 0:
        p.error(f"--width must be > 0; got {args.width}")
    if args.batch % args.ranks:
        p.error(f"--batch {args.batch} does not split evenly over --ranks {args.ranks}")
    if not args.gpu_step_ms > 0:
        p.error(f"--gpu-step-ms must be > 0; got {args.gpu_step_ms}")
    for name in ("links", "gpus"):
        try:
            values = [float(v) if name == "links" else int(v)
                      for v in getattr(args, name).split(",")]
        except ValueError:
            values = []
        if not values or min(values) <= 0:
            p.error(f"--{name}: expected positive numbers separated by commas; got "
                    f"{getattr(args, name)!r}")
        setattr(args, name + "_list", values)
    return args


def median(values):
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def load_average():
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def cpu_busy(seconds=0.5):
    """The fraction of the machine's CPU time that was not idle over the next `seconds`, from
    /proc/stat (None without it): nothing of ours runs then, so it is someone else's load, which
    the load average, a minute's mean, shows late."""
    def sample():
        fields = [int(v) for v in pathlib.Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # all, idle + iowait
    try:
        total, idle = sample()
        time.sleep(seconds)
        total_after, idle_after = sample()
    except (OSError, ValueError, IndexError):
        return None
    return round(1 - (idle_after - idle) / max(1, total_after - total), 3)


def wait_for_quiet(longest_s, below):
    """Wait (at most longest_s) until the CPU is less than `below` busy; the last busy share."""
    deadline = time.perf_counter() + longest_s
    busy = cpu_busy()
    while busy is not None and busy >= below and time.perf_counter() < deadline:
        busy = cpu_busy(2.0)
    return busy


# ----------------------------------------------------------------------------------------------
# A child: one rank of one configuration

def hold_threads(threads):
    """BLAS and minialex's pool to `threads` threads in this process, before anything is built.
    The limiter is returned so that it stays alive (it restores the old limits when freed)."""
    from threadpoolctl import threadpool_limits

    import minialex.fast.threads
    minialex.fast.threads.THREADS = threads
    return threadpool_limits(limits=threads, user_api="blas")


def weighted_layers(model):
    """(name, module) of every layer with weights, in forward order: conv1..conv5, fc6..fc8."""
    modules = list(model.features) + list(model.classifier)
    weighted = [m for m in modules if list(m.parameters())]
    convs = sum(type(m).__name__ == "Conv2d" for m in weighted)
    names = [f"conv{i + 1}" if i < convs else f"fc{i + 1}" for i in range(len(weighted))]
    return list(zip(names, weighted))


class Allreduce:
    """The gradients' mean over the ranks through one flat float32 buffer."""

    def __init__(self, comm, parameters):
        import numpy as np
        self.comm, self.parameters = comm, parameters
        self.flat = np.empty(sum(p.data.size for p in parameters), dtype=np.float32)

    def __call__(self):
        """(pack, wait, allreduce, unpack) seconds."""
        import numpy as np
        from mpi4py import MPI
        started = time.perf_counter()
        offset = 0
        for parameter in self.parameters:
            size = parameter.grad.size
            self.flat[offset:offset + size] = parameter.grad.reshape(-1)
            offset += size
        packed = time.perf_counter()
        self.comm.Barrier()
        waited = time.perf_counter()
        self.comm.Allreduce(MPI.IN_PLACE, self.flat, op=MPI.SUM)
        reduced = time.perf_counter()
        scale = 1.0 / self.comm.Get_size()
        offset = 0
        for parameter in self.parameters:  # the mean and the copy back in one pass, not two
            size = parameter.grad.size
            np.multiply(self.flat[offset:offset + size].reshape(parameter.grad.shape), scale,
                        out=parameter.grad)
            offset += size
        done = time.perf_counter()
        return packed - started, waited - packed, reduced - waited, done - reduced


class OverlappedAllreduce:
    """minialex.distributed.overlap_gradients: the sums left during backward; what remains is
    the wait for the last buckets (and for the slower rank)."""

    def __init__(self, model):
        self.model = model

    def __call__(self):
        """(pack, wait, allreduce, unpack) seconds: all of it is the wait here."""
        from minialex import distributed
        started = time.perf_counter()
        distributed.average_gradients(self.model)
        return 0.0, time.perf_counter() - started, 0.0, 0.0


def time_layers(model, images, repeats=3):
    """Per layer, alone on its real input: median forward and backward seconds, and its
    gradient floats. The image's own gradient is not needed (conv1's input needs none)."""
    import numpy as np
    from minialex.tensor import Tensor
    rng = np.random.default_rng(2)
    modules = list(model.features) + [model.flatten] + list(model.classifier)
    x, rows = images, []
    for index, module in enumerate(modules):
        times = []
        for _ in range(repeats + 1):  # the first is untimed: it warms the caches and the pool
            for parameter in module.parameters():
                parameter.grad = None
            leaf = Tensor(x, requires_grad=index > 0)
            started = time.perf_counter()
            y = module(leaf)
            forward_done = time.perf_counter()
            grad = rng.standard_normal(y.data.shape).astype(np.float32)
            backward_started = time.perf_counter()
            y.backward(grad)
            times.append((forward_done - started, time.perf_counter() - backward_started))
        rows.append({"kind": type(module).__name__,
                     "forward_s": median([t[0] for t in times[1:]]),
                     "backward_s": median([t[1] for t in times[1:]]),
                     "gradient_floats": sum(p.data.size for p in module.parameters())})
        x = y.data
    return rows


def run_child(args):
    ranks = args.child
    threads = max(1, args.threads // ranks)
    limiter = hold_threads(threads)  # noqa: F841 (kept alive for the whole run)
    if ranks > 1:
        try:
            from mpi4py import MPI
        except ImportError:
            print(INSTALL_HINT, file=sys.stderr)
            return 1
        comm = MPI.COMM_WORLD
        if comm.Get_size() != ranks:
            print(f"bench_distributed.py: --child {ranks} under {comm.Get_size()} MPI ranks "
                  f"(run it with mpiexec -n {ranks})", file=sys.stderr)
            return 2
        rank = comm.Get_rank()
    else:
        comm, rank = None, 0

    import numpy as np

    import minialex.functional as F
    from minialex import optim, random
    from minialex.models.alexnet import alexnet
    from minialex.tensor import tensor

    random.manual_seed(0)  # the same weights on every rank
    model = alexnet(args.variant, NUM_CLASSES, width=args.width).train()
    parameters = list(model.parameters())
    optimizer = optim.SGD(parameters, **SGD_SETTINGS)
    batch = args.batch // ranks
    data = np.random.default_rng(1 + rank)  # each rank its own shard of the global batch
    images = data.standard_normal((batch, 3, 227, 227)).astype(np.float32)
    labels = data.integers(0, NUM_CLASSES, batch)
    allreduce = (Allreduce(comm, parameters) if comm is not None and not args.child_no_allreduce
                 else None)
    if comm is not None and args.child_overlap:  # buckets sent while backward runs
        from minialex import distributed
        distributed.init()
        distributed.overlap_gradients(model, thread=args.child_overlap == "thread")
        allreduce = OverlappedAllreduce(model)

    steps = []
    for index in range(args.warmup + args.steps):
        started = time.perf_counter()
        loss = F.cross_entropy(model(tensor(images)), labels)
        optimizer.zero_grad()
        loss.backward()
        computed = time.perf_counter()
        parts = allreduce() if allreduce is not None else (0.0, 0.0, 0.0, 0.0)
        optimizer.step()
        done = time.perf_counter()
        if index >= args.warmup:
            steps.append({"step_s": done - started, "backward_done_s": computed - started,
                          "pack_s": parts[0], "wait_s": parts[1], "allreduce_s": parts[2],
                          "unpack_s": parts[3], "loss": float(loss.data)})

    bandwidth = []
    if comm is not None:
        repeats = 0 if args.child_no_allreduce else args.bandwidth_repeats
        buffer = np.ones(PAPER_GRADIENT_FLOATS if repeats else 1, dtype=np.float32)
        for _ in range(repeats):
            comm.Barrier()
            started = time.perf_counter()
            comm.Allreduce(MPI.IN_PLACE, buffer, op=MPI.SUM)
            bandwidth.append(time.perf_counter() - started)
        every_rank = comm.gather({"steps": steps, "bandwidth_s": bandwidth}, root=0)
        if rank != 0:
            return 0
        # a step ends for both ranks at the allreduce: the slower rank's time is the step's
        for position, step in enumerate(steps):
            for key in step:
                if key.endswith("_s"):
                    step[key] = max(r["steps"][position][key] for r in every_rank)
        bandwidth = [max(times) for times in zip(*(r["bandwidth_s"] for r in every_rank))]
    result = {"ranks": ranks, "mpi": MPI.Get_library_version().splitlines()[0].strip()
              if comm is not None else None, "threads_per_rank": threads, "batch_per_rank": batch,
              "steps": steps, "bandwidth_s": bandwidth,
              "gradient_floats": sum(p.data.size for p in parameters),
              "layers": time_layers(model, images) if args.child_layers else None}
    print(CHILD_TAG + json.dumps(result), flush=True)
    return 0


# ----------------------------------------------------------------------------------------------
# The parent: the configurations, alternating

def child_command(args, ranks, layers, no_allreduce, overlap=False):
    options = ["--child", str(ranks), "--variant", args.variant, "--width", str(args.width),
               "--batch", str(args.batch), "--steps", str(args.steps), "--warmup",
               str(args.warmup), "--threads", str(args.threads), "--bandwidth-repeats",
               str(args.bandwidth_repeats)] + (["--child-layers"] if layers else []) + (
                   ["--child-no-allreduce"] if no_allreduce else []) + (
                   ["--child-overlap", overlap] if overlap else [])
    python = [sys.executable, str(SCRIPT)]
    if ranks == 1:
        return python + options
    # -m mpi4py: an exception on one rank aborts them all instead of leaving the other waiting
    return [shutil.which("mpiexec"), "-n", str(ranks), sys.executable, "-m", "mpi4py",
            str(SCRIPT)] + options


def run_configuration(args, ranks, layers=False, no_allreduce=False, overlap=False):
    threads = str(max(1, args.threads // ranks))
    env = dict(os.environ, OMP_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads,
               MKL_NUM_THREADS=threads)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run(child_command(args, ranks, layers, no_allreduce, overlap), cwd=ROOT,
                          env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith(CHILD_TAG)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"the {ranks}-rank run failed (exit {done.returncode}):\n"
                           f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len(CHILD_TAG):])


def summarize(series, global_batch):
    steps = [step for one in series for step in one["steps"]]
    row = {key: median([step[key] for step in steps]) * 1e3
           for key in ("step_s", "backward_done_s", "pack_s", "wait_s", "allreduce_s",
                       "unpack_s")}
    row = {key.replace("_s", "_ms"): value for key, value in row.items()}
    row["images_per_s"] = global_batch / row["step_ms"] * 1e3
    row["series_images_per_s"] = [global_batch / median([s["step_s"] for s in one["steps"]])
                                  for one in series]
    row["series_load_average"] = [one.get("load_average_before") for one in series]
    row["series_cpu_busy"] = [one.get("cpu_busy_before") for one in series]
    row["allreduce_total_ms"] = row["pack_ms"] + row["allreduce_ms"] + row["unpack_ms"]
    row["allreduce_share"] = row["allreduce_total_ms"] / row["step_ms"]
    return row


def bandwidth_of(seconds, ranks, floats=PAPER_GRADIENT_FLOATS):
    size = 4 * floats
    return {"bytes": size, "ms": seconds * 1e3, "algorithm_gb_per_s": size / seconds / 1e9,
            "bus_gb_per_s": 2 * (ranks - 1) / ranks * size / seconds / 1e9}


# ----------------------------------------------------------------------------------------------
# The cost model

def gradient_stages(variant="paper", width=1.0):
    """The weighted layers in backward order (fc8 first), their gradient floats each."""
    from minialex.models.alexnet import alexnet
    model = alexnet(variant, NUM_CLASSES, width=width)
    stages = [{"name": name, "floats": sum(p.data.size for p in module.parameters())}
              for name, module in weighted_layers(model)]
    return stages[::-1]


def ready_fractions(layers, stage_names):
    """For each weighted layer in backward order, the fraction of backward done when its
    gradient is ready: backward runs the layers from the last to the first, and a weighted
    layer's gradient is ready once its own backward is done."""
    total = sum(layer["backward_s"] for layer in layers)
    fractions, elapsed = [], 0.0
    for layer in reversed(layers):
        elapsed += layer["backward_s"]
        if layer["gradient_floats"]:
            fractions.append(elapsed / total)
    return dict(zip(stage_names, fractions))


def ring_seconds(size_bytes, ranks, gbit_per_s):
    return 2 * (ranks - 1) / ranks * size_bytes / (gbit_per_s * 1e9 / 8)


def overlapped_step(compute_s, backward_share, stages, ready, ranks, gbit_per_s):
    """Step seconds with each layer's gradient sent as soon as it is ready, one bucket after
    another on the link; forward first, then backward, then whatever allreduce is left."""
    forward_s = compute_s * (1 - backward_share)
    backward_s = compute_s * backward_share
    link_free = forward_s
    for stage in stages:
        start = max(forward_s + ready[stage["name"]] * backward_s, link_free)
        link_free = start + ring_seconds(4 * stage["floats"], ranks, gbit_per_s)
    return max(compute_s, link_free)


def cost_model(compute_s, batch, backward_share, stages, ready, gpus, links):
    size = 4 * sum(stage["floats"] for stage in stages)
    rows = []
    for link in links:
        for ranks in gpus:
            allreduce_s = ring_seconds(size, ranks, link)
            step_s = compute_s + allreduce_s
            overlap_s = overlapped_step(compute_s, backward_share, stages, ready, ranks, link)
            rows.append({"link_gbit_per_s": link, "gpus": ranks, "allreduce_ms": allreduce_s * 1e3,
                         "step_ms": step_s * 1e3, "images_per_s": ranks * batch / step_s,
                         "efficiency": compute_s / step_s, "overlapped_step_ms": overlap_s * 1e3,
                         "overlapped_images_per_s": ranks * batch / overlap_s,
                         "overlapped_efficiency": compute_s / overlap_s})
    return rows


def network_limits(compute_s, size_bytes, gpus, links):
    """Per link: the first GPU count at which the allreduce takes longer than the compute."""
    limits = {}
    for link in links:
        over = [n for n in gpus if ring_seconds(size_bytes, n, link) >= compute_s]
        limits[str(link)] = over[0] if over else None
    return limits


# ----------------------------------------------------------------------------------------------
# Tables

def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows])


def per_series(row):
    """Each series' img/s, with the load average and the CPU busy just before it: a series that
    someone else's work slowed shows why."""
    return " / ".join(
        f"{rate:.1f} ({load}, {'?' if busy is None else f'{100 * busy:.0f}%'})" for rate, load, busy
        in zip(row["series_images_per_s"], row["series_load_average"], row["series_cpu_busy"]))


def sections(results):
    measured, s = results["measured"], results["settings"]
    one, many = measured["1"], measured[str(s["ranks"])]
    n = s["ranks"]
    steps = [[f"1 x {s['threads']}", f"1 x {s['batch']}", f"{one['step_ms']:.0f}",
              f"{one['images_per_s']:.2f}",
              per_series(one), "-", "-", "-", "-"]]
    steps.append([f"{n} x {many['threads_per_rank']}", f"{n} x {s['batch'] // n}",
                  f"{many['step_ms']:.0f}", f"{many['images_per_s']:.2f}",
                  per_series(many),
                  f"{many['allreduce_ms']:.1f}",
                  f"{many['pack_ms'] + many['unpack_ms']:.1f}", f"{many['wait_ms']:.1f}",
                  f"{100 * many['allreduce_share']:.1f}%"])
    alone = measured[NO_ALLREDUCE]
    steps.append([f"{n} x {alone['threads_per_rank']}, no allreduce", f"{n} x {s['batch'] // n}",
                  f"{alone['step_ms']:.0f}", f"{alone['images_per_s']:.2f}",
                  per_series(alone), "-", "-", "-", "-"])
    for key, how in ((OVERLAPPED, "by a thread during backward"),
                     (INLINE, "by backward, as buckets complete")):
        if key in measured:
            over = measured[key]
            steps.append([f"{n} x {over['threads_per_rank']}, {key}", f"{n} x {s['batch'] // n}",
                          f"{over['step_ms']:.0f}", f"{over['images_per_s']:.2f}",
                          per_series(over), how, "large ones in place",
                          f"{over['wait_ms']:.1f}",
                          f"{100 * over['allreduce_share']:.1f}% (wait)"])
    out = [(f"Training step, {s['variant']} width {s['width']}, global batch {s['batch']} "
            f"(medians of {s['series'] * s['steps']} steps)",
            table(["ranks x threads", "batch", "step ms", "img/s",
                   "img/s per series (load, CPU busy before)", "allreduce ms",
                   "pack+unpack ms", "wait ms", "allreduce share"], steps))]
    bw = results["bandwidth"]
    out.append((f"Allreduce alone, {bw['bytes'] / 1e6:.1f} MB (AlexNet's gradients), {n} ranks "
                f"(median of {len(bw['seconds'])})",
                table(["ms", "algorithm GB/s", "bus GB/s"],
                      [[f"{bw['ms']:.1f}", f"{bw['algorithm_gb_per_s']:.2f}",
                        f"{bw['bus_gb_per_s']:.2f}"]])))
    model = results["cost_model"]
    stages = model["stages"]
    size = sum(stage["floats"] for stage in stages) * 4
    out.append(("Gradients per layer, in backward order (paper, width 1)",
                table(["layer", "MB", "of all", "backward done when ready (measured)"],
                      [[st["name"], f"{4 * st['floats'] / 1e6:.1f}",
                        f"{100 * 4 * st['floats'] / size:.1f}%",
                        f"{100 * model['ready'][st['name']]:.0f}%"] for st in stages])))
    slowest = min(s["links_list"])
    for key, title in (("gpu", "ASSUMED GPU"),
                       ("cpu", f"this machine's CPU, measured, at {slowest:g} Gbit/s (the "
                               f"slowest link)")):
        case = model[key]
        rows = [[f"{r['link_gbit_per_s']:g}", r["gpus"], f"{r['allreduce_ms']:.1f}",
                 f"{r['step_ms']:.1f}", f"{r['images_per_s']:,.0f}",
                 f"{100 * r['efficiency']:.0f}%", f"{r['overlapped_step_ms']:.1f}",
                 f"{r['overlapped_images_per_s']:,.0f}",
                 f"{100 * r['overlapped_efficiency']:.0f}%"] for r in case["rows"]
                if key == "gpu" or r["link_gbit_per_s"] == slowest]
        out.append((f"Cost model, weak scaling, {title}: {case['compute_ms']:.1f} ms compute per "
                    f"step of {case['batch']} images per rank",
                    table(["link Gbit/s", "ranks", "allreduce ms", "step ms", "img/s",
                           "efficiency", "overlapped step ms", "overlapped img/s",
                           "overlapped efficiency"], rows)))
    return out


def conclusion_lines(results):
    model, s = results["cost_model"], results["settings"]
    gpu = model["gpu"]
    lines = []
    for link, first in gpu["network_limit"].items():
        lines.append(f"- {float(link):g} Gbit/s: " + (
            f"the allreduce outlasts the {gpu['compute_ms']:.0f} ms of compute from {first} "
            f"GPUs on: the network, not the GPU, sets the step" if first else
            f"the allreduce stays below the {gpu['compute_ms']:.0f} ms of compute up to "
            f"{max(s['gpus_list'])} GPUs"))
    at = max(n for n in s["gpus_list"] if n <= 8)
    lines.append(f"- overlapping the allreduce with backward, {at} GPUs: " + ", ".join(
        f"{r['link_gbit_per_s']:g} Gbit/s {100 * r['efficiency']:.0f}% -> "
        f"{100 * r['overlapped_efficiency']:.0f}%"
        for r in gpu["rows"] if r["gpus"] == at))
    stages = model["stages"]
    size = sum(stage["floats"] for stage in stages)
    fc = sum(stage["floats"] for stage in stages if stage["name"].startswith("fc"))
    last = stages[-2:]  # the last two gradients backward makes: conv2 and conv1
    lines.append(f"- the fc layers hold {100 * fc / size:.1f}% of the gradient bytes and are "
                 f"ready after the first {100 * model['ready'][stages[2]['name']]:.0f}% of "
                 f"backward; {' and '.join(st['name'] for st in last)}, ready last, hold "
                 f"{4 * sum(st['floats'] for st in last) / 1e6:.1f} MB: all that cannot hide "
                 f"when the link keeps up")
    many = results["measured"][str(s["ranks"])]
    one, alone = results["measured"]["1"], results["measured"][NO_ALLREDUCE]
    lines.append(f"- measured here: {s['ranks']} ranks take {many['step_ms']:.0f} ms a step "
                 f"against 1 rank's {one['step_ms']:.0f} ({many['speedup_vs_1_rank']:.2f}x); "
                 f"the same ranks without their allreduce {alone['step_ms']:.0f} ms "
                 f"({alone['speedup_vs_1_rank']:.2f}x: two one-thread processes against one "
                 f"two-thread process on the same cores); the allreduce, its copies and the "
                 f"wait for the slower rank add {many['step_ms'] - alone['step_ms']:.0f} ms")
    share = many["allreduce_share"]
    lines.append(f"- measured here: the allreduce is {100 * share:.1f}% of the "
                 f"{s['ranks']}-rank step ({many['allreduce_total_ms']:.0f} of "
                 f"{many['step_ms']:.0f} ms)")
    if OVERLAPPED in results["measured"] and INLINE in results["measured"]:
        over, inline = results["measured"][OVERLAPPED], results["measured"][INLINE]
        lines.append(f"- buckets of 25 MB (the large gradients reduced in place, no packing): "
                     f"sent by a thread during backward {over['step_ms']:.0f} ms a step, sent "
                     f"by backward itself {inline['step_ms']:.0f} ms, against "
                     f"{many['step_ms']:.0f} ms for one buffer after backward "
                     f"({many['step_ms'] / over['step_ms']:.2f}x and "
                     f"{many['step_ms'] / inline['step_ms']:.2f}x). On this machine the thread "
                     f"has no core of its own: it takes turns with the compute, and MPICH's "
                     f"Allreduce polls while it waits. overlap_gradients uses a thread only "
                     f"where a core is spare; with a NIC or a GPU's copy engines overlap hides "
                     f"the transfer itself (the cost model's overlapped columns)")
    return lines


def machine_lines(results):
    m, s = results["machine"], results["settings"]
    return [f"- CPU: {m['cpu']}; {s['threads']} cores used; load average {m['load_start']} at "
            f"the start, {m['load_end']} at the end",
            f"- Python {m['python']}, NumPy {m['numpy']}, mpi4py {m['mpi4py']}, "
            f"MPI: {m['mpi']}",
            f"- cost model compute: GPU {s['gpu_step_ms']:g} ms per step of {s['gpu_batch']} "
            f"images is an ASSUMPTION (a round figure, not a measurement); the CPU figure is "
            f"the 1-rank step measured here; backward's share of compute "
            f"({100 * results['cost_model']['backward_share']:.0f}%) and its split over the "
            f"layers are those measured here, layer by layer"]


def cpu_name():
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or "unknown"


def main(argv=None):
    args = parse_args(argv)
    if args.child is not None:
        return run_child(args)
    try:
        import mpi4py  # not mpi4py.MPI: that would start MPI in this process, which has no rank
    except ImportError:
        print(INSTALL_HINT, file=sys.stderr)
        return 1
    if shutil.which("mpiexec") is None:
        print("mpiexec is not on PATH: pip install -e '.[distributed]' (MPICH's wheel brings "
              "it) or install an MPI", file=sys.stderr)
        return 1
    import numpy as np

    load_start = load_average()
    print(f"bench_distributed: {args.variant} width {args.width}, global batch {args.batch}; "
          f"1 rank x {args.threads} threads against {args.ranks} ranks x "
          f"{max(1, args.threads // args.ranks)}; {args.series} series each, alternating; "
          f"load average {load_start}")
    # the third: the same ranks without their allreduce, so that what two processes cost each
    # other on shared cores (memory, caches) is told apart from what the communication costs
    # the fourth: the same ranks with the sums sent while backward runs (overlap_gradients)
    configurations = {"1": (1, False, None), str(args.ranks): (args.ranks, False, None),
                      NO_ALLREDUCE: (args.ranks, True, None),
                      OVERLAPPED: (args.ranks, False, "thread"),
                      INLINE: (args.ranks, False, "inline")}
    runs = {key: [] for key in configurations}
    for index in range(args.series):
        for key, (ranks, no_allreduce, overlap) in configurations.items():
            load, busy = load_average(), wait_for_quiet(args.quiet_wait, args.quiet_below)
            started = time.perf_counter()
            runs[key].append(run_configuration(args, ranks, index == 0 and ranks == 1,
                                               no_allreduce, overlap))
            runs[key][-1].update(load_average_before=load, cpu_busy_before=busy)
            print(f"  series {index + 1}, {ranks} rank(s)"
                  f"{', no allreduce' if no_allreduce else ''}"
                  f"{f', buckets sent ({overlap})' if overlap else ''}: median step "
                  f"{median([s['step_s'] for s in runs[key][-1]['steps']]) * 1e3:.0f} ms "
                  f"({time.perf_counter() - started:.0f} s; before it: load average {load}, CPU "
                  f"{'?' if busy is None else f'{100 * busy:.0f}%'} busy)",
                  flush=True)

    measured = {}
    for key, series in runs.items():
        measured[key] = dict(summarize(series, args.batch),
                             threads_per_rank=series[0]["threads_per_rank"],
                             batch_per_rank=series[0]["batch_per_rank"])
    one = measured["1"]
    for key in (OVERLAPPED, INLINE):  # the wait is what backward did not hide
        measured[key]["allreduce_share"] = measured[key]["wait_ms"] / measured[key]["step_ms"]
    for key in (str(args.ranks), NO_ALLREDUCE, OVERLAPPED, INLINE):
        measured[key]["speedup_vs_1_rank"] = one["step_ms"] / measured[key]["step_ms"]
    bandwidth_s = [t for series in runs[str(args.ranks)] for t in series["bandwidth_s"]]
    bandwidth = dict(bandwidth_of(median(bandwidth_s), args.ranks), seconds=bandwidth_s)

    stages = gradient_stages(args.variant)
    layers = runs["1"][0]["layers"]
    backward_share = (sum(layer["backward_s"] for layer in layers)
                      / sum(layer["forward_s"] + layer["backward_s"] for layer in layers))
    ready = ready_fractions(layers, [stage["name"] for stage in stages])
    size = 4 * sum(stage["floats"] for stage in stages)
    cost = {"stages": stages, "ready": ready, "backward_share": backward_share,
            "gradient_bytes": size, "latency": "left out"}
    for key, compute_s, batch in (("gpu", args.gpu_step_ms / 1e3, args.gpu_batch),
                                  ("cpu", one["step_ms"] / 1e3, args.batch)):
        cost[key] = {"compute_ms": compute_s * 1e3, "batch": batch,
                     "assumed": key == "gpu",
                     "rows": cost_model(compute_s, batch, backward_share, stages, ready,
                                        args.gpus_list, args.links_list),
                     "network_limit": network_limits(compute_s, size, args.gpus_list,
                                                     args.links_list)}
    results = {
        "settings": {k: v for k, v in vars(args).items()
                     if not k.startswith("child")},
        "machine": {"cpu": cpu_name(), "python": sys.version.split()[0],
                    "numpy": np.__version__, "mpi4py": mpi4py.__version__,
                    "mpi": runs[str(args.ranks)][0]["mpi"],
                    "load_start": load_start, "load_end": load_average()},
        "measured": measured, "bandwidth": bandwidth, "cost_model": cost,
        "runs": runs}
    results["conclusions"] = conclusion_lines(results)

    print("\n" + "\n".join(machine_lines(results)))
    for title, text in sections(results):
        print(f"\n{title}\n{text}")
    print("\n" + "\n".join(results["conclusions"]))
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %z")
    markdown = [f"# Distributed benchmark, {stamp}", ""] + machine_lines(results)
    for title, text in sections(results):
        markdown += ["", f"## {title}", "", text]
    markdown += ["", "## Conclusions", ""] + results["conclusions"]
    (out / "results.md").write_text("\n".join(markdown) + "\n")
    print(f"\nresults in {out}/results.json, results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
