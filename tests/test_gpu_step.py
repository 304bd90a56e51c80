"""A GPU training step without host syncs and with few launches (issue 15), checked on the CPU.

Two seams, as in test_gpu.py: the kernel shim (tests/kernel_shim) runs each launch of
minialex.cuda on the CPU build of the same .cu file, and the fake CuPy (tests/fake_cupy.py)
makes NumPy arrays pass for device arrays and logs every device-to-host transfer, every CuPy
launch and every stream operation. What only a GPU can tell (speed; that the streams really
overlap) is left to the `gpu` tests at the end and to benchmarks/gpu_check.sh.
"""
import argparse
import collections
import importlib.util
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import fake_cupy
from minialex import backend, cuda, gpu, optim
from minialex.functions.activation import relu
from minialex.functions.dropout import dropout
from minialex.functions.loss import cross_entropy
from minialex.tensor import tensor
from conftest import names_launched

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                                 os.environ.get("PYTHONPATH")])))


@pytest.fixture
def shim(shim, monkeypatch):
    """conftest.py's shim, with few blocks per grid-stride launch: a few std::threads each."""
    monkeypatch.setattr(cuda, "GRID_STRIDE_BLOCKS", 4)
    return shim


# ----------------------------------------------------------------------------------------------
# CuPy imported by the user before minialex

def test_cupy_imported_before_minialex_is_recognised(monkeypatch):
    module = fake_cupy._module()
    monkeypatch.setitem(sys.modules, "cupy", module)
    monkeypatch.setattr(backend, "_cupy", None)  # as in a fresh process: minialex never imported it
    array = module.asarray(np.ones((2, 3), np.float32))
    assert backend.get_array_module(array) is module and backend.device_of(array) == "cuda"
    assert cuda.uses_kernels(array)
    t = tensor(array, device="cuda")
    assert t.device == "cuda" and t.data is array
    launched = []
    monkeypatch.setattr(cuda, "launch", lambda *arguments: launched.append(arguments[1]))
    cuda.sgemm(array, module.asarray(np.ones((3, 4), np.float32)))  # its input checks pass
    assert len(launched) == 1 and launched[0].startswith("sgemm")


# ----------------------------------------------------------------------------------------------
# kernels/elementwise.cu and the softmax's device scalar, through the shim

def test_relu_forward_and_backward_on_the_kernels_match_numpy(shim):
    x = np.random.default_rng(0).standard_normal(3001)
    x[:3] = [0.0, -0.0, np.nan]
    gy = np.random.default_rng(1).standard_normal(3001)
    results = {}
    for dtype in (np.float32, np.float64):  # float64: the reference on NumPy
        t = tensor(x.astype(dtype), requires_grad=True)
        y = relu(t)
        y.backward(gy.astype(dtype))
        results[dtype] = (y.numpy(), t.grad)
    for got, expected in zip(results[np.float32], results[np.float64]):
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=0)
    assert names_launched(shim) == ["relu_forward", "relu_backward"]  # one launch each way


