"""Every kernels/*.cu compiles for the GPU, and the CPU shim that runs them in tests is sound.

1. nvcc compiles each file to PTX for sm_80 (A100) and sm_90 (H100) with every warning an error,
   each `extern "C" __global__` kernel appears unmangled in the PTX (cupy.RawModule looks it up
   by that name), and no file has an #include (NVRTC compiles them without host headers).
2. The shim (tests/kernel_shim): small kernels written here check the parts the kernel tests rely
   on: thread and block indices, __shared__ memory and __syncthreads, threads that return early,
   atomicAdd, and the harness's errors (misaligned float4, writes out of bounds, bad arguments).
CI has no GPU but has nvcc and g++: a missing compiler is a failure here, not a skip.
"""
import os
import pathlib
import re
import shutil
import subprocess

import numpy as np
import pytest

from kernel_shim import harness

ROOT = pathlib.Path(__file__).resolve().parents[1]
KERNEL_FILES = sorted((ROOT / "kernels").glob("*.cu"))
ARCHS = ["sm_80", "sm_90"]


def nvcc():
    compiler = os.environ.get("NVCC", "nvcc")
    if shutil.which(compiler) is None:
        pytest.fail(f"{compiler} not found: the kernel build test compiles kernels/*.cu to PTX "
                    f"with the CUDA toolkit (CUDA >= 12); install it or set NVCC", pytrace=False)
    return compiler


def test_the_kernels_folder_has_the_sgemm():
    assert ROOT / "kernels" / "sgemm.cu" in KERNEL_FILES


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("path", KERNEL_FILES, ids=lambda p: p.name)
def test_compiles_to_ptx_without_warnings(path, arch, tmp_path):
    ptx_path = tmp_path / f"{path.stem}.ptx"
    command = [nvcc(), f"-arch={arch}", "-ptx", "-std=c++17", "--Werror", "all-warnings",
               "-o", str(ptx_path), str(path)]
    result = subprocess.run(command, capture_output=True, text=True)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{output}"
    assert not output, f"nvcc printed something (warnings are not allowed):\n{output}"

    kernels = harness.parse_entry_points(path.read_text())
    assert kernels, f'{path.name} has no extern "C" __global__ kernel'
    ptx_entries = set(re.findall(r"\.entry\s+(\w+)\s*\(", ptx_path.read_text()))
    missing = sorted(set(kernels) - ptx_entries)
    assert not missing, f"kernels missing from the PTX under their C names: {missing}"


