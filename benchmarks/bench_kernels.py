"""The kernel benchmark: check every kernel against its reference, then time it.

Needs CuPy and an NVIDIA GPU; without one it says so in one line and exits 0. The checks of
part 1 also run on the CPU, through the kernel shim (tests/test_bench_kernels_sgemm.py).

    python benchmarks/bench_kernels.py                   # everything (a few minutes)
    python benchmarks/bench_kernels.py --quick           # fewer sizes, no CPU training step
    python benchmarks/bench_kernels.py --out DIR         # where bench_kernels.json/.md go

1. Check. Every SGEMM version and layout against cupy.matmul in float64, on ragged shapes, v8
   also with K split (its plan, and plans given), and the TF32 kernel (off by default) with a
   tolerance for TF32's 10-bit mantissa;
   im2col, col2im, max-pool, LRN and softmax cross-entropy against the NumPy path of the same
   op. An entry passes where |got - expected| <= atol + rtol |expected|; the first mismatches
   are printed, and the exit status is 1 if any check failed.
2. GEMMs: GFLOP/s = 2 M N K (times the batch) / time, for every version beside cupy.matmul
   (cuBLAS). TF32 is off: this script sets CUPY_TF32=0 before CuPy is imported, so cuBLAS
   computes in true float32, as our kernels do (CuPy uses TF32 only when CUPY_TF32=1).
   Sizes: 4096^3, and the GEMMs of the paper's AlexNet at batch 128: for every conv and fc
   layer the forward product, the gradient of the input and the gradient of the weights. v8 is
   what the layers use: its column "v8 plan" is sgemm_plan's tile and number of K splits.
   A table of its own: the TF32 kernel (set_float32_matmul_precision("high")) beside cuBLAS in
   float32 (targets, issue 15: v8 >= 75% of cuBLAS at 4096^3, >= 60% on AlexNet's shapes).
3. Memory-bound kernels: GB/s = (bytes of every input read + every output written) / time,
   beside the device's peak bandwidth where CuPy reports it.
4. A training step of the paper's AlexNet at batch 128 (forward, backward, SGD): images/s on
   the GPU and on the CPU (NumPy), and their ratio.

Kernel times are CUDA events (cupy.cuda.Event) around enough calls to fill ~0.2 s, after a
warm-up call (the first call of a kernel compiles its .cu file); a training step is timed by
the wall clock, with the GPU synchronized, since its Python work is part of the step.
"""
import argparse
import json
import os
import pathlib
import sys
import time

os.environ["CUPY_TF32"] = "0"  # before CuPy is imported (minialex imports it on first use)

import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # run from a checkout
from minialex import backend, cuda, optim  # noqa: E402
from minialex.functions import conv, loss, lrn, pool  # noqa: E402
from minialex.functions.loss import cross_entropy  # noqa: E402
from minialex.models.alexnet import alexnet  # noqa: E402
from minialex.tensor import tensor  # noqa: E402

BATCH = 128
# The paper's AlexNet (§3.5): (name, C, H, F, K, stride, padding, groups) of each conv layer
CONV_LAYERS = [("conv1", 3, 227, 96, 11, 4, 0, 1), ("conv2", 96, 27, 256, 5, 1, 2, 2),
               ("conv3", 256, 13, 384, 3, 1, 1, 1), ("conv4", 384, 13, 384, 3, 1, 1, 2),
               ("conv5", 384, 13, 256, 3, 1, 1, 2)]
FC_LAYERS = [("fc6", 9216, 4096), ("fc7", 4096, 4096), ("fc8", 4096, 1000)]
# im2col's versions: "im2col" is the one the layer uses, "im2col_v1" ... the others
IM2COL_VERSIONS = sorted(name for name in cuda.entry_points(cuda.kernel_source("im2col.cu"))
                         if name.startswith("im2col"))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.split("\n")[2:]))
    p.add_argument("--quick", action="store_true",
                   help="4096^3 and the forward GEMMs only, small memory-bound sizes, and no "
                   "CPU training step")
    p.add_argument("--cpu-steps", type=int, default=1,
                   help="CPU training steps to time (each takes seconds to minutes); 0: none")
    p.add_argument("--gpu-steps", type=int, default=10, help="GPU training steps to time")
    p.add_argument("--out", default="runs/bench_kernels",
                   help="folder for bench_kernels.json and bench_kernels.md")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# 1. Check

