"""benchmarks/bench_alexnet.py, run as a user runs it (a subprocess), on a tiny AlexNet.

Timings are never asserted, only that they are there and positive: the files the run leaves
hold every engine's training step (two series of a process each) and every layer of both
variants, the table "What each fast path buys" has the reference and then one row per CPU fast
path in order, --reference runs minialex without fast paths, PyTorch missing is a note and not
an error, a bad argument is a one-line error that names it, and the FLOP counts follow
ALEXNET.md's "Work per image". One shared run (module-scoped fixture) keeps the file short.
"""
import importlib.util
import json
import math
import os
import pathlib
import platform
import subprocess
import sys

import pytest

import minialex
from minialex.models.alexnet import alexnet

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_alexnet.py"
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT),
                                                                 os.environ.get("PYTHONPATH")])))
TINY = ["--width", "0.0625", "--batch", "2", "--repeats", "1", "--warmup", "1", "--series", "2",
        "--fast-repeats", "1", "--scaling", "1,2", "--sgemm-size", "256", "--threads", "2",
        "--settle", "0.02"]
# the CPU's fast paths in the order the table switches them on (cuda-kernels is the GPU's)
CPU_FAST_PATHS = [name for name in minialex.fast_paths() if name != "cuda-kernels"]


def imports(module):
    try:
        __import__(module)
        return True
    except Exception:  # a broken install counts as missing, as in the script
        return False


ENGINES = ["mx-cpu"] + (["torch-cpu"] if imports("torch") else [])


def bench(*args, env=ENV):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_alexnet")
    result = bench(*TINY, "--engines", ",".join(ENGINES), "--out", out)
    assert result.returncode == 0, result.stdout + result.stderr
    return out, result


@pytest.fixture(scope="module")
def results(run):
    return json.loads((run[0] / "results.json").read_text())


def layer_paths(variant):
    model = alexnet(variant, width=0.0625)
    return ([f"features.{i}" for i in range(len(model.features))]
            + [f"classifier.{i}" for i in range(len(model.classifier))])


@pytest.mark.parametrize("variant", ["seed", "paper"])
def test_every_engine_has_a_training_step_and_every_layer_a_row(results, variant):
    assert results["settings"]["engines"] == ENGINES
    result = results["variants"][variant]
    for engine in ENGINES:
        step = result["training_step"][engine]
        assert step["batch"] == 2 and len(step["step_s"]) == 2 and len(step["series"]) == 2
        assert [len(series["step_s"]) for series in step["series"]] == [1, 1]
        assert step["series"][0]["fast_paths"] == (sorted(minialex.fast_paths())
                                                   if engine == "mx-cpu" else None)
        assert step["images_per_s"]["median"] > 0 and step["gflop_per_s"] > 0
        assert 0 < step["fraction_of_limit"]
        assert step["memory"]["peak_bytes"] > 0
        assert result["check_logits"][engine] < 1e-3  # the same model and weights everywhere
    assert [layer["path"] for layer in result["layers"]] == layer_paths(variant)
    names = [layer["name"] for layer in result["layers"]]
    assert names[0] == "conv1" and names[-1] == "fc8" and ("lrn1" in names) == (variant == "paper")
    for layer in result["layers"]:
        for engine in ENGINES:
            timing = layer["engines"][engine]
            assert timing["forward_ms"] > 0 and timing["backward_ms"] > 0
            assert len(timing["forward_s"]) == len(timing["backward_s"]) == 1
            assert (timing["gflop_per_s"] is not None) == (layer["kind"] in ("Conv2d", "Linear"))


def test_scaling_table_has_every_batch_and_engine(results):
    scaling = results["scaling"]
    assert scaling["variant"] == "seed" and scaling["batches"] == [1, 2]
    for engine in ENGINES:
        for batch in ("1", "2"):
            row = scaling["engines"][engine][batch]
            assert row["batch"] == int(batch) and row["images_per_s"]["median"] > 0
            assert row["memory"]["peak_bytes"] > 0


def test_machine_and_limit_are_recorded(results, run):
    machine = results["machine"]
    assert machine["cpu"] and machine["blas"] and machine["threads"] == 2
    assert results["limits"]["cpu"]["gflop_per_s"] > 0
    assert results["limits"]["gpu"] is None
    stdout = run[1].stdout
    assert "CPU limit:" in stdout and "Training step, seed" in stdout
    assert "Per layer, paper" in stdout and "Scaling, seed" in stdout


def test_fast_path_table_adds_one_cpu_fast_path_per_row(results, run):
    fast = results["fast_paths"]
    assert fast["variant"] == "seed" and fast["batch"] == 2 and fast["repeats"] == 1
    rows = fast["rows"]
    assert [row["label"] for row in rows] == ["reference"] + [f"+ {n}" for n in CPU_FAST_PATHS]
    assert [row["fast_paths"] for row in rows] == [CPU_FAST_PATHS[:k]
                                                   for k in range(len(CPU_FAST_PATHS) + 1)]
    expected_parts = {"conv1", "conv2", "conv3", "conv4", "conv5", "relu", "pool", "dropout",
                      "fc6", "fc7", "fc8", "optimizer", "other"}
    for row in rows:
        assert len(row["step_s"]) == 1
        numbers = [row["images_per_s"]["median"], row["step_ms"], row["speedup_vs_reference"]]
        numbers += [row["speedup_vs_previous"]] if row["label"] != "reference" else []
        assert all(math.isfinite(x) and x > 0 for x in numbers), row
        assert set(row["parts_ms"]) == expected_parts and list(row["parts_ms"])[-2:] == [
            "optimizer", "other"]
        assert all(math.isfinite(ms) and ms >= 0 for ms in row["parts_ms"].values()), row
        assert sum(row["shares"].values()) == pytest.approx(1)
        assert math.isfinite(row["final_loss"])
    assert rows[0]["speedup_vs_reference"] == 1 and rows[0]["speedup_vs_previous"] is None
    # "memory" is made at import: only the processes with it on keep freed memory
    with_memory = [("memory" in row["fast_paths"]) for row in rows]
    if platform.libc_ver()[0] == "glibc" and os.environ.get("MINIALEX_MALLOC") != "system":
        assert [row["malloc_keeps_freed_memory"] for row in rows] == with_memory
    assert "What each fast path buys: minialex CPU, seed" in run[1].stdout
    markdown = (run[0] / "results.md").read_text()
    assert "| fast paths | img/s | step ms | vs reference | vs previous | conv1 |" in markdown
    assert "| + winograd |" in markdown