def uniform_of(seed, counters):
    """kernels/elementwise.cu's draw, from its formula (SplitMix64's finalizer), in NumPy."""
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + (counters.astype(np.uint64) + np.uint64(1)) * np.uint64(
            0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return (z >> np.uint64(40)).astype(np.float64) / 2**24


def test_dropout_kernel_draws_the_documented_stream(shim):
    x = np.random.default_rng(0).standard_normal(5000).astype(np.float32)
    seed, offset, p = 123456789123, 777, 0.3
    y, mask = cuda.dropout(x, p, seed, offset)
    keep = uniform_of(seed, np.arange(offset, offset + x.size)) >= p
    assert np.array_equal(mask, np.where(keep, np.float32(1 / (1 - p)), 0))
    assert np.array_equal(y, x * mask)
    assert abs((mask == 0).mean() - p) < 0.03  # 5000 draws: the standard deviation is 0.0065
    # the stream continues: two halves drawn in turn give the whole
    _, first = cuda.dropout(x[:2000], p, seed, offset)
    _, second = cuda.dropout(x[2000:], p, seed, offset + 2000)
    assert np.array_equal(np.concatenate([first, second]), mask)


def test_gpu_dropout_state_restores_the_same_masks(shim):
    import minialex.random
    minialex.random.manual_seed(5)
    x = tensor(np.ones((40, 50), np.float32))
    state = gpu.dropout_state()
    first = dropout(x, 0.5).numpy()
    second = dropout(x, 0.5).numpy()
    assert not np.array_equal(first, second)  # a fresh mask each call
    gpu.set_dropout_state(state)  # as a resumed run does from its checkpoint
    assert np.array_equal(dropout(x, 0.5).numpy(), first)
    assert np.array_equal(dropout(x, 0.5).numpy(), second)
    minialex.random.manual_seed(5)  # the seed decides the masks
    assert np.array_equal(dropout(x, 0.5).numpy(), first)
    with pytest.raises(ValueError, match="offset must be an int"):
        gpu.set_dropout_state({"seed": 1, "offset": -1})


@pytest.mark.parametrize("momentum, weight_decay", [(0.9, 5e-4), (0.0, 0.0), (0.0, 1e-2)])
def test_sgd_on_the_kernels_updates_every_parameter_in_one_launch(shim, momentum, weight_decay):
    rng = np.random.default_rng(0)
    shapes = [(7, 3, 2, 2), (7,), (1000, 3), (1,)]
    start = [rng.standard_normal(shape) for shape in shapes]
    grads = [[rng.standard_normal(shape) for shape in shapes] for _ in range(2)]
    results = {}
    for dtype in (np.float32, np.float64):  # float64: the reference SGD on NumPy
        params = [tensor(w.astype(dtype), requires_grad=True) for w in start]
        optimizer = optim.SGD(params, lr=0.1, momentum=momentum, weight_decay=weight_decay)
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = g.astype(dtype)
            optimizer.step()
        results[dtype] = [p.numpy() for p in params]
    for got, expected in zip(results[np.float32], results[np.float64]):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert names_launched(shim) == ["sgd_multi_tensor"] * 2  # a launch a step, 4 parameters


def test_sgd_on_the_kernels_leaves_a_strided_gradient_to_the_reference(shim):
    rng = np.random.default_rng(0)
    w = [rng.standard_normal((3, 4)), rng.standard_normal(5)]
    g = [rng.standard_normal((4, 3)).T, rng.standard_normal(5)]  # the first not contiguous
    results = {}
    for dtype in (np.float32, np.float64):
        params = [tensor(a.astype(dtype), requires_grad=True) for a in w]
        for p, grad in zip(params, g):
            p.grad = grad.astype(dtype).T.copy().T if grad.ndim == 2 else grad.astype(dtype)
        optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-3).step()
        results[dtype] = [p.numpy() for p in params]
    for got, expected in zip(results[np.float32], results[np.float64]):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert names_launched(shim) == ["sgd_multi_tensor"]  # for the contiguous one


def test_sgd_on_the_kernels_refuses_mismatched_arrays():
    w = np.ones(3, np.float32)
    with pytest.raises(TypeError, match="C-contiguous float32"):
        cuda.sgd_multi_tensor([(w, np.ones(3), None)], 0.1, 0.0, 0.0)


def test_cross_entropy_backward_reads_the_incoming_gradient_on_the_device(shim):
    rng = np.random.default_rng(0)
    logits, labels = rng.standard_normal((4, 7)), np.array([0, 6, 3, 3])
    results = {}
    for dtype in (np.float32, np.float64):
        z = tensor(logits.astype(dtype), requires_grad=True)
        cross_entropy(z, labels).backward(np.array(2.5, dtype))  # dL/dloss = 2.5
        results[dtype] = z.grad
    np.testing.assert_allclose(results[np.float32], results[np.float64], rtol=1e-5, atol=1e-7)
    assert names_launched(shim) == ["softmax_xent_forward", "softmax_xent_backward"]
    # and gy reaches the kernel as an array (a pointer), not as a number read on the host
    parameters = cuda.parameters_of("softmax_xent.cu", "softmax_xent_backward")
    assert [p.type for p in parameters][2] == "float*"


