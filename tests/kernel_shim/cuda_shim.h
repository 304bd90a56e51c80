// cuda_shim.h: just enough CUDA for g++, so that a kernels/*.cu file runs on the CPU in tests.
//
// CI has no GPU. harness.py compiles a .cu file as C++20 with this header force-included
// (g++ -include cuda_shim.h) and runs its kernels through ctypes. The model of execution:
//
//   * every CUDA thread of a block is a std::thread, with its own thread_local threadIdx and
//     blockIdx; blockDim and gridDim are shared;
//   * blocks run one after another, so `__shared__` can simply be `static`: the block's
//     threads share it, and the next block reuses it (as the GPU reuses shared memory);
//   * __syncthreads() is a std::barrier over the block's threads. A thread that returns from
//     the kernel drops out of the barrier, as an exited thread does on the GPU;
//   * float4 loads and stores check 16-byte alignment, because the GPU faults on a misaligned
//     float4 access; the error is reported to Python after the launch.
//
// What it does NOT model: warps (no shuffles, no warp-synchronous tricks), the memory model of
// racing threads (races give a random answer, on the CPU as on the GPU), speed.
#pragma once

#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <optional>
#include <thread>
#include <vector>

// ---- qualifiers: the GPU's memory spaces and calling conventions mean nothing on the CPU ----
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static  // blocks run one at a time, so one copy serves every block in turn
// (__restrict__ is a g++ keyword already.)

// ---- built-in types and variables ----
struct uint3 {
    unsigned x, y, z;
};

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
    dim3() = default;
    dim3(unsigned x_, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline thread_local uint3 threadIdx;  // each std::thread is one CUDA thread
inline thread_local uint3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;

namespace shim {

// The first misaligned float4 access of a launch (0 if none); read by shim_take_error().
inline std::atomic<std::uintptr_t> misaligned_address{0};

inline void check_float4_alignment(const void* address) {
    auto value = reinterpret_cast<std::uintptr_t>(address);
    if (value % 16 != 0) {
        std::uintptr_t none = 0;
        misaligned_address.compare_exchange_strong(none, value);
    }
}

}  // namespace shim

// float4 as on the GPU: 16 bytes, 16-byte aligned. Copying one in or out of memory checks the
// alignment first, and a misaligned access is recorded instead of performed.
struct alignas(16) float4 {
    float x, y, z, w;
    float4() = default;
    float4(const float4& other) {
        shim::check_float4_alignment(&other);
        if (reinterpret_cast<std::uintptr_t>(&other) % 16 == 0) {
            x = other.x; y = other.y; z = other.z; w = other.w;
        } else {
            x = y = z = w = 0.0f;
        }
    }
    float4& operator=(const float4& other) {
        shim::check_float4_alignment(this);
        shim::check_float4_alignment(&other);
        if (reinterpret_cast<std::uintptr_t>(this) % 16 == 0 &&
            reinterpret_cast<std::uintptr_t>(&other) % 16 == 0) {
            x = other.x; y = other.y; z = other.z; w = other.w;
        }
        return *this;
    }
};

inline float4 make_float4(float x, float y, float z, float w) {
    float4 v;
    v.x = x; v.y = y; v.z = z; v.w = w;
    return v;
}

// ---- device functions ----
inline float atomicAdd(float* address, float value) {
    return std::atomic_ref<float>(*address).fetch_add(value);
}

// CUDA's integer min/max and the float math functions (expf, logf, powf, sqrtf, fmaxf, fminf,
// INFINITY) come from <cmath> as they are.
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }

namespace shim {

inline thread_local std::barrier<>* block_barrier = nullptr;  // the barrier of this thread's block

}  // namespace shim

inline void __syncthreads() { shim::block_barrier->arrive_and_wait(); }

namespace shim {

// Runs `body` (a kernel call with its arguments bound) over grid x block CUDA threads.
// One std::thread per thread of a block; the same threads then run the next block, after every
// one of them has finished the current block (a second barrier, `block_done`).
inline void launch(dim3 grid, dim3 block, const std::function<void()>& body) {
    gridDim = grid;
    blockDim = block;
    const unsigned threads = block.x * block.y * block.z;
    const long long blocks = (long long)grid.x * grid.y * grid.z;

    // __syncthreads' barrier. Threads leave it when they return, so each block needs a fresh
    // one: the completion step of block_done (run while every thread waits there) makes it.
    std::optional<std::barrier<>> sync;
    sync.emplace(threads);
    auto fresh_barrier = [&]() noexcept { sync.emplace(threads); };
    std::barrier block_done(threads, fresh_barrier);

    auto cuda_thread = [&](unsigned t) {
        threadIdx = {t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
        for (long long b = 0; b < blocks; ++b) {
            blockIdx = {unsigned(b % grid.x), unsigned(b / grid.x % grid.y),
                        unsigned(b / ((long long)grid.x * grid.y))};
            block_barrier = &*sync;
            body();
            sync->arrive_and_drop();  // returned: later __syncthreads() no longer wait for us
            block_done.arrive_and_wait();
        }
    };
    std::vector<std::thread> pool;
    pool.reserve(threads);
    for (unsigned t = 0; t < threads; ++t) pool.emplace_back(cuda_thread, t);
    for (auto& thread : pool) thread.join();
}

}  // namespace shim

// Called by harness.py after every launch: an error message, or nullptr. Clears the error.
extern "C" const char* shim_take_error() {
    static char message[128];
    std::uintptr_t address = shim::misaligned_address.exchange(0);
    if (address == 0) return nullptr;
    std::snprintf(message, sizeof message,
                  "misaligned float4 access at address 0x%llx (not a multiple of 16 bytes); "
                  "the GPU would fault", (unsigned long long)address);
    return message;
}
