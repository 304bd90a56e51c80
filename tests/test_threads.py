"""fast/threads.py (pieces, cuts, products on our threads) and fast/memory.py, and what importing
minialex does and does not change in the process (environment, malloc, fast paths)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from minialex.fast import memory, threads

BLAS_VARIABLES = ("OPENBLAS_", "OMP_", "MKL_", "BLIS_", "GOTO_", "VECLIB_")


def python(code, **environment):
    """Run `code` in a fresh interpreter with these environment variables; its stdout.
    MINIALEX_FAST and MINIALEX_MALLOC are taken out of this process's environment first."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("MINIALEX_FAST", "MINIALEX_MALLOC")}
    env.update(environment)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


# ---- importing minialex ----------------------------------------------------------------------

SHOW_BLAS_ENVIRONMENT = (
    "import json, os; print(json.dumps({k: v for k, v in os.environ.items() "
    f"if k.startswith({BLAS_VARIABLES!r})}}))")


@pytest.mark.parametrize("preset", [{}, {"OPENBLAS_NUM_THREADS": "3", "OMP_NUM_THREADS": "2"}])
def test_importing_minialex_leaves_blas_and_openmp_variables_alone(preset):
    before = json.loads(python(SHOW_BLAS_ENVIRONMENT, **preset))
    after = json.loads(python("import minialex; " + SHOW_BLAS_ENVIRONMENT, **preset))
    assert after == before
    assert all(before.get(key) == value for key, value in preset.items())


SHOW_SETTINGS = ("print(sorted(minialex.enabled_paths()), "
                 "minialex.fast.memory.KEEPS_FREED_MEMORY)")


@pytest.mark.parametrize("setting, paths", [
    (None, "['cuda-kernels', 'elementwise', 'gemm', 'memory', 'pool', 'sgd', 'winograd']"),
    ("0", "[]"), ("winograd,gemm", "['gemm', 'winograd']")])
def test_import_order_does_not_change_which_fast_paths_run(setting, paths):
    """numpy first or minialex first: the same fast paths, the same malloc setting."""
    env = {} if setting is None else {"MINIALEX_FAST": setting}
    numpy_first = python("import numpy, minialex; " + SHOW_SETTINGS, **env)
    minialex_first = python("import minialex, numpy; " + SHOW_SETTINGS, **env)
    assert numpy_first == minialex_first
    assert numpy_first.startswith(paths + " ")


SHOW_MALLOC = "import minialex; print(minialex.fast.memory.KEEPS_FREED_MEMORY)"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc is Linux's")
@pytest.mark.parametrize("environment", [{"MINIALEX_FAST": "0"},
                                         {"MINIALEX_FAST": "winograd,gemm,pool"},
                                         {"MINIALEX_MALLOC": "system"}])
def test_malloc_is_left_alone_without_the_memory_path(environment):
    assert python(SHOW_MALLOC, **environment) == "False"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc is Linux's")
def test_malloc_keeps_freed_memory_by_default_and_with_the_memory_path():
    glibc = python("import platform; print(platform.libc_ver()[0])") == "glibc"
    if not glibc:
        pytest.skip("not glibc: there is no mallopt to call")
    assert python(SHOW_MALLOC) == "True"
    assert python(SHOW_MALLOC, MINIALEX_FAST="memory") == "True"


def test_set_fast_false_later_leaves_the_malloc_setting_as_it_was():
    """The setting is made once, at import; switching fast paths later does not undo it."""
    code = ("import minialex; before = minialex.fast.memory.KEEPS_FREED_MEMORY; "
            "minialex.set_fast(False); minialex.fast.memory.keep_freed_memory_if_enabled(); "
            "print(before == minialex.fast.memory.KEEPS_FREED_MEMORY)")
    assert python(code) == "True"


