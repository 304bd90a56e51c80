"""Train AlexNet with minialex: on the bundled shapes (no download), or on a folder of JPEGs.

    python examples/train_alexnet.py                       # bundled data, CPU, about 3 minutes
    python examples/train_alexnet.py --epochs 12 --resume  # continue the run in --out
    python examples/train_alexnet.py --data DIR --width 1 --dropout 0.5 --batch-size 128 \
        --epochs 90 --device cuda --out runs/imagenet     # the paper's run, on ImageNet

The defaults are tuned for the bundled shapes on a 2-core CPU: AlexNet at 1/8 of its width
(898,554 parameters), 10 epochs of 3000 images, without dropout (which, measured, halves the
speed of learning in a run this short), reaching above 90% validation top-1 in about 3 minutes.

The recipe is the paper's (§5): SGD with momentum 0.9 and weight decay 5e-4, the learning rate
divided by 10 when the validation loss stops improving; random crops, flips and PCA lighting
(§4.1); ten-crop evaluation with --ten-crop. In --out the run leaves checkpoint.npz (written
atomically, so a kill at any moment leaves the previous one whole), metrics.json, curves.png
and conv1_filters.png; with --export-onnx also model.onnx (README.md, "Export to ONNX").

--reference trains on minialex's reference ops alone (mx.set_fast(False) before anything is
built): the plain NumPy/CuPy code of minialex/functions and optim.SGD, without the fast paths
that stand in for them. It computes the same thing in another order of float32 sums, and
slower (benchmarks/bench_alexnet.py's table "What each fast path buys" says by how much): its
weights agree with a default run's to about 1e-7 of their size after one tiny epoch, but the
rounding differences grow as training goes on (about 3e-3 of the weights' norm after 9 steps
of the default run). The one process-wide fast path, "memory" (a malloc setting
that changes no number), was made when minialex was imported and stays; run with
MINIALEX_FAST=0 in the environment to leave it out too.

--distributed trains on the processes that mpiexec starts (pip install -e '.[train,distributed]',
then mpiexec -n 2 python -m mpi4py examples/train_alexnet.py --distributed): --batch-size is
each process's, and the global batch N times that, the same images as one process with the
global batch would take. Rank 0 alone prints, holds the lock on --out and writes in it; a rank
that fails ends the whole job. README.md, "Several processes (MPI)", says more.

A run is a pure function of its seed on the CPU: the data order and every augmentation are
drawn from (seed, epoch, image), and the dropout generator's state is saved with each epoch's
checkpoint, so a run killed and resumed ends with the same weights as one never interrupted.

Every problem the user can fix ends the run with one line `error: ...` and exit status 2. Most
are found before the first step: a flag that is not finite or out of range, an --out that
cannot be written or that another live run holds, a model or bundled data set larger than the
available memory, a --data folder that cannot be listed, a checkpoint that cannot be read or
holds the wrong contents. Once training, a loss, weight or velocity that becomes NaN or
infinite stops the run before it saves anything, and the checkpoint of the last good epoch is
left as it was. While a run uses --out it holds --out/.lock (an flock, with its PID in the
file): a second run on the same --out is refused, naming that PID, and the lock of a run that
was killed is taken over.
"""
import argparse
import json
import math
import numbers
import os
import pathlib
import socket
import sys
import time
import warnings

try:
    import fcntl
except ImportError:  # not on Windows: runs there are not locked
    fcntl = None

import numpy as np

# so that it also runs from a checkout that was not installed with pip install -e .
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import minialex as mx  # noqa: E402
import minialex.functional as F  # noqa: E402
from minialex import data, optim  # noqa: E402
from minialex import distributed as dist  # noqa: E402  (imports mpi4py only in dist.init())
import minialex.onnx  # noqa: E402  (imports the onnx package only when exporting)

CHECKPOINT = "checkpoint.npz"
ONNX_FILE = "model.onnx"  # --export-onnx
LOCK = ".lock"
MAX_WIDTH = 4.0         # 16 times the real AlexNet's parameters; memory decides below that
IMAGE_BYTES = 256 * 256 * 3  # a cached bundled image, uint8