def test_the_tf32_sgemm_is_on_tensor_cores(tmp_path):
    """sgemm.cu's sgemm_tf32 (off by default) compiles to TF32 mma instructions for sm_80 (the
    shim runs stand-ins for them instead: test_kernels_sgemm.py)."""
    path, ptx_path = ROOT / "kernels" / "sgemm.cu", tmp_path / "sgemm.ptx"
    result = subprocess.run([nvcc(), "-arch=sm_80", "-ptx", "-std=c++17", "-o", str(ptx_path),
                             str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    ptx = ptx_path.read_text()
    assert ptx.count("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32") >= 3 * 16
    assert "cvt.rna.tf32.f32" in ptx


def test_before_ampere_the_tf32_kernels_compile_without_tensor_cores(tmp_path):
    """On sm_75 (no TF32 mma) sgemm.cu still compiles, so its other kernels load there."""
    ptx_path = tmp_path / "sgemm_75.ptx"
    result = subprocess.run([nvcc(), "-arch=sm_75", "-ptx", "-std=c++17", "-o", str(ptx_path),
                             str(ROOT / "kernels" / "sgemm.cu")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "mma.sync" not in ptx_path.read_text()


def nvrtc():
    """libnvrtc through ctypes: from the CUDA toolkit, or the NVIDIA wheels (PyTorch's)."""
    import ctypes
    import glob
    import site
    folders = [os.path.join(p, "nvidia", sub, "lib") for p in site.getsitepackages()
               for sub in ("cu13", "cuda_nvrtc")]
    folders += [os.path.join(os.environ.get("CUDA_PATH", "/usr/local/cuda"), "lib64")]
    for folder in folders:
        found = sorted(glob.glob(os.path.join(folder, "libnvrtc.so.*[0-9]")))
        if found:  # its builtins first: NVRTC opens them by name, and finds them loaded
            for builtins in glob.glob(os.path.join(folder, "libnvrtc-builtins.so.*")):
                ctypes.CDLL(builtins, mode=ctypes.RTLD_GLOBAL)
            return ctypes.CDLL(found[0])
    pytest.skip("no libnvrtc (the CUDA toolkit's, or pip install nvidia-cuda-nvrtc)")


@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
def test_nvrtc_compiles_every_file_as_cupy_does(arch):
    """cupy.RawModule compiles with NVRTC, not nvcc: no host headers (INFINITY, assert, std::
    are nvcc's only). The options CuPy 14 passes (cupy/cuda/compiler.py): ours (-std=c++17),
    -ftz=true, the architecture, --device-as-default-execution-space. Every extern "C" kernel
    must be in the PTX under its own name: RawModule.get_function looks it up by that."""
    import ctypes
    lib = nvrtc()
    options = [b"-std=c++17", b"-ftz=true", b"-arch=" + arch.encode(),
               b"--device-as-default-execution-space"]
    for path in KERNEL_FILES:
        program, size = ctypes.c_void_p(), ctypes.c_size_t()
        assert lib.nvrtcCreateProgram(ctypes.byref(program), path.read_bytes(),
                                      path.name.encode(), 0, None, None) == 0
        try:
            status = lib.nvrtcCompileProgram(program, len(options),
                                             (ctypes.c_char_p * len(options))(*options))
            lib.nvrtcGetProgramLogSize(program, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetProgramLog(program, log)
            assert status == 0, f"NVRTC rejects {path.name}:\n{log.value.decode()}"
            lib.nvrtcGetPTXSize(program, ctypes.byref(size))
            ptx = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetPTX(program, ptx)
        finally:
            lib.nvrtcDestroyProgram(ctypes.byref(program))
        entries = set(re.findall(r"\.entry\s+(\w+)\s*\(", ptx.value.decode()))
        missing = sorted(set(harness.parse_entry_points(path.read_text())) - entries)
        assert not missing, f"{path.name}: kernels missing from NVRTC's PTX: {missing}"


@pytest.mark.parametrize("path", KERNEL_FILES, ids=lambda p: p.name)
def test_has_no_include(path):
    # NVRTC has no C library headers; everything a kernel needs is built in
    includes = [line for line in path.read_text().splitlines()
                if line.lstrip().startswith("#include")]
    assert not includes, f"{path.name} must not #include anything: {includes}"


# ---- the shim itself ----
SHIM_TEST_KERNELS = r"""
// every thread writes its indices, so the test can check the whole mapping
extern "C" __global__ void write_indices(int* thread_xyz, int* block_xyz, int* dims) {
    int thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    int block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    int threads = blockDim.x * blockDim.y * blockDim.z;
    int i = 3 * (block * threads + thread);
    thread_xyz[i] = threadIdx.x; thread_xyz[i + 1] = threadIdx.y; thread_xyz[i + 2] = threadIdx.z;
    block_xyz[i] = blockIdx.x; block_xyz[i + 1] = blockIdx.y; block_xyz[i + 2] = blockIdx.z;
    if (i == 0) {
        dims[0] = blockDim.x; dims[1] = blockDim.y; dims[2] = blockDim.z;
        dims[3] = gridDim.x; dims[4] = gridDim.y; dims[5] = gridDim.z;
    }
}

// sums[b] = x[b*256 .. b*256+255] by a tree reduction in shared memory: wrong without the
// barriers, and wrong if the blocks shared the array at the same time
extern "C" __global__ void block_sum(const float* __restrict__ x, float* __restrict__ sums,
                                     int n) {
    __shared__ float partial[256];
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    partial[threadIdx.x] = i < n ? x[i] : 0.0f;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if ((int)threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) sums[blockIdx.x] = partial[0];
}

// threads past n return before the barrier; the others must not wait for them forever
extern "C" __global__ void reverse_in_block(const float* x, float* y, int n) {
    __shared__ float tile[64];
    int i = blockIdx.x * 64 + threadIdx.x;
    if (i >= n) return;
    tile[threadIdx.x] = x[i];
    __syncthreads();
    int last = min(n - blockIdx.x * 64, 64) - 1;
    y[i] = tile[last - threadIdx.x];
}

extern "C" __global__ void count(float* total, long long* ignored, unsigned char* flags,
                                 float weight, long long n) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i < n) { atomicAdd(total, weight); flags[i] = 1; }
}

extern "C" __global__ void copy_float4(const float* x, float* y, int n4) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n4) reinterpret_cast<float4*>(y)[i] = reinterpret_cast<const float4*>(x)[i];
}

extern "C" __global__ void fill_without_bounds_check(float* y, int n) {
    y[blockIdx.x * blockDim.x + threadIdx.x] = 1.0f;
}
"""


@pytest.fixture(scope="module")
def shim_kernels(tmp_path_factory):
    path = tmp_path_factory.mktemp("shim") / "shim_test.cu"
    path.write_text(SHIM_TEST_KERNELS)
    return harness.load(path)


def test_thread_and_block_indices(shim_kernels):
    grid, block = (3, 2, 2), (4, 3, 2)
    threads = 4 * 3 * 2
    count = 12 * threads
    thread_xyz, block_xyz = np.full((2, count, 3), -1, dtype=np.int32)
    dims = np.zeros(6, dtype=np.int32)
    shim_kernels.launch("write_indices", grid, block, thread_xyz, block_xyz, dims)
    expected_threads = [(x, y, z) for z in range(2) for y in range(3) for x in range(4)]
    expected_blocks = [(x, y, z) for z in range(2) for y in range(2) for x in range(3)]
    np.testing.assert_array_equal(thread_xyz, np.tile(expected_threads, (12, 1)))
    np.testing.assert_array_equal(block_xyz, np.repeat(expected_blocks, threads, axis=0))
    np.testing.assert_array_equal(dims, [4, 3, 2, 3, 2, 2])


def test_shared_memory_and_syncthreads(shim_kernels, rng):
    n = 1000
    x = rng.standard_normal(n).astype(np.float32)
    sums = np.zeros(4, dtype=np.float32)
    shim_kernels.launch("block_sum", (4,), (256,), x, sums, n)
    expected = [x[b * 256:(b + 1) * 256].astype(np.float64).sum() for b in range(4)]
    np.testing.assert_allclose(sums, expected, rtol=1e-5, atol=1e-4)


def test_threads_that_return_early_leave_the_barrier(shim_kernels, rng):
    n = 100  # the second block has 36 live threads and 28 that return at once
    x = rng.standard_normal(n).astype(np.float32)
    y = np.zeros(n, dtype=np.float32)
    shim_kernels.launch("reverse_in_block", (2,), (64,), x, y, n)
    np.testing.assert_array_equal(y, np.concatenate([x[:64][::-1], x[64:][::-1]]))


def test_atomic_add_and_scalar_types(shim_kernels):
    total = np.zeros(1, dtype=np.float32)
    flags = np.zeros(300, dtype=np.uint8)
    shim_kernels.launch("count", (3,), (128,), total, np.zeros(1, np.int64), flags, 0.5, 300)
    assert total[0] == 150.0
    assert flags.all()


def test_float4_copy_when_aligned(shim_kernels):
    x = np.arange(32, dtype=np.float32)
    y = np.zeros(32, dtype=np.float32)
    shim_kernels.launch("copy_float4", (2,), (4,), x, y, 8)
    np.testing.assert_array_equal(x, y)


def test_a_misaligned_float4_is_an_error(shim_kernels):
    buffer = np.zeros(40, dtype=np.float32)
    x = buffer[1:33]  # 4 bytes past an aligned address, as a ragged row would be
    with pytest.raises(RuntimeError, match="misaligned float4"):
        shim_kernels.launch("copy_float4", (2,), (4,), x, np.zeros(32, np.float32), 8)


def test_a_write_out_of_bounds_is_an_error(shim_kernels):
    with pytest.raises(RuntimeError, match=r"wrote outside argument float\* y: 12 bytes after"):
        shim_kernels.launch("fill_without_bounds_check", (2,), (16,), np.zeros(29, np.float32),
                            29)


def test_bad_arguments_are_errors(shim_kernels):
    x, y = np.zeros(8, np.float32), np.zeros(8, np.float32)
    with pytest.raises(TypeError, match=r"argument float\* y needs dtype float32; got float64"):
        shim_kernels.launch("copy_float4", 1, 2, x, np.zeros(8), 2)
    with pytest.raises(TypeError, match="takes 3 arguments"):
        shim_kernels.launch("copy_float4", 1, 2, x, y)
    with pytest.raises(TypeError, match="must be C-contiguous"):
        shim_kernels.launch("copy_float4", 1, 2, np.zeros(16, np.float32)[::2], y, 2)
    with pytest.raises(TypeError, match="int n4 needs an int"):
        shim_kernels.launch("copy_float4", 1, 2, x, y, 2.0)
    with pytest.raises(ValueError, match="more than 1024 threads"):
        shim_kernels.launch("copy_float4", 1, (64, 32), x, y, 2)
    with pytest.raises(ValueError, match="has no kernel 'copy_float8'"):
        shim_kernels.launch("copy_float8", 1, 2, x, y, 2)
