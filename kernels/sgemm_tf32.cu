// sgemm_tf32.cu: sgemm.cu's v8 on the tensor cores, in TF32. OFF BY DEFAULT: minialex uses it
// only after minialex.cuda.set_float32_matmul_precision("high"), the name PyTorch gives the
// same switch (torch.set_float32_matmul_precision). NOT YET RUN ON A GPU. The CPU shim
// (tests/kernel_shim) cannot run its mma and cvt instructions (inline PTX, which g++ cannot
// compile): there, stand-ins written from the PTX ISA's definition of the instructions take
// their place (#ifndef __CUDA_ARCH__), so that tests/test_kernels_sgemm.py checks everything
// around them against NumPy. Whether the GPU's fragments are laid out as the table below says
// only a GPU can tell (benchmarks/bench_kernels.py checks the kernel before timing it).
//
// Same contract, grid and arguments as sgemm_v8_128x128_LL (sgemm.cu's header), bias epilogue
// included (with splits = 1 the store adds the bias, else sgemm.cu's splitk_reduce does):
//   sgemm_tf32_LL(M, N, K, A, B, C, batch_stride_A, batch_stride_B, batch_stride_C, splits,
//                 k_chunk, bias, bias_along, batch_stride_bias),
//   grid (ceil(N / 128), ceil(M / 128), batches * splits), 256 threads.
// TF32 keeps float32's 8-bit exponent and 10 of its 23 mantissa bits: each input is rounded
// (cvt.rna.tf32.f32), the products and sums stay float32. A K-term dot product of N(0, 1)
// values is off by about 2^-11 sqrt(K) instead of 2^-24 sqrt(K).
//
// The tile loads are v8's (float4 where aligned, As[k][m], double buffering). The multiply:
// the 8 warps of a block as 2 (along m) x 4 (along n), each warp a 64 x 32 piece of the tile
// as 4 x 4 mma.sync.m16n8k8 (PTX ISA, "Matrix shape m16n8k8", .tf32). Lane l of a warp, with
// g = l / 4 and t = l % 4, holds (row, col) of each 16 x 8 x 8 product's fragments:
//   A (16 x 8):  a0 (g, t)   a1 (g + 8, t)   a2 (g, t + 4)   a3 (g + 8, t + 4)
//   B (8 x 8):   b0 (k = t, n = g)           b1 (k = t + 4, n = g)
//   C (16 x 8):  c0 (g, 2t)  c1 (g, 2t + 1)  c2 (g + 8, 2t)  c3 (g + 8, 2t + 1)
// Rows of As and Bs are 128 + 8 floats: the 32 lanes' reads (k = t, m = g) then fall in 32
// different banks (8 t + g), and every row still starts on a 16-byte boundary.

__device__ __forceinline__ bool aligned_16_bytes(const float* pointer) {
    return (reinterpret_cast<long long>(pointer) & 15) == 0;
}

// A tile loads as quads (as in sgemm.cu's v6 to v8): 4 consecutive floats of a stored row, one
// float4 where the rows are aligned. A tile of (ROWS, COLS) in the stored layout has
// ROWS * COLS / 4 quads; quad q starts at row q / (COLS / 4), column q % (COLS / 4) * 4, and
// thread t reads quads t, t + THREADS, ... (consecutive threads along a row: coalesced).
template <int ROWS, int COLS, int THREADS>
struct QuadTile {
    static constexpr int PER_THREAD = ROWS * COLS / 4 / THREADS;
    static_assert(PER_THREAD >= 1 && PER_THREAD * 4 * THREADS == ROWS * COLS,
                  "a tile is a whole number of quads per thread");
    float value[PER_THREAD][4];