class TrainingError(Exception):
    """A problem the user can fix; main() prints it as one line and exits with status 2."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action):  # no "(default: None)"
        return action.help if action.default is None else super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message):  # one line, as every other error of this script
        self.exit(2, f"error: {message} (--help lists the flags)\n")


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--variant", default="paper", choices=mx.models.VARIANTS)
    p.add_argument("--width", type=float, default=0.125,
                   help=f"channel multiplier, in (0, {MAX_WIDTH:g}]: 1 is the real AlexNet, "
                   "0.125 fits a CPU")
    p.add_argument("--epochs", type=int, default=10, help="epochs of the whole run")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate (0.01 for a new run). With --resume: without --lr the "
                   "checkpoint's rate (as the schedule left it); with --lr, the given rate from "
                   "the first resumed epoch on, and a line says so")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--init", default="kaiming", choices=mx.models.INITS,
                   help="kaiming (He et al.), paper (§5: N(0, 0.01), biases 1) or pytorch")
    p.add_argument("--dropout", type=float, default=0.0,
                   help="dropout on fc6 and fc7; the paper's 0.5 (§4.2) fights overfitting in "
                   "long runs, but halves the speed of learning in a 5-minute one")
    p.add_argument("--patience", type=int, default=1,
                   help="epochs without a better validation loss before lr /= 10")
    p.add_argument("--data", help="ImageFolder root: DIR/train/<class>/*.jpg, DIR/val/...")
    p.add_argument("--per-class", type=int, default=300,
                   help="bundled data: training images per class (validation: a quarter)")
    p.add_argument("--no-lighting", action="store_true", help="turn off PCA lighting")
    p.add_argument("--ten-crop", action="store_true",
                   help="evaluate on 10 crops per image, averaging the softmax (§4.1)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--threads", type=int, default=2, help="threads preparing batches")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reference", action="store_true",
                   help="the reference ops alone, without fast paths (see above)")
    p.add_argument("--out", default="runs/alexnet",
                   help="folder for checkpoint and results; one run at a time (a lock file)")
    p.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.npz")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (for logs)")
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel on the processes of mpiexec -n N python -m mpi4py ...: "
                   "--batch-size is each process's, the global batch N times that")
    p.add_argument("--export-onnx", action="store_true",
                   help=f"at the end, also write {ONNX_FILE} (ONNX opset "
                   f"{minialex.onnx.OPSET}) beside the checkpoint; needs "
                   "pip install -e '.[onnx]'")
    args = p.parse_args(argv)
    for flag in ("width", "lr", "momentum", "weight_decay", "dropout"):
        value = getattr(args, flag)
        if value is not None and not math.isfinite(value):
            p.error(f"--{flag.replace('_', '-')} must be a finite number; got {value}")
    if args.epochs < 1 or args.batch_size < 1 or (args.lr is not None and args.lr <= 0) \
            or args.width <= 0:
        p.error("--epochs, --batch-size, --lr and --width must be positive")
    if args.width > MAX_WIDTH:
        parameters = parameter_count(args.variant, args.width, 1000)[0]
        p.error(f"--width {args.width:g} is more than {MAX_WIDTH:g}: about {parameters:,} "
                f"parameters x 12 bytes (weights, gradients, velocities) = "
                f"{size_text(parameters * 12)} (1 is the real AlexNet, 61 million parameters)")
    if args.seed < 0:
        p.error("--seed must be >= 0")
    if not 0 <= args.dropout < 1:
        p.error("--dropout must be in [0, 1)")
    if args.threads < 1 or args.per_class < 1:
        p.error("--threads and --per-class must be >= 1")
    if args.momentum < 0 or args.weight_decay < 0 or args.patience < 0:
        p.error("--momentum, --weight-decay and --patience must be >= 0")
    if args.export_onnx:  # now, rather than after the whole run
        try:
            minialex.onnx.import_onnx()
        except ImportError as error:
            p.error(f"--export-onnx: {error}")
    return args


# ----------------------------------------------------------------------------------------------
# Data

def make_datasets(args):
    if args.data is None:
        train = data.SyntheticShapes("train", args.per_class, seed=args.seed, cache=True)
        val = data.SyntheticShapes("val", max(1, args.per_class // 4), seed=args.seed,
                                   cache=True)
        return train, val
    if not os.path.isdir(args.data):
        raise TrainingError(f"--data {args.data}: folder not found; expected "
                            f"DIR/train/<class>/*.jpg and DIR/val/<class>/*.jpg")
    try:
        return data.ImageFolder(args.data, "train"), data.ImageFolder(args.data, "val")
    except (ValueError, FileNotFoundError) as error:
        raise TrainingError(str(error)) from error
    except OSError as error:  # a symbolic link loop, a folder it may not read, ...
        where = f"{error.filename}: " if error.filename else ""
        raise TrainingError(f"--data {args.data}: {where}{error.strerror or error}; fix or "
                            "remove it (a class folder must be a readable folder of images)"
                            ) from error


# ----------------------------------------------------------------------------------------------
# What the run needs before it starts: memory, and an --out folder of its own

def parameter_count(variant, width, num_classes):
    """(parameters, those of the largest layer) of alexnet(variant, num_classes, width),
    counted from the layer sizes without building it."""
    from minialex.models.alexnet import _scaled
    torchvision = variant == "torchvision"
    c1, c2, c3, c4, c5 = (_scaled(c, width) for c in (
        (64, 192, 384, 256, 256) if torchvision else (96, 256, 384, 384, 256)))
    hidden = _scaled(4096, width)
    groups = 2 if variant == "paper" else 1
    layers = [(3 * 11 * 11 + 1) * c1, (c1 // groups * 25 + 1) * c2, (c2 * 9 + 1) * c3,
              (c3 // groups * 9 + 1) * c4, (c4 // groups * 9 + 1) * c5,
              (c5 * 36 + 1) * hidden, (hidden + 1) * hidden, (hidden + 1) * num_classes]
    return sum(layers), max(layers)


def available_memory():
    """Bytes of memory available now (MemAvailable), else the physical memory; None if
    neither can be read."""
    try:
        with open("/proc/meminfo") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def size_text(size):
    return f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.1f} MiB"


def check_memory(args, num_classes, cached_images):
    """Refuse, in one line, a model or a data cache that cannot fit in memory, before it is
    built (it would otherwise end in a MemoryError, or the machine swapping)."""
    parameters, largest = parameter_count(args.variant, args.width, num_classes)
    # float32 weights, gradients and velocities, and the float64 draw of the largest layer
    model_bytes = parameters * 12 + largest * 8
    image_bytes = cached_images * IMAGE_BYTES
    available = available_memory()
    if available is not None and model_bytes + image_bytes > available:
        raise TrainingError(
            f"this run needs about {size_text(model_bytes + image_bytes)} of memory, more than "
            f"the {size_text(available)} available: --width {args.width:g} has {parameters:,} "
            f"parameters x 12 bytes (weights, gradients, velocities) = "
            f"{size_text(model_bytes)}, and {cached_images:,} bundled images x "
            f"{IMAGE_BYTES:,} bytes = {size_text(image_bytes)}; "
            "use a smaller --width or --per-class")


def prepare_out(out):
    """Create --out if need be and check that a file can be written in it, before anything is
    trained. Returns whether the folder was created (to remove it again if the run fails)."""
    created = not os.path.lexists(out)
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, f".write-test-{os.getpid()}")
        descriptor = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(descriptor, b"minialex")
        finally:
            os.close(descriptor)
        os.remove(probe)
    except OSError as error:
        release_out(out, None, created)
        raise TrainingError(f"--out {out}: cannot write there ({error.strerror or error}); "
                            "choose another --out") from error
    return created


def lock_out(out):
    """Hold --out/.lock (an flock, which the kernel drops when the process ends, however it
    ends) with this run's PID in it. Returns its open descriptor, or None without fcntl.
    A second run on the same --out gets a TrainingError naming the first one's PID."""
    if fcntl is None:
        return None
    path = os.path.join(out, LOCK)
    while True:
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise TrainingError(f"--out {out}: cannot create the lock file {path} "
                                f"({error.strerror or error}); choose another --out") from error
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = lock_owner(descriptor)
            os.close(descriptor)
            raise TrainingError(f"--out {out} is in use by another run ({holder}, which holds "
                                f"{path}); wait for it to end, or choose another --out")
        except OSError as error:  # a file system without locks (some network ones)
            os.close(descriptor)
            os.remove(path)
            print(f"warning: {path}: cannot lock ({error.strerror or error}); running without "
                  "the lock, so make sure that no other run uses this --out", file=sys.stderr)
            return None
        try:  # the run before may have removed the file between our open and our lock
            if os.path.samestat(os.fstat(descriptor), os.stat(path)):
                break
        except FileNotFoundError:
            pass
        os.close(descriptor)
    stale = lock_owner(descriptor)
    if stale != "PID unknown":
        print(f"{path}: the lock of a run that ended without releasing it ({stale}, no longer "
              "running); taken over")
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"{os.getpid()} {socket.gethostname()} "
              f"{time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode(), 0)
    return descriptor