def test_memory_setting_is_not_made_when_the_path_is_off(monkeypatch):
    """In this process: keep_freed_memory_if_enabled asks dispatch, and calls nothing when
    "memory" is off."""
    from minialex import set_fast
    calls = []
    monkeypatch.setattr(memory, "keep_freed_memory", lambda: calls.append(1) or True)
    monkeypatch.setattr(memory, "KEEPS_FREED_MEMORY", False)
    set_fast(["winograd"])
    assert memory.keep_freed_memory_if_enabled() is False and calls == []
    set_fast(["memory"])
    assert memory.keep_freed_memory_if_enabled() is True and calls == [1]
    assert memory.keep_freed_memory_if_enabled() is True and calls == [1]  # made once


# ---- chunks_of, cuts, run_in_threads ---------------------------------------------------------

def test_chunks_cover_the_arrays_in_order_and_pass_none_through(monkeypatch):
    monkeypatch.setattr(threads, "CHUNK", 4)
    a, b = np.arange(10), np.arange(10, 20)
    chunks = threads.chunks_of(a, None, b)
    assert [len(x) for x, _, _ in chunks] == [4, 4, 2]  # the last piece ragged
    assert all(none is None for _, none, _ in chunks)
    np.testing.assert_array_equal(np.concatenate([x for x, _, _ in chunks]), a)
    np.testing.assert_array_equal(np.concatenate([y for _, _, y in chunks]), b)
    assert all(np.shares_memory(x, a) for x, _, _ in chunks)  # views: writes reach the array


