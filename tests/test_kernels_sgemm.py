"""kernels/sgemm.cu on the CPU (through tests/kernel_shim) against NumPy, and v8's plan.

Every version (v1..v8) and layout (nn, nt, tn) computes C[b] = opA(A[b]) @ opB(B[b]); the
expected value is the float64 product of the same float32 inputs, and the tolerance
atol + rtol * |ref|. The shapes are ragged (not multiples of any tile, K not a multiple of the
K step 8), plus multiples of 4 so that v6 to v8 take their float4 path, and misaligned ones (a
pointer, or a batch offset, not on a 16-byte boundary) where they must fall back to scalar
loads. Gaps between the batch's matrices hold NaN: a kernel that reads outside its matrix gets
NaN, and one that writes there is caught. v8 runs at the geometry cuda.py launches on a GPU
(its tiles and block sizes), with K split into several ranges and the partial products reduced
by splitk_reduce, whose fixed order of summation is checked bit for bit.
"""
import importlib.util
import pathlib

import numpy as np
import pytest

from kernel_shim import harness
from minialex import cuda
from conftest import names_launched

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCE = ROOT / "kernels" / "sgemm.cu"
FIXED = ["v1", "v2", "v3", "v4", "v5", "v6", "v7"]  # one tile each; a new version goes here
TILES = [(128, 128), (128, 64), (64, 64)]            # v8's
LAYOUTS = ["nn", "nt", "tn"]
ATOL, RTOL = 1e-4, 1e-4
CONTRACT = ["int M", "int N", "int K", "const float* A", "const float* B", "float* C",
            "long long batch_stride_A", "long long batch_stride_B", "long long batch_stride_C"]
SPLIT = ["int splits", "int k_chunk"]  # v8 and TF32
EPILOGUE = ["const float* bias", "int bias_along", "long long batch_stride_bias"]
NO_BIAS = (np.zeros(0, np.float32), 0, 0)  # bias_along 0: the bias is never read


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


def unpack(buffer, count, stride, rows, cols):
    return np.stack([buffer[i * stride:i * stride + rows * cols].reshape(rows, cols)
                     for i in range(count)])


def stored(layout, a, b):
    """The operands as the layout stores them: A (K, M) for tn, B (N, K) for nt."""
    return (a.transpose(0, 2, 1) if layout == "tn" else a,
            b.transpose(0, 2, 1) if layout == "nt" else b)


def run_fixed(kernels, version, layout, a, b, gaps=(0, 0, 0), offsets=(0, 0, 0), grid=None):
    """C = a @ b through sgemm_<version>_<layout>, a (batch, M, K), b (batch, K, N) given as the
    logical operands, at cuda.py's geometry for the version. Returns (C, C's buffer)."""
    batch, M, K = a.shape
    N = b.shape[2]
    strides = (M * K + gaps[0], K * N + gaps[1], M * N + gaps[2])
    buffers = [pack(s, stride, offset) for s, stride, offset in zip(stored(layout, a, b),
                                                                   strides, offsets)]
    c_buffer = pack(np.full((batch, M, N), np.nan, np.float32), strides[2], offsets[2])
    tile_m, tile_n, block = cuda.SGEMM_GEOMETRY[int(version[1:])]
    if grid is None:
        grid = (harness.ceil_div(N, tile_n), harness.ceil_div(M, tile_m), batch)
    kernels.launch(f"sgemm_{version}_{layout}", grid, block, M, N, K, *buffers, c_buffer,
                   *strides)
    return unpack(c_buffer, batch, strides[2], M, N), c_buffer


def run_v8(kernels, tile, layout, a, b, splits, gaps=(0, 0, 0), offsets=(0, 0, 0)):
    """The partial products of sgemm_v8_<tile>_<layout> with K in `splits` ranges, as cuda.py
    launches it: (partials (batch, splits, M, N), their buffer). gaps[2] separates the slices."""
    batch, M, K = a.shape
    N = b.shape[2]
    splits, k_chunk = cuda._split_k(K, splits)
    strides = (M * K + gaps[0], K * N + gaps[1], M * N + gaps[2])
    buffers = [pack(s, stride, offset) for s, stride, offset in zip(stored(layout, a, b),
                                                                   strides, offsets)]
    c_buffer = pack(np.full((batch * splits, M, N), np.nan, np.float32), strides[2],
                    offsets[2])
    grid = (harness.ceil_div(N, tile[1]), harness.ceil_div(M, tile[0]), batch * splits)
    kernels.launch(f"sgemm_v8_{tile[0]}x{tile[1]}_{layout}", grid, (cuda.SGEMM_TILES[tile],),
                   M, N, K, *buffers, c_buffer, *strides, splits, k_chunk, *NO_BIAS)
    partials = unpack(c_buffer, batch * splits, strides[2], M, N)
    return partials.reshape(batch, splits, M, N), c_buffer


