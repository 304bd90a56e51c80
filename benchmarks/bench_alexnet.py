"""The AlexNet benchmark: every layer's forward and backward time and the whole training step in
images/s, for minialex on the CPU and the GPU beside PyTorch on the same model and weights.

    python benchmarks/bench_alexnet.py                     # seed and paper, width 1: minutes
    python benchmarks/bench_alexnet.py --variant seed --width 0.25 --batch 8 --scaling 1,8
    python benchmarks/bench_alexnet.py --engines mx-cpu,torch-cpu --threads 2 --out DIR
    python benchmarks/bench_alexnet.py --reference         # minialex's reference ops alone

Engines: mx-cpu (minialex on NumPy), mx-gpu (minialex on CuPy, where CuPy sees a device),
torch-cpu and torch-gpu (PyTorch, where it is installed; it is never a dependency of minialex).
torch-gpu gives two rows: "torch GPU (FP32)" with TF32 off, computing in float32 as minialex
does, and "torch GPU (defaults)" with PyTorch's own settings. An engine that is not there is
left out with a printed note.

Method.
- As a user's script runs it: NumPy is imported before minialex (the order no longer matters to
  minialex's speed: its fast paths run their products on their own threads with BLAS held to
  one thread), and minialex runs the fast paths MINIALEX_FAST in the environment selects (all
  by default; --reference sets MINIALEX_FAST=0, the reference ops alone, and the minialex rows
  are labelled "(reference)"). OPENBLAS_THREAD_TIMEOUT is shown only where the environment
  sets it.
- Same model, batch and weights: one minialex AlexNet (variant seed or paper, input 227,
  1000 classes, float32) gives its initial weights to every engine; the PyTorch model mirrors
  minialex's layer by layer with torch.nn (paper: LocalResponseNorm(5, alpha=5e-4, beta=0.75,
  k=2), groups=2 in conv2/4/5; seed: neither) and loads them under the same names
  (features.0.weight, ...). Before timing, every engine's logits on two images (eval mode) are
  compared with minialex's on the CPU: the printed difference shows the models are the same.
  The batch is 32 on the CPU and 128 on the GPU unless --batch says otherwise.
- Threads: --threads (default os.cpu_count()) sets NumPy's BLAS threads (OMP_NUM_THREADS and
  OPENBLAS_NUM_THREADS before NumPy is imported, and threadpoolctl where it is installed) and
  torch.set_num_threads, so both engines use the same cores.
- Training step: forward, cross-entropy, zero_grad, backward, SGD(lr=0.01, momentum=0.9,
  weight_decay=5e-4) step, dropout active. Each engine's steps run in a fresh process of their
  own (this script with a hidden --child flag), so that no other engine's idle threads share
  its cores: a BLAS or OpenMP thread pool spins for a while after its work (OpenBLAS's about
  0.1 s) and takes the cores from whatever runs next. A process builds the model (the same
  seeded weights), takes --warmup untimed steps, then --repeats timed ones: one series.
  --series series per engine (3), the engines alternating (process A, B, A, B, ...) so that a
  noisy machine slows them alike. The wall clock times each step, with the GPU synchronized
  before and after. Reported: the median over the series of each series' median images/s,
  its spread (min-max of the series medians; their IQR, and every step's time, are in
  results.json), GFLOP/s = training FLOP per image x images/s, and that as a fraction of the
  machine's own limit: the best rate of a float32 SGEMM, measured at the start and at the end
  of the run (numpy.matmul on --sgemm-size^3 on the CPU; cuBLAS through cupy.matmul on 4096^3
  with CUPY_TF32=0 on the GPU). The 1-minute load average at the start and the end tells
  whether something else ran.
- Per layer: every layer of model.features and model.classifier alone (flatten is skipped),
  on its real input (the previous layers' output): forward, then backward of its output with a
  random gradient, the input requiring a gradient except for conv1's (the image's gradient is
  not needed in training). This table stays in this one process, every engine's model side by
  side (simpler, and each layer needs every engine's input): the engines alternate call by
  call, --warmup and --repeats rounds; between two CPU engines the script waits --settle
  seconds (0.15) for the thread pool of the one that ran to go idle (measured on 2 cores:
  PyTorch's layers 2-3x slower without the wait), and the layer then runs once untimed (to
  wake the sleeping pool) before the timed call; medians.
  FLOP from the shapes: a convolution 2 N F (C/G) KH KW OH OW forward, and as much again for
  each of grad_input and grad_weight backward (conv1 has no grad_input); a linear layer 2 N IN
  OUT, the same way. Layers without arithmetic (ReLU, LRN, pooling, dropout) show GB/s of the
  least traffic they need: x and y forward, dy, x and dx backward.
- Memory of a training step, in the first series of each engine: after its first warm-up
  step, one more untimed step is measured (then the rest of the warm-up and the timed steps
  follow). CPU: the resident set, its high-water mark reset (5 into
  /proc/self/clear_refs) before the step and read (VmHWM) after it; "step working set" is that
  peak minus the resident set just before the step (without /proc: ru_maxrss, the peak only).
  GPU: CuPy's memory pool (every free block released before the step; the pool's size after
  it is its high-water mark) or torch.cuda.max_memory_allocated after reset_peak_memory_stats.
- Scaling: images/s and memory at each batch of --scaling for the first variant, one series
  per engine and batch (at an engine's own batch, the training step's numbers above).
- What each fast path buys (minialex CPU, first variant, its training-step batch; skip it with
  --no-fast-table): the reference alone (MINIALEX_FAST=0), then the CPU's fast paths switched
  on one more at a time in the order of minialex.fast_paths() (MINIALEX_FAST=winograd, then
  winograd,gemm, ...; cuda-kernels, the GPU's, is left out). Each configuration is one fresh
  process, --warmup + --fast-repeats (3) timed steps, so that "memory" (a malloc setting made
  when minialex is imported) is honoured too. Columns: the median images/s and step time,
  the speed-up over the reference and over the row before, and where the step's time goes,
  timed inside the same steps: each layer's forward (its module's forward, wrapped) and
  backward (the backward of the functions that forward made, wrapped), SGD's step, and
  "other", the rest (the loss, zero_grad, flatten, the walk over the graph). The wrappers
  cost microseconds per layer. The parts are means over the timed steps, so that they add
  up to the mean step; ReLUs, poolings, LRNs and dropouts are summed by kind.

Time: about 6 minutes on 2 cores with the defaults, a minute of it for the fast-path table
(its reference steps, 2 s each at width 1 on an idle machine, are the slowest of the run).

Output: the tables on the console, and in --out (runs/bench_alexnet) results.json
(everything, raw times included), results.md (the same tables) and results.png (bar charts;
needs matplotlib, and is left out with a note without it).
"""
import argparse
import functools
import gc
import json
import os
import pathlib
import platform
import subprocess
import sys
import time


def _threads_from_argv(argv):
    """The value of --threads in argv, or None: it must be known before NumPy is imported."""
    for index, arg in enumerate(argv):
        if arg == "--threads" and index + 1 < len(argv):
            return argv[index + 1]
        if arg.startswith("--threads="):
            return arg.split("=", 1)[1]
    return None


if __name__ == "__main__" and (_threads_from_argv(sys.argv[1:]) or "").isdigit():
    for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_variable] = _threads_from_argv(sys.argv[1:])
if __name__ == "__main__" and "--reference" in sys.argv[1:]:
    # before minialex is imported: its one process-wide setting (the "memory" fast path) is
    # made at import, so this is the only way to leave it out of this process too
    os.environ["MINIALEX_FAST"] = "0"
os.environ["CUPY_TF32"] = "0"  # before CuPy is imported (minialex imports it on first use)

# NumPy first, as a user's script imports it: minialex's speed must not depend on the order
import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from a checkout
import minialex  # noqa: E402
import minialex.functional as F  # noqa: E402
from minialex import backend, optim, random  # noqa: E402
from minialex.models.alexnet import INPUT_SIZE, VARIANTS, alexnet  # noqa: E402
from minialex.tensor import Tensor, no_grad, tensor  # noqa: E402

