"""minialex.distributed and examples/train_alexnet.py --distributed.

Without MPI: the sampler gives each rank its part of every global batch, each image exactly
once and in the order (and with the augmentation draws) of one process with the global batch;
the validation shards cover every image once; importing minialex does not import mpi4py.

With MPI (skipped only where mpi4py is not installed): the script run by mpiexec in a
subprocess, on a tiny network (width 1/16, 40 training and 10 validation images), so that each
run takes a second or two: 2 ranks x batch 4 against 1 process x batch 8, a resumed job against
an uninterrupted one, mpiexec -n 1 against no MPI at all, and a rank that raises, exits or is
killed, which must end the whole job within seconds.
"""
import importlib.util
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from minialex.data.loader import DataLoader
from minialex.distributed import ShardedLoader, ValidationShard, shard_order
from minialex.serialization import load

ROOT = pathlib.Path(__file__).resolve().parents[1]
TRAIN = str(ROOT / "examples" / "train_alexnet.py")
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                                 os.environ.get("PYTHONPATH")])))
ENV.pop("MINIALEX_TEST_FAIL", None)
# --lr 0.001: at 0.01 this tiny network is chaotic by epoch 2, where any change in the order of
# float32 sums grows (--reference against the fast paths: 7e-4 apart after 2 epochs at 0.01;
# 2 ranks against 1 process: 1.9e-6 after 1 epoch, 2.5e-2 after 2 at 0.01, 1.2e-6 at 0.001)
TINY = ["--width", "0.0625", "--per-class", "4", "--threads", "1", "--no-progress",
        "--lr", "0.001"]
STEPS_PER_EPOCH = 5  # 40 training images in global batches of 8
HAS_MPI = importlib.util.find_spec("mpi4py") is not None


# ---- the sampler, without MPI -----------------------------------------------------------------

@pytest.mark.parametrize("n, batch, world", [(40, 4, 2), (41, 3, 3), (7, 2, 4), (16, 1, 1)])
def test_the_ranks_parts_make_up_each_global_batch_exactly_once(n, batch, world):
    order = np.random.default_rng(n).permutation(n)
    parts = [shard_order(order, batch, world, rank) for rank in range(world)]
    steps = n // (world * batch)
    assert all(len(part) == steps * batch for part in parts)
    for step in range(steps):
        global_batch = np.concatenate([part[step * batch:(step + 1) * batch] for part in parts])
        assert np.array_equal(global_batch, order[step * world * batch:(step + 1) * world * batch])
    every = np.concatenate(parts)
    assert len(set(every.tolist())) == len(every)


class Numbers:
    """A dataset whose image i is a 3x2x2 array of i, labelled i % 3."""

    def __len__(self):
        return 23

    def __getitem__(self, index):
        return np.full((3, 2, 2), index, dtype=np.float32), index % 3


def augment(image, rng):  # a random draw per image, as TrainTransform draws its crop and flip
    return image + rng.random()


def test_each_rank_takes_its_slot_of_the_global_batch_with_the_same_augmentation():
    world, batch = 3, 2
    single = DataLoader(Numbers(), world * batch, augment, shuffle=True, seed=5, drop_last=True,
                        num_threads=1)
    ranks = [ShardedLoader(Numbers(), batch, augment, seed=5, num_threads=2, world=world,
                           which_rank=r) for r in range(world)]
    for epoch in (0, 3):
        expected = list(single.batches(epoch))
        parts = [list(loader.batches(epoch)) for loader in ranks]
        assert len(expected) == len(ranks[0]) == 23 // 6
        for step, (x, labels) in enumerate(expected):
            assert np.array_equal(np.concatenate([p[step][0] for p in parts]), x)
            assert np.array_equal(np.concatenate([p[step][1] for p in parts]), labels)


def test_the_validation_shards_hold_every_image_once():
    shards = [ValidationShard(Numbers(), 4, augment, world=3, which_rank=r) for r in range(3)]
    labels = [index for shard in shards for x, _ in shard for index in x[:, 0, 0, 0].astype(int)]
    assert sorted(labels) == list(range(23))
    assert [len(shard) for shard in shards] == [2, 2, 2]