def test_elementwise_entry_points_exist_with_their_parameters():
    points = cuda.entry_points(cuda.kernel_source("elementwise.cu"))
    assert set(cuda.ELEMENTWISE_ENTRY_POINTS) <= points.keys()
    assert [p.type for p in points["sgd_multi_tensor"]] == ["long long*", "int", "float",
                                                           "float", "float"]


def test_cross_entropy_checks_host_labels_on_the_host(monkeypatch):
    """An out-of-range label is refused before the labels move to the device."""
    cupy = fake_cupy.install(monkeypatch)
    logits = tensor(cupy.asarray(np.zeros((2, 3), np.float32)), device="cuda")
    with pytest.raises(ValueError, match="label 3 out of range for 3 classes"):
        cross_entropy(logits, np.array([0, 3]))
    assert cupy.log.transfers_to_host == []


# ----------------------------------------------------------------------------------------------
# Overlapped input: the copies on a second stream, ordered by events

def test_batches_are_copied_on_a_second_stream_ordered_by_events(monkeypatch):
    cupy = fake_cupy.install(monkeypatch)
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((2, 3, 4, 4)).astype(np.float32), np.array([i, i + 1]))
               for i in range(5)]
    events = cupy.log.stream_events
    seen = []
    for index, (x, labels, labels_on_device) in enumerate(
            gpu.DevicePrefetcher(batches, "cuda", depth=2)):
        assert backend.device_of(x) == "cuda" and backend.device_of(labels_on_device) == "cuda"
        assert np.array_equal(np.asarray(x.view(np.ndarray)), batches[index][0])
        assert labels is batches[index][1]  # the host's labels, for the host's checks
        # handed out: the compute stream waits on the event recorded after this batch's copy
        compute_waits = [e for e in events if e[0] == "stream waits on event"
                         and e[1] is fake_cupy.COMPUTE_STREAM]
        assert len(compute_waits) == index + 1
        copy_event = compute_waits[-1][2]
        assert copy_event.stream is not fake_cupy.COMPUTE_STREAM
        # the next batch's copy is already issued: it runs while this step computes
        copies = [e for e in events if e[0] == "copy to device"]
        assert len(copies) == 2 * min(index + 2, len(batches))
        seen.append(index)
    assert seen == list(range(5))
    copies = [e for e in events if e[0] == "copy to device"]
    assert all(stream is not None and stream is not fake_cupy.COMPUTE_STREAM
               for _, stream in copies)
    # each copy waits for the compute stream's queued work (the buffer's last readers)
    copy_waits = [e for e in events if e[0] == "stream waits on event"
                  and e[1] is not fake_cupy.COMPUTE_STREAM]
    assert len(copy_waits) == 5 and all(e[2].stream is fake_cupy.COMPUTE_STREAM
                                        for e in copy_waits)
    # no wait for the compute stream or the device; the host waits only for old copies, to
    # reuse their pinned buffers (depth 2: from the third batch on)
    assert not [e for e in events if e[0] in ("host waits on stream", "host waits on device")]
    host_waits = [e for e in events if e[0] == "host waits on event"]
    assert len(host_waits) == 3 and all(e[1].stream is not fake_cupy.COMPUTE_STREAM
                                        for e in host_waits)
    assert cupy.log.transfers_to_host == []


def test_on_the_cpu_the_batches_pass_through():
    batches = [(np.zeros((1, 3)), np.array([1]))]
    assert [tuple(b) for b in gpu.DevicePrefetcher(batches, "cpu")] == [
        (batches[0][0], batches[0][1], batches[0][1])]


# ----------------------------------------------------------------------------------------------
# The training step of the paper's network: host syncs and launches