SCRIPT = pathlib.Path(__file__).resolve()
ENGINES = ("mx-cpu", "mx-gpu", "torch-cpu", "torch-gpu")
LABELS = {"mx-cpu": "minialex CPU", "mx-gpu": "minialex GPU", "torch-cpu": "torch CPU",
          "torch-gpu": "torch GPU (FP32)", "torch-gpu-defaults": "torch GPU (defaults)"}
DEFAULT_BATCH = {"cpu": 32, "cuda": 128}
NUM_CLASSES = 1000
SGD_SETTINGS = {"lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4}
GPU_SGEMM_SIZE = 4096
CHILD_TAG = "bench_alexnet child: "  # the child's result line starts with this
GPU_ONLY_FAST_PATHS = ("cuda-kernels",)  # left out of the CPU's table "What each fast path buys"
FOOTNOTE = ("(x GB/s): a layer without arithmetic; bytes of x and y forward, dy, x and dx "
            "backward, per second.\nPeak memory: the resident set on the CPU, the allocator's "
            "high-water mark on the GPU;\nstep working set = peak - memory just before the "
            "step. Ratios and fractions are of the medians.")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.split("\n")[2:]))
    p.add_argument("--variant", default="seed,paper",
                   help=f"comma-separated variants, of {', '.join(VARIANTS)} (default: "
                   "seed,paper)")
    p.add_argument("--engines", default=",".join(ENGINES),
                   help=f"comma-separated subset of {','.join(ENGINES)} (default: all; those "
                   "missing here are left out with a note)")
    p.add_argument("--batch", type=int, default=None,
                   help="images per step on every engine (default: 32 on the CPU, 128 on the "
                   "GPU)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed steps per series, and timed rounds per layer (default 5)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed steps first, in every process (default 2)")
    p.add_argument("--series", type=int, default=None,
                   help="fresh processes per engine for the training step, engines alternating "
                   "(default 3); the median of their medians is reported")
    p.add_argument("--width", type=float, default=1.0,
                   help="channel multiplier of the model: 1 is the real AlexNet")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU cores for NumPy's BLAS and for torch (default: os.cpu_count())")
    p.add_argument("--scaling", default=None,
                   help="batches of the scaling table, e.g. 1,8,32,128 (the default); '' skips "
                   "it")
    p.add_argument("--sgemm-size", type=int, default=None,
                   help="n of the n^3 CPU SGEMM that measures the BLAS limit (default 2048)")
    p.add_argument("--settle", type=float, default=0.15,
                   help="seconds between two CPU engines' calls, for the thread pool of the one "
                   "that ran to go idle (default 0.15; 0: none)")
    p.add_argument("--reference", action="store_true",
                   help="minialex engines without fast paths (MINIALEX_FAST=0): the reference "
                   "ops alone")
    p.add_argument("--gpu-conv", choices=("auto", "implicit", "explicit"), default="auto",
                   help="minialex GPU convolutions: the implicit GEMM (no column buffer), "
                   "im2col + SGEMM (explicit), or auto (minialex.gpu.Conv2dOnKernels); run "
                   "with implicit and explicit to compare the peak memory")
    p.add_argument("--no-layers", action="store_true", help="skip the per-layer table")
    p.add_argument("--no-fast-table", action="store_true",
                   help="skip the table \"What each fast path buys\" (a process per "
                   "configuration, the reference's steps being the slowest of the run)")
    p.add_argument("--fast-repeats", type=int, default=None,
                   help="timed steps per configuration of that table (default 3)")
    p.add_argument("--no-memory", action="store_true",
                   help="skip the memory measurements (made in the first series of each "
                   "engine and batch)")
    p.add_argument("--quick", action="store_true",
                   help="repeats 2, warm-up 1, one series, fast-path table repeats 1, SGEMM "
                   "1024^3, no scaling table (the options given explicitly still count)")
    p.add_argument("--out", default="runs/bench_alexnet",
                   help="folder for results.json, results.md and results.png")
    # The child process that times one engine's training steps (see run_child)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-memory", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--child-profile", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    args.variants = [v.strip() for v in args.variant.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown or not args.variants:
        p.error(f"--variant: unknown variant {', '.join(map(repr, unknown)) or 'none given'}; "
                f"choose from {', '.join(VARIANTS)}")
    args.engine_names = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in args.engine_names if e not in ENGINES]
    if unknown or not args.engine_names:
        p.error(f"--engines: unknown engine {', '.join(map(repr, unknown)) or 'none given'}; "
                f"choose from {', '.join(ENGINES)}")
    if args.child is not None and args.child not in LABELS:
        p.error(f"--child: unknown engine {args.child!r}")
    defaults = {"repeats": 2, "warmup": 1, "series": 1, "fast_repeats": 1, "sgemm_size": 1024,
                "scaling": ""} if args.quick else \
        {"repeats": 5, "warmup": 2, "series": 3, "fast_repeats": 3, "sgemm_size": 2048,
         "scaling": "1,8,32,128"}
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.batch is not None and args.batch < 1:
        p.error(f"--batch must be >= 1; got {args.batch}")
    if args.repeats < 1:
        p.error(f"--repeats must be >= 1; got {args.repeats}")
    if args.series < 1:
        p.error(f"--series must be >= 1; got {args.series}")
    if args.fast_repeats < 1:
        p.error(f"--fast-repeats must be >= 1; got {args.fast_repeats}")
    if args.warmup < 0:
        p.error(f"--warmup must be >= 0; got {args.warmup}")
    if not args.width > 0:
        p.error(f"--width must be > 0; got {args.width}")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be >= 1; got {args.threads}")
    if args.settle < 0:
        p.error(f"--settle must be >= 0; got {args.settle}")
    if args.sgemm_size < 1:
        p.error(f"--sgemm-size must be >= 1; got {args.sgemm_size}")
    try:
        args.scaling_batches = [int(b) for b in args.scaling.split(",") if b.strip()]
    except ValueError:
        p.error(f"--scaling must be comma-separated batch sizes such as 1,8,32; got "
                f"{args.scaling!r}")
    if any(b < 1 for b in args.scaling_batches):
        p.error(f"--scaling: every batch must be >= 1; got {args.scaling!r}")
    if args.threads is None:
        args.threads = os.cpu_count() or 1
    return args


# ----------------------------------------------------------------------------------------------
# The work: layers, shapes, FLOP

def module_at(model, path):
    """The sub-module at "features.3" or "flatten", in a minialex or a torch model alike."""
    for part in path.split("."):
        model = model[int(part)] if part.isdigit() else getattr(model, part)
    return model


def forward_order(model):
    """(path, module) of every layer in the order AlexNet.forward applies them."""
    paths = [f"features.{i}" for i in range(len(model.features))]
    paths += ["avgpool"] if hasattr(model, "avgpool") else []
    paths += ["flatten"] + [f"classifier.{i}" for i in range(len(model.classifier))]
    return [(path, module_at(model, path)) for path in paths]


SHORT_NAMES = {"Conv2d": "conv", "ReLU": "relu", "LocalResponseNorm": "lrn",
               "MaxPool2d": "pool", "Dropout": "dropout", "Flatten": "flatten",
               "AdaptiveAvgPool2d": "avgpool"}


def layer_names(model):
    """{path: name} of every layer in forward order: conv1, relu1, pool1, ..., fc8."""
    names, counts = {}, {}
    for path, module in forward_order(model):
        kind = type(module).__name__
        counts[kind] = counts.get(kind, 0) + 1
        if kind == "Linear":  # fc6, fc7, fc8 after AlexNet's five convolutions
            names[path] = f"fc{counts.get('Conv2d', 0) + counts[kind]}"
        elif kind in ("Flatten", "AdaptiveAvgPool2d"):
            names[path] = SHORT_NAMES[kind]
        else:
            names[path] = f"{SHORT_NAMES.get(kind, kind.lower())}{counts[kind]}"
    return names