def compare(name, got, expected, rtol, atol, failures, shown=5):
    """Print one line for the check `name`, and the first mismatches if it fails."""
    got = np.atleast_1d(backend.as_numpy(got)).astype(np.float64)
    expected = np.atleast_1d(backend.as_numpy(expected)).astype(np.float64)
    if got.shape != expected.shape:
        print(f"  FAIL {name}: shape {got.shape}, expected {expected.shape}")
        failures.append(name)
        return
    error = np.abs(got - expected)
    bad = ~(error <= atol + rtol * np.abs(expected))  # NaN counts as bad
    if not bad.any():
        print(f"  ok   {name}  (max |error| {error.max(initial=0):.2e})")
        return
    failures.append(name)
    print(f"  FAIL {name}: {int(bad.sum())} of {bad.size} entries differ; the first:")
    for index in list(zip(*np.nonzero(bad)))[:shown]:
        print(f"       at {tuple(int(i) for i in index)}: got {got[index]:.6g}, expected "
              f"{expected[index]:.6g}")


SGEMM_SHAPES = [(1, 1, 1, 1), (1, 17, 33, 65), (1, 127, 255, 129), (2, 96, 1000, 363),
                (1, 4, 4099, 7)]  # (batch, M, N, K)
SGEMM_SPLIT_SHAPES = [(1, 96, 363, 20000, None), (2, 33, 70, 1000, (64, 64, 5)),  # and a plan
                      (1, 130, 20, 777, (128, 128, 3)), (1, 5, 3, 300, (128, 64, 2))]


def check_sgemm(xp, failures, shapes=SGEMM_SHAPES, split=SGEMM_SPLIT_SHAPES):
    """Every SGEMM version and layout on xp's arrays (cupy on a GPU; numpy under the kernel
    shim, in tests, on smaller shapes) against the float64 product."""
    print("SGEMM against the float64 product, every version and layout:")
    rng = np.random.default_rng(0)
    cases = [(v, *shape, None) for v in cuda.SGEMM_VERSIONS for shape in shapes]
    cases += [(8, *case) for case in split] + [("tf32", *case) for case in split]
    for version, batch, M, N, K, plan in cases:
        for (trans_a, trans_b), layout in cuda.SGEMM_LAYOUTS.items():
            a = rng.standard_normal((batch, K, M) if trans_a else (batch, M, K))
            b = rng.standard_normal((batch, N, K) if trans_b else (batch, K, N))
            expected = np.matmul(a.swapaxes(1, 2) if trans_a else a,
                                 b.swapaxes(1, 2) if trans_b else b)
            a, b = xp.asarray(a, dtype=np.float32), xp.asarray(b, dtype=np.float32)
            if version == "tf32":  # inputs rounded to 10 mantissa bits: ~5e-4 relative each
                cuda.set_float32_matmul_precision("high")
                try:
                    got = cuda.sgemm(a, b, trans_a, trans_b, plan=plan)
                finally:
                    cuda.set_float32_matmul_precision("highest")
                rtol, atol = 1e-2, 2e-3 * K ** 0.5
            else:
                got = cuda.sgemm(a, b, trans_a, trans_b, version, plan)
                rtol, atol = 1e-4, 1e-5 + 2e-6 * K
            name = f"sgemm_{version if version == 'tf32' else f'v{version}'}_{layout}"
            compare(f"{name} {batch}x({M}, {N}, {K}){f' plan {plan}' if plan else ''}", got,
                    expected, rtol=rtol, atol=atol, failures=failures)


