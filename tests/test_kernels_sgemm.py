"""kernels/sgemm.cu on the CPU (through tests/kernel_shim) against NumPy.

Every version (v1..v5) and layout (nn, nt, tn) computes C[b] = opA(A[b]) @ opB(B[b]); the expected
value is the float64 product of the same float32 inputs, and the tolerance atol + rtol * |ref|.
The shapes are ragged (1, 3, 17, 33, 65, 130: not multiples of any tile), plus multiples of 4 so
that v4 and v5 take their float4 path, and misaligned ones (a pointer, or a batch offset, not on
a 16-byte boundary) where they must fall back to scalar loads. Gaps between the batch's matrices
hold NaN: a kernel that reads outside its matrix gets NaN, and one that writes there is caught.
"""
import pathlib
import re

import numpy as np
import pytest

from kernel_shim import harness

SOURCE = pathlib.Path(__file__).resolve().parents[1] / "kernels" / "sgemm.cu"
VERSIONS = ["v1", "v2", "v3", "v4", "v5"]  # a new version goes here and in the benchmark
LAYOUTS = ["nn", "nt", "tn"]
ATOL, RTOL = 1e-4, 1e-4
LAUNCH_LINE = re.compile(r"^// launch sgemm_(v\d+): tile_M=(\d+) tile_N=(\d+) "
                         r"block=\((\d+),(\d+),1\)$", re.MULTILINE)


def launch_geometry():
    """{version: (tile_M, tile_N, block)} from the `// launch sgemm_vK: ...` lines."""
    return {version: (int(tm), int(tn), (int(bx), int(by), 1))
            for version, tm, tn, bx, by in LAUNCH_LINE.findall(SOURCE.read_text())}


@pytest.fixture(scope="module")
def kernels():
    return harness.load(SOURCE)


def pack(matrices, stride, offset):
    """The (batch, rows, cols) matrices in one flat float32 buffer, matrix b at offset + b*stride,
    NaN in between. Returns the buffer from `offset` on, as the kernel's pointer sees it."""
    batch, rows, cols = matrices.shape
    buffer = np.full(offset + (batch - 1) * stride + rows * cols, np.nan, dtype=np.float32)
    for b in range(batch):
        start = offset + b * stride
        buffer[start:start + rows * cols] = matrices[b].ravel()
    return buffer[offset:]


def run_sgemm(kernels, version, layout, a, b, gaps=(0, 0, 0), offsets=(0, 0, 0), grid=None):
    """C = a @ b through sgemm_<version>_<layout>, a (batch, M, K), b (batch, K, N) given as the
    logical operands; stored transposed where the layout says so. Returns (C, C's buffer)."""
    batch, M, K = a.shape
    N = b.shape[2]
    stored_a = a.transpose(0, 2, 1) if layout == "tn" else a
    stored_b = b.transpose(0, 2, 1) if layout == "nt" else b
    strides = (M * K + gaps[0], K * N + gaps[1], M * N + gaps[2])
    a_buffer = pack(stored_a, strides[0], offsets[0])
    b_buffer = pack(stored_b, strides[1], offsets[1])
    c_buffer = pack(np.full((batch, M, N), np.nan, np.float32), strides[2], offsets[2])
    tile_m, tile_n, block = launch_geometry()[version]
    if grid is None:
        grid = (harness.ceil_div(N, tile_n), harness.ceil_div(M, tile_m), batch)
    kernels.launch(f"sgemm_{version}_{layout}", grid, block, M, N, K, a_buffer, b_buffer,
                   c_buffer, *strides)
    c = np.stack([c_buffer[i * strides[2]:i * strides[2] + M * N].reshape(M, N)
                  for i in range(batch)])
    return c, c_buffer


def random_operands(rng, batch, M, N, K):
    a = rng.standard_normal((batch, M, K)).astype(np.float32)
    b = rng.standard_normal((batch, K, N)).astype(np.float32)
    return a, b