@pytest.mark.parametrize("size, chunk", [(1, 4), (4, 4), (5, 4), (12, 5), (13, 1)])
def test_chunks_of_every_size_cover_it_once(size, chunk, monkeypatch):
    monkeypatch.setattr(threads, "CHUNK", chunk)
    chunks = threads.chunks_of(np.arange(size))
    assert len(chunks) == -(-size // chunk)
    np.testing.assert_array_equal(np.concatenate([c for c, in chunks]), np.arange(size))


@pytest.mark.parametrize("size, pieces", [(10, 3), (3, 3), (2, 3), (1, 5), (100, 7), (7, 1),
                                          (0, 2)])
def test_cuts_are_nearly_equal_runs_that_cover_the_range_once(size, pieces):
    runs = threads.cuts(size, pieces)
    covered = [i for lo, hi in runs for i in range(lo, hi)]
    assert covered == list(range(size))
    assert len(runs) == min(size, pieces)
    lengths = [hi - lo for lo, hi in runs]
    assert all(n > 0 for n in lengths) and (not lengths or max(lengths) - min(lengths) <= 1)


def test_run_in_threads_does_every_piece(monkeypatch):
    monkeypatch.setattr(threads, "CHUNK", 7)
    x = np.arange(100, dtype=np.float64)
    out = np.zeros_like(x)
    threads.run_in_threads(np.multiply, [(a, 3.0, o) for a, o in threads.chunks_of(x, out)])
    np.testing.assert_array_equal(out, [3.0 * v for v in range(100)])


def test_run_in_threads_reraises_an_error_from_a_piece():
    def fail(piece):
        if piece[0] == 5:
            raise ValueError("piece 5 failed")

    with pytest.raises(ValueError, match="piece 5 failed"):
        threads.run_in_threads(fail, [(np.array([k]),) for k in range(8)])


def test_run_in_threads_with_one_piece_or_none_runs_in_this_thread():
    import threading
    seen = []
    threads.run_in_threads(lambda: seen.append(threading.get_ident()), [()])
    threads.run_in_threads(lambda: seen.append(None), [])
    assert seen == [threading.get_ident()]


# ---- matmul ----------------------------------------------------------------------------------

class FakeBlas:
    """Stands in for a threadpoolctl controller where no BLAS library is found."""

    def __init__(self):
        self.threads, self.calls = 4, []

    def get_num_threads(self):
        return self.threads

    def set_num_threads(self, n):
        self.calls.append(n)
        self.threads = n


@pytest.fixture
def blas(monkeypatch):
    """The BLAS controllers matmul uses: the real ones, or a fake where none is found."""
    libraries = threads._blas_libraries()
    if not libraries:
        libraries = (FakeBlas(),)
        monkeypatch.setattr(threads, "_blas_libraries", lambda: libraries)
    return libraries


def counting_pieces(monkeypatch, check=None):
    """Wrap run_in_threads: returns the list of piece counts of every call made."""
    counts, original = [], threads.run_in_threads

    def run(function, pieces):
        counts.append(len(pieces))
        if check is not None:
            check()
        original(function, pieces)

    monkeypatch.setattr(threads, "run_in_threads", run)
    return counts


def product_loop(a, b):
    """a @ b by a loop over the stack, each product in float64 with np.dot."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    out = np.empty(a64.shape[:-1] + b64.shape[-1:])
    for index in np.ndindex(*a64.shape[:-2]):
        out[index] = np.dot(a64[index], b64[index])
    return out


@pytest.mark.parametrize("a_shape, b_shape, pieces", [
    ((7, 2, 5, 3), (7, 2, 3, 4), 3),   # a stack of 14 >= THREADS: cut in 5, 5, 4
    ((2, 9, 4), (2, 4, 5), 4),         # 2 products < 3 threads: each cut in 2 along M = 9
    ((1, 4, 11), (1, 11, 10), 3),      # one product, N = 10 > M = 4: 3 cuts along N
    ((13, 6), (6, 2), 3),              # 2-D: 3 cuts along M = 13
    ((2, 5), (5, 2), 2),               # fewer rows than threads: 2 cuts, none empty
])
def test_matmul_cuts_products_over_threads_and_matches_a_loop(a_shape, b_shape, pieces, blas,
                                                              monkeypatch, rng):
    monkeypatch.setattr(threads, "THREADS", 3)
    held = []
    counts = counting_pieces(monkeypatch, lambda: held.append(
        [library.get_num_threads() for library in blas]))
    before = [library.get_num_threads() for library in blas]
    a = rng.standard_normal(a_shape).astype(np.float32)
    b = rng.standard_normal(b_shape[:-2] + b_shape[:-3:-1]).astype(np.float32).swapaxes(-1, -2)
    got = threads.matmul(a, b)  # b transposed: not contiguous
    expected = product_loop(a, b)
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert counts == [pieces]
    assert held == [[1] * len(blas)]  # BLAS on one thread while the pieces run
    assert [library.get_num_threads() for library in blas] == before  # and restored


def test_matmul_restores_blas_threads_after_an_error(blas, monkeypatch):
    monkeypatch.setattr(threads, "THREADS", 2)
    before = [library.get_num_threads() for library in blas]
    with pytest.raises(ValueError):
        threads.matmul(np.ones((4, 3, 2)), np.ones((4, 5, 2)))  # inner sizes differ
    assert [library.get_num_threads() for library in blas] == before


def test_matmul_without_threadpoolctl_or_threads_is_plain_matmul(monkeypatch, rng):
    counts = counting_pieces(monkeypatch)
    a, b = rng.standard_normal((3, 4, 5)), rng.standard_normal((3, 5, 6))
    monkeypatch.setattr(threads, "_blas_libraries", lambda: ())
    monkeypatch.setattr(threads, "THREADS", 4)
    np.testing.assert_allclose(threads.matmul(a, b), product_loop(a, b), rtol=1e-12)
    monkeypatch.setattr(threads, "_blas_libraries", lambda: (FakeBlas(),))
    monkeypatch.setattr(threads, "THREADS", 1)
    np.testing.assert_allclose(threads.matmul(a, b), product_loop(a, b), rtol=1e-12)
    assert counts == []


def test_numpys_blas_is_found_on_linux():
    """PyPI's NumPy on Linux comes with OpenBLAS; losing it would only show as lost speed."""
    pytest.importorskip("threadpoolctl")
    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]
    if not sys.platform.startswith("linux") or "openblas" not in blas:
        pytest.skip(f"NumPy's BLAS here is {blas} on {sys.platform}")
    assert threads._blas_libraries()