def check_memory_bound(cp, failures):
    print("im2col, col2im, max-pool, LRN, softmax cross-entropy against the NumPy path:")
    rng = np.random.default_rng(0)
    for name, C, H, F, K, S, P, G in CONV_LAYERS[:2]:
        x = rng.standard_normal((2, C, H, H)).astype(np.float32)
        col = conv.im2col(x, K, K, S, S, P, P)
        for kernel in IM2COL_VERSIONS:
            compare(f"{kernel} {name}", cuda.im2col(cp.asarray(x), K, K, S, S, P, P, kernel),
                    col, 0, 0, failures)
        grad_col = rng.standard_normal(col.shape).astype(np.float32)
        compare(f"col2im {name}", cuda.col2im(cp.asarray(grad_col), x.shape, S, S, P, P),
                conv.col2im(grad_col, x.shape, S, S, P, P), 1e-5, 1e-5, failures)

    x = rng.standard_normal((2, 96, 55, 55)).astype(np.float32)
    reference = pool.MaxPool2d((3, 3), (2, 2), (0, 0), False)
    y = reference.forward(x)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    y_gpu, argmax = cuda.maxpool_forward(cp.asarray(x), 3, 3, 2, 2, 0, 0, 27, 27)
    compare("maxpool_forward", y_gpu, y, 0, 0, failures)
    compare("maxpool_forward argmax", argmax, reference.argmax, 0, 0, failures)
    compare("maxpool_backward", cuda.maxpool_backward(cp.asarray(gy), argmax, x.shape, 3, 3,
                                                      2, 2, 0, 0),
            reference.backward(gy), 1e-6, 1e-6, failures)

    reference = lrn.LocalResponseNorm(5, 5e-4, 0.75, 2.0)  # the paper's layer
    x = (rng.standard_normal((2, 96, 27, 27)) * 10).astype(np.float32)
    y = reference.forward(x)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    y_gpu, scale = cuda.lrn_forward(cp.asarray(x), 5, 5e-4, 0.75, 2.0)
    compare("lrn_forward", y_gpu, y, 1e-5, 1e-6, failures)
    compare("lrn_backward", cuda.lrn_backward(cp.asarray(x), y_gpu, scale, cp.asarray(gy), 5,
                                              5e-4, 0.75, 2.0),
            reference.backward(gy), 1e-4, 1e-6, failures)

    logits = (rng.standard_normal((BATCH, 1000)) * 5).astype(np.float32)
    labels = rng.integers(0, 1000, BATCH)
    reference = loss.CrossEntropy(labels)
    value = reference.forward(logits)
    probs, losses = cuda.softmax_xent_forward(cp.asarray(logits), cp.asarray(labels))
    compare("softmax_xent_forward (mean loss)", losses.mean(), value, 1e-5, 0, failures)
    compare("softmax_xent_forward probs", probs, reference.probs, 1e-5, 1e-7, failures)
    gy = cp.asarray(np.ones(1, np.float32))  # dL/dloss, read by the kernel on the device
    compare("softmax_xent_backward", cuda.softmax_xent_backward(probs, cp.asarray(labels), gy),
            reference.backward(np.float32(1)), 1e-5, 1e-8, failures)


# ----------------------------------------------------------------------------------------------
# 2. and 3. Timing

def time_gpu(cp, function, fill_seconds=0.2):
    """Seconds per call of function(), from CUDA events around enough calls to fill about
    fill_seconds, after a warm-up call."""
    function()
    start, end = cp.cuda.Event(), cp.cuda.Event()
    start.record()
    function()
    end.record()
    end.synchronize()
    once = cp.cuda.get_elapsed_time(start, end) / 1e3
    repeat = int(min(200, max(1, fill_seconds / max(once, 1e-6))))
    start.record()
    for _ in range(repeat):
        function()
    end.record()
    end.synchronize()
    return cp.cuda.get_elapsed_time(start, end) / 1e3 / repeat