def assert_close(c, a, b):
    expected = a.astype(np.float64) @ b.astype(np.float64)
    error = np.abs(c - expected)
    bad = ~(error <= ATOL + RTOL * np.abs(expected))  # NaN counts as bad
    if bad.any():
        first = [(tuple(int(i) for i in index), float(c[index]), float(expected[index]))
                 for index in zip(*np.nonzero(bad))][:5]
        pytest.fail(f"{bad.sum()} of {c.size} elements differ; first (index, got, expected): "
                    f"{first}")


def test_every_version_has_a_launch_line_and_the_contract_signature():
    assert list(launch_geometry()) == VERSIONS
    entry_points = harness.parse_entry_points(SOURCE.read_text())
    assert sorted(entry_points) == sorted(f"sgemm_{v}_{l}" for v in VERSIONS for l in LAYOUTS)
    contract = ["int M", "int N", "int K", "const float* A", "const float* B", "float* C",
                "long long batch_stride_A", "long long batch_stride_B",
                "long long batch_stride_C"]
    for name, params in entry_points.items():
        assert [p.describe() for p in params] == contract, name


SHAPES = [  # (M, N, K)
    (1, 1, 1),
    (3, 17, 5),
    (17, 3, 33),
    (33, 65, 17),
    (65, 33, 130),
    (130, 130, 7),    # 2 x 2 tiles of 128 for v4 and v5, the second almost empty
    (20, 132, 36),    # multiples of 4: v4 and v5 read every operand with float4
    (132, 68, 12),
]


@pytest.mark.parametrize("M, N, K", SHAPES, ids=[f"{m}x{n}x{k}" for m, n, k in SHAPES])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("version", VERSIONS)
def test_matches_numpy(kernels, version, layout, M, N, K, rng):
    a, b = random_operands(rng, 1, M, N, K)
    c, _ = run_sgemm(kernels, version, layout, a, b)
    assert_close(c, a, b)


# gaps: floats between consecutive matrices of the batch; offsets: floats from an aligned address
BATCHES = {
    "packed": ((0, 0, 0), (0, 0, 0)),
    "aligned gaps": ((4, 8, 12), (0, 0, 0)),   # every matrix 16-byte aligned: float4 everywhere
    "odd gaps": ((1, 3, 5), (0, 0, 0)),        # matrix 0 aligned, matrix 1 not: per-batch check
    "misaligned A": ((0, 0, 0), (1, 0, 0)),
    "misaligned B": ((0, 0, 0), (0, 2, 0)),
    "misaligned C": ((0, 0, 0), (0, 0, 3)),
}


@pytest.mark.parametrize("case", BATCHES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("version", VERSIONS)
def test_batches_and_alignment(kernels, version, layout, case, rng):
    gaps, offsets = BATCHES[case]
    a, b = random_operands(rng, 3, 36, 20, 12)  # multiples of 4: only alignment decides
    c, c_buffer = run_sgemm(kernels, version, layout, a, b, gaps, offsets)
    assert_close(c, a, b)
    assert np.isnan(c_buffer).sum() == 2 * gaps[2], "a kernel wrote between the batch's matrices"


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("M, N, K", [(7, 5, 7), (5, 9, 11), (33, 17, 3)])
def test_float4_versions_on_rows_that_are_not_multiples_of_4(kernels, layout, M, N, K, rng):
    for version in ("v4", "v5"):
        a, b = random_operands(rng, 2, M, N, K)
        c, _ = run_sgemm(kernels, version, layout, a, b)
        assert_close(c, a, b)


@pytest.mark.parametrize("version", VERSIONS)
def test_a_block_computes_exactly_its_tile(kernels, version, rng):
    # One block only: it must fill C[:tile_M, :tile_N] and leave the rest alone, or the launch
    # line does not describe the kernel (cuda.py builds its grid from that line).
    tile_m, tile_n, _ = launch_geometry()[version]
    M, N, K = tile_m + 3, tile_n + 2, 5
    a, b = random_operands(rng, 1, M, N, K)
    c, _ = run_sgemm(kernels, version, "nn", a, b, grid=(1, 1, 1))
    assert_close(c[:, :tile_m, :tile_n], a[:, :tile_m], b[:, :, :tile_n])
    assert np.isnan(c[:, tile_m:, :]).all() and np.isnan(c[:, :, tile_n:]).all()