    // From a matrix stored with rows of `ld` floats; zeros outside rows < row_end and
    // columns < col_end. `vectorized`: the caller checked that the rows are 16-byte aligned and
    // col0, col_end are multiples of 4, so a quad is all inside or all outside.
    __device__ __forceinline__ void fetch(const float* source, int row_end, int col_end, int ld,
                                          int row0, int col0, int thread, bool vectorized) {
        for (int q = 0; q < PER_THREAD; ++q) {
            int quad = thread + q * THREADS;
            int row = row0 + quad / (COLS / 4), col = col0 + quad % (COLS / 4) * 4;
            const float* start = source + (long long)row * ld + col;
            if (vectorized) {
                float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                if (row < row_end && col < col_end) v = *reinterpret_cast<const float4*>(start);
                value[q][0] = v.x; value[q][1] = v.y; value[q][2] = v.z; value[q][3] = v.w;
            } else {
                for (int i = 0; i < 4; ++i)
                    value[q][i] = (row < row_end && col + i < col_end) ? start[i] : 0.0f;
            }
        }
    }

    // Into shared memory with rows of LD floats: as stored, tile[r][c..c+3] (one float4
    // store), or TRANSPOSE'd, tile[c..c+3][r] (4 stores).
    template <int LD, bool TRANSPOSE>
    __device__ __forceinline__ void store(float* tile, int thread) const {
        for (int q = 0; q < PER_THREAD; ++q) {
            int quad = thread + q * THREADS;
            int r = quad / (COLS / 4), c = quad % (COLS / 4) * 4;
            if (TRANSPOSE) {
                for (int i = 0; i < 4; ++i) tile[(c + i) * LD + r] = value[q][i];
            } else {
                *reinterpret_cast<float4*>(&tile[r * LD + c]) =
                    make_float4(value[q][0], value[q][1], value[q][2], value[q][3]);
            }
        }
    }
};

// The next tiles of opA(A) and opB(B), in registers between their global loads and their
// stores to shared memory as As[k][m] and Bs[k][n]. k runs up to k_end (a split's end).
template <bool TRANS_A, bool TRANS_B, int BM, int BN, int BK, int THREADS>
struct NextTiles {
    QuadTile<TRANS_A ? BK : BM, TRANS_A ? BM : BK, THREADS> a;  // in A's stored layout
    QuadTile<TRANS_B ? BN : BK, TRANS_B ? BK : BN, THREADS> b;

    __device__ __forceinline__ void fetch(const float* A, const float* B, int M, int N, int K,
                                          int k_end, int m0, int n0, int k0, int thread,
                                          bool vector_a, bool vector_b) {
        if (TRANS_A) a.fetch(A, k_end, M, M, k0, m0, thread, vector_a);  // stored (K, M)
        else a.fetch(A, M, k_end, K, m0, k0, thread, vector_a);          // stored (M, K)
        if (TRANS_B) b.fetch(B, N, k_end, K, n0, k0, thread, vector_b);  // stored (N, K)
        else b.fetch(B, k_end, N, N, k0, n0, thread, vector_b);          // stored (K, N)
    }

    template <int LDA, int LDB>
    __device__ __forceinline__ void store(float* As, float* Bs, int thread) const {
        a.template store<LDA, !TRANS_A>(As, thread);
        b.template store<LDB, TRANS_B>(Bs, thread);
    }
};


constexpr int BM = 128, BN = 128, BK = 8, THREADS = 256;
constexpr int LDA = BM + 8, LDB = BN + 8;

#ifdef __CUDA_ARCH__  // on the GPU (NVRTC, nvcc): the instructions themselves

__device__ __forceinline__ unsigned to_tf32(float x) {  // round to nearest, ties away from 0
    unsigned rounded;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(rounded) : "f"(x));
    return rounded;
}

// the warp's 4 x 4 products of 16 x 8 x 8, each on its fragments (the table above)
__device__ __forceinline__ void mma_warp(const unsigned a[4][4], const unsigned b[4][2], int,
                                         float acc[4][4][4]) {
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j)
            asm volatile(
                "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
                "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                : "+f"(acc[i][j][0]), "+f"(acc[i][j][1]), "+f"(acc[i][j][2]),
                  "+f"(acc[i][j][3])
                : "r"(a[i][0]), "r"(a[i][1]), "r"(a[i][2]), "r"(a[i][3]), "r"(b[j][0]),
                  "r"(b[j][1]));
}

