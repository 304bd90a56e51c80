"""benchmarks/bench_distributed.py, run as a user runs it (a subprocess, its ranks under
mpiexec), on a tiny AlexNet.

Timings are never asserted, only that they are there and positive: the files hold both
configurations' steps, the allreduce's parts and bandwidth, and the cost model. The cost model's
arithmetic (a ring allreduce moves 2 (n - 1) / n of the bytes; overlap never makes a step longer
nor shorter than its compute) is checked on its own, without MPI. Skipped where mpi4py or
mpiexec is missing; a bad argument is a one-line error.
"""
import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_distributed.py"
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                                 os.environ.get("PYTHONPATH")])))
TINY = ["--width", "0.0625", "--batch", "4", "--steps", "1", "--warmup", "1", "--series", "2",
        "--bandwidth-repeats", "1", "--threads", "2", "--gpus", "1,2,8", "--links", "25,400",
        "--quiet-wait", "0"]


def has_mpi():
    return importlib.util.find_spec("mpi4py") is not None and shutil.which("mpiexec") is not None


def load_script():
    spec = importlib.util.spec_from_file_location("bench_distributed", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    if not has_mpi():
        pytest.skip("mpi4py or mpiexec is missing: pip install -e '.[distributed]'")
    out = tmp_path_factory.mktemp("bench_distributed")
    result = bench(*TINY, "--out", out)
    assert result.returncode == 0, result.stdout + result.stderr
    return out, result, json.loads((out / "results.json").read_text())


def test_both_configurations_have_their_steps(run):
    results = run[2]
    one, two = results["measured"]["1"], results["measured"]["2"]
    alone = results["measured"]["no allreduce"]  # the same 2 ranks, without their allreduce
    assert (alone["threads_per_rank"], alone["batch_per_rank"]) == (1, 2)
    assert alone["allreduce_ms"] == 0 and alone["step_ms"] > 0
    assert (one["threads_per_rank"], one["batch_per_rank"]) == (2, 4)
    assert (two["threads_per_rank"], two["batch_per_rank"]) == (1, 2)
    for row in (one, two):
        assert row["step_ms"] > 0 and row["images_per_s"] > 0
        assert len(row["series_images_per_s"]) == 2
    assert one["allreduce_ms"] == 0 and one["allreduce_share"] == 0
    assert two["allreduce_ms"] > 0 and 0 < two["allreduce_share"] < 1
    assert [len(series["steps"]) for series in results["runs"]["2"]] == [1, 1]
    assert [len(series["bandwidth_s"]) for series in results["runs"]["no allreduce"]] == [0, 0]
    assert all(step["loss"] > 0 for series in results["runs"]["1"] for step in series["steps"])
    for key in ("overlapped", "buckets inline"):  # the sums sent while backward runs
        over = results["measured"][key]
        assert (over["threads_per_rank"], over["batch_per_rank"]) == (1, 2)
        assert over["wait_ms"] >= 0 and 0 <= over["allreduce_share"] < 1
    # the same averages (a + b, then halved, every way): the same losses, bit for bit
    losses = {key: [step["loss"] for series in results["runs"][key] for step in series["steps"]]
              for key in ("2", "overlapped", "buckets inline")}
    assert losses["2"] == losses["overlapped"] == losses["buckets inline"]


def test_bandwidth_is_for_alexnets_gradient_size(run):
    bandwidth = run[2]["bandwidth"]
    assert bandwidth["bytes"] == 4 * 60_965_224 and len(bandwidth["seconds"]) == 2
    # two ranks: a ring moves 2 (n - 1) / n = 1 times the buffer, bus = algorithm bandwidth
    assert bandwidth["algorithm_gb_per_s"] > 0
    assert bandwidth["bus_gb_per_s"] == pytest.approx(bandwidth["algorithm_gb_per_s"])


def test_cost_model_and_tables_are_written(run):
    out, result, results = run
    cost = results["cost_model"]
    assert [stage["name"] for stage in cost["stages"]] == [
        "fc8", "fc7", "fc6", "conv5", "conv4", "conv3", "conv2", "conv1"]
    assert cost["ready"]["conv1"] == pytest.approx(1)
    assert 0 < cost["backward_share"] < 1 and cost["gpu"]["assumed"] is True
    assert [(r["link_gbit_per_s"], r["gpus"]) for r in cost["gpu"]["rows"]] == [
        (25, 1), (25, 2), (25, 8), (400, 1), (400, 2), (400, 8)]
    assert results["machine"]["load_start"] is not None
    markdown = (out / "results.md").read_text()
    for text in ("| ranks x threads | batch | step ms | img/s |", "ASSUMED GPU",
                 "| link Gbit/s | ranks | allreduce ms |", "## Conclusions"):
        assert text in markdown
    assert "Allreduce alone, 243.9 MB" in result.stdout


def test_gradient_sizes_and_the_ring_arithmetic():
    module = load_script()
    stages = module.gradient_stages("paper")
    assert sum(stage["floats"] for stage in stages) == module.PAPER_GRADIENT_FLOATS
    size = 4 * module.PAPER_GRADIENT_FLOATS
    assert module.ring_seconds(size, 1, 100) == 0
    # 8 ranks at 100 Gbit/s: 2 x 7/8 x 243.9 MB at 12.5 GB/s
    assert module.ring_seconds(size, 8, 100) == pytest.approx(2 * 7 / 8 * size / 12.5e9)
    ready = {stage["name"]: (i + 1) / len(stages) for i, stage in enumerate(stages)}
    for ranks, link in [(1, 25), (8, 25), (8, 400), (64, 400)]:
        overlapped = module.overlapped_step(0.02, 0.6, stages, ready, ranks, link)
        assert 0.02 <= overlapped <= 0.02 + module.ring_seconds(size, ranks, link) + 1e-12
    assert module.network_limits(0.02, size, [1, 2, 4, 64], [25, 100, 400]) == {
        "25": 2, "100": 4, "400": None}


def test_a_bad_argument_is_a_clear_error(tmp_path):
    result = bench("--batch", "5", "--out", tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("bench_distributed.py: error:") and "--batch 5" in error
    assert not (tmp_path / "results.json").exists()


def test_without_mpi4py_it_says_how_to_install_it(tmp_path):
    fake = tmp_path / "fake" / "mpi4py"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no mpi4py in this test')\n")
    env = dict(ENV, PYTHONPATH=os.pathsep.join([str(fake.parent), ENV["PYTHONPATH"]]))
    result = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path / "out")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [load_script().INSTALL_HINT]
    assert "pip install -e '.[distributed]'" in result.stderr