def test_reference_runs_minialex_without_fast_paths(tmp_path):
    result = bench(*TINY, "--reference", "--variant", "seed", "--engines", "mx-cpu",
                   "--scaling", "", "--no-memory", "--no-fast-table", "--out", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["settings"]["reference"] is True
    assert results["machine"]["minialex_fast"] == "none"   # this process: the per-layer table
    assert results["settings"]["labels"]["mx-cpu"] == "minialex CPU (reference)"
    step = results["variants"]["seed"]["training_step"]["mx-cpu"]
    assert [series["fast_paths"] for series in step["series"]] == [[], []]  # the children
    assert step["images_per_s"]["median"] > 0
    assert all(layer["engines"]["mx-cpu"]["forward_ms"] > 0
               for layer in results["variants"]["seed"]["layers"])
    assert results["fast_paths"] is None
    assert "minialex fast paths: none, the reference ops alone" in result.stdout
    assert "| minialex CPU (reference) | 2 |" in (tmp_path / "results.md").read_text()


def test_markdown_tables_and_chart(run):
    out, result = run
    markdown = (out / "results.md").read_text()
    assert ("| engine | batch | img/s | spread (min-max) | GFLOP/s | of BLAS limit | vs torch CPU "
            "| peak memory | step working set |") in markdown
    assert "| layer | MFLOP/img | mx-cpu fwd ms | mx-cpu bwd ms | mx-cpu GFLOP/s |" in markdown
    assert "## Scaling, seed" in markdown and "| minialex CPU | 2 |" in markdown
    if imports("matplotlib"):
        assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert "matplotlib is not installed" in result.stdout


def test_without_torch_the_engine_is_left_out_with_a_note(tmp_path):
    fake = tmp_path / "fake" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no torch in this test')\n")
    env = dict(ENV, PYTHONPATH=os.pathsep.join([str(fake.parent), ENV["PYTHONPATH"]]))
    result = bench(*TINY, "--variant", "paper", "--no-layers", "--no-memory", "--scaling", "",
                   "--no-fast-table", "--engines", "mx-cpu,torch-cpu", "--out", tmp_path / "out",
                   env=env)
    assert result.returncode == 0, result.stderr
    assert "torch-cpu left out: PyTorch does not import" in result.stdout
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["settings"]["engines"] == ["mx-cpu"]
    assert results["variants"]["paper"]["training_step"]["mx-cpu"]["images_per_s"]["median"] > 0


@pytest.mark.parametrize("args, phrases", [
    (["--engines", "foo"], ["--engines", "'foo'", "mx-cpu"]),
    (["--batch", "0"], ["--batch must be >= 1", "0"]),
    (["--variant", "vgg"], ["--variant", "'vgg'", "seed"]),
    (["--scaling", "1,x"], ["--scaling", "'1,x'"]),
    (["--repeats", "0"], ["--repeats must be >= 1"]),
    (["--series", "0"], ["--series must be >= 1"]),
    (["--fast-repeats", "0"], ["--fast-repeats must be >= 1"]),
])
def test_a_bad_argument_is_a_clear_error(tmp_path, args, phrases):
    result = bench(*TINY, "--no-memory", *args, "--out", tmp_path)  # the last value counts
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("bench_alexnet.py: error:")
    for phrase in phrases:
        assert phrase in error
    assert not (tmp_path / "results.json").exists()


def test_flop_per_image_follows_the_design_note():
    """ALEXNET.md, Work per image: seed 2.27 GFLOP forward and 6.6 for training, paper 1.45 and
    4.1; conv1 105.4M multiply-accumulates, conv2 447.9M (seed) and 223.9M (paper, groups=2)."""
    spec = importlib.util.spec_from_file_location("bench_alexnet", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for variant, forward, training, conv2 in [("seed", 2.27, 6.6, 447.9),
                                              ("paper", 1.45, 4.1, 223.9)]:
        rows = module.layer_flops(alexnet(variant), (3, 227, 227), batch=1)
        by_name = {row["name"]: row for row in rows}
        assert by_name["conv1"]["forward_flop"] / 2e6 == pytest.approx(105.4, abs=0.05)
        assert by_name["conv1"]["backward_flop"] == by_name["conv1"]["forward_flop"]
        assert by_name["conv2"]["forward_flop"] / 2e6 == pytest.approx(conv2, abs=0.05)
        assert by_name["conv2"]["backward_flop"] == 2 * by_name["conv2"]["forward_flop"]
        assert by_name["fc6"]["forward_flop"] == 2 * 9216 * 4096
        assert sum(row["forward_flop"] for row in rows) / 1e9 == pytest.approx(forward, abs=0.005)
        assert module.training_flop_per_image(rows) / 1e9 == pytest.approx(training, abs=0.05)
        assert module.layer_flops(alexnet(variant, width=0.0625), (3, 227, 227), batch=4)[0][
            "output_shape"] == [4, 6, 55, 55]