def layer_flops(model, input_shape, batch=1):
    """One row per layer, in forward order: its name (conv1, relu1, ..., fc8), shapes, whether
    the benchmark times it (every layer of features and classifier), and the FLOP and least
    bytes of its forward and backward at `batch`, from the shapes of one image run through it.

    conv: 2 N F (C/G) KH KW OH OW forward; backward grad_input + grad_weight, each as much
    (the first layer has no grad_input: the image needs no gradient). linear: 2 N IN OUT, the
    same way. Other layers have no FLOP; their bytes are x and y forward, dy, x, dx backward.
    """
    rows, names = [], layer_names(model)
    parameters = model.parameters()
    x = tensor(np.zeros((1, *input_shape), dtype=np.float32), device=parameters[0].device)
    was_training = model.training
    model.eval()
    with no_grad():
        for index, (path, module) in enumerate(forward_order(model)):
            y = module(x)
            kind = type(module).__name__
            needs_input_grad = index > 0
            in_size, out_size = int(np.prod(x.shape)) * batch, int(np.prod(y.shape)) * batch
            forward_flop = 0
            if kind == "Conv2d":
                KH, KW = module.kernel_size
                forward_flop = 2 * out_size * module.in_channels // module.groups * KH * KW
            elif kind == "Linear":
                forward_flop = 2 * batch * module.in_features * module.out_features
            backward_flop = forward_flop * (2 if needs_input_grad else 1)
            rows.append({"name": names[path], "path": path, "kind": kind,
                         "timed": not path.startswith(("flatten", "avgpool")),
                         "needs_input_grad": needs_input_grad,
                         "input_shape": [batch, *x.shape[1:]],
                         "output_shape": [batch, *y.shape[1:]],
                         "forward_flop": forward_flop, "backward_flop": backward_flop,
                         "forward_bytes": 4 * (in_size + out_size),
                         "backward_bytes": 4 * (out_size + 2 * in_size)})
            x = y
    model.train(was_training)
    return rows


def training_flop_per_image(rows):
    return sum(r["forward_flop"] + r["backward_flop"] for r in rows) / rows[0]["input_shape"][0]


# ----------------------------------------------------------------------------------------------
# Engines: the same few operations on minialex and on PyTorch

class Engine:
    """One engine: a framework on a device. The subclasses say how to make its arrays and
    models; the training step and the timing of one layer are the same code for all."""

    def __init__(self, name, device):
        self.name, self.label, self.device = name, LABELS[name], device
        self.batch = DEFAULT_BATCH[device]

    def prepare(self):
        """Settings to make before each timed call (PyTorch's TF32 switches)."""

    def step(self, model, optimizer, x, labels):
        loss = self.cross_entropy(model(x), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss

    def time_layer(self, layer, x, grad, needs_input_grad):
        """(forward, backward) seconds of `layer` alone on input x, with the output's gradient
        `grad`; the weights' gradients are cleared first, as zero_grad() does in training."""
        for parameter in layer.parameters():
            parameter.grad = None
        x = self.leaf(x, needs_input_grad)
        self.sync()
        started = time.perf_counter()
        y = layer(x)
        self.sync()
        forward_done = time.perf_counter()
        y.backward(grad)
        self.sync()
        return forward_done - started, time.perf_counter() - forward_done


class MinialexEngine(Engine):
    framework = "minialex"

    def __init__(self, name, device):
        super().__init__(name, device)
        self.xp = np if device == "cpu" else backend._import_cupy()
        self.cross_entropy = F.cross_entropy
        self.label += fast_path_suffix()
        if device == "cuda" and minialex.gpu.Conv2dOnKernels.algorithm != "auto":
            self.label += f" (conv {minialex.gpu.Conv2dOnKernels.algorithm})"

    def sync(self):
        if self.device == "cuda":
            self.xp.cuda.Device().synchronize()

    def build(self, variant, width, state):
        model = alexnet(variant, NUM_CLASSES, width=width)
        model.load_state_dict(state)
        return model.to(self.device).train()

    def optimizer(self, model):
        return optim.SGD(model.parameters(), **SGD_SETTINGS)

    def native(self, array):
        return backend.to_device(array, self.device)

    def make_batch(self, images, labels):
        return tensor(images, device=self.device), self.native(labels)

    def leaf(self, array, requires_grad):
        return Tensor(array, requires_grad=requires_grad)

    def logits(self, model, images):
        model.eval()
        with no_grad():
            logits = model(tensor(images, device=self.device)).numpy()
        model.train()
        return logits

    def forward_no_grad(self, layer, x):
        with no_grad():
            return layer(Tensor(x)).data


class TorchEngine(Engine):
    framework = "torch"

    def __init__(self, torch, name):
        super().__init__(name, "cuda" if name.startswith("torch-gpu") else "cpu")
        self.torch, self.fp32 = torch, name != "torch-gpu-defaults"
        self.cross_entropy = torch.nn.functional.cross_entropy

    def prepare(self):
        if self.device == "cuda":  # TF32 off for the FP32 row; PyTorch's own defaults otherwise
            matmul, cudnn = (False, False) if self.fp32 else TORCH_DEFAULTS["tf32"]
            self.torch.backends.cuda.matmul.allow_tf32 = matmul
            self.torch.backends.cudnn.allow_tf32 = cudnn

    def sync(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def build(self, variant, width, state):
        model = torch_mirror(self.torch, alexnet(variant, NUM_CLASSES, width=width))
        model.load_state_dict({name: self.torch.from_numpy(np.asarray(array))
                               for name, array in state.items()})
        return model.to(self.device).train()

    def optimizer(self, model):
        return self.torch.optim.SGD(model.parameters(), **SGD_SETTINGS)

    def native(self, array):
        return self.torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    def make_batch(self, images, labels):
        return self.native(images), self.native(labels.astype(np.int64))

    def leaf(self, x, requires_grad):
        return x.detach().requires_grad_(requires_grad)

    def logits(self, model, images):
        model.eval()
        with self.torch.no_grad():
            logits = model(self.native(images)).cpu().numpy()
        model.train()
        return logits

    def forward_no_grad(self, layer, x):
        with self.torch.no_grad():
            return layer(x)


def fast_path_setting():
    """minialex's fast paths switched on in this process: "all", "none" or their names."""
    enabled = minialex.enabled_paths()
    if enabled == set(minialex.fast_paths()):
        return "all"
    return ",".join(name for name in minialex.fast_paths() if name in enabled) or "none"


def fast_path_suffix():
    """What a minialex engine's label says when not every fast path is on."""
    setting = fast_path_setting()
    return {"all": "", "none": " (reference)"}.get(setting, f" (MINIALEX_FAST={setting})")


TORCH_DEFAULTS = {}  # PyTorch's TF32 switches as it came, before this script changes them


def import_torch():
    """(torch, None), or (None, why not)."""
    try:
        import torch
    except Exception as error:  # not installed, or a broken install: either way, leave it out
        return None, f"PyTorch does not import ({type(error).__name__}: {error})"
    if not TORCH_DEFAULTS:
        TORCH_DEFAULTS["tf32"] = (torch.backends.cuda.matmul.allow_tf32,
                                  torch.backends.cudnn.allow_tf32)
        TORCH_DEFAULTS["cudnn.benchmark"] = torch.backends.cudnn.benchmark
    return torch, None


def torch_mirror(torch, model):
    """A torch.nn AlexNet with minialex `model`'s layers, one for one, under the same names."""
    nn = torch.nn

    def mirror(layer):
        kind = type(layer).__name__
        if kind == "Conv2d":
            return nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size,
                             layer.stride, layer.padding, groups=layer.groups,
                             bias=layer.bias is not None)
        if kind == "Linear":
            return nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
        if kind == "LocalResponseNorm":
            return nn.LocalResponseNorm(layer.size, layer.alpha, layer.beta, layer.k)
        if kind == "MaxPool2d":
            return nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding,
                                ceil_mode=layer.ceil_mode)
        if kind == "AdaptiveAvgPool2d":
            return nn.AdaptiveAvgPool2d(layer.output_size)
        if kind == "Dropout":
            return nn.Dropout(layer.p)
        if kind == "ReLU":
            return nn.ReLU()  # not in place: minialex's is not, and backward needs its input
        if kind == "Flatten":
            return nn.Flatten(layer.start_dim)
        raise TypeError(f"torch_mirror: no PyTorch twin for {kind}")

    class TorchAlexNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(*map(mirror, model.features))
            if hasattr(model, "avgpool"):
                self.avgpool = mirror(model.avgpool)
            self.flatten = mirror(model.flatten)
            self.classifier = nn.Sequential(*map(mirror, model.classifier))

        def forward(self, x):
            x = self.features(x)
            if hasattr(self, "avgpool"):
                x = self.avgpool(x)
            return self.classifier(self.flatten(x))

    return TorchAlexNet()