def random_operands(rng, batch, M, N, K):
    a = rng.standard_normal((batch, M, K)).astype(np.float32)
    b = rng.standard_normal((batch, K, N)).astype(np.float32)
    return a, b


def assert_close(c, expected):
    error = np.abs(c - expected)
    bad = ~(error <= ATOL + RTOL * np.abs(expected))  # NaN counts as bad
    if bad.any():
        first = [(tuple(int(i) for i in index), float(c[index]), float(expected[index]))
                 for index in zip(*np.nonzero(bad))][:5]
        pytest.fail(f"{bad.sum()} of {c.size} elements differ; first (index, got, expected): "
                    f"{first}")


def product(a, b):
    return a.astype(np.float64) @ b.astype(np.float64)


# ---- the file's entry points ----

def test_every_entry_point_has_the_contract_signature():
    entry_points = harness.parse_entry_points(SOURCE.read_text())
    fixed = [f"sgemm_{v}_{l}" for v in FIXED for l in LAYOUTS]
    split = [f"sgemm_v8_{m}x{n}_{l}" for m, n in TILES for l in LAYOUTS]
    tf32 = [f"sgemm_tf32_{layout}" for layout in LAYOUTS]
    assert sorted(entry_points) == sorted(fixed + split + tf32 + ["splitk_reduce"])
    for name in fixed:
        assert [p.describe() for p in entry_points[name]] == CONTRACT, name
    for name in split:
        assert [p.describe() for p in entry_points[name]] == CONTRACT + SPLIT + EPILOGUE, name
    assert [p.describe() for p in entry_points["splitk_reduce"]] == [
        "const float* partial", "float* C", "long long count", "int batch", "int splits",
        "int N"] + EPILOGUE
    assert all([p.describe() for p in entry_points[f"sgemm_tf32_{layout}"]] == CONTRACT + SPLIT +
               EPILOGUE for layout in LAYOUTS)
    assert FIXED == [f"v{v}" for v in cuda.SGEMM_GEOMETRY] and list(cuda.SGEMM_TILES) == TILES
    assert cuda.SGEMM_VERSIONS == (1, 2, 3, 4, 5, 6, 7, 8) and cuda.SGEMM_BEST == 8


def test_threads_per_block_cover_the_tile_at_8x8_each():
    for version, (tile_m, tile_n, block) in cuda.SGEMM_GEOMETRY.items():
        per_thread = {1: 1, 2: 1, 3: 1, 4: 8}.get(version, 64)  # v4: 8 x 1; v5 on: 8 x 8
        assert tile_m * tile_n == per_thread * np.prod(block), version
    for (tile_m, tile_n), threads in cuda.SGEMM_TILES.items():
        assert tile_m * tile_n == 64 * threads


# ---- v1 to v7 ----

SHAPES = [  # (M, N, K)
    (1, 1, 1),
    (3, 17, 5),
    (17, 3, 33),
    (33, 65, 17),
    (65, 33, 130),
    (130, 130, 7),    # 2 x 2 tiles of 128, the second almost empty
    (20, 132, 36),    # multiples of 4: v6 and v7 read every operand with float4
    (132, 68, 12),
]


@pytest.mark.parametrize("M, N, K", SHAPES, ids=[f"{m}x{n}x{k}" for m, n, k in SHAPES])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("version", FIXED)
def test_matches_numpy(kernels, version, layout, M, N, K, rng):
    a, b = random_operands(rng, 1, M, N, K)
    c, _ = run_fixed(kernels, version, layout, a, b)
    assert_close(c, product(a, b))


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
@pytest.mark.parametrize("version", FIXED)
def test_batches_and_alignment(kernels, version, layout, case, rng):
    gaps, offsets = BATCHES[case]
    a, b = random_operands(rng, 3, 36, 20, 12)  # multiples of 4: only alignment decides
    c, c_buffer = run_fixed(kernels, version, layout, a, b, gaps, offsets)
    assert_close(c, product(a, b))
    assert np.isnan(c_buffer).sum() == 2 * gaps[2], "a kernel wrote between the batch's matrices"


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("M, N, K", [(7, 5, 7), (5, 9, 11), (33, 17, 3)])
def test_float4_versions_on_rows_that_are_not_multiples_of_4(kernels, layout, M, N, K, rng):
    for version in ("v6", "v7"):
        a, b = random_operands(rng, 2, M, N, K)
        c, _ = run_fixed(kernels, version, layout, a, b)
        assert_close(c, product(a, b))