def lock_owner(descriptor):
    fields = os.pread(descriptor, 200, 0).decode(errors="replace").split()
    if not fields or not fields[0].isdigit():
        return "PID unknown"
    return f"PID {fields[0]}" + (f" on {fields[1]}" if len(fields) > 1 else "")


def release_out(out, descriptor, created):
    """Remove the lock file (while still holding it) and, if this run created --out and left
    nothing in it, the folder."""
    if descriptor is not None:
        try:
            os.remove(os.path.join(out, LOCK))
        except OSError:
            pass
        os.close(descriptor)
    if created:
        try:
            os.rmdir(out)  # only if empty
        except OSError:
            pass


def data_statistics(train, lighting):
    """Per-channel mean and the PCA lighting basis of the training images (§4.1)."""
    try:
        mean = data.channel_mean(train, max_images=500)
        if not lighting:
            return mean, None, None
        eigenvalues, eigenvectors = data.pca_lighting_basis(train, max_images=500)
    except ValueError as error:  # not one readable image among those sampled
        raise TrainingError(f"{error}: the training images failed to decode (the warnings "
                            "above name them); replace them with JPEG or PNG files") from error
    return mean, eigenvalues, eigenvectors


def make_loaders(args, train, val, stats, crop):
    mean, eigenvalues, eigenvectors = stats
    lighting = None if eigenvalues is None else data.PCALighting(eigenvalues, eigenvectors)
    train_transform = data.TrainTransform(crop, mean, lighting)
    transform = data.TenCrop(crop, mean) if args.ten_crop else data.EvalTransform(crop, mean)
    if args.distributed:  # this rank's part of every global batch, and of the validation set
        return (dist.ShardedLoader(train, args.batch_size, train_transform, seed=args.seed,
                                   num_threads=args.threads),
                dist.ValidationShard(val, args.batch_size, transform, seed=args.seed,
                                     num_threads=args.threads, ten_crop=args.ten_crop))
    train_loader = data.DataLoader(train, args.batch_size, train_transform, shuffle=True,
                                   seed=args.seed, drop_last=True, num_threads=args.threads)
    val_loader = data.DataLoader(val, args.batch_size, transform, shuffle=False,
                                 seed=args.seed, num_threads=args.threads,
                                 ten_crop=args.ten_crop)
    return train_loader, val_loader


# ----------------------------------------------------------------------------------------------
# Checkpoints

def config_of(args, classes, num_parameters):
    return {"variant": args.variant, "width": args.width, "num_classes": len(classes),
            "classes": list(classes), "seed": args.seed, "init": args.init,
            "dropout": args.dropout, "batch_size": args.batch_size,
            "per_class": args.per_class if args.data is None else None,
            "no_lighting": args.no_lighting, "momentum": args.momentum,
            "weight_decay": args.weight_decay, "parameters": num_parameters,
            "ranks": dist.world_size()}


def save_checkpoint(path, model, optimizer, schedule, epoch, config, stats, history):
    mean, eigenvalues, eigenvectors = stats
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "schedule": schedule.state_dict(), "epoch": epoch, "config": config,
             "random_state": mx.random.get_state(), "history": history,
             "mean": mean}
    if eigenvalues is not None:
        state["lighting"] = {"eigenvalues": eigenvalues, "eigenvectors": eigenvectors}
    if next(iter(model.parameters())).device == "cuda":  # the GPU dropout's own stream
        state["cuda_dropout_state"] = mx.gpu.dropout_state()
    mx.save(state, path)  # atomic: a temporary file, then a rename