#else  // in the CPU shim (g++ has no PTX): stand-ins written from the PTX ISA's definitions

inline unsigned to_tf32(float x) {  // keep 10 of 23 mantissa bits, rounding half away from 0
    return (__builtin_bit_cast(unsigned, x) + 0x1000u) & 0xFFFFE000u;
}

// What the tensor core does across a warp, done through shared memory: every lane posts its
// fragments, then computes its own accumulators from the fragments of the lanes that hold each
// element (the table above, read backwards). This checks everything around the mma (tile
// loads, fragment indices, splits, stores) but not that the table is the GPU's: only a GPU can.
inline void mma_warp(const unsigned a[4][4], const unsigned b[4][2], int thread,
                     float acc[4][4][4]) {
    __shared__ unsigned posted_a[THREADS][4][4], posted_b[THREADS][4][2];
    int warp = thread / 32 * 32, g = thread % 32 / 4, t = thread % 4;
    for (int i = 0; i < 4; ++i)
        for (int r = 0; r < 4; ++r) posted_a[thread][i][r] = a[i][r];
    for (int j = 0; j < 4; ++j)
        for (int r = 0; r < 2; ++r) posted_b[thread][j][r] = b[j][r];
    __syncthreads();
    auto value = [](unsigned bits) { return __builtin_bit_cast(float, bits); };
    // A(row, k) is in register row / 8 + 2 (k / 4) of lane (row % 8) * 4 + k % 4; B(k, col) in
    // register k / 4 of lane col * 4 + k % 4; this lane's c[r] is C(g + 8 (r / 2), 2 t + r % 2)
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j)
            for (int r = 0; r < 4; ++r) {
                int row = g + 8 * (r / 2), col = 2 * t + r % 2;
                float sum = 0.0f;
                for (int k = 0; k < 8; ++k)
                    sum += value(posted_a[warp + row % 8 * 4 + k % 4][i][row / 8 + 2 * (k / 4)]) *
                           value(posted_b[warp + col * 4 + k % 4][j][k / 4]);
                acc[i][j][r] += sum;
            }
    __syncthreads();  // every lane has read the posted fragments
}

#endif

// acc[i][j][0..3] += the warp's 16 x 8 piece (i, j) of As[k][m] (as A) times Bs[k][n]
__device__ __forceinline__ void mma_tile(const float* As, const float* Bs, int warp_m,
                                         int warp_n, int thread, float acc[4][4][4]) {
    int g = thread % 32 / 4, t = thread % 4;
    unsigned a[4][4], b[4][2];
    for (int i = 0; i < 4; ++i) {
        int m = warp_m * 64 + i * 16 + g;
        a[i][0] = to_tf32(As[t * LDA + m]);
        a[i][1] = to_tf32(As[t * LDA + m + 8]);
        a[i][2] = to_tf32(As[(t + 4) * LDA + m]);
        a[i][3] = to_tf32(As[(t + 4) * LDA + m + 8]);
    }
    for (int j = 0; j < 4; ++j) {
        int n = warp_n * 32 + j * 8 + g;
        b[j][0] = to_tf32(Bs[t * LDB + n]);
        b[j][1] = to_tf32(Bs[(t + 4) * LDB + n]);
    }
    mma_warp(a, b, thread, acc);
}

// sgemm.cu's bias epilogue: bias_along 0 none, 1 bias[m] per row, 2 bias[n] per column
__device__ __forceinline__ float with_bias(float value, const float* bias, int bias_along,
                                           int m, int n) {
    if (bias_along == 0) return value;
    return value + bias[bias_along == 1 ? m : n];
}