@pytest.mark.parametrize("version", FIXED)
def test_a_block_computes_exactly_its_tile(kernels, version, rng):
    # One block only: it must fill C[:tile_M, :tile_N] and leave the rest alone, or the
    # geometry in cuda.py does not describe the kernel (it builds its grid from it).
    tile_m, tile_n, _ = cuda.SGEMM_GEOMETRY[int(version[1:])]
    M, N, K = tile_m + 3, tile_n + 2, 5
    a, b = random_operands(rng, 1, M, N, K)
    c, _ = run_fixed(kernels, version, "nn", a, b, grid=(1, 1, 1))
    assert_close(c[:, :tile_m, :tile_n], product(a[:, :tile_m], b[:, :, :tile_n]))
    assert np.isnan(c[:, tile_m:, :]).all() and np.isnan(c[:, :, tile_n:]).all()


# ---- v8: split-K at the GPU's geometry ----

V8_SHAPES = [  # (batch, M, N, K, splits): K split into ranges of a multiple of 8
    (1, 70, 45, 37, 3),     # ranges 16, 16, 5: the last one ragged
    (2, 131, 66, 100, 4),   # two tiles each way for 64x64, partial ones
    (1, 20, 132, 36, 2),    # multiples of 4: float4 loads in every range
    (1, 5, 3, 9, 2),        # ranges 8 and 1
    (3, 64, 64, 64, 1),     # exact tiles, no split: C itself
]


@pytest.mark.parametrize("batch, M, N, K, splits", V8_SHAPES,
                         ids=[f"{b}x{m}x{n}x{k}/{s}" for b, m, n, k, s in V8_SHAPES])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("tile", TILES, ids=[f"{m}x{n}" for m, n in TILES])
def test_v8_partial_products_are_the_products_of_the_k_ranges(kernels, tile, layout, batch, M,
                                                              N, K, splits, rng):
    a, b = random_operands(rng, batch, M, N, K)
    partials, _ = run_v8(kernels, tile, layout, a, b, splits)
    splits, k_chunk = cuda._split_k(K, splits)
    for s in range(splits):
        k = slice(s * k_chunk, (s + 1) * k_chunk)
        assert_close(partials[:, s], product(a[:, :, k], b[:, k, :]))