CHECKPOINT_KEYS = ("model", "optimizer", "schedule", "epoch", "config", "random_state",
                   "history", "mean")


def load_checkpoint(path):
    try:
        checkpoint = mx.load(path)
    except (ValueError, OSError) as error:
        raise TrainingError(f"cannot read checkpoint {path}: {error}; move it away, or choose "
                            "another --out, to start a new run") from error
    if not isinstance(checkpoint, dict) or not set(CHECKPOINT_KEYS) <= checkpoint.keys():
        raise TrainingError(f"{path} is not a checkpoint of this script (it needs the keys "
                            f"{', '.join(CHECKPOINT_KEYS)}); move it away, or choose another "
                            "--out, to start a new run")
    problem = checkpoint_problem(checkpoint)
    if problem:
        raise TrainingError(f"{path} holds a bad checkpoint: {problem}; move it away, or choose "
                            "another --out, to start a new run")
    return checkpoint


def is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool) \
        and math.isfinite(value)


def is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def model_problem(checkpoint):
    """What is wrong with the parts of a checkpoint that make the model (config, weights, mean),
    or None; checked before a model is built from them, since a crafted width could ask for any
    amount of memory. predict.py checks its checkpoints with it too."""
    config = checkpoint["config"]
    if not isinstance(config, dict):
        return f"its config is a {type(config).__name__}, not a dict"
    if config.get("variant") not in mx.models.VARIANTS:
        return (f"config variant {config.get('variant')!r} is none of "
                f"{', '.join(mx.models.VARIANTS)}")
    width = config.get("width")
    if not is_number(width) or not 0 < width <= MAX_WIDTH:
        return f"config width {width!r} is not a number in (0, {MAX_WIDTH:g}]"
    classes, num_classes = config.get("classes"), config.get("num_classes")
    if not is_int(num_classes) or num_classes < 1 or not isinstance(classes, list) \
            or len(classes) != num_classes or not all(isinstance(c, str) for c in classes):
        return (f"config num_classes {num_classes!r} and classes do not match (a list of "
                "that many names)")
    if not isinstance(checkpoint["model"], dict):
        return "its model is not a dict of weights"
    mean = checkpoint["mean"]
    if not isinstance(mean, np.ndarray) or mean.shape != (3,) or not np.isfinite(mean).all():
        return "its mean is not 3 finite numbers"
    return None


def checkpoint_problem(checkpoint):
    """What is wrong with the contents of a checkpoint that unzipped fine, or None: what a
    resumed run reads from it, checked before anything is built from it."""
    problem = model_problem(checkpoint)
    if problem:
        return problem
    epoch = checkpoint["epoch"]
    if not is_int(epoch) or epoch < 0:
        return f"epoch {epoch!r} is not a whole number >= 0"
    optimizer = checkpoint["optimizer"]
    if not isinstance(optimizer, dict) or not isinstance(optimizer.get("velocity"), dict):
        return "it holds no optimizer velocities"
    for key in ("lr", "momentum", "weight_decay"):
        if not is_number(optimizer.get(key)) or optimizer[key] < 0:
            return f"optimizer {key} {optimizer.get(key)!r} is not a finite number >= 0"
    schedule = checkpoint["schedule"]
    if not isinstance(schedule, dict) or not isinstance(schedule.get("best"), numbers.Real) \
            or not is_int(schedule.get("bad_epochs")):
        return "its schedule state is not {best, bad_epochs}"
    if not isinstance(checkpoint["random_state"], dict):
        return "its random state is not a dict"
    history = checkpoint["history"]
    if not isinstance(history, list) or not all(isinstance(r, dict) for r in history):
        return "its history is not a list of records"
    return None


# What a resumed run must share with its checkpoint, and the flag that sets it: these decide the
# model's shape, the data order and every random draw, so that resuming continues the same run.
RESUME_SETTINGS = {"variant": "--variant", "width": "--width", "num_classes": "classes",
                   "seed": "--seed", "init": "--init", "dropout": "--dropout",
                   "batch_size": "--batch-size", "per_class": "--per-class",
                   "no_lighting": "--no-lighting",
                   "momentum": "--momentum", "weight_decay": "--weight-decay"}


def check_compatible(checkpoint, config, path):
    saved = checkpoint["config"]
    differences = [f"{flag} {saved.get(key)} (this run asks for {flag} {config[key]})"
                   for key, flag in RESUME_SETTINGS.items() if saved.get(key) != config[key]]
    # Another number of ranks would change the global batch, or (with another --batch-size)
    # the order of the float32 sums: refused, so that a resumed run is the same run
    ranks = saved.get("ranks", 1)  # checkpoints written before --distributed: one process
    if ranks != config["ranks"]:
        differences.append(f"{ranks} process(es) (this run has {config['ranks']}; resume "
                           f"with mpiexec -n {ranks}{' --distributed' * (ranks == 1)})")
    if differences:
        raise TrainingError(f"{path} was trained with {'; '.join(differences)}; resume with the "
                            "same settings, or choose another --out for a new run")
    if saved["classes"] != config["classes"]:
        old, new = next((a, b) for a, b in zip(saved["classes"], config["classes"]) if a != b)
        raise TrainingError(f"{path} was trained on other classes (class '{old}' where this "
                            f"data has '{new}'); use the same --data, or another --out")