def load_training_script():
    spec = importlib.util.spec_from_file_location("train_alexnet_for_test",
                                                  ROOT / "examples" / "train_alexnet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Batches(list):
    def set_epoch(self, epoch):
        pass


def count_training_steps(monkeypatch, steps, dropout_p=0.5):
    """Run the training script's train_one_epoch for `steps` steps of the paper's network on the
    fake CuPy, the kernels recorded and not run (the values do not matter here, only what is
    launched and read). Returns (our kernel launches, CuPy's launches, transfers to the host,
    the epoch's record)."""
    cupy = fake_cupy.install(monkeypatch)
    launched = []
    monkeypatch.setattr(cuda, "launch", lambda filename, name, *rest: launched.append(name))
    script = load_training_script()
    import minialex as mx
    model = mx.models.alexnet("paper", num_classes=1000, width=0.0625, dropout=dropout_p)
    model.to("cuda")
    optimizer = optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    rng = np.random.default_rng(0)
    batches = Batches((rng.standard_normal((2, 3, 227, 227)).astype(np.float32),
                       rng.integers(0, 1000, 2)) for _ in range(steps))
    args = argparse.Namespace(device="cuda", no_progress=True, epochs=1)
    cupy.log.clear()
    with np.errstate(all="ignore"):  # the kernels did not run: the arrays hold garbage
        record = script.train_one_epoch(model, optimizer, batches, 0, args)
    return launched, list(cupy.log.launches), list(cupy.log.transfers_to_host), record, script


def test_a_training_epoch_reads_the_device_once_per_refresh(monkeypatch):
    steps = 45
    _, _, transfers, record, script = count_training_steps(monkeypatch, steps, dropout_p=0.0)
    # READ_EVERY_GPU steps apart and at the end: steps 20, 40 and 45
    assert len(transfers) == math.ceil(steps / script.READ_EVERY_GPU) == 3, transfers
    assert "train_loss" in record


# Launches per training step of the paper's AlexNet (5 conv, 3 fc, 7 ReLU, 2 LRN, 3 pools, 2
# dropouts, the loss, SGD), derived per layer from minialex/gpu.py, cuda.py and the reference
# ops they keep (functions/*.py). Ours: minialex's kernels (cuda.launch); CuPy's: the CuPy
# operations between them (fake_cupy counts each ufunc, reduction, copy and fill).
# The bias of conv and fc is added in the forward SGEMM's final store (sgemm.cu's epilogue; in
# splitk_reduce when K is split), not by a CuPy add: one launch less per conv and fc layer.
#   layer      ours                                              CuPy's
#   conv1      im2col, SGEMM (+ its split-K sum) forward;        bias gradient sum,
#              grad_w SGEMM (+ sum); no grad of the image  <= 5  2 layout copies (N,F)<->(F,N) 3
#   conv2-5    as conv1, + grad_col SGEMM (+ sum), col2im  <= 8  as conv1                    3
#   fc6-8      SGEMM (+ sum) forward, 2 backward (+ sums)  <= 6  bias gradient sum           1
#   ReLU (x7)  forward, backward                            = 2                              0
#   LRN (x2), max-pool (x3): forward, backward              = 2                              0
#   dropout (x2) forward (draw, mask, product)              = 1  backward gy * mask          1
#   loss       softmax forward, backward (gy on the device) = 2  mean (sum, divide), ones    3
#   SGD        all 16 parameters                            = 1  (the table: a copy)         0
#   training loop (loss and accuracy summed on the device)  = 0  loss x N, argmax, ==, sum,
#                                                                2 adds                      6
# Ours: 5 + 4 x 8 + 3 x 6 + 7 x 2 + 5 x 2 + 2 + 2 + 1 = 84 (61 where no product is split).
# CuPy's: 5 x 3 + 3 x 1 + 2 + 3 + 6 = 29; all: 113 per step (121 with the bias adds), plus 3
# (2 casts, a stack) per read of the sums (every READ_EVERY_GPU steps). Before issue 15: about
# 590 per step (ReLU backward in 1 M-element chunks, SGD as 6 CuPy passes per 1 M-element chunk).
LAUNCH_BOUND = {"ours": 84, "all": 113, "per_read": 3}


def test_a_training_step_of_the_paper_network_has_few_launches(monkeypatch):
    steps = 3
    ours, theirs, transfers, _, _ = count_training_steps(monkeypatch, steps)
    per_step_ours, per_step_all = len(ours) / steps, (len(ours) + len(theirs)) / steps
    kinds = collections.Counter(ours)
    print(f"per step: {per_step_ours:.1f} minialex kernels, {per_step_all:.1f} launches in "
          f"all; {dict(kinds)}; CuPy's: {dict(collections.Counter(theirs))}")
    assert kinds["sgd_multi_tensor"] == steps  # every parameter in one launch
    assert kinds["relu_backward"] == 7 * steps  # one per ReLU, whatever its size
    assert kinds["dropout_forward"] == 2 * steps
    assert len(transfers) == 1  # the sums read once, at the end (3 steps < READ_EVERY_GPU)
    # no layer adds its bias with CuPy (the SGEMM's store does): the loop's 2 adds are all
    assert collections.Counter(theirs)["add"] <= 2 * steps, collections.Counter(theirs)
    assert per_step_ours <= LAUNCH_BOUND["ours"], dict(kinds)
    assert per_step_all <= LAUNCH_BOUND["all"] + LAUNCH_BOUND["per_read"] / steps, \
        collections.Counter(theirs)


def test_the_checkpoint_of_a_gpu_run_holds_the_gpu_dropout_state(monkeypatch, tmp_path):
    fake_cupy.install(monkeypatch)
    script = load_training_script()
    import minialex as mx
    model = mx.models.alexnet("paper", num_classes=10, width=0.0625).to("cuda")
    optimizer = optim.SGD(model.parameters(), lr=0.01)
    schedule = optim.ReduceLROnPlateau(optimizer)
    gpu.set_dropout_state({"seed": 11, "offset": 500})
    path = tmp_path / "checkpoint.npz"
    script.save_checkpoint(path, model, optimizer, schedule, 0, {}, (np.zeros(3), None, None),
                           [])
    gpu.set_dropout_state({"seed": 1, "offset": 0})  # draws made since
    cpu_state = mx.load(path)["random_state"]
    monkeypatch.setitem(gpu._dropout_stream, "seeded_from", None)  # as in a fresh process
    script.restore(mx.load(path), path, model, optimizer, schedule)
    assert gpu.dropout_state() == {"seed": 11, "offset": 500}
    assert mx.random.get_state() == cpu_state  # restoring drew nothing from the CPU's
    checkpoint = mx.load(path)
    checkpoint["cuda_dropout_state"] = {"seed": -1, "offset": 0}
    with pytest.raises(script.TrainingError, match="cannot load its GPU dropout state"):
        script.restore(checkpoint, path, model, optimizer, schedule)


def test_ten_crop_evaluation_is_cut_below_conv1s_32_bit_limit():
    script = load_training_script()
    assert 3 * 11 * 11 * script.EVAL_PIECE * 55 * 55 < 2**31  # conv1's columns, as im2col
    images = np.arange(1960)
    parts = script.pieces(images, script.EVAL_PIECE)
    assert [len(p) for p in parts] == [1280, 680]
    assert np.array_equal(np.concatenate(parts), images)


# ----------------------------------------------------------------------------------------------
# The prepared GPU check, and the kernel benchmark's checks through the shim

def test_gpu_check_without_a_gpu_prints_one_line_and_exits_0(tmp_path):
    fake = tmp_path / "fake" / "cupy"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no cupy in this test')\n")
    env = dict(ENV, PYTHONPATH=os.pathsep.join([str(fake.parent), ENV["PYTHONPATH"]]))
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"),
                             str(tmp_path / "out")], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and "no GPU" in lines[0], result.stdout
    assert result.stderr == ""


