"""backend.py's helpers and the settings minialex makes when it is imported."""
import os
import subprocess
import sys

import numpy as np
import pytest

from minialex import backend


def python(code, **environment):
    """Run `code` in a fresh interpreter with these environment variables; its stdout."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("OPENBLAS_THREAD_TIMEOUT", "MINIALEX_MALLOC")}
    env.update(environment)
    return subprocess.run([sys.executable, "-c", code], env=env, check=True,
                          capture_output=True, text=True).stdout.strip()


SHOW_TIMEOUT = "import os; print(os.environ.get('OPENBLAS_THREAD_TIMEOUT'))"


def test_importing_minialex_first_lets_openblas_threads_sleep():
    assert python("import minialex; " + SHOW_TIMEOUT) == "4"


def test_a_timeout_set_by_the_user_is_kept():
    assert python("import minialex; " + SHOW_TIMEOUT, OPENBLAS_THREAD_TIMEOUT="10") == "10"


def test_after_numpy_the_variable_is_left_alone():
    """OpenBLAS has read the environment already: setting it then would only mislead."""
    assert python("import numpy, minialex; " + SHOW_TIMEOUT) == "None"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc is Linux's")
def test_malloc_setting_can_be_turned_off():
    code = "from minialex import backend; print(backend.KEEPS_FREED_MEMORY)"
    assert python(code, MINIALEX_MALLOC="system") == "False"


def test_chunks_cover_the_arrays_in_order_and_pass_none_through(monkeypatch):
    monkeypatch.setattr(backend, "CHUNK", 4)
    a, b = np.arange(10), np.arange(10, 20)
    chunks = backend.chunks_of(a, None, b)
    assert [len(x) for x, _, _ in chunks] == [4, 4, 2]
    assert all(none is None for _, none, _ in chunks)
    np.testing.assert_array_equal(np.concatenate([x for x, _, _ in chunks]), a)
    np.testing.assert_array_equal(np.concatenate([y for _, _, y in chunks]), b)


def test_run_in_threads_does_every_piece(monkeypatch):
    monkeypatch.setattr(backend, "CHUNK", 7)
    x = np.arange(100, dtype=np.float64)
    out = np.zeros_like(x)
    backend.run_in_threads(np.multiply, [(a, 3.0, o) for a, o in backend.chunks_of(x, out)])
    np.testing.assert_array_equal(out, [3.0 * v for v in range(100)])


def test_run_in_threads_reraises_an_error_from_a_piece():
    def fail(piece):
        if piece[0] == 5:
            raise ValueError("piece 5 failed")

    with pytest.raises(ValueError, match="piece 5 failed"):
        backend.run_in_threads(fail, [(np.array([k]),) for k in range(8)])


def test_scatter_add_accumulates_repeated_indices():
    target = np.zeros(5)
    index = np.array([0, 3, 3, 1, 3, 0])
    values = np.array([1.0, 2.0, 4.0, 8.0, 16.0, 32.0])
    backend.scatter_add(target, index, values)
    expected = np.zeros(5)
    for k, i in enumerate(index):
        expected[i] += values[k]
    np.testing.assert_array_equal(target, expected)


@pytest.mark.parametrize("found", [True, False])
def test_matmul_in_threads_matches_matmul_and_restores_blas_threads(found, monkeypatch, rng):
    """Stacks of odd sizes and a transposed operand; with or without OpenBLAS's thread count."""
    if not found:
        monkeypatch.setattr(backend, "_openblas_thread_count", lambda: None)
    control = backend._openblas_thread_count()
    threads = control[1]() if control else None
    a = rng.standard_normal((7, 2, 5, 3)).astype(np.float32)
    b = rng.standard_normal((7, 2, 4, 3)).astype(np.float32).transpose(0, 1, 3, 2)
    got = backend.matmul_in_threads(a, b)
    expected = np.zeros((7, 2, 5, 4))
    for s, t, i, j in np.ndindex(expected.shape):
        expected[s, t, i, j] = sum(float(a[s, t, i, k]) * float(b[s, t, k, j]) for k in range(3))
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    if control:
        assert control[1]() == threads


def test_numpys_openblas_thread_count_is_found_on_linux():
    """PyPI's NumPy on Linux comes with OpenBLAS; losing it would only show as lost speed."""
    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]
    if not sys.platform.startswith("linux") or "openblas" not in blas:
        pytest.skip(f"NumPy's BLAS here is {blas} on {sys.platform}")
    assert backend._openblas_thread_count() is not None