@pytest.mark.parametrize("case", BATCHES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_v8_batches_and_alignment(kernels, layout, case, rng):
    gaps, offsets = BATCHES[case]
    a, b = random_operands(rng, 3, 36, 20, 24)  # k ranges of 16 and 8
    partials, c_buffer = run_v8(kernels, (64, 64), layout, a, b, 2, gaps, offsets)
    assert_close(partials.sum(axis=1), product(a, b))
    assert np.isnan(c_buffer).sum() == 5 * gaps[2], "a kernel wrote between the partials"


def test_splitk_reduce_adds_the_splits_in_a_fixed_order(kernels, rng):
    batch, splits, M, N = 2, 5, 7, 9
    # values of very different sizes: another order of summation gives other float32 bits
    partial = (rng.standard_normal((batch, splits, M, N)) *
               10.0 ** rng.integers(-4, 5, (batch, splits, M, N))).astype(np.float32)
    c = np.full((batch, M, N), np.nan, np.float32)
    kernels.launch("splitk_reduce", (2,), (32,), partial, c, M * N, batch, splits, N,  # strides
                   *NO_BIAS)
    expected = partial[:, 0].copy()
    for s in range(1, splits):  # float32 sums, s = 0, 1, ..., as the kernel promises
        expected = expected + partial[:, s]
    assert np.array_equal(c, expected)
    backwards = partial[:, -1].copy()
    for s in range(splits - 2, -1, -1):
        backwards = backwards + partial[:, s]
    assert not np.array_equal(backwards, expected)  # the data tells the orders apart


# ---- v8's bias epilogue: added in the final store, once ----

def bias_for(rng, along, batch, M, N, per_batch):
    """A bias along rows (along 1: one per m) or columns (2: one per n), one per product if
    per_batch; and a view of it that broadcasts against C (batch, M, N): what C[b][m][n] gets."""
    length = M if along == 1 else N
    bias = rng.standard_normal((batch, length) if per_batch else (length,)).astype(np.float32)
    rows = bias.reshape(-1, length)  # (batch or 1, length)
    return bias, rows[:, :, None] if along == 1 else rows[:, None, :]


EPILOGUE_CASES = [  # (batch, M, N, K, splits, per_batch)
    (1, 70, 45, 37, 1, False),   # ragged: tiles and columns past the edge of C
    (2, 131, 66, 100, 1, True),  # a bias per product (conv groups), batch_stride_bias > 0
    (2, 20, 132, 36, 1, False),  # N % 4 == 0: the float4 store; the same bias for both
    (1, 70, 45, 37, 3, False),   # split: the partials carry no bias, splitk_reduce adds it
    (3, 33, 17, 100, 4, True),
]


@pytest.mark.parametrize("batch, M, N, K, splits, per_batch", EPILOGUE_CASES,
                         ids=[f"{b}x{m}x{n}x{k}/{s}{'/per-batch' if p else ''}"
                              for b, m, n, k, s, p in EPILOGUE_CASES])
@pytest.mark.parametrize("along", [1, 2], ids=["per-row", "per-column"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("tile", TILES, ids=[f"{m}x{n}" for m, n in TILES])
def test_v8_bias_epilogue_adds_the_bias_once(kernels, tile, layout, along, batch, M, N, K,
                                             splits, per_batch, rng):
    a, b = random_operands(rng, batch, M, N, K)
    bias, added = bias_for(rng, along, batch, M, N, per_batch)
    splits, k_chunk = cuda._split_k(K, splits)
    stored_a, stored_b = (np.ascontiguousarray(x) for x in stored(layout, a, b))
    out = np.full((batch * splits, M, N), np.nan, np.float32)
    epilogue = (bias, along, bias.shape[-1] if per_batch else 0)
    kernels.launch(f"sgemm_v8_{tile[0]}x{tile[1]}_{layout}",
                   (-(-N // tile[1]), -(-M // tile[0]), batch * splits),
                   (cuda.SGEMM_TILES[tile],), M, N, K, stored_a, stored_b, out, M * K, K * N,
                   M * N, splits, k_chunk, *epilogue)
    if splits == 1:  # the tile's store added it
        assert_close(out, product(a, b) + added)
        return
    partials = out.reshape(batch, splits, M, N)
    for s in range(splits):  # no bias in any partial product
        k = slice(s * k_chunk, (s + 1) * k_chunk)
        assert_close(partials[:, s], product(a[:, :, k], b[:, k, :]))
    c = np.full((batch, M, N), np.nan, np.float32)
    kernels.launch("splitk_reduce", (3,), (64,), out, c, M * N, batch, splits, N, *epilogue)
    expected = partials[:, 0].copy()  # the fixed-order float32 sum, then the bias
    for s in range(1, splits):
        expected = expected + partials[:, s]
    assert np.array_equal(c, expected + added)  # float32 + float32, as the kernel adds


# ---- cuda.sgemm (the wrapper) with every kernel launched through the shim ----
# (kernel_launches: tests/conftest.py)

SGEMM_CASES = [  # (batch or None, M, N, K, plan)
    (None, 17, 33, 5, None),
    (None, 70, 45, 300, (64, 64, 3)),
    (2, 3, 65, 18, (128, 64, 2)),
    (None, 129, 20, 41, (128, 128, 4)),
    (None, 24, 36, 600, None),   # the plan itself splits: 1 block, K = 600 allows 2 splits
]


@pytest.mark.parametrize("trans_a, trans_b", cuda.SGEMM_LAYOUTS)
def test_sgemm_v8_with_trans_flags_and_splits(kernel_launches, trans_a, trans_b):
    rng = np.random.default_rng(3)
    for batch, M, N, K, plan in SGEMM_CASES:
        lead = () if batch is None else (batch,)
        a = rng.standard_normal(lead + ((K, M) if trans_a else (M, K)))
        b = rng.standard_normal(lead + ((N, K) if trans_b else (K, N)))
        expected = np.matmul(a.swapaxes(-1, -2) if trans_a else a,
                             b.swapaxes(-1, -2) if trans_b else b)
        got = cuda.sgemm(a.astype(np.float32), b.astype(np.float32), trans_a, trans_b,
                         plan=plan)
        assert got.shape == expected.shape and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * K,
                                   err_msg=f"batch {batch} M {M} N {N} K {K} plan {plan}")
    names = names_launched(kernel_launches)
    assert names.count("splitk_reduce") == 4, names  # every case but the first splits


def test_sgemm_default_is_v8_as_planned(kernel_launches):
    a, b = np.ones((24, 600), np.float32), np.ones((600, 36), np.float32)
    np.testing.assert_array_equal(cuda.sgemm(a, b), np.full((24, 36), 600.0))
    # 1 tile, and K = 600 allows 2 splits: no wave for any tile, so the smallest
    assert [(launch.name, launch.grid, launch.block) for launch in kernel_launches] == [
        ("sgemm_v8_64x64_nn", (1, 1, 2), (64, 1, 1)), ("splitk_reduce", (4, 1, 1), (256, 1, 1))]


def test_sgemm_split_k_is_deterministic(kernel_launches):
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((33, 900)) * 10.0 ** rng.integers(-3, 4, (33, 900)))
    b = rng.standard_normal((900, 20))
    a, b = a.astype(np.float32), b.astype(np.float32)
    first = cuda.sgemm(a, b, plan=(64, 64, 7))
    assert all(np.array_equal(first, cuda.sgemm(a, b, plan=(64, 64, 7))) for _ in range(2))


BIAS_CASES = [  # (batch or None, M, N, K, plan, bias_along, a bias per product)
    (None, 17, 33, 5, None, "column", False),        # linear: y = x W^T + b, no split
    (None, 70, 45, 300, (64, 64, 3), "row", False),  # split: splitk_reduce adds it
    (2, 3, 65, 18, (128, 64, 1), "row", True),       # conv with groups: one bias per product
    (2, 24, 36, 600, (64, 64, 2), "column", False),  # batched and split, the same bias
    (None, 4, 5, 0, None, "row", False),             # K = 0: C is the bias
]


@pytest.mark.parametrize("trans_a, trans_b", cuda.SGEMM_LAYOUTS)
def test_sgemm_adds_the_bias_without_a_launch_of_its_own(kernel_launches, trans_a, trans_b):
    rng = np.random.default_rng(4)
    for batch, M, N, K, plan, along, per_product in BIAS_CASES:
        lead = () if batch is None else (batch,)
        a = rng.standard_normal(lead + ((K, M) if trans_a else (M, K)))
        b = rng.standard_normal(lead + ((N, K) if trans_b else (K, N)))
        length = M if along == "row" else N
        bias = rng.standard_normal(lead + (length,) if per_product else (length,))
        rows = bias.reshape(-1, length)  # C[..., m, n] gets bias[..., m] or bias[..., n]
        added = rows[:, :, None] if along == "row" else rows[:, None, :]
        expected = np.matmul(a.swapaxes(-1, -2) if trans_a else a,
                             b.swapaxes(-1, -2) if trans_b else b)
        expected = expected + (added[0] if batch is None else added)
        kernel_launches.clear()
        got = cuda.sgemm(a.astype(np.float32), b.astype(np.float32), trans_a, trans_b,
                         plan=plan, bias=bias.astype(np.float32), bias_along=along)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * max(K, 1),
                                   err_msg=f"batch {batch} M {M} N {N} K {K} plan {plan}")
        splits = 1 if K == 0 else cuda._split_k(K, plan[2] if plan else 1)[0]
        assert names_launched(kernel_launches)[1:] == ["splitk_reduce"] * (splits > 1)
        # nothing but the product's own launches
        assert len(kernel_launches) == (K > 0) + (splits > 1)


def test_sgemm_in_tf32_adds_the_bias_too(kernel_launches):
    rng = np.random.default_rng(2)
    a, b = random_operands(rng, 2, 33, 70, 600)
    bias = rng.standard_normal(33).astype(np.float32)
    cuda.set_float32_matmul_precision("high")
    try:
        split = cuda.sgemm(a, b, plan=(64, 64, 3), bias=bias, bias_along="row")
        whole = cuda.sgemm(a, b, plan=(64, 64, 1), bias=bias, bias_along="row")
    finally:
        cuda.set_float32_matmul_precision("highest")
    assert names_launched(kernel_launches) == ["sgemm_tf32_nn", "splitk_reduce", "sgemm_tf32_nn"]
    for got in (split, whole):
        assert_close(got, product(tf32(a), tf32(b)) + bias[:, None])


@pytest.mark.parametrize("options, match", [
    ({"bias": np.ones(4, np.float32)}, "needs bias_along 'row' or 'column'"),
    ({"bias": np.ones(4, np.float32), "bias_along": "columns"}, "got bias_along='columns'"),
    ({"bias": np.ones(4, np.float32), "bias_along": "column", "version": 7}, "version=7"),
    ({"bias": np.ones(3, np.float32), "bias_along": "column"},
     r"each column of C \(2, 4\) needs shape \(4,\) or \(1, 4\); got \(3,\)"),
    ({"bias": np.ones(4, np.float32), "bias_along": "row"}, r"shape \(2,\) or \(1, 2\)"),
])
def test_sgemm_refuses_a_bad_bias(options, match):
    with pytest.raises(ValueError, match=match):
        cuda.sgemm(np.ones((2, 3), np.float32), np.ones((3, 4), np.float32), **options)
    with pytest.raises(TypeError, match="float32; got float64"):
        cuda.sgemm(np.ones((2, 3), np.float32), np.ones((3, 4), np.float32),
                   bias=np.ones(4), bias_along="column")


@pytest.mark.parametrize("plan, match", [
    ((64, 32, 2), "plan must be"), ((64, 64, 0), "plan must be"), ((64, 64), "plan must be")])
def test_sgemm_refuses_a_bad_plan(plan, match):
    with pytest.raises(ValueError, match=match):
        cuda.sgemm(np.ones((2, 3), np.float32), np.ones((3, 4), np.float32), plan=plan)
    with pytest.raises(ValueError, match="for version 8"):
        cuda.sgemm(np.ones((2, 3), np.float32), np.ones((3, 4), np.float32), version=7,
                   plan=(64, 64, 1))


# ---- the plan: which tile, how many splits ----

def bench_kernels():
    """benchmarks/bench_kernels.py as a module (its GEMM shapes of AlexNet)."""
    spec = importlib.util.spec_from_file_location("bench_kernels",
                                                  ROOT / "benchmarks" / "bench_kernels.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("shape, plan", [
    ((4096, 4096, 4096, 1), (128, 128, 1, 4096)),    # 1,024 tiles: 4 waves, no split
    ((96, 363, 387200, 1), (128, 128, 88, 4400)),    # conv1 grad weight: 3 tiles x 88
    ((128, 1200, 93312, 2), (128, 128, 14, 6672)),   # conv2's (2 groups): 20 tiles x 14
    ((384, 2304, 21632, 1), (128, 128, 5, 4328)),    # conv3's: 54 tiles x 5
    ((128, 4096, 9216, 1), (128, 128, 9, 1024)),     # fc6 forward at batch 128: 32 x 9
    ((1000, 4096, 128, 1), (64, 64, 1, 128)),        # fc8 grad weight: K too short to split;
                                                     # 1,024 small tiles beat 256 big ones
    ((4096, 9216, 128, 1), (128, 128, 1, 128)),      # fc6 grad weight: 2,304 tiles
    ((300, 300, 300, 1), (64, 64, 1, 304)),          # small and short: the most blocks
    ((64, 64, 5000, 1), (64, 64, 19, 264)),          # one tile, K/256 = 19 splits at most
])
def test_the_plan_rule(shape, plan):
    M, N, K, batch = shape
    assert cuda.sgemm_plan(M, N, K, batch, sm_count=132) == plan


def test_the_plan_uses_the_multiprocessor_count():
    # 32 tiles of 128x128: a wave on 16 SMs, 9 splits to fill 132
    assert cuda.sgemm_plan(128, 4096, 9216, 1, sm_count=16)[:3] == (128, 128, 1)
    assert cuda.sgemm_plan(128, 4096, 9216, 1, sm_count=132)[:3] == (128, 128, 9)
    assert cuda.multiprocessor_count(np) == cuda.DEFAULT_SM_COUNT == 132


@pytest.mark.parametrize("K", [1, 7, 8, 9, 255, 387200, 2**31 - 1])
@pytest.mark.parametrize("splits", [1, 2, 3, 88, 1000])
def test_k_ranges_cover_k_once_and_start_on_multiples_of_8(K, splits):
    count, k_chunk = cuda._split_k(K, splits)
    assert k_chunk % 8 == 0 and 1 <= count <= splits
    assert (count - 1) * k_chunk < K <= count * k_chunk  # no empty range, nothing left over


def test_alexnet_products_fill_the_gpu_where_k_allows():
    """Every GEMM of a training step of the paper's AlexNet at batch 128: at least one block
    per SM (132), unless K is too short to split and the output too small; and the weight
    gradients, the products this plan is for, a whole wave."""
    gemms = bench_kernels().alexnet_gemms(128, quick=False)
    assert len(gemms) == 24
    weight_k = {name: K for name, _, _, _, _, K in gemms if "conv" in name and "weight" in name}
    assert weight_k == {"conv1 grad weight": 387200, "conv2 grad weight": 93312,
                        "conv3 grad weight": 21632, "conv4 grad weight": 21632,
                        "conv5 grad weight": 21632}  # the figures
    for name, _, batch, M, N, K in gemms:
        tile_m, tile_n, splits, _ = cuda.sgemm_plan(M, N, K, batch, sm_count=132)
        blocks = batch * -(-M // tile_m) * -(-N // tile_n) * splits
        assert blocks >= 132, (name, M, N, K, blocks)
        if "weight" in name and "conv" in name:
            assert blocks >= 132 * 512 // cuda.SGEMM_TILES[tile_m, tile_n], name


# ---- CUDA's grid limits, checked before any launch ----

@pytest.mark.parametrize("grid, block, match", [
    ((1, 65536, 1), (1,), r"gridDim.y = 65536; CUDA allows 0..65535"),
    ((1, 1, 65536), (1,), r"gridDim.z = 65536"),
    ((2**31, 1, 1), (1,), r"gridDim.x = 2147483648"),
    ((1,), (1025,), r"blockDim.x = 1025"),
    ((1,), (64, 32), "more than 1024 threads"),
    ((-1,), (1,), "gridDim.x = -1"),
    ((1,), (0,), r"blockDim.x = 0; CUDA allows 1..1024"),
])
def test_launch_shapes_beyond_cudas_limits_are_refused(grid, block, match):
    with pytest.raises(ValueError, match=match):
        cuda.check_launch_shape("k", grid, block)
    with pytest.raises(ValueError, match=match):  # before CuPy is needed
        cuda.launch("sgemm.cu", "sgemm_v1_nn", grid, block)


def test_launch_shapes_within_the_limits_pass():
    assert cuda.check_launch_shape("k", (2**31 - 1, 65535, 65535), (1024,)) == [
        (2**31 - 1, 65535, 65535), (1024, 1, 1)]
    assert cuda.check_launch_shape("k", (5,), (16, 16)) == [(5, 1, 1), (16, 16, 1)]
    assert cuda.check_launch_shape("k", 5, np.int64(32)) == [(5, 1, 1), (32, 1, 1)]
    assert cuda.launch("sgemm.cu", "sgemm_v1_nn", (0, 1, 1), (16, 16, 1)) is None  # no blocks
    for grid in [(1.5,), (1, 1, 1, 1), (True,)]:
        with pytest.raises(TypeError, match="must be 1 to 3 ints"):
            cuda.check_launch_shape("k", grid, (1,))


def test_sgemm_past_the_grid_limits_says_so():
    rows = 16 * 65536  # v1's tiles of 16 rows: gridDim.y = 65,536
    with pytest.raises(ValueError, match="gridDim.y = 65536"):
        cuda.sgemm(np.ones((rows, 1), np.float32), np.ones((1, 1), np.float32), version=1)
    with pytest.raises(ValueError, match="gridDim.z = 70000"):  # a batch of 70,000 products
        cuda.sgemm(np.ones((70000, 1, 1), np.float32), np.ones((70000, 1, 1), np.float32))


# ---- TF32: off by default, chosen only when switched on ----

def test_tf32_is_off_by_default_and_switched_on_like_pytorch(monkeypatch):
    launched = []
    monkeypatch.setattr(cuda, "launch", lambda filename, name, *rest: launched.append(
        (filename, name)))
    a, b = np.ones((8, 1024), np.float32), np.ones((1024, 8), np.float32)
    assert cuda.get_float32_matmul_precision() == "highest"
    cuda.sgemm(a, b)
    assert launched == [("sgemm.cu", "sgemm_v8_64x64_nn"), ("sgemm.cu", "splitk_reduce")]
    try:
        cuda.set_float32_matmul_precision("high")
        cuda.sgemm(a, a, trans_b=True)  # b stored (N, K)
        cuda.sgemm(a, b, version=7)  # a numbered version is itself, whatever the precision
    finally:
        cuda.set_float32_matmul_precision("highest")
    assert launched[2:] == [("sgemm.cu", "sgemm_tf32_nt"), ("sgemm.cu", "splitk_reduce"),
                            ("sgemm.cu", "sgemm_v7_nn")]
    with pytest.raises(ValueError, match="expected one of"):
        cuda.set_float32_matmul_precision("medium")


def tf32(x):
    """x rounded as cvt.rna.tf32.f32 does (PTX ISA): to the nearest float with 10 mantissa
    bits, halfway cases away from zero (the 13 low bits of the float32 dropped)."""
    bits = np.asarray(x, np.float32).view(np.uint32)
    return ((bits + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)


def test_tf32_rounding_of_the_reference():
    assert tf32(np.float32(1 + 2**-11)) == 1 + 2**-10  # halfway: away from zero
    assert tf32(np.float32(-(1 + 2**-11))) == -(1 + 2**-10)
    assert tf32(np.float32(1 + 2**-11 - 2**-23)) == 1.0
    assert tf32(np.float32(3.0)) == 3.0


@pytest.mark.parametrize("batch, M, N, K, splits", V8_SHAPES,
                         ids=[f"{b}x{m}x{n}x{k}/{s}" for b, m, n, k, s in V8_SHAPES])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_tf32_kernel_with_the_shims_stand_in_for_mma(layout, batch, M, N, K, splits, rng):
    """sgemm_tf32 with the shim's stand-ins for mma.sync and cvt (written from the PTX ISA):
    its loads, fragment indices, splits and stores, against the float64 product of the inputs
    rounded to TF32. Not checked here: that a GPU's fragments are laid out as the file says."""
    kernels = harness.load(ROOT / "kernels" / "sgemm.cu")
    a, b = random_operands(rng, batch, M, N, K)
    splits, k_chunk = cuda._split_k(K, splits)
    stored_a, stored_b = (np.ascontiguousarray(x) for x in stored(layout, a, b))
    out = np.full((batch * splits, M, N), np.nan, np.float32)
    kernels.launch(f"sgemm_tf32_{layout}", (-(-N // 128), -(-M // 128), batch * splits), (256,),
                   M, N, K, stored_a, stored_b, out, M * K, K * N, M * N, splits, k_chunk,
                   *NO_BIAS)
    got = out.reshape(batch, splits, M, N).sum(axis=1)
    assert_close(got, product(tf32(a), tf32(b)))
    assert not np.allclose(got, product(a, b), rtol=1e-6, atol=1e-6)  # TF32 really rounds


def test_sgemm_in_tf32_through_the_wrapper(kernel_launches):
    rng = np.random.default_rng(1)
    a, b = random_operands(rng, 2, 33, 70, 600)
    cuda.set_float32_matmul_precision("high")
    try:
        got = cuda.sgemm(a, b, plan=(64, 64, 3))  # the TF32 kernel keeps its 128x128 tile
    finally:
        cuda.set_float32_matmul_precision("highest")
    assert names_launched(kernel_launches) == ["sgemm_tf32_nn", "splitk_reduce"]
    assert kernel_launches[0][2:4] == ((1, 1, 6), (256, 1, 1))
    assert_close(got, product(tf32(a), tf32(b)))


# ---- on a GPU (skipped without one, unless MINIALEX_REQUIRE_GPU=1) ----

@pytest.mark.gpu
@pytest.mark.parametrize("trans_a, trans_b", cuda.SGEMM_LAYOUTS)
def test_gpu_split_k_and_tf32_against_float64(trans_a, trans_b):
    """v8 with K split (its plan, and forced plans), the same bits on every run; and the TF32
    kernel, checked here for the first time on a GPU, within TF32's rounding."""
    from minialex.backend import _import_cupy
    cp = _import_cupy()
    rng = np.random.default_rng(0)
    for batch, M, N, K, plan in [(1, 96, 363, 20000, None), (2, 33, 70, 1000, (64, 64, 5)),
                                 (1, 130, 20, 777, (128, 128, 3)), (3, 5, 3, 300, None)]:
        a = rng.standard_normal((batch,) + ((K, M) if trans_a else (M, K)))
        b = rng.standard_normal((batch,) + ((N, K) if trans_b else (K, N)))
        expected = np.matmul(a.swapaxes(1, 2) if trans_a else a,
                             b.swapaxes(1, 2) if trans_b else b)
        a, b = cp.asarray(a, dtype=cp.float32), cp.asarray(b, dtype=cp.float32)
        got = cuda.sgemm(a, b, trans_a, trans_b, plan=plan)
        assert cp.array_equal(got, cuda.sgemm(a, b, trans_a, trans_b, plan=plan))
        np.testing.assert_allclose(cp.asnumpy(got), expected, rtol=1e-4, atol=1e-5 + 2e-6 * K)
        cuda.set_float32_matmul_precision("high")
        try:
            got = cuda.sgemm(a, b, trans_a, trans_b, plan=plan)  # its one tile, 128x128
        finally:
            cuda.set_float32_matmul_precision("highest")
        np.testing.assert_allclose(cp.asnumpy(got), expected, rtol=1e-2, atol=2e-3 * K ** 0.5)


@pytest.mark.gpu
def test_gpu_bias_epilogue_against_float64():
    """The bias added in the store (one split) and in splitk_reduce (several), per row and per
    column, in float32 and TF32."""
    from minialex.backend import _import_cupy
    cp = _import_cupy()
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 96, 1000)), rng.standard_normal((2, 1000, 130))
    biases = {"row": rng.standard_normal((2, 96)), "column": rng.standard_normal(130)}
    for along, bias in biases.items():
        added = bias[..., :, None] if along == "row" else bias[..., None, :]
        expected = a @ b + added
        for plan in ((64, 64, 1), (64, 64, 4)):
            for precision, rtol, atol in (("highest", 1e-4, 2e-3), ("high", 1e-2, 0.07)):
                cuda.set_float32_matmul_precision(precision)
                try:
                    got = cuda.sgemm(cp.asarray(a, dtype=cp.float32), cp.asarray(
                        b, dtype=cp.float32), plan=plan, bias=cp.asarray(bias, dtype=cp.float32),
                        bias_along=along)
                finally:
                    cuda.set_float32_matmul_precision("highest")
                np.testing.assert_allclose(cp.asnumpy(got), expected, rtol=rtol, atol=atol,
                                           err_msg=f"{along} {plan} {precision}")