def test_gpu_check_without_its_python_fails_instead_of_saying_no_gpu(tmp_path):
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"),
                             str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True,
                            env=dict(ENV, PYTHON=str(tmp_path / "no-such-python")), timeout=120)
    assert result.returncode == 2 and "set PYTHON" in result.stderr, result
    assert "no GPU" not in result.stdout


def test_gpu_check_with_a_gpu_runs_every_step_under_its_own_limit(tmp_path):
    """PYTHON stands in for the interpreter: it says there is a GPU and logs each command."""
    calls = tmp_path / "calls.txt"
    fake_python = tmp_path / "python"
    fake_python.write_text(f"#!/bin/sh\necho \"$*\" >> {calls}\n"
                           "case \"$*\" in *bench_alexnet*) exit 3;; esac\nexit 0\n")
    fake_python.chmod(0o755)
    out = tmp_path / "out"
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), str(out)],
                            cwd=ROOT, env=dict(ENV, PYTHON=str(fake_python)),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr  # one step failed
    summary = (out / "summary.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in summary] == [
        "pytest-gpu", "bench-kernels", "bench-alexnet", "train-epoch"]
    assert "exit 3" in summary[2] and all("exit 0" in summary[i] for i in (0, 1, 3))
    commands = calls.read_text()
    assert "-m pytest -q -m gpu" in commands and "bench_kernels.py" in commands
    assert "--engines mx-gpu,torch-gpu" in commands and "--device cuda" in commands
    steps = [line for line in commands.splitlines()
             if line.startswith(("-m pytest", "benchmarks/", "examples/"))]
    assert len(steps) == 4 and all(str(out) in line for line in steps)  # outputs under OUTDIR