def make_engine(name, torch=None):
    if name.startswith("mx"):
        return MinialexEngine(name, "cpu" if name == "mx-cpu" else "cuda")
    return TorchEngine(torch, name)


def find_engines(names):
    """(engines, torch or None, notes): the engines of `names` that this machine has."""
    engines, notes, torch = [], [], None
    if any(name.startswith("torch") for name in names):
        torch, why = import_torch()
        if torch is None:
            notes += [f"{name} left out: {why}" for name in names if name.startswith("torch")]
    for name in names:
        if name == "mx-gpu" and not backend.cupy_available():
            notes.append("mx-gpu left out: CuPy with a CUDA device was not found (pip install "
                         "-e '.[gpu]' on a machine with an NVIDIA GPU)")
            continue
        if name.startswith("torch"):
            if torch is None:
                continue
            if name == "torch-gpu" and not torch.cuda.is_available():
                notes.append("torch-gpu left out: torch.cuda.is_available() is False")
                continue
        engines.append(make_engine(name, torch))
        if name == "torch-gpu":
            engines.append(make_engine("torch-gpu-defaults", torch))
    return engines, torch, notes


def set_threads(threads, torch):
    """Limit NumPy's BLAS (threadpoolctl, if installed) and torch to `threads` cores."""
    global _THREAD_LIMITS
    try:
        from threadpoolctl import threadpool_limits
        _THREAD_LIMITS = threadpool_limits(limits=threads, user_api="blas")
    except ImportError:  # then OMP_NUM_THREADS/OPENBLAS_NUM_THREADS, set from --threads, count
        pass
    if torch is not None:
        torch.set_num_threads(threads)


_THREAD_LIMITS = None  # threadpoolctl's limits, held for the life of the process


# ----------------------------------------------------------------------------------------------
# The machine and its limits

def describe_machine(args, torch):
    machine = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "threads": args.threads,
               "python": platform.python_version(), "numpy": np.__version__,
               "platform": platform.platform(), "load_average_start": load_average(),
               "date": time.strftime("%Y-%m-%d %H:%M:%S %z")}
    machine.update(blas_description())
    # Only from the environment (minialex no longer sets it): it changes how OpenBLAS's idle
    # threads spin, so a run with it set is not comparable with one without
    machine["openblas_thread_timeout"] = os.environ.get("OPENBLAS_THREAD_TIMEOUT")
    machine["minialex_fast"] = fast_path_setting()
    machine["minialex_fast_paths"] = minialex.fast_paths()
    machine["torch"] = torch.__version__ if torch is not None else None
    machine["torch_threads"] = torch.get_num_threads() if torch is not None else None
    machine["gpu"] = gpu_name(torch)
    return machine


def load_average():
    """The 1-minute load average: above 0 before the run starts, something else is running."""
    return round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None


def cpu_model():
    try:
        listing = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in listing.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or platform.machine()


def blas_description():
    """NumPy's BLAS: threadpoolctl's view if installed, else numpy.show_config's."""
    try:
        from threadpoolctl import threadpool_info
        libraries = [info for info in threadpool_info() if info["user_api"] == "blas"]
        numpy_own = [info for info in libraries if "numpy" in info.get("filepath", "")]
        if numpy_own or libraries:
            info = (numpy_own or libraries)[0]
            return {"blas": f"{info['internal_api']} {info.get('version') or ''} "
                            f"({info.get('architecture') or 'unknown'} kernels)",
                    "blas_threads": info["num_threads"]}
    except ImportError:
        pass
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return {"blas": f"{blas.get('name')} {blas.get('version')}", "blas_threads": None}
    except Exception:  # NumPy < 1.25 has no mode="dicts"
        return {"blas": "unknown (numpy.show_config() prints it)", "blas_threads": None}


def gpu_name(torch):
    if backend.cupy_available():
        cp = backend._import_cupy()
        name = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["name"]
        return name.decode() if isinstance(name, bytes) else name
    if torch is not None and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return None


def sgemm_limit(n, run, sync, repeats=5):
    """The best GFLOP/s of run() (one n^3 product), after one warm-up call."""
    run()
    sync()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        sync()
        seconds.append(time.perf_counter() - started)
    rates = [2.0 * n**3 / s / 1e9 for s in seconds]
    return {"gflop_per_s": max(rates), "median_gflop_per_s": float(np.median(rates)),
            "seconds": seconds}


def cpu_limit(n):
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    c = np.empty_like(a)
    limit = sgemm_limit(n, lambda: np.matmul(a, b, out=c), lambda: None)
    return {"what": f"numpy.matmul {n}^3 float32", **limit}


def gpu_limit(engines, torch):
    """cuBLAS in float32: cupy.matmul (CUPY_TF32=0), or torch.matmul with TF32 off."""
    n = GPU_SGEMM_SIZE
    if backend.cupy_available():
        cp = backend._import_cupy()
        rng = cp.random.default_rng(0)
        a, b = (rng.standard_normal((n, n), dtype=cp.float32) for _ in range(2))
        limit = sgemm_limit(n, lambda: cp.matmul(a, b), cp.cuda.Device().synchronize, 10)
        return {"what": f"cupy.matmul {n}^3 float32 (cuBLAS, CUPY_TF32=0)", **limit}
    if torch is not None and any(e.framework == "torch" and e.device == "cuda" for e in engines):
        torch.backends.cuda.matmul.allow_tf32 = False
        a, b = (torch.randn(n, n, device="cuda") for _ in range(2))
        limit = sgemm_limit(n, lambda: torch.matmul(a, b), torch.cuda.synchronize, 10)
        return {"what": f"torch.matmul {n}^3 float32 (cuBLAS, TF32 off)", **limit}
    return None


# ----------------------------------------------------------------------------------------------
# Timing

def alternate(calls, warmup, repeats, settle, rewarm=False):
    """Run (engine, call) pairs in turn, A B A B ..., warmup + repeats rounds; every call
    returns a tuple of seconds. {engine name: [tuple of each timed round]}.

    Before a CPU engine's call, the script waits until `settle` seconds have passed since
    another CPU engine's last call: the threads of a BLAS or OpenMP pool spin for a while after
    their work (OpenBLAS's for 2^28 cycles, about 0.1 s) and would take the cores from the
    engine that runs next. With rewarm=True, a call after such a wait is made twice and only
    the second one is timed, so that waking the sleeping threads is not counted either.
    """
    samples = {engine.name: [] for engine, _ in calls}
    last_cpu_name, last_cpu_end = None, 0.0
    for round_ in range(warmup + repeats):
        for engine, call in calls:
            engine.prepare()
            if engine.device == "cpu" and last_cpu_name not in (None, engine.name):
                time.sleep(max(0.0, settle - (time.perf_counter() - last_cpu_end)))
                if rewarm and settle > 0:
                    call()
            result = call()
            if engine.device == "cpu":
                last_cpu_name, last_cpu_end = engine.name, time.perf_counter()
            if round_ >= warmup:
                samples[engine.name].append(result)
    return samples


def spread(values):
    values = np.asarray(values, dtype=np.float64)
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return {"median": float(median), "min": float(values.min()), "max": float(values.max()),
            "q1": float(q1), "q3": float(q3)}


def sample_images(batch, size, cache={}):
    """The same images and labels for every engine at this batch (seeded; cached here)."""
    if (batch, size) not in cache:
        rng = np.random.default_rng(batch)
        cache[(batch, size)] = (rng.standard_normal((batch, 3, size, size), dtype=np.float32),
                                rng.integers(0, NUM_CLASSES, batch))
    return cache[(batch, size)]


def check_logits(engines, models, reference, size):
    """max |logits - minialex CPU's| / max |minialex CPU's| on two images, eval mode."""
    images = sample_images(2, size)[0]
    expected = MinialexEngine("mx-cpu", "cpu").logits(reference, images)
    differences = {}
    for engine in engines:
        engine.prepare()
        logits = engine.logits(models[engine.name], images)
        differences[engine.name] = float(np.abs(logits - expected).max() / np.abs(expected).max())
    return differences