template <bool TRANS_A, bool TRANS_B>
__device__ __forceinline__ void sgemm_tf32(int M, int N, int K, const float* A, const float* B,
                                           float* C, long long batch_stride_A,
                                           long long batch_stride_B, long long batch_stride_C,
                                           int splits, int k_chunk, const float* bias,
                                           int bias_along, long long batch_stride_bias) {
    alignas(16) __shared__ float As[2][BK * LDA];  // As[k][m]
    alignas(16) __shared__ float Bs[2][BK * LDB];  // Bs[k][n]
    int b = blockIdx.z / splits, split = blockIdx.z % splits;
    A += b * batch_stride_A;
    B += b * batch_stride_B;
    C += blockIdx.z * batch_stride_C;  // matrix b itself when splits = 1, else a workspace slice
    int k_begin = split * k_chunk;
    int k_end = K - k_begin < k_chunk ? K : k_begin + k_chunk;
    if (splits > 1) bias_along = 0;  // a partial product: splitk_reduce adds the bias, once
    if (bias_along) bias += b * batch_stride_bias;
    int thread = threadIdx.x, lane = thread % 32, warp = thread / 32;
    int warp_m = warp / 4, warp_n = warp % 4, g = lane / 4, t = lane % 4;
    int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    bool vector_a = (TRANS_A ? M : K) % 4 == 0 && aligned_16_bytes(A);
    bool vector_b = (TRANS_B ? K : N) % 4 == 0 && aligned_16_bytes(B);
    float acc[4][4][4] = {};
    NextTiles<TRANS_A, TRANS_B, BM, BN, BK, THREADS> next;
    next.fetch(A, B, M, N, K, k_end, m0, n0, k_begin, thread, vector_a, vector_b);
    next.template store<LDA, LDB>(As[0], Bs[0], thread);
    __syncthreads();
    int buffer = 0;
    for (int k0 = k_begin; k0 < k_end; k0 += BK) {
        bool more = k0 + BK < k_end;
        if (more) next.fetch(A, B, M, N, K, k_end, m0, n0, k0 + BK, thread, vector_a, vector_b);
        mma_tile(As[buffer], Bs[buffer], warp_m, warp_n, thread, acc);
        if (more) next.template store<LDA, LDB>(As[1 - buffer], Bs[1 - buffer], thread);
        __syncthreads();
        buffer = 1 - buffer;
    }
    // unrolled: acc indexed at run time would live in (slow, off-chip) local memory
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                int m = m0 + warp_m * 64 + i * 16 + g + (r / 2) * 8;
                int n = n0 + warp_n * 32 + j * 8 + 2 * t + r % 2;
                if (m < M && n < N) C[m * N + n] = with_bias(acc[i][j][r], bias, bias_along, m, n);
            }
}

extern "C" __global__ void __launch_bounds__(256, 2)
sgemm_tf32_nn(int M, int N, int K, const float* __restrict__ A, const float* __restrict__ B,
        float* __restrict__ C, long long batch_stride_A, long long batch_stride_B,
        long long batch_stride_C, int splits, int k_chunk, const float* __restrict__ bias,
        int bias_along, long long batch_stride_bias) {
    sgemm_tf32<false, false>(M, N, K, A, B, C, batch_stride_A, batch_stride_B, batch_stride_C,
                         splits, k_chunk, bias, bias_along, batch_stride_bias);
}

extern "C" __global__ void __launch_bounds__(256, 2)
sgemm_tf32_nt(int M, int N, int K, const float* __restrict__ A, const float* __restrict__ B,
        float* __restrict__ C, long long batch_stride_A, long long batch_stride_B,
        long long batch_stride_C, int splits, int k_chunk, const float* __restrict__ bias,
        int bias_along, long long batch_stride_bias) {
    sgemm_tf32<false, true>(M, N, K, A, B, C, batch_stride_A, batch_stride_B, batch_stride_C,
                         splits, k_chunk, bias, bias_along, batch_stride_bias);
}

extern "C" __global__ void __launch_bounds__(256, 2)
sgemm_tf32_tn(int M, int N, int K, const float* __restrict__ A, const float* __restrict__ B,
        float* __restrict__ C, long long batch_stride_A, long long batch_stride_B,
        long long batch_stride_C, int splits, int k_chunk, const float* __restrict__ bias,
        int bias_along, long long batch_stride_bias) {
    sgemm_tf32<true, false>(M, N, K, A, B, C, batch_stride_A, batch_stride_B, batch_stride_C,
                         splits, k_chunk, bias, bias_along, batch_stride_bias);
}