# ----------------------------------------------------------------------------------------------
# One epoch

def top_k_correct(scores, labels, k):
    """How many labels are among the k highest scores of their row."""
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return int((top == labels[:, None]).any(axis=1).sum())


def progress(iterable, total, description, enabled):
    if not enabled:
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, total=total, desc=description, leave=False, dynamic_ncols=True)


# Steps between two reads of the running loss and accuracy on the GPU: each read waits for the
# GPU to finish every step queued before it, so it is done for the progress bar and the NaN
# check only this often, and at the end of the epoch. On the CPU a read costs nothing: every
# step.
READ_EVERY_GPU = 20


def train_one_epoch(model, optimizer, loader, epoch, args):
    """One pass over the training set. Nothing in a step waits for the GPU: the labels are
    checked on the host, the batches are copied ahead on a second stream
    (mx.gpu.DevicePrefetcher), and the loss and the count of correct answers are summed
    on the device, read every READ_EVERY_GPU steps and at the end."""
    model.train()
    loader.set_epoch(epoch)
    read_every = 1 if args.device == "cpu" else READ_EVERY_GPU
    total_loss = correct = seen = 0  # as last read from the device
    sums = None  # on the device: (loss x batch size summed, correct answers summed)
    start = time.perf_counter()
    batches = mx.gpu.DevicePrefetcher(loader, args.device)
    bar = progress(batches, len(loader), f"epoch {epoch + 1}/{args.epochs}",
                   not args.no_progress)
    step = last_read = 0
    for step, (x, labels, labels_on_device) in enumerate(bar, 1):
        logits = model(mx.tensor(x, device=args.device))
        loss = F.cross_entropy(logits, labels)  # labels checked on the host, then moved
        optimizer.zero_grad()
        loss.backward()
        dist.average_gradients(model)  # nothing without --distributed (one process)
        optimizer.step()
        hits = (logits.data.argmax(axis=1) == labels_on_device).sum()
        step_sums = (loss.data * len(labels), hits)
        sums = step_sums if sums is None else (sums[0] + step_sums[0], sums[1] + step_sums[1])
        seen += len(labels)
        dist.fail_for_test(epoch * len(loader) + step)
        if CHECK_EVERY_STEP:
            dist.check_same_parameters(model, f"epoch {epoch + 1}, step {step}")
        if step % read_every == 0 or step == len(loader):
            total_loss, correct = read_sums(sums, epoch, last_read, step, optimizer)
            last_read = step
            if not args.no_progress:
                bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}",
                                img_s=f"{seen / (time.perf_counter() - start):.0f}",
                                refresh=False)  # drawn at tqdm's own pace, not every step
    if sums is not None and last_read != step:
        total_loss, correct = read_sums(sums, epoch, last_read, step, optimizer)
    total_loss, correct, seen = dist.sum_across_ranks([total_loss, correct, seen])
    if seen == 0:
        raise TrainingError(f"epoch {epoch + 1}: no training image could be read (the warnings "
                            "above name them); replace them with JPEG or PNG files")
    return {"train_loss": total_loss / seen, "train_top1": correct / seen,
            "train_images_per_s": seen / (time.perf_counter() - start)}


def read_sums(sums, epoch, last_read, step, optimizer):
    """The device's running sums as Python numbers (one device-to-host copy), or a
    TrainingError if the loss became NaN or infinite since the last read."""
    xp = mx.backend.get_array_module(sums[0])
    both = xp.stack([xp.asarray(value, dtype=xp.float64) for value in sums])
    total_loss, correct = mx.backend.as_numpy(both).tolist()
    if not math.isfinite(total_loss):
        steps = f"step {step}" if step == last_read + 1 else f"steps {last_read + 1}-{step}"
        raise TrainingError(
            f"the loss became {total_loss} in epoch {epoch + 1}, {steps}; stopped, and the "
            f"last good checkpoint is left as it was. Try a smaller --lr (now "
            f"{optimizer.lr:g})")
    return total_loss, int(correct)


def is_finite(array):
    """Whether every element of a float array is finite: one float64 sum (NaN and infinity
    carry through it, and float32 values cannot overflow it), and the element-wise check only
    to tell an overflow of huge finite float64 values from a real NaN or infinity."""
    xp = mx.backend.get_array_module(array)
    if bool(xp.isfinite(array.sum(dtype=xp.float64))):
        return True
    return bool(xp.isfinite(array).all())


def non_finite_state(model, optimizer):
    """The first parameter or velocity holding a NaN or an infinity, as words, or None."""
    names = [name for name, _ in model.named_parameters()]
    for name, parameter in zip(names, optimizer.params):
        if not is_finite(parameter.data):
            return f"parameter {name}"
    for index, velocity in enumerate(optimizer.velocity):
        if velocity is not None and not is_finite(velocity):
            return f"the velocity of parameter {names[index]}"
    return None


# Images per forward pass in ten-crop evaluation: the ten crops of --batch-size 196 are 1,960
# images, and conv1's columns (3 x 11 x 11 values per output pixel, 55 x 55 pixels per image)
# would then hold 3*11*11 * 1960*55*55 >= 2^31 elements, more than the GPU kernels index
# with 32-bit ints. 1,280 images stay below it (1.4e9) at any batch size.
EVAL_PIECE = 1280


def pieces(array, size):
    """array cut along its first axis into pieces of at most `size` (views, no copy)."""
    return [array[start:start + size] for start in range(0, len(array), size)] or [array]