def bench_layers(engines, models, rows_of, size, args):
    """Every timed layer alone on every engine, on its real input (the previous layers' output
    on that engine): one entry per layer with its FLOP per image and each engine's times."""
    inputs = {e.name: e.native(sample_images(e.batch, size)[0]) for e in engines}
    entries = []
    for index, row in enumerate(rows_of(engines[0])):
        layers = {e.name: module_at(models[e.name], row["path"]) for e in engines}
        if row["timed"]:
            calls = []
            for engine in engines:
                shape = rows_of(engine)[index]["output_shape"]
                grad = np.random.default_rng(index).standard_normal(shape, dtype=np.float32)
                calls.append((engine, functools.partial(
                    engine.time_layer, layers[engine.name], inputs[engine.name],
                    engine.native(grad), row["needs_input_grad"])))
            samples = alternate(calls, args.warmup, args.repeats, args.settle, rewarm=True)
            del calls
            batch = row["input_shape"][0]
            entry = {"name": row["name"], "path": row["path"], "kind": row["kind"],
                     "input_shape": row["input_shape"][1:],
                     "output_shape": row["output_shape"][1:],
                     "forward_flop_per_image": row["forward_flop"] // batch,
                     "backward_flop_per_image": row["backward_flop"] // batch, "engines": {}}
            for engine in engines:
                own = rows_of(engine)[index]
                forward_s = [f for f, _ in samples[engine.name]]
                backward_s = [b for _, b in samples[engine.name]]
                seconds = float(np.median(forward_s)) + float(np.median(backward_s))
                work = own["forward_flop"] + own["backward_flop"]
                entry["engines"][engine.name] = {
                    "batch": engine.batch, "forward_s": forward_s, "backward_s": backward_s,
                    "forward_ms": 1e3 * float(np.median(forward_s)),
                    "backward_ms": 1e3 * float(np.median(backward_s)),
                    "gflop_per_s": work / seconds / 1e9 if work else None,
                    "gb_per_s": (own["forward_bytes"] + own["backward_bytes"]) / seconds / 1e9}
            entries.append(entry)
        for engine in engines:  # the next layer's input: this layer's output
            inputs[engine.name] = engine.forward_no_grad(layers[engine.name],
                                                         inputs[engine.name])
    return entries


# ----------------------------------------------------------------------------------------------
# Training steps, each engine in a process of its own

def run_child(engine_name, variant, batch, args, repeats=None, memory=False, profile=False,
              fast=None):
    """Run this script as a child that times `engine_name`'s training steps alone (child_main);
    its result, a dict. fast: MINIALEX_FAST for the child (None: this process's environment,
    which --reference set to 0)."""
    command = [sys.executable, str(SCRIPT), "--child", engine_name, "--variant", variant,
               "--width", repr(args.width), "--batch", str(batch), "--threads",
               str(args.threads), "--warmup", str(args.warmup), "--repeats",
               str(repeats or args.repeats)]
    command += ["--child-memory"] if memory else []
    command += ["--gpu-conv", args.gpu_conv]
    command += ["--child-profile"] if profile else []
    environment = dict(os.environ)
    if fast is not None:
        environment["MINIALEX_FAST"] = fast
    what = f"{engine_name} ({variant}, batch {batch}" + \
        (f", MINIALEX_FAST={fast})" if fast is not None else ")")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=3600,
                              env=environment)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"bench_alexnet: the training steps of {what} took over an hour")
    for line in done.stdout.splitlines()[::-1]:
        if line.startswith(CHILD_TAG):
            return json.loads(line[len(CHILD_TAG):])
    why = (done.stderr.strip().splitlines() or ["no output"])[-1]
    raise SystemExit(f"bench_alexnet: the process timing {what} failed (exit "
                     f"{done.returncode}): {why}\n  command: {' '.join(command)}")


def bench_training(engines, variant, batch_of, args, series, memory):
    """{engine name: training-step result} at each engine's batch_of(engine): `series` fresh
    processes per engine, the engines alternating (A B A B ...); the memory is measured in the
    first series where `memory` is True."""
    runs = {engine.name: [] for engine in engines}
    time.sleep(args.settle)  # this process's thread pools go idle before the first child
    for index in range(series):
        for engine in engines:
            runs[engine.name].append(run_child(engine.name, variant, batch_of(engine), args,
                                               memory=memory and index == 0))
    results = {}
    for engine in engines:
        batch = batch_of(engine)
        per_series = [{"step_s": run["step_s"], "fast_paths": run["fast_paths"],
                       "images_per_s": spread([batch / s for s in run["step_s"]])["median"]}
                      for run in runs[engine.name]]
        every_step = [s for run in runs[engine.name] for s in run["step_s"]]
        results[engine.name] = {
            "label": engine.label, "batch": batch, "series": per_series, "step_s": every_step,
            "images_per_s": spread([run["images_per_s"] for run in per_series]),
            "images_per_s_of_every_step": spread([batch / s for s in every_step]),
            "final_loss": runs[engine.name][-1]["final_loss"],
            "memory": runs[engine.name][0].get("memory")}
    return results


def child_main(args):
    """The child: one engine, one model, --warmup untimed and --repeats timed training steps;
    with --child-memory, one more untimed step after the first warm-up step, whose memory is
    measured. Prints CHILD_TAG + JSON. --child-profile times every layer inside the timed
    steps (StepProfiler)."""
    torch = None
    if args.child.startswith("torch"):
        torch, why = import_torch()
        if torch is None:
            raise SystemExit(f"bench_alexnet --child: {why}")
    set_threads(args.threads, torch)
    engine = make_engine(args.child, torch)
    variant = args.variants[0]
    random.manual_seed(0)  # the weights every engine gets (run_variant builds them alike)
    state = alexnet(variant, NUM_CLASSES, width=args.width).state_dict()
    model = engine.build(variant, args.width, state)
    del state
    optimizer = engine.optimizer(model)
    batch = args.batch or engine.batch
    x, labels = engine.make_batch(*sample_images(batch, INPUT_SIZE[variant]))
    losses = [None]  # the last step's

    def step():
        engine.prepare()
        engine.sync()
        started = time.perf_counter()
        losses[0] = engine.step(model, optimizer, x, labels)
        engine.sync()
        return time.perf_counter() - started

    warmup = args.warmup  # the momentum buffers, thread pools, kernels, cuDNN's choices
    memory = None
    if args.child_memory:  # the second step of the process, as every earlier run measured it
        if warmup:
            step()
            warmup -= 1
        gc.collect()
        memory = step_memory(engine, step, torch)
    for _ in range(warmup):  # the rest (the memory step refilled the GPU pool it emptied)
        step()
    profiler = StepProfiler(model, optimizer) if args.child_profile else None
    seconds = []
    for _ in range(args.repeats):
        seconds.append(step())
        if profiler:
            profiler.end_step(seconds[-1])
    result = {"step_s": seconds, "final_loss": float(losses[0].item()),
              "fast_paths": sorted(minialex.enabled_paths()) if engine.framework == "minialex"
              else None,
              "malloc_keeps_freed_memory": minialex.fast.memory.KEEPS_FREED_MEMORY}
    if profiler:
        result["profile"] = profiler.summary()
    if memory is not None:
        result["memory"] = memory
    print(CHILD_TAG + json.dumps(result), flush=True)
    return 0