def test_the_nccl_calls_take_cupys_arguments_and_order_the_streams(monkeypatch):
    """init_gpu, _allreduce_sum, _nccl_average_async and _nccl_wait on the fake CuPy (tests/
    fake_cupy.py, CuPy 14's signatures: the unique id as bytes; pointers, count and stream as
    ints), in one process. The sums run on one side stream, made once, after an event of the
    compute stream; the compute stream waits on the event after the last one."""
    import fake_cupy
    from minialex import distributed as dist
    cupy = fake_cupy.install(monkeypatch)
    made = []
    monkeypatch.setattr(cupy.cuda, "Stream", lambda **kwargs: made.append(
        fake_cupy.Stream(**kwargs)) or made[-1])
    monkeypatch.setattr(dist, "_nccl", None)
    monkeypatch.setattr(dist, "_side", {})
    monkeypatch.setattr(cupy.cuda.nccl, "available", False)
    with pytest.raises(dist.DistributedError, match="needs NCCL.*pip install nvidia-nccl-cu13"):
        dist.init_gpu()
    monkeypatch.setattr(cupy.cuda.nccl, "available", True)
    dist.init_gpu()
    flat = cupy.asarray(np.ones(10, np.float32))
    cupy.log.clear()
    dist._allreduce_sum(flat)  # on the compute stream: the null stream, pointer 0
    assert cupy.log.stream_events == [("allreduce", 0, 10)]
    cupy.log.clear()
    for _ in range(3):
        dist._nccl_average_async(flat)
    dist._nccl_wait()
    events, compute, side = cupy.log.stream_events, fake_cupy.COMPUTE_STREAM, made[0]
    assert len(made) == 1 and side.ptr != 0
    for k in range(3):
        ready, wait, reduce, done = events[4 * k:4 * k + 4]
        assert ready[:2] == ("record", compute) and wait == ("stream waits on event", side,
                                                             ready[2])
        assert reduce == ("allreduce", side.ptr, 10) and done[:2] == ("record", side)
    assert events[12:] == [("stream waits on event", compute, events[11][2])]
    assert np.array_equal(flat.view(np.ndarray), np.ones(10))  # one rank: the sum / 1


def test_importing_minialex_does_not_import_mpi4py():
    code = "import sys, minialex, minialex.distributed; print('mpi4py' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True,
                            text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr


def test_distributed_without_mpiexec_or_mpi4py_says_how_to_launch(tmp_path):
    hidden = tmp_path / "hide"  # an mpi4py that cannot be imported
    (hidden / "mpi4py").mkdir(parents=True)
    (hidden / "mpi4py" / "__init__.py").write_text("raise ImportError('no mpi4py here')\n")
    without_mpi4py = dict(ENV, PYTHONPATH=f"{hidden}{os.pathsep}{ENV['PYTHONPATH']}")
    for env, phrase in ((ENV, "not started by mpiexec"), (without_mpi4py, "not installed")):
        if env is ENV and not HAS_MPI:
            continue
        result = subprocess.run([sys.executable, TRAIN, "--distributed", "--out",
                                 str(tmp_path / "out"), *TINY], env=env, capture_output=True,
                                text=True, timeout=60)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and phrase in lines[0] and "mpiexec -n 2" in lines[0], lines
        assert not (tmp_path / "out").exists()


# ---- the script under mpiexec -----------------------------------------------------------------

def mpiexec():
    beside_python = pathlib.Path(sys.executable).with_name("mpiexec")
    return str(beside_python) if beside_python.exists() else shutil.which("mpiexec")


def launch(ranks, out, *args, env=None, timeout=120):
    """The training script on `ranks` processes (0: no MPI, a plain python); returns the
    CompletedProcess and the seconds it took."""
    command = [sys.executable, TRAIN, "--out", str(out), *TINY, *map(str, args)]
    if ranks:
        command = [mpiexec(), "-n", str(ranks), sys.executable, "-m", "mpi4py", *command[1:],
                   "--distributed"]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env or ENV, capture_output=True, text=True,
                            timeout=timeout)
    return result, time.perf_counter() - started


