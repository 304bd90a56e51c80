"""benchmarks/bench_kernels.py's checks run on the CPU, through the kernel shim.

The script checks every kernel against its reference before it times anything; on a GPU a
crash in those checks (issue 15: the pooling check read an attribute the reference does not
set) would cost the whole run. Here the same check functions run with NumPy arrays, every
launch executed by the shim build of the .cu file, so a broken check fails in CI. The SGEMM
checks must also catch a wrong product, or they check nothing.
"""
import importlib.util
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from minialex import cuda
from conftest import names_launched

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_kernels.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_kernels_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The script's shapes take minutes on the shim: smaller ones, still ragged, and split
SHAPES = [(1, 1, 1, 1), (1, 17, 33, 65), (1, 127, 130, 29), (2, 20, 36, 12)]
SPLIT_SHAPES = [(1, 30, 70, 1000, None), (2, 33, 70, 100, (64, 64, 5)),
                (1, 130, 20, 77, (128, 128, 3)), (1, 5, 3, 30, (128, 64, 2))]


def test_the_sgemm_checks_pass_on_the_cpu(bench, kernel_launches, capsys):
    failures = []
    bench.check_sgemm(np, failures, SHAPES, SPLIT_SHAPES)
    assert failures == [], capsys.readouterr().out
    names = set(names_launched(kernel_launches))
    assert {f"sgemm_v{v}_{l}" for v in cuda.SGEMM_GEOMETRY for l in ("nn", "nt", "tn")} <= names
    assert "splitk_reduce" in names and any(name.startswith("sgemm_v8_") for name in names)
    assert {"sgemm_tf32_nn", "sgemm_tf32_nt", "sgemm_tf32_tn"} <= names  # the shim's stand-in


def test_the_sgemm_checks_catch_a_wrong_product(bench, monkeypatch, capsys):
    def off_by_a_little(a, b, trans_a=False, trans_b=False, version=8, plan=None):
        c = np.matmul(a.swapaxes(1, 2) if trans_a else a, b.swapaxes(1, 2) if trans_b else b)
        if version == 4:
            c = c.copy()
            c.reshape(-1)[-1] += 1e-2  # one element of v4's products
        return c

    monkeypatch.setattr(cuda, "sgemm", off_by_a_little)
    failures = []
    bench.check_sgemm(np, failures, SHAPES, SPLIT_SHAPES)
    assert failures and all(name.startswith("sgemm_v4_") for name in failures), failures
    assert "FAIL sgemm_v4_nn" in capsys.readouterr().out


def test_the_memory_bound_checks_pass_on_the_cpu(bench, kernel_launches, capsys):
    """im2col, col2im, max pooling (the check that crashed), LRN and the loss."""
    failures = []
    bench.check_memory_bound(np, failures)
    assert failures == [], capsys.readouterr().out
    assert {"maxpool_forward", "maxpool_backward"} <= set(names_launched(kernel_launches))


def test_without_a_gpu_the_benchmark_says_so_in_one_line_and_exits_0():
    code = ("import runpy, sys; sys.modules['cupy'] = None\n"
            f"sys.argv = [{str(SCRIPT)!r}]\n"
            f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    output = (result.stdout + result.stderr).strip()
    assert len(output.splitlines()) == 1 and "needs CuPy and an NVIDIA GPU" in output, output