class StepProfiler:
    """Where a minialex training step's time goes, timed inside the real steps (not layer by
    layer on their own): each layer's forward (its module's forward, wrapped), its backward
    (the backward of the functions that forward made, wrapped as they are made) and the SGD
    step (optimizer.step, wrapped). What no wrapper sees is "other": the loss and its
    gradient, zero_grad, flatten, and the walk over the graph. The wrappers add a couple of
    clock reads per layer, microseconds in a step of hundreds of milliseconds.

    The parts are grouped: conv1..conv5 and fc6..fc8 each alone, every ReLU together (and so
    every pooling, LRN and dropout layer), "optimizer" and "other"; their milliseconds are the
    means over the timed steps, so that they add up to the mean step."""

    def __init__(self, model, optimizer):
        self.current, self.steps = {}, []
        for path, name in layer_names(model).items():
            if name not in ("flatten",):
                self._wrap_forward(module_at(model, path), layer_group(name))
        step = optimizer.step

        def timed_step():
            started = time.perf_counter()
            step()
            self._add("optimizer", time.perf_counter() - started)

        optimizer.step = timed_step

    def _add(self, group, seconds):
        self.current[group] = self.current.get(group, 0.0) + seconds

    def _wrap_forward(self, module, group):
        forward = module.forward

        def timed_forward(x):
            started = time.perf_counter()
            y = forward(x)
            self._add(group, time.perf_counter() - started)
            for function in functions_between(y, x):
                self._wrap_backward(function, group)
            return y

        module.forward = timed_forward  # Module.__call__ calls self.forward

    def _wrap_backward(self, function, group):
        backward = function.backward

        def timed_backward(grad_output):
            started = time.perf_counter()
            grads = backward(grad_output)
            self._add(group, time.perf_counter() - started)
            return grads

        # the graph walk calls function.backward; it clears the function's __dict__ after
        function.backward = timed_backward

    def end_step(self, step_seconds):
        parts = dict(self.current)
        parts["other"] = step_seconds - sum(parts.values())
        self.steps.append(parts)
        self.current = {}

    def summary(self):
        """{group: mean milliseconds per step}, in the order of the step, "other" last."""
        groups = [g for g in self.steps[0] if g not in ("optimizer", "other")]
        groups += ["optimizer", "other"]
        return {g: 1e3 * float(np.mean([s.get(g, 0.0) for s in self.steps])) for g in groups}


def layer_group(name):
    """conv1 -> conv1, fc6 -> fc6, relu3 -> relu, pool2 -> pool, avgpool -> pool, lrn1 -> lrn."""
    if name.startswith(("conv", "fc")):
        return name
    return "pool" if name == "avgpool" else name.rstrip("0123456789")


def functions_between(output, input):
    """The functions of the graph from `input` to `output` (a layer's own operations)."""
    found, seen, stack = [], set(), [output]
    while stack:
        x = stack.pop()
        function = x.creator
        if x is input or function is None or id(function) in seen:
            continue
        seen.add(id(function))
        found.append(function)
        stack.extend(function.inputs)
    return found


def step_memory(engine, step, torch):
    """The memory of one training step: on the CPU the resident set, on the GPU the
    allocator's high-water mark; and what was in use just before it."""
    if engine.device == "cpu":
        return resident_set_of(step)
    if engine.framework == "minialex":
        pool = backend._import_cupy().get_default_memory_pool()
        pool.free_all_blocks()
        before = pool.used_bytes()
        step()
        result = {"peak_bytes": pool.total_bytes(), "before_bytes": before,
                  "what": "CuPy memory pool high-water mark"}
    else:
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        result = {"peak_bytes": torch.cuda.max_memory_allocated(), "before_bytes": before,
                  "what": "torch.cuda.max_memory_allocated"}
    result["step_bytes"] = result["peak_bytes"] - before
    return result


def resident_set_of(step):
    """Peak resident set during step(), and the resident set just before it, in bytes."""
    def field(name):  # "VmHWM:    13552 kB"
        for line in pathlib.Path("/proc/self/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1]) * 1024
        raise OSError(f"no {name} in /proc/self/status")

    try:
        pathlib.Path("/proc/self/clear_refs").write_text("5")  # high-water mark := now
        before = field("VmRSS")
        step()
        peak = field("VmHWM")
        return {"peak_bytes": peak, "before_bytes": before, "step_bytes": peak - before,
                "what": "resident set (VmHWM after clear_refs)"}
    except OSError:  # no /proc (not Linux): the process's peak, warm-up included
        import resource
        step()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {"peak_bytes": peak * (1 if sys.platform == "darwin" else 1024),
                "before_bytes": None, "step_bytes": None,
                "what": "resident set (ru_maxrss of the process)"}


# ----------------------------------------------------------------------------------------------
# What each fast path buys

def cpu_fast_paths():
    """minialex's CPU fast paths, in the order they are registered (fast_paths())."""
    return [name for name in minialex.fast_paths() if name not in GPU_ONLY_FAST_PATHS]


def bench_fast_paths(variant, batch, args):
    """minialex on the CPU, reference alone and then each CPU fast path switched on in turn
    (cumulatively), each configuration in a fresh process with MINIALEX_FAST set (so that the
    "memory" path, made at import, is honoured): images/s and where the step's time goes."""
    names = cpu_fast_paths()
    configurations = [("reference", [])]
    configurations += [(f"+ {name}", names[:index + 1]) for index, name in enumerate(names)]
    rows, previous, reference = [], None, None
    time.sleep(args.settle)
    for label, paths in configurations:
        print(f"  {label} (MINIALEX_FAST={','.join(paths) or '0'})...", flush=True)
        run = run_child("mx-cpu", variant, batch, args, repeats=args.fast_repeats,
                        profile=True, fast=",".join(paths) or "0")
        if run["fast_paths"] != sorted(paths):
            raise SystemExit(f"bench_alexnet: asked for fast paths {paths}, the child ran "
                             f"{run['fast_paths']}")
        rate = spread([batch / s for s in run["step_s"]])
        parts = run["profile"]
        mean_step_ms = sum(parts.values())
        row = {"label": label, "fast_paths": paths, "step_s": run["step_s"],
               "images_per_s": rate, "step_ms": 1e3 * float(np.median(run["step_s"])),
               "parts_ms": parts, "shares": {g: ms / mean_step_ms for g, ms in parts.items()},
               "malloc_keeps_freed_memory": run["malloc_keeps_freed_memory"],
               "final_loss": run["final_loss"]}
        reference = reference or rate["median"]
        row["speedup_vs_reference"] = rate["median"] / reference
        row["speedup_vs_previous"] = rate["median"] / previous if previous else None
        previous = rate["median"]
        rows.append(row)
    return {"variant": variant, "batch": batch, "width": args.width,
            "repeats": args.fast_repeats, "warmup": args.warmup, "rows": rows}

# ----------------------------------------------------------------------------------------------
# Output

def mib(value):
    return "-" if value is None else f"{value / 2**20:,.0f} MiB"


def layer_table(variant_result, engines):
    headers = ["layer", "MFLOP/img"]
    for e in engines:
        headers += [f"{e.name} fwd ms", f"{e.name} bwd ms", f"{e.name} GFLOP/s"]
    body, totals = [], {e.name: [0.0, 0.0, 0.0] for e in engines}
    for row in variant_result["layers"]:
        flop = row["forward_flop_per_image"] + row["backward_flop_per_image"]
        cells = [row["name"], f"{flop / 1e6:,.1f}" if flop else "-"]
        for e in engines:
            timing = row["engines"][e.name]
            forward, backward = timing["forward_ms"], timing["backward_ms"]
            cells += [f"{forward:.3f}", f"{backward:.3f}"]
            if flop:
                cells.append(f"{timing['gflop_per_s']:.1f}")
            else:
                cells.append(f"({timing['gb_per_s']:.2f} GB/s)")
            totals[e.name][0] += forward
            totals[e.name][1] += backward
            totals[e.name][2] += flop * timing["batch"]
        body.append(cells)
    flop = sum(r["forward_flop_per_image"] + r["backward_flop_per_image"]
               for r in variant_result["layers"])
    cells = ["total", f"{flop / 1e6:,.1f}"]
    for e in engines:
        forward, backward, work = totals[e.name]
        cells += [f"{forward:.2f}", f"{backward:.2f}",
                  f"{work / ((forward + backward) / 1e3) / 1e9:.1f}"]
    return headers, body + [cells]


def training_table(variant_result, engines):
    headers = ["engine", "batch", "img/s", "spread (min-max)", "GFLOP/s", "of BLAS limit",
               "vs torch CPU", "peak memory", "step working set"]
    step = variant_result["training_step"]
    body = []
    for e in engines:
        row = step[e.name]
        rate = row["images_per_s"]
        ratio = row.get("ratio_to_torch_cpu")
        fraction = row.get("fraction_of_limit")
        memory = row.get("memory") or {}
        body.append([e.label, str(row["batch"]), f"{rate['median']:.2f}",
                     f"{rate['min']:.2f}-{rate['max']:.2f}", f"{row['gflop_per_s']:.1f}",
                     "-" if fraction is None else f"{100 * fraction:.1f}%",
                     "-" if ratio is None else f"{ratio:.2f}x",
                     mib(memory.get("peak_bytes")), mib(memory.get("step_bytes"))])
    return headers, body


def scaling_table(scaling, engines):
    headers = ["batch"]
    for e in engines:
        headers += [f"{e.name} img/s", f"{e.name} peak memory"]
    body = []
    for batch in scaling["batches"]:
        cells = [str(batch)]
        for e in engines:
            row = scaling["engines"][e.name][str(batch)]
            cells += [f"{row['images_per_s']['median']:.2f}",
                      mib((row.get("memory") or {}).get("peak_bytes"))]
        body.append(cells)
    return headers, body


def fast_path_parts(fast):
    """The parts of the step ("conv1", ..., "optimizer", "other") in every row, in order."""
    parts = []
    for row in fast["rows"]:
        parts += [part for part in row["parts_ms"] if part not in parts]
    return parts


def fast_path_table(fast):
    headers = ["fast paths", "img/s", "step ms", "vs reference", "vs previous"]
    parts = fast_path_parts(fast)
    headers += parts
    body = []
    for row in fast["rows"]:
        previous = row["speedup_vs_previous"]
        cells = [row["label"], f"{row['images_per_s']['median']:.2f}", f"{row['step_ms']:.0f}",
                 f"{row['speedup_vs_reference']:.2f}x",
                 "-" if previous is None else f"{previous:.2f}x"]
        body.append(cells + [f"{100 * row['shares'].get(part, 0.0):.0f}%" for part in parts])
    return headers, body


def fast_path_ms_table(fast):
    parts = fast_path_parts(fast)
    body = [[row["label"], milliseconds(sum(row["parts_ms"].values()))]
            + [milliseconds(row["parts_ms"].get(part, 0.0)) for part in parts]
            for row in fast["rows"]]
    return ["fast paths", "step ms (mean)"] + parts, body


def milliseconds(value):
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 1 else f"{value:.2f}"


def text_table(headers, body):
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *body)]
    lines = ["  ".join(f"{cell:<{w}}" if i == 0 else f"{cell:>{w}}"
                       for i, (cell, w) in enumerate(zip(row, widths)))
             for row in [headers] + body]
    return "\n".join(lines)