def test_gpu_check_needs_an_output_folder():
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], cwd=ROOT,
                            env=ENV, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "usage" in result.stderr


def test_the_kernel_benchmarks_memory_bound_checks_pass_through_the_shim(shim, capsys):
    """benchmarks/bench_kernels.py's check of im2col, col2im, max-pool (its argmax against the
    reference's), LRN and the loss, run on the CPU: the function crashed on the pooling
    check before (issue 15)."""
    spec = importlib.util.spec_from_file_location("bench_kernels_for_test",
                                                  ROOT / "benchmarks" / "bench_kernels.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.CONV_LAYERS = bench.CONV_LAYERS[:0]  # im2col of conv1 at 227x227: slow in the shim
    numpy_as_device = argparse.Namespace(asarray=np.asarray)
    failures = []
    bench.check_memory_bound(numpy_as_device, failures)
    output = capsys.readouterr().out
    assert failures == [], output
    assert "ok   maxpool_forward argmax" in output and "ok   softmax_xent_backward" in output


# ----------------------------------------------------------------------------------------------
# On a GPU

gpu_test = pytest.mark.gpu


@gpu_test
def test_gpu_sgd_in_one_launch_matches_the_cpu():
    cupy = backend._import_cupy()
    rng = np.random.default_rng(0)
    shapes = [(96, 3, 11, 11), (96,), (4096, 9216), (1000,)]
    w = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    g = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    for device in ("cpu", "cuda"):
        params = [tensor(a.copy(), requires_grad=True, device=device) for a in w]
        optimizer = optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
        for _ in range(2):
            for p, grad in zip(params, g):
                p.grad = backend.to_device(grad, device)
            optimizer.step()
        if device == "cpu":
            expected = [p.numpy() for p in params]
    for p, e in zip(params, expected):
        np.testing.assert_allclose(cupy.asnumpy(p.data), e, rtol=1e-5, atol=1e-6)


@gpu_test
def test_gpu_ten_crop_evaluation_at_batch_196(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "train_alexnet.py"), "--device", "cuda",
         "--out", str(tmp_path / "run"), "--width", "0.0625", "--per-class", "20",
         "--batch-size", "196", "--epochs", "1", "--ten-crop", "--no-progress"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr


@gpu_test
def test_gpu_resumed_run_draws_the_same_dropout_masks(tmp_path):
    def run(out, epochs, resume=False):
        result = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "train_alexnet.py"), "--device", "cuda",
             "--out", str(out), "--width", "0.0625", "--per-class", "2", "--batch-size", "4",
             "--epochs", str(epochs), "--dropout", "0.5", "--no-progress"]
            + (["--resume"] if resume else []),
            cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
    from minialex.serialization import load
    run(tmp_path / "whole", 2)
    run(tmp_path / "parts", 1)
    run(tmp_path / "parts", 2, resume=True)
    whole = load(tmp_path / "whole" / "checkpoint.npz")["model"]
    parts = load(tmp_path / "parts" / "checkpoint.npz")["model"]
    for name in whole:
        np.testing.assert_array_equal(whole[name], parts[name], err_msg=name)