def trained(ranks, out, *args, env=None):
    result, _ = launch(ranks, out, *args, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "error:" not in result.stderr  # no rank's watcher took a normal end for a death
    return result


def weights(out):
    return load(pathlib.Path(out) / "checkpoint.npz")["model"]


needs_mpi = pytest.mark.skipif(not HAS_MPI, reason="mpi4py is not installed "
                               "(pip install -e '.[distributed]')")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two epochs on: one process with batch 8, 2 ranks x 4 (comparing the ranks' weights after
    every step), 2 ranks resumed after epoch 1, and mpiexec -n 1 with batch 8."""
    if not HAS_MPI:
        pytest.skip("mpi4py is not installed (pip install -e '.[distributed]')")
    root = tmp_path_factory.mktemp("distributed")
    outputs = {"single": trained(0, root / "single", "--batch-size", 8, "--epochs", 2),
               "two": trained(2, root / "two", "--batch-size", 4, "--epochs", 2,
                              env=dict(ENV, MINIALEX_TEST_CHECK_EVERY_STEP="1")),
               "one_rank": trained(1, root / "one_rank", "--batch-size", 8, "--epochs", 2)}
    trained(2, root / "resumed", "--batch-size", 4, "--epochs", 1)
    outputs["resumed"] = trained(2, root / "resumed", "--batch-size", 4, "--epochs", 2,
                                 "--resume")
    return root, outputs


@needs_mpi
def test_two_ranks_give_the_weights_of_one_process_with_the_global_batch(runs):
    root, outputs = runs
    single, two = weights(root / "single"), weights(root / "two")
    worst = max(np.abs(two[k] - single[k]).max() / np.abs(single[k]).max() for k in single)
    print(f"2 ranks x 4 against 1 process x 8, 2 epochs: max relative difference {worst:.2e}")
    assert worst < 1e-5
    assert "2 process(es) x --batch-size 4 = global batch 8" in outputs["two"].stdout
    assert outputs["two"].stdout.count("epoch 2/2") == 1  # rank 0 alone prints


@needs_mpi
def test_the_ranks_hold_identical_weights_after_every_step(runs):
    # The "two" run compared the ranks' checksums after each of its steps
    # (MINIALEX_TEST_CHECK_EVERY_STEP): a difference would have stopped it with an error
    root, outputs = runs
    assert "differ" not in outputs["two"].stderr


@needs_mpi
def test_evaluation_counts_every_validation_image_once(runs):
    root, _ = runs
    two = json.loads((root / "two" / "metrics.json").read_text())
    single = json.loads((root / "single" / "metrics.json").read_text())
    assert two["config"]["ranks"] == 2
    for a, b in zip(two["epochs"], single["epochs"]):
        assert a["val_images"] == b["val_images"] == 10
        assert a["val_top1"] == b["val_top1"] and a["val_top5"] == b["val_top5"]
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)


@needs_mpi
def test_a_resumed_job_ends_with_the_bits_of_an_uninterrupted_one(runs):
    root, _ = runs
    resumed, uninterrupted = weights(root / "resumed"), weights(root / "two")
    assert all(np.array_equal(resumed[k], uninterrupted[k]) for k in uninterrupted)


@needs_mpi
def test_resuming_with_another_number_of_processes_is_refused(runs, tmp_path):
    root, _ = runs
    shutil.copytree(root / "two", tmp_path / "two")
    result, _ = launch(0, tmp_path / "two", "--batch-size", 4, "--epochs", 3, "--resume")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "2 process(es)" in result.stderr and "mpiexec -n 2" in result.stderr


@needs_mpi
def test_one_rank_gives_the_bits_of_a_run_without_mpi(runs):
    root, _ = runs
    one_rank, single = weights(root / "one_rank"), weights(root / "single")
    assert all(np.array_equal(one_rank[k], single[k]) for k in single)


@needs_mpi
@pytest.mark.parametrize("how", ["raise", "exit", "kill"])
def test_a_failing_rank_ends_the_whole_job_within_seconds(how, tmp_path):
    step = STEPS_PER_EPOCH + 2  # in epoch 2: the checkpoint of epoch 1 must stay whole
    env = dict(ENV, MINIALEX_TEST_FAIL=f"1:{step}:{how}")
    result, seconds = launch(2, tmp_path, "--batch-size", 4, "--epochs", 2, env=env,
                             timeout=60)
    print(f"rank 1 failing by {how}: the job ended after {seconds:.1f} s "
          f"(exit status {result.returncode})")
    assert result.returncode != 0 and seconds < 20
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr  # one line, from the failing rank (or its watcher)
    if how == "kill":  # its watcher says so; mpiexec names it by the PID that rank 0 printed
        pid = re.search(r"1=[^:\s]+:(\d+)", result.stdout).group(1)
        assert f"PID {pid}" in result.stdout + result.stderr
        assert f"rank 1 of 2 (PID {pid} on" in lines[0] and "killed" in lines[0], lines
    else:
        assert "rank 1 of 2 failed" in lines[0], result.stderr
    checkpoint = load(tmp_path / "checkpoint.npz")
    assert checkpoint["epoch"] == 0