def alexnet_gemms(batch, quick):
    """(name, layout, batch of products, M, N, K) of every GEMM in a training step."""
    gemms = []
    for name, C, H, F, K, S, P, G in CONV_LAYERS:
        OH = (H + 2 * P - K) // S + 1
        positions, rows = batch * OH * OH, C // G * K * K  # P and CG KH KW of conv.py
        gemms.append((f"{name} forward", "nn", G, F // G, positions, rows))
        if not quick:
            gemms.append((f"{name} grad input", "tn", G, rows, positions, F // G))
            gemms.append((f"{name} grad weight", "nt", G, F // G, rows, positions))
    for name, IN, OUT in FC_LAYERS:
        gemms.append((f"{name} forward", "nt", 1, batch, OUT, IN))
        if not quick:
            gemms.append((f"{name} grad input", "nn", 1, batch, IN, OUT))
            gemms.append((f"{name} grad weight", "tn", 1, OUT, IN, batch))
    return gemms


def bench_gemms(cp, quick):
    """GFLOP/s of every version and of cuBLAS (TF32 off), one row per product; and the TF32
    kernel beside cuBLAS in float32, one row per product of its own table."""
    rows, tf32_rows = [], []
    rng = cp.random.default_rng(0)
    sm_count = cuda.multiprocessor_count(cp)
    for name, layout, batch, M, N, K in [("4096^3", "nn", 1, 4096, 4096, 4096),
                                         *alexnet_gemms(BATCH, quick)]:
        trans_a, trans_b = layout[0] == "t", layout[1] == "t"
        a = rng.standard_normal((batch,) + ((K, M) if trans_a else (M, K)), dtype=cp.float32)
        b = rng.standard_normal((batch,) + ((N, K) if trans_b else (K, N)), dtype=cp.float32)
        flops = 2.0 * batch * M * N * K
        row = {"gemm": name, "layout": layout, "batch": batch, "M": M, "N": N, "K": K}
        for version in cuda.SGEMM_VERSIONS:
            seconds = time_gpu(cp, lambda: cuda.sgemm(a, b, trans_a, trans_b, version))
            row[f"v{version}"] = flops / seconds / 1e9
        tile_m, tile_n, splits, _ = cuda.sgemm_plan(M, N, K, batch, sm_count)
        row["v8 plan"] = f"{tile_m}x{tile_n} x{splits}"
        a_op = a.swapaxes(1, 2) if trans_a else a  # views: cuBLAS reads them transposed
        b_op = b.swapaxes(1, 2) if trans_b else b
        row["cupy.matmul"] = flops / time_gpu(cp, lambda: cp.matmul(a_op, b_op)) / 1e9
        row["best / cuBLAS"] = row[f"v{cuda.SGEMM_BEST}"] / row["cupy.matmul"]
        rows.append(row)
        print_row(row, first=len(rows) == 1)
        cuda.set_float32_matmul_precision("high")
        try:
            tf32 = flops / time_gpu(cp, lambda: cuda.sgemm(a, b, trans_a, trans_b)) / 1e9
        finally:
            cuda.set_float32_matmul_precision("highest")
        tf32_rows.append({"gemm": name, "TF32 (ours)": tf32, "cuBLAS float32": row["cupy.matmul"],
                          "TF32 / cuBLAS float32": tf32 / row["cupy.matmul"]})
    print("\nSGEMM in TF32 (set_float32_matmul_precision('high')), GFLOP/s:")
    for row in tf32_rows:
        print_row(row, first=row is tf32_rows[0])
    return rows, tf32_rows


def bench_memory_bound(cp, quick, peak):
    batch = 16 if quick else BATCH
    rng = cp.random.default_rng(0)
    rows = []

    def measure(name, function, *arrays):
        seconds = time_gpu(cp, function)
        moved = sum(array.nbytes for array in arrays)
        rows.append({"kernel": name, "MB moved": moved / 1e6, "ms": seconds * 1e3,
                     "GB/s": moved / seconds / 1e9})
        if peak:
            rows[-1]["% of peak"] = 100 * rows[-1]["GB/s"] / peak
        print_row(rows[-1], first=len(rows) == 1)

    for name, C, H, F, K, S, P, G in CONV_LAYERS[:2]:
        x = rng.standard_normal((batch, C, H, H), dtype=cp.float32)
        col = cuda.im2col(x, K, K, S, S, P, P)
        for kernel in IM2COL_VERSIONS:
            measure(f"{kernel} {name}", lambda: cuda.im2col(x, K, K, S, S, P, P, kernel), x, col)
        measure(f"col2im {name}", lambda: cuda.col2im(col, x.shape, S, S, P, P), col, x)
    x = rng.standard_normal((batch, 96, 55, 55), dtype=cp.float32)  # conv1's output
    y, argmax = cuda.maxpool_forward(x, 3, 3, 2, 2, 0, 0, 27, 27)
    measure("maxpool_forward pool1", lambda: cuda.maxpool_forward(x, 3, 3, 2, 2, 0, 0, 27, 27),
            x, y, argmax)
    measure("maxpool_backward pool1", lambda: cuda.maxpool_backward(y, argmax, x.shape, 3, 3,
                                                                     2, 2, 0, 0), y, argmax, x)
    y, scale = cuda.lrn_forward(x, 5, 5e-4, 0.75, 2.0)
    measure("lrn_forward lrn1", lambda: cuda.lrn_forward(x, 5, 5e-4, 0.75, 2.0), x, y, scale)
    measure("lrn_backward lrn1", lambda: cuda.lrn_backward(x, y, scale, y, 5, 5e-4, 0.75, 2.0),
            x, y, scale, y, x)
    logits = rng.standard_normal((BATCH, 1000), dtype=cp.float32)
    labels = cp.asarray(np.random.default_rng(0).integers(0, 1000, BATCH))
    probs, losses = cuda.softmax_xent_forward(logits, labels)
    measure("softmax_xent_forward", lambda: cuda.softmax_xent_forward(logits, labels),
            logits, labels, probs, losses)
    gy = cp.ones(1, dtype=cp.float32)
    measure("softmax_xent_backward", lambda: cuda.softmax_xent_backward(probs, labels, gy),
            probs, labels, probs)
    return rows


def peak_bandwidth(cp):
    """The device's memory bandwidth in GB/s (2 transfers per clock), where CuPy reports it."""
    properties = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    clock_khz, bus_bits = properties.get("memoryClockRate"), properties.get("memoryBusWidth")
    if not clock_khz or not bus_bits:
        return None
    return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9


# ----------------------------------------------------------------------------------------------
# 4. A training step

def training_step_seconds(device, steps, synchronize):
    """Seconds per training step of the paper's AlexNet at batch 128 on `device`."""
    model = alexnet("paper", num_classes=1000, init="kaiming", dropout=0.5).to(device)
    optimizer = optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    rng = np.random.default_rng(0)
    x = tensor(rng.standard_normal((BATCH, 3, 227, 227)).astype(np.float32), device=device)
    labels = rng.integers(0, 1000, BATCH)

    def step():
        value = cross_entropy(model(x), labels)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()

    step()  # warm-up: compiles the kernels, fills CuPy's memory pool
    synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize()
    return (time.perf_counter() - started) / steps


# ----------------------------------------------------------------------------------------------
# Output

def print_row(row, first):
    """One line of a table; the column names above the first. A text column is 24 wide."""
    def cell(value, width):
        return f"{value:>{width}.4g}" if isinstance(value, float) else f"{value!s:>{width}}"
    widths = [24 if isinstance(value, str) else 15 for value in row.values()]
    if first:
        print("".join(cell(key, width) for key, width in zip(row, widths)))
    print("".join(cell(value, width) for value, width in zip(row.values(), widths)))


def markdown_table(rows):
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join(f"{row[k]:.4g}" if isinstance(row[k], float)
                                       else str(row[k]) for k in keys) + " |")
    return "\n".join(lines)


def write_results(out, results):
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_kernels.json").write_text(json.dumps(results, indent=2))
    parts = [f"# Kernel benchmark on {results['device']}\n",
             f"Checks: {'all passed' if not results['failures'] else results['failures']}\n",
             "## SGEMM, GFLOP/s (TF32 off)\n", markdown_table(results["gemm"]),
             "\n## SGEMM in TF32 (ours) beside cuBLAS in float32, GFLOP/s\n",
             markdown_table(results["gemm_tf32"]),
             "\n## Memory-bound kernels\n", markdown_table(results["memory_bound"])]
    if results.get("peak_GB/s"):
        parts.append(f"\nPeak memory bandwidth: {results['peak_GB/s']:.0f} GB/s")
    if results.get("training_step"):
        parts += ["\n## Training step, paper AlexNet, batch 128\n",
                  markdown_table([results["training_step"]])]
    (out / "bench_kernels.md").write_text("\n".join(parts) + "\n")


def main(argv=None):
    args = parse_args(argv)
    if not backend.cupy_available():
        print("bench_kernels: needs CuPy and an NVIDIA GPU, and found none; nothing measured "
              "(on a machine with one: pip install -e '.[gpu]')", file=sys.stderr)
        return 0
    cp = backend._import_cupy()
    device = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)["name"]
    device = device.decode() if isinstance(device, bytes) else device
    print(f"device: {device}; CUPY_TF32={os.environ['CUPY_TF32']} (cuBLAS in true float32)\n")

    failures = []
    check_sgemm(cp, failures)
    check_memory_bound(cp, failures)
    print(f"\nchecks: {'all passed' if not failures else f'{len(failures)} FAILED'}\n")

    print("SGEMM, GFLOP/s (versions beside cuBLAS; best / cuBLAS is the fraction reached):")
    results = {"device": device, "failures": failures}
    results["gemm"], results["gemm_tf32"] = bench_gemms(cp, args.quick)
    results["peak_GB/s"] = peak = peak_bandwidth(cp)
    print("\nMemory-bound kernels" + (f" (peak bandwidth {peak:.0f} GB/s):" if peak else ":"))
    results["memory_bound"] = bench_memory_bound(cp, args.quick, peak)

    print(f"\nTraining step, paper AlexNet, batch {BATCH}:")
    gpu = training_step_seconds("cuda", args.gpu_steps, cp.cuda.Device().synchronize)
    step = {"GPU s/step": gpu, "GPU images/s": BATCH / gpu}
    if args.cpu_steps > 0 and not args.quick:
        cpu = training_step_seconds("cpu", args.cpu_steps, lambda: None)
        step.update({"CPU s/step": cpu, "CPU images/s": BATCH / cpu, "GPU / CPU": cpu / gpu})
    results["training_step"] = step
    print_row(step, first=True)

    write_results(args.out, results)
    print(f"\nresults in {args.out}/bench_kernels.json and bench_kernels.md")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