def evaluate(model, loader, args):
    model.eval()
    total_loss = top1 = top5 = seen = 0
    with mx.no_grad():
        for x, labels in progress(loader, len(loader), "validation", not args.no_progress):
            if args.ten_crop:  # (N, 10, 3, S, S): average the ten softmax outputs (§4.1)
                n = x.shape[0]
                probabilities = np.concatenate([
                    F.softmax(model(mx.tensor(piece, device=args.device))).numpy()
                    for piece in pieces(x.reshape(n * 10, *x.shape[2:]), EVAL_PIECE)])
                probabilities = probabilities.reshape(n, 10, -1).mean(axis=1)
                scores = probabilities
                losses = -np.log(probabilities[np.arange(n), labels] + 1e-12)
                total_loss += float(losses.sum())
            else:
                logits = model(mx.tensor(x, device=args.device))
                scores = logits.numpy()
                total_loss += F.cross_entropy(logits, labels).item() * len(labels)
            top1 += top_k_correct(scores, labels, 1)
            top5 += top_k_correct(scores, labels, 5)
            seen += len(labels)
    # each rank evaluated its own share of the images: add the sums and counts, then divide
    total_loss, top1, top5, seen = dist.sum_across_ranks([total_loss, top1, top5, seen])
    seen = int(seen)
    if seen == 0:
        raise TrainingError("no validation image could be read (the warnings above name them); "
                            "replace them with JPEG or PNG files")
    return {"val_loss": total_loss / seen, "val_top1": top1 / seen, "val_top5": top5 / seen,
            "val_images": seen}


# ----------------------------------------------------------------------------------------------
# Pictures