def markdown_table(headers, body):
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body])


def machine_lines(results):
    m = results["machine"]
    lines = [f"CPU: {m['cpu']}; {m['threads']} of {m['cpu_count']} cores used; load average "
             f"{m['load_average_start']} at the start, {m.get('load_average_end')} at the end",
             f"NumPy {m['numpy']}, BLAS: {m['blas']}, {m['blas_threads'] or '?'} threads"
             + (f", OPENBLAS_THREAD_TIMEOUT={m['openblas_thread_timeout']} (set in the "
                "environment)" if m.get("openblas_thread_timeout") else ""),
             f"minialex fast paths: {fast_path_line(m)}; NumPy imported before minialex",
             f"PyTorch: {m['torch'] or 'not in this run'}" +
             (f", {m['torch_threads']} threads" if m.get("torch") else ""),
             f"GPU: {m['gpu'] or 'none'}", f"Python {m['python']} on {m['platform']}"]
    for device, limit in results["limits"].items():
        if limit:
            lines.append(f"{device.upper()} limit: {limit['gflop_per_s']:.1f} GFLOP/s, "
                         f"{limit['what']} (best of {len(limit['seconds'])}; "
                         f"{limit['start_gflop_per_s']:.1f} at the start, "
                         f"{limit['end_gflop_per_s']:.1f} at the end)")
    return lines


def fast_path_line(machine):
    setting = machine["minialex_fast"]
    if setting == "all":
        return "all (" + ", ".join(machine["minialex_fast_paths"]) + ")"
    if setting == "none":
        return "none, the reference ops alone (MINIALEX_FAST=0)"
    return f"{setting} only (MINIALEX_FAST)"


def sections(results, engines, table):
    """(title, table text) of every table, in the order they are shown; `table` formats."""
    settings = results["settings"]
    parts = []
    for variant, result in results["variants"].items():
        flop = result["flop_per_image"]
        title = (f"{variant}, width {settings['width']}: {flop['forward'] / 1e9:.2f} GFLOP "
                 f"forward, {flop['training'] / 1e9:.2f} GFLOP per training image")
        if result.get("layers"):
            parts.append((f"Per layer, {title} (medians of {settings['repeats']}; batch: "
                          + ", ".join(f"{e.name} {result['batch'][e.name]}" for e in engines)
                          + ")", table(*layer_table(result, engines))))
        parts.append((f"Training step, {title}", table(*training_table(result, engines))))
    if results.get("scaling"):
        scaling = results["scaling"]
        parts.append((f"Scaling, {scaling['variant']}: training images/s and peak memory by "
                      "batch (one series)", table(*scaling_table(scaling, engines))))
    fast = results.get("fast_paths")
    if fast:
        parts.append((f"What each fast path buys: minialex CPU, {fast['variant']}, width "
                      f"{fast['width']}, batch {fast['batch']}; each row a fresh process with "
                      "MINIALEX_FAST set, the CPU's fast paths switched on one more at a time "
                      f"(img/s and step ms: medians of {fast['repeats']} steps; then each "
                      "part's share of the step)", table(*fast_path_table(fast))))
        parts.append(("Where the step's time goes, ms per step (means of the same steps: "
                      "forward + backward of each layer, SGD's step, the rest)",
                      table(*fast_path_ms_table(fast))))
    return parts


def write_markdown(path, results, engines):
    lines = [f"# AlexNet benchmark, {results['machine']['date']}", ""]
    lines += [f"- {line}" for line in machine_lines(results)]
    lines += [f"- note: {text}" for text in results["notes"]]
    for title, table in sections(results, engines, markdown_table):
        lines += ["", f"## {title}", "", table]
    lines += ["", FOOTNOTE.replace("\n", " "), ""]
    path.write_text("\n".join(lines))


def write_plot(path, results, engines):
    """Bar charts: training images/s (min-max as error bars), and fwd + bwd ms per layer."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(results["variants"])
    with_layers = any(r.get("layers") for r in results["variants"].values())
    figure, axes = plt.subplots(len(variants), 2 if with_layers else 1, squeeze=False,
                                figsize=(16 if with_layers else 7, 4.5 * len(variants)))
    for row, variant in zip(axes, variants):
        result = results["variants"][variant]
        rates = [result["training_step"][e.name]["images_per_s"] for e in engines]
        medians = np.array([r["median"] for r in rates])
        errors = np.array([[m - r["min"] for m, r in zip(medians, rates)],
                           [r["max"] - m for m, r in zip(medians, rates)]])
        row[0].bar([e.label for e in engines], medians, yerr=errors, capsize=4,
                   color=[f"C{i}" for i in range(len(engines))])
        row[0].set_ylabel("training images/s")
        row[0].set_title(f"{variant}: training step (median, min-max)")
        row[0].tick_params(axis="x", labelrotation=15)
        if with_layers and result.get("layers"):
            names = [layer["name"] for layer in result["layers"]]
            width = 0.8 / len(engines)
            for i, e in enumerate(engines):
                ms = [layer["engines"][e.name]["forward_ms"] + layer["engines"][e.name]
                      ["backward_ms"] for layer in result["layers"]]
                row[1].bar(np.arange(len(names)) + i * width, ms, width, label=e.label,
                           color=f"C{i}")
            row[1].set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=60)
            row[1].set_yscale("log")
            row[1].set_ylabel("forward + backward, ms")
            row[1].set_title(f"{variant}: per layer (own batch per engine)")
            row[1].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_results(out, results, engines):
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    write_markdown(out / "results.md", results, engines)
    try:
        write_plot(out / "results.png", results, engines)
        return True
    except ImportError:
        print("note: matplotlib is not installed, so there is no results.png (pip install "
              "matplotlib)")
        return False


# ----------------------------------------------------------------------------------------------
# The run

def add_rates(step, engines, flop_per_image, limits):
    """GFLOP/s, fraction of the device's SGEMM limit and ratio to torch CPU, in place."""
    torch_cpu = step.get("torch-cpu", {}).get("images_per_s", {}).get("median")
    for e in engines:
        row = step[e.name]
        rate = row["images_per_s"]["median"]
        row["gflop_per_s"] = flop_per_image * rate / 1e9
        limit = limits["cpu" if e.device == "cpu" else "gpu"]
        row["fraction_of_limit"] = row["gflop_per_s"] / limit["gflop_per_s"] if limit else None
        row["ratio_to_torch_cpu"] = rate / torch_cpu if torch_cpu else None


def run_variant(variant, engines, args, notes, scaling):
    """Everything about one variant: FLOP, the logits check, per layer, the training step, its
    memory, and the scaling table where `scaling` is True. (result, scaling result or None)"""
    random.manual_seed(0)
    source = alexnet(variant, NUM_CLASSES, width=args.width)  # every engine's weights
    size = source.input_size
    state = {name: array.copy() for name, array in source.state_dict().items()}
    models = {e.name: source if e.name == "mx-cpu" else e.build(variant, args.width, state)
              for e in engines}
    rows = {batch: layer_flops(source, (3, size, size), batch)
            for batch in {1} | {e.batch for e in engines}}
    flop = {"forward": sum(r["forward_flop"] for r in rows[1]),
            "training": training_flop_per_image(rows[1])}
    result = {"flop_per_image": flop, "batch": {e.name: e.batch for e in engines},
              "check_logits": check_logits(engines, models, source, size)}
    print(f"\n=== {variant}, width {args.width}: {flop['training'] / 1e9:.3f} GFLOP per "
          f"training image ({flop['forward'] / 1e9:.3f} forward) ===")
    print("same model and weights: eval logits of 2 images, max |difference| / max |value| "
          "against minialex CPU: " + ", ".join(f"{name} {difference:.1e}" for name, difference
                                               in result["check_logits"].items()))
    for name, difference in result["check_logits"].items():
        if difference > (1e-2 if name == "torch-gpu-defaults" else 1e-3):
            note(notes, f"{variant}: {name}'s logits differ from minialex CPU's by "
                 f"{difference:.1e}: is it the same model?")

    if not args.no_layers:
        print(f"timing every layer ({args.warmup} warm-up + {args.repeats} timed rounds)...")
        result["layers"] = bench_layers(engines, models, lambda e: rows[e.batch], size, args)
    del models, source, state  # the children build their own; free the memory for them
    release_memory()

    print(f"timing the training step: {args.series} series of a fresh process per engine, "
          f"each {args.warmup} warm-up + {args.repeats} timed steps"
          + ("; memory in the first" if not args.no_memory else "") + "...")
    step = bench_training(engines, variant, lambda e: e.batch, args, args.series,
                          memory=not args.no_memory)
    for e in engines:
        if not np.isfinite(step[e.name]["final_loss"]):
            note(notes, f"{variant}: {e.name}'s loss is {step[e.name]['final_loss']}: its "
                 "times include NaN or infinite arithmetic")
    result["training_step"] = step

    by_batch = {e.name: {} for e in engines}
    for batch in args.scaling_batches if scaling else []:
        print(f"scaling: batch {batch} (one series)...")
        fresh = [e for e in engines if e.batch != batch]  # the others were just measured
        measured = bench_training(fresh, variant, lambda e: batch, args, 1,
                                  memory=not args.no_memory) if fresh else {}
        for e in engines:
            by_batch[e.name][str(batch)] = measured.get(e.name, step[e.name])
    scaling_result = {"variant": variant, "batches": args.scaling_batches,
                      "flop_per_image": flop, "engines": by_batch} if scaling else None
    return result, scaling_result


def release_memory():
    """Give back what this process's allocators hold, for the children that run next."""
    gc.collect()
    if backend.cupy_available():
        backend._import_cupy().get_default_memory_pool().free_all_blocks()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def note(notes, text):
    notes.append(text)
    print("  note: " + text)


def measure_limits(engines, torch, args):
    cpu = cpu_limit(args.sgemm_size)
    gpu = gpu_limit(engines, torch) if any(e.device == "cuda" for e in engines) else None
    return {"cpu": cpu, "gpu": gpu}


def best_limits(start, end):
    """The better of the measurements at the start and at the end of the run, per device: a
    busy moment can only slow the SGEMM down."""
    limits = {}
    for device in start:
        if start[device] is None:
            limits[device] = None
            continue
        best = max(start[device], end[device], key=lambda limit: limit["gflop_per_s"])
        limits[device] = {**best, "start_gflop_per_s": start[device]["gflop_per_s"],
                          "end_gflop_per_s": end[device]["gflop_per_s"]}
    return limits


def main(argv=None):
    args = parse_args(argv)
    minialex.gpu.Conv2dOnKernels.algorithm = args.gpu_conv  # the children get --gpu-conv too
    if args.child is not None:
        return child_main(args)
    if args.reference:  # in case the flag was abbreviated, which the check at import misses
        os.environ["MINIALEX_FAST"] = "0"
        minialex.set_fast(False)
    engines, torch, notes = find_engines(args.engine_names)
    for text in notes:
        print("note: " + text)
    if not engines:
        print("bench_alexnet: none of the engines asked for (--engines "
              f"{','.join(args.engine_names)}) is available here", file=sys.stderr)
        return 2
    set_threads(args.threads, torch)
    for engine in engines:
        engine.batch = args.batch or engine.batch

    results = {"machine": describe_machine(args, torch), "notes": notes,
               "settings": {"variants": args.variants, "engines": [e.name for e in engines],
                            "labels": {e.name: e.label for e in engines},
                            "batch": {e.name: e.batch for e in engines},
                            "repeats": args.repeats, "warmup": args.warmup,
                            "series": args.series, "reference": args.reference,
                            "fast_repeats": args.fast_repeats,
                            "settle_s": args.settle, "width": args.width,
                            "threads": args.threads, "num_classes": NUM_CLASSES,
                            "sgd": SGD_SETTINGS, "torch_defaults": TORCH_DEFAULTS},
               "variants": {}, "scaling": None, "fast_paths": None}
    m = results["machine"]
    print(f"CPU: {m['cpu']}; {m['threads']} of {m['cpu_count']} cores used; load average "
          f"{m['load_average_start']}\nNumPy {m['numpy']}, BLAS: {m['blas']}\n"
          f"minialex fast paths: {fast_path_line(m)}\nPyTorch: "
          f"{m['torch'] or 'not in this run'}\nGPU: {m['gpu'] or 'none'}")
    print("engines: " + ", ".join(f"{e.label} (batch {e.batch})" for e in engines))
    print("measuring the SGEMM limit...")
    start_limits = measure_limits(engines, torch, args)

    for index, variant in enumerate(args.variants):
        scaling = index == 0 and bool(args.scaling_batches)
        results["variants"][variant], scaling_result = run_variant(variant, engines, args,
                                                                   notes, scaling)
        results["scaling"] = results["scaling"] or scaling_result

    mx_cpu = next((e for e in engines if e.name == "mx-cpu"), None)
    if mx_cpu is not None and not args.no_fast_table:
        print(f"\nwhat each fast path buys ({args.variants[0]}, batch {mx_cpu.batch}): a process "
              f"per configuration, {args.warmup} warm-up + {args.fast_repeats} timed steps...")
        results["fast_paths"] = bench_fast_paths(args.variants[0], mx_cpu.batch, args)

    print("\nmeasuring the SGEMM limit again...")
    results["limits"] = best_limits(start_limits, measure_limits(engines, torch, args))
    m["load_average_end"] = load_average()
    for result in results["variants"].values():
        add_rates(result["training_step"], engines, result["flop_per_image"]["training"],
                  results["limits"])
    if results["scaling"]:
        for batch in results["scaling"]["batches"]:
            add_rates({e.name: results["scaling"]["engines"][e.name][str(batch)]
                       for e in engines}, engines,
                      results["scaling"]["flop_per_image"]["training"], results["limits"])

    print("\n" + "\n".join(machine_lines(results)))
    for title, table in sections(results, engines, text_table):
        print(f"\n{title}\n{table}")
    print("\n" + FOOTNOTE)
    out = pathlib.Path(args.out)
    plotted = write_results(out, results, engines)
    print(f"\nresults in {out}/results.json, results.md" + (", results.png" if plotted else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