def plot_curves(history, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    epochs = [record["epoch"] for record in history]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    left.plot(epochs, [r["val_loss"] for r in history], "o-", label="validation")
    left.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    right.plot(epochs, [r["train_top1"] for r in history], "o-", label="train top-1")
    right.plot(epochs, [r["val_top1"] for r in history], "o-", label="validation top-1")
    right.plot(epochs, [r["val_top5"] for r in history], "o--", label="validation top-5")
    right.set(xlabel="epoch", ylabel="accuracy", title="accuracy", ylim=(0, 1.02))
    for axes in (left, right):
        axes.grid(alpha=0.3)
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_filters(weight, path, initial=None):
    """The first layer's filters as small colour images, like the paper's Figure 3: rows of up
    to 12, each filter stretched to its own range as in that figure.

    After a short run the filters are still mostly their random initial values; given the
    `initial` weights, a second panel shows what training added (weight - initial), where the
    learned colour blobs and edges show.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [("learned filters", weight)]
    if initial is not None:
        panels.append(("learned minus initial: what training added", weight - initial))
    F, _, KH, KW = weight.shape
    columns = min(12, F)
    rows_per_panel = int(math.ceil(F / columns))
    rows = rows_per_panel * len(panels)
    height = rows * 0.85 + 0.5
    figure, grid = plt.subplots(rows, columns, figsize=(columns * 0.75, height), squeeze=False)
    for panel, (label, filters) in enumerate(panels):
        filters = filters.transpose(0, 2, 3, 1)  # (F, KH, KW, 3): images
        block = grid[panel * rows_per_panel:(panel + 1) * rows_per_panel].ravel()
        for index, axes in enumerate(block):
            axes.axis("off")
            if index < F:
                f = filters[index]
                axes.imshow((f - f.min()) / (f.max() - f.min() + 1e-12), interpolation="nearest")
        block[0].set_title(label, loc="left", fontsize=9)
    figure.suptitle(f"conv1: {F} filters of {KH}x{KW}x3", fontsize=10)
    figure.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=1 - 0.45 / height,
                           hspace=0.4, wspace=0.1)
    figure.savefig(path, dpi=100)
    plt.close(figure)


# ----------------------------------------------------------------------------------------------
# The run

def run(args):
    if args.device == "cuda" and not mx.backend.cupy_available():
        raise TrainingError("--device cuda: no usable GPU here (CuPy is not installed, or there "
                            "is no CUDA device). On a machine with an NVIDIA GPU: "
                            "pip install -e '.[gpu]'; else use --device cpu")
    if dist.rank() != 0:  # rank 0 alone writes --out, and holds its lock for the whole job
        dist.barrier()    # until rank 0 has it (or, failing, has ended the job)
        return train_run(args)
    created = prepare_out(args.out)
    try:
        lock = lock_out(args.out)
    except BaseException:
        release_out(args.out, None, created)
        raise
    try:
        dist.barrier()
        return train_run(args)
    finally:
        release_out(args.out, lock, created)


def train_run(args):
    checkpoint_path = os.path.join(args.out, CHECKPOINT)
    checkpoint = None
    if dist.rank() == 0:  # the others get it from rank 0: --out need not be on their disks
        if args.resume:
            if not os.path.exists(checkpoint_path):
                raise TrainingError(f"--resume: nothing to resume, {checkpoint_path} does not "
                                    "exist; run without --resume to start training")
            checkpoint = load_checkpoint(checkpoint_path)
        elif os.path.exists(checkpoint_path):
            raise TrainingError(f"{checkpoint_path} already exists; pass --resume to continue "
                                "it, or choose another --out (nothing was overwritten)")
    checkpoint = dist.broadcast_object(checkpoint)

    mx.random.manual_seed(args.seed)
    train, val = make_datasets(args)
    check_memory(args, len(train.classes), len(train) + len(val) if args.data is None else 0)
    model = mx.models.alexnet(args.variant, num_classes=len(train.classes), width=args.width,
                              init=args.init, dropout=args.dropout)
    # the same seed draws the same initial weights on a resumed run, for conv1_filters.png
    initial_conv1 = model.features[0].weight.data.copy()
    config = config_of(args, train.classes, model.num_parameters())
    print(f"AlexNet variant={args.variant} width={args.width} "
          f"parameters={model.num_parameters():,} classes={len(train.classes)} "
          f"device={args.device} fast paths: "
          + (", ".join(name for name in mx.fast_paths() if name in mx.enabled_paths())
             or "none (the reference ops)"))
    print(f"data: {'bundled shapes' if args.data is None else args.data}: {len(train)} "
          f"training and {len(val)} validation images")
    global_batch = args.batch_size * dist.world_size()
    if args.distributed:
        processes = " ".join(f"{r}={where}" for r, where in enumerate(dist.process_ids()))
        print(f"distributed: {dist.world_size()} process(es) x --batch-size {args.batch_size} "
              f"= global batch {global_batch}; {mx.fast.threads.THREADS} thread(s) each; "
              f"rank=host:PID {processes}")
    if len(train) < global_batch:  # the loader drops a last, smaller batch
        processes = f" x {dist.world_size()} processes" if dist.world_size() > 1 else ""
        raise TrainingError(f"--batch-size {args.batch_size}{processes} is more than the "
                            f"{len(train)} training images, so an epoch would have no batch; "
                            "use a smaller --batch-size")

    optimizer = optim.SGD(model.parameters(), lr=0.01 if args.lr is None else args.lr,
                          momentum=args.momentum, weight_decay=args.weight_decay)
    schedule = optim.ReduceLROnPlateau(optimizer, factor=0.1, patience=args.patience)
    history, first_epoch = [], 0
    if checkpoint is not None:
        check_compatible(checkpoint, config, checkpoint_path)
        restore(checkpoint, checkpoint_path, model, optimizer, schedule)
        history, first_epoch = checkpoint["history"], checkpoint["epoch"] + 1
        lighting = checkpoint.get("lighting")
        stats = (checkpoint["mean"], *((lighting["eigenvalues"], lighting["eigenvectors"])
                                       if lighting else (None, None)))
        print(f"resumed from {checkpoint_path} after epoch {first_epoch}")
        if first_epoch >= args.epochs:
            raise TrainingError(f"--resume: the checkpoint has finished {first_epoch} epochs "
                                f"already; ask for more with --epochs {first_epoch + 1} or more")
        if args.lr is not None and args.lr != optimizer.lr:
            print(f"--lr {args.lr:g}: the learning rate is now {args.lr:g} (the checkpoint's "
                  f"was {optimizer.lr:g}); the schedule goes on from it")
            optimizer.lr = args.lr
    else:
        stats = dist.broadcast_object(data_statistics(train, lighting=not args.no_lighting)
                                      if dist.rank() == 0 else None)
    # the same seed draws the same weights on every rank; rank 0's are sent to be sure of it
    dist.broadcast_parameters(model)
    dist.check_same_parameters(model, "at the start")
    model.to(args.device)
    optimizer.load_state_dict(optimizer.state_dict())  # velocities onto the model's device
    dist.overlap_gradients(model)  # gradients travel while backward runs (several ranks)

    train_loader, val_loader = make_loaders(args, train, val, stats, model.input_size)
    for epoch in range(first_epoch, args.epochs):
        started = time.perf_counter()
        record = {"epoch": epoch + 1, "lr": optimizer.lr}
        record.update(train_one_epoch(model, optimizer, train_loader, epoch, args))
        record.update(evaluate(model, val_loader, args))
        record["seconds"] = time.perf_counter() - started
        history.append(record)
        print(f"epoch {epoch + 1}/{args.epochs}  lr {record['lr']:.4g}  "
              f"train loss {record['train_loss']:.3f} top-1 {record['train_top1']:.3f}  |  "
              f"val loss {record['val_loss']:.3f} top-1 {record['val_top1']:.3f} "
              f"top-5 {record['val_top5']:.3f}  ({record['seconds']:.0f} s, "
              f"{record['train_images_per_s']:.0f} img/s)", flush=True)
        # never save a model that has diverged: the last good checkpoint stays as it is
        bad = non_finite_state(model, optimizer)
        if bad is None and not math.isfinite(record["val_loss"]):
            bad = "the validation loss"
        if bad is not None:
            kept = (f"{checkpoint_path} (epoch {epoch}) is left as it was"
                    if os.path.exists(checkpoint_path) else "nothing was saved")
            raise TrainingError(f"{bad} is NaN or infinite at the end of epoch {epoch + 1} "
                                f"(step {len(train_loader)}); stopped, and {kept}. Try a "
                                f"smaller --lr (now {record['lr']:g})")
        schedule.step(record["val_loss"])
        dist.check_same_parameters(model, f"the checkpoint of epoch {epoch + 1}")
        if dist.rank() == 0:
            save_checkpoint(checkpoint_path, model, optimizer, schedule, epoch, config, stats,
                            history)
            write_results(args.out, history, config, model, initial_conv1)
        dist.barrier()  # the others wait, so that a failure after it leaves a whole checkpoint
    if args.export_onnx and dist.rank() == 0:
        onnx_path = os.path.join(args.out, ONNX_FILE)
        minialex.onnx.export(model, onnx_path, (1, 3, model.input_size, model.input_size))
        print(f"wrote {onnx_path} (ONNX opset {minialex.onnx.OPSET}, any batch size)")
    skipped = getattr(train, "skipped", 0) + getattr(val, "skipped", 0)
    if skipped:
        print(f"skipped {skipped} unreadable image file(s); the warnings above name them")
    return history


def restore(checkpoint, path, model, optimizer, schedule):
    """Load a checkpoint's state into the model, optimizer, schedule and random generator; a
    part that does not fit them is a TrainingError (one line)."""
    velocity = checkpoint["optimizer"]["velocity"]
    if checkpoint["optimizer"]["momentum"] and len(velocity) != len(optimizer.params):
        raise TrainingError(f"{path} holds a bad checkpoint: velocities for {len(velocity)} of "
                            f"the {len(optimizer.params)} parameters; move it away, or choose "
                            "another --out, to start a new run")
    for part, load in (("weights", lambda: model.load_state_dict(checkpoint["model"])),
                       ("optimizer state", lambda: optimizer.load_state_dict(
                           checkpoint["optimizer"])),
                       ("schedule state", lambda: schedule.load_state_dict(
                           checkpoint["schedule"])),
                       ("random state", lambda: mx.random.set_state(
                           checkpoint["random_state"])),
                       ("GPU dropout state", lambda: "cuda_dropout_state" not in checkpoint
                        or mx.gpu.set_dropout_state(checkpoint["cuda_dropout_state"]))):
        try:
            load()
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as error:
            message = " ".join(str(error).split())[:300]
            raise TrainingError(f"{path} holds a bad checkpoint: cannot load its {part} "
                                f"({type(error).__name__}: {message}); move it away, or "
                                "choose another --out, to start a new run") from error


def write_results(out, history, config, model, initial_conv1):
    final = {key: history[-1][key] for key in ("val_top1", "val_top5", "val_loss", "train_loss",
                                               "train_top1")}
    final["epochs"] = history[-1]["epoch"]
    metrics = {"config": config, "epochs": history, "final": final}
    path = os.path.join(out, "metrics.json")
    temporary = path + ".tmp"
    with open(temporary, "w") as file:
        json.dump(metrics, file, indent=2)
    os.replace(temporary, path)
    plot_curves(history, os.path.join(out, "curves.png"))
    plot_filters(mx.backend.as_numpy(model.features[0].weight.data),
                 os.path.join(out, "conv1_filters.png"), initial_conv1)


# TEST ONLY (tests/test_distributed.py): compare the ranks' weights after every step
CHECK_EVERY_STEP = os.environ.get("MINIALEX_TEST_CHECK_EVERY_STEP") == "1"


def start_distributed(args):
    """Join the MPI job; on ranks other than 0 nothing is printed to stdout and no progress
    bar is drawn (rank 0 speaks for the job). Returns an exit status, or None to go on."""
    try:
        dist.init()
        if args.device == "cuda" and mx.backend.cupy_available():
            dist.init_gpu()  # NOT RUN YET: GPU local_rank(), gradients through NCCL
    except dist.DistributedError as error:  # no MPI, or (with --device cuda) no NCCL
        print(f"error: {error}", file=sys.stderr)
        return 2
    if dist.rank() != 0:
        sys.stdout = open(os.devnull, "w")
        args.no_progress = True
    return None


def fail_job(error, status):
    """With several ranks: one line naming the rank, then end every rank of the job (the
    others may be waiting for this one in a collective, which would never end)."""
    if dist.rank() != 0 and isinstance(error, TrainingError):
        # the same error is often raised on every rank: let rank 0's line be the only one
        time.sleep(2)
    where = f"rank {dist.rank()} of {dist.world_size()}"
    if isinstance(error, TrainingError):
        print(f"error: {error} ({where})", file=sys.stderr, flush=True)
    else:
        message = " ".join(str(error).split())[:300]
        print(f"error: {where} failed: {type(error).__name__}: {message}; the job is stopped",
              file=sys.stderr, flush=True)
    dist.abort(status)


def main(argv=None):
    args = parse_args(argv)
    if args.distributed:
        status = start_distributed(args)
        if status is not None:
            return status
    # NumPy's warnings about an overflow or a NaN in some op: the loss and every weight are
    # checked here, and a non-finite one stops the run with one line that says where
    warnings.filterwarnings("ignore", category=RuntimeWarning,
                            message="(overflow|invalid value|divide by zero) encountered")
    if args.reference:  # before any op runs: every op asks dispatch which code to run
        mx.set_fast(False)
    started = time.perf_counter()
    try:
        history = run(args)
    except (TrainingError, dist.DistributedError) as error:
        if dist.world_size() > 1:
            fail_job(TrainingError(str(error)), 2)
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # mpiexec passes Ctrl-C to every rank: rank 0 says it
        if dist.rank() != 0:
            return 130
        if os.path.exists(os.path.join(args.out, CHECKPOINT)):
            print(f"\ninterrupted; {args.out}/{CHECKPOINT} holds the last finished epoch, and "
                  "--resume continues from it", file=sys.stderr)
        else:
            print("\ninterrupted before the first epoch ended; nothing was saved",
                  file=sys.stderr)
        return 130
    except BaseException as error:  # a bug, or a rank told to exit: the whole job ends
        if dist.world_size() > 1 and not (isinstance(error, SystemExit) and not error.code):
            fail_job(error, 1)
        raise
    final = history[-1]
    print(f"done in {time.perf_counter() - started:.0f} s: val top-1 {final['val_top1']:.3f}, "
          f"top-5 {final['val_top5']:.3f}; results in {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
