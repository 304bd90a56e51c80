// sgemm.cu: single-precision matrix multiply, the GPU's share of >99% of AlexNet's arithmetic
// (im2col convolution and the fully connected layers are GEMMs).
//
//   C[b] (M, N) = opA(A[b]) (M, K) @ opB(B[b]) (K, N)        b: one matrix per batch index
//   C[b][m][n] = sum over k of opA(A[b])[m][k] * opB(B[b])[k][n]     (C is overwritten)
//
// Layouts (row-major, contiguous; "n" = as is, "t" = transposed):
//   _nn: A stored (M, K), B stored (K, N)      conv forward W @ col; linear grad_x = gy @ W
//   _nt: A stored (M, K), B stored (N, K)      conv grad_w = gy @ col^T; linear y = x @ W^T
//   _tn: A stored (K, M), B stored (K, N)      conv grad_col = W^T @ gy; linear grad_w = gy^T @ x
// Matrix b starts at A + b * batch_stride_A (likewise B, C). Each matrix has < 2^31 elements.
//
// v1 to v7 have the signature
//   sgemm_vK_LL(int M, int N, int K, const float* A, const float* B, float* C,
//               long long batch_stride_A, long long batch_stride_B, long long batch_stride_C)
// and the grid (ceil(N / tile_N), ceil(M / tile_M), batches): block (x, y, b) computes the tile
// C[b][y*tile_M : (y+1)*tile_M, x*tile_N : (x+1)*tile_N]. Any M, N, K >= 1 works: every load and
// store is bounds-checked, and values outside the matrices count as zeros. The tile and block
// of each version are in minialex/cuda.py (SGEMM_GEOMETRY), beside the launch.
//
// The versions, each adding ONE idea to the one before, as in the step-by-step write-ups of
// SGEMM (S. Boehm, "How to optimize a CUDA matmul kernel for cuBLAS-like performance", 2022).
// What each buys is an estimate from the arithmetic below and from that write-up's figures on
// another GPU (an A6000, 4096^3): NOTHING HERE HAS BEEN MEASURED ON A GPU YET;
// benchmarks/bench_kernels.py measures every version against cuBLAS.
//   v1: naive. One thread per element of C, reading a row of opA(A) and a column of opB(B)
//       from global memory. threadIdx.x runs along m, so the 32 threads of a warp read 32
//       different rows of A and write 32 rows of C: every access is its own memory transaction.
//       (Write-up: ~1% of cuBLAS.)
//   v2: + coalescing. threadIdx.x runs along n instead: a warp reads 32 consecutive floats of B
//       (nn) and writes 32 consecutive floats of C, one transaction for the warp, while all its
//       threads read the same element of A (a broadcast). (~8%.)
//   v3: + shared-memory tiles. A 16x16 block loads a 16x16 tile of opA(A) and of opB(B) into
//       shared memory, then each thread reads 16 of each from there: each value loaded from
//       global memory serves 16 multiply-adds instead of one. Now bound by shared-memory loads,
//       2 per multiply-add. (~13%)
//   v4: + 1-D register blocking. A 64x64 tile of C per block of 512 threads, each thread 8
//       elements of one column of C, BK = 8. Per step k a thread loads one value of B into a
//       register and reuses it for 8 multiply-adds: 9 shared loads per 8 multiply-adds. (~35%)
//   v5: + 2-D register blocking. A 128x128 tile per block of 256 threads, each thread an 8x8
//       block of C: per step k, 8 values of A and 8 of B in registers feed 64 multiply-adds
//       (16 shared loads per 64, a quarter of v4's), and each tile of A and B loaded from global
//       memory serves 128 multiply-adds per value instead of 64. (~65%)
//   v6: + vectorised loads, As transposed. Global loads are float4 (4 floats in one instruction)
//       where the stored rows are 16-byte aligned (row length a multiple of 4 and the matrix
//       aligned), else scalar; the A tile is stored transposed in shared memory (As[k][m]) so
//       that a thread's 8 values of A, like its 8 of B, are two float4 reads: 4 shared-memory
//       instructions per 64 multiply-adds instead of 16. (~75%)
//   v7: + double buffering. Two shared-memory buffers: while the block computes on one, the
//       next tile travels from global memory into registers and then into the other buffer, so
//       the global-memory latency hides behind arithmetic, with one __syncthreads per step
//       instead of two. (A few % more; the write-up's next steps, autotuning and warp tiling,
//       reach 85 to 94%; minialex has neither yet.)
//   v8: + split-K and a tile per problem (what the layers use). v7's loop over a range of K,
//       templated over the tile: 128x128 (256 threads), 128x64 (128) or 64x64 (64). When the
//       output has too few tiles to fill the GPU but K is long (AlexNet's weight gradients:
//       conv1's is 96 x 363 with K = 387,200, 3 tiles of 128x128 for 132 multiprocessors),
//       `splits` blocks share each tile, each summing one range of K into its own slice of a
//       workspace; splitk_reduce then adds the slices in a fixed order. No atomics: the result
//       is the same bits on every run. minialex/cuda.py (sgemm_plan) picks the tile and the
//       number of splits from M, N, K, the batch and the number of multiprocessors. conv1's
//       weight gradient goes from 3 busy multiprocessors to all of them (~40x on that product).
//
// v8's entry points sgemm_v8_<BM>x<BN>_LL take two more ints, (..., int splits, int k_chunk):
// the grid is (ceil(N / BN), ceil(M / BM), batches * splits), block z = b * splits + s sums
// k in [s * k_chunk, min(K, (s + 1) * k_chunk)) of matrix b into C + z * batch_stride_C; with
// splits = 1 that is C[b] itself. k_chunk must be a multiple of 8 (the float4 loads stay
// aligned). splitk_reduce(partial, C, count, batch, splits, N, ...): C[b][e] = sum over
// s = 0, 1, ... of partial[(b * splits + s) * count + e], in that order, for e < count = M * N.
//
// The bias epilogue: v8 and splitk_reduce end with (..., const float* bias, int bias_along,
// long long batch_stride_bias) and add a bias to C in its final store, instead of a separate
// pass over C (a launch that reads and writes all of C once more):
//   bias_along 0: none (bias is never read, and may be null);
//              1: C[b][m][n] += bias[b * batch_stride_bias + m], one per row (conv: per filter);
//              2: C[b][m][n] += bias[b * batch_stride_bias + n], one per column (linear: per
//                 output feature).
// batch_stride_bias 0: the same bias for every matrix b; conv with groups passes F / G, so that
// group g's rows get filters g F/G, g F/G + 1, ... With splits = 1 the tile's store adds it;
// with more, only splitk_reduce does, once, after its fixed-order sum (a partial product must
// not carry it, or it would count `splits` times).
//
// Sections: helpers (layouts and tile loads), the kernels v1..v8, the extern "C" entry points,
// then v8 on TF32 tensor cores (off by default).
// Each kernel is a template over the layout, <TRANS_A, TRANS_B>: nn = <false, false>,
// nt = <false, true>, tn = <true, false>.

// ================================ helpers ================================

// opA(A)[m][k], or 0 outside the (M, K) matrix. A is stored (M, K), or (K, M) if TRANS_A.
template <bool TRANS_A>
__device__ __forceinline__ float element_a(const float* A, int M, int K, int m, int k) {
    if (m >= M || k >= K) return 0.0f;
    return TRANS_A ? A[k * M + m] : A[m * K + k];
}

// opB(B)[k][n], or 0 outside the (K, N) matrix. B is stored (K, N), or (N, K) if TRANS_B.
template <bool TRANS_B>
__device__ __forceinline__ float element_b(const float* B, int K, int N, int k, int n) {
    if (k >= K || n >= N) return 0.0f;
    return TRANS_B ? B[n * K + k] : B[k * N + n];
}

__device__ __forceinline__ bool aligned_16_bytes(const float* pointer) {
    return (reinterpret_cast<long long>(pointer) & 15) == 0;
}

// Copies the tile [row0, row0 + ROWS) x [col0, col0 + COLS) of a row-major (rows, cols) matrix
// into shared memory, zeros outside the matrix; tile[r][c] if not TRANSPOSE, else tile[c][r],
// with rows of LD floats. Consecutive threads read consecutive columns, so that a warp reads
// contiguous memory (a coalesced load) whatever the layout.
template <int ROWS, int COLS, int THREADS, int LD, bool TRANSPOSE>
__device__ __forceinline__ void load_tile(const float* source, int rows, int cols, int row0,
                                          int col0, float* tile, int thread) {
    for (int e = thread; e < ROWS * COLS; e += THREADS) {
        int r = e / COLS, c = e % COLS;
        int row = row0 + r, col = col0 + c;
        float value = (row < rows && col < cols) ? source[row * cols + col] : 0.0f;
        if (TRANSPOSE) tile[c * LD + r] = value;
        else tile[r * LD + c] = value;
    }
}

// v3 to v5: the tiles of opA(A) (BM x BK, at m0, k0) and opB(B) (BK x BN, at k0, n0) in shared
// memory as As[m][k] and Bs[k][n], each operand read in its stored layout and transposed on the
// way in where that layout differs.
template <bool TRANS_A, bool TRANS_B, int BM, int BN, int BK, int THREADS, int LDA, int LDB>
__device__ __forceinline__ void load_tiles(const float* A, const float* B, int M, int N, int K,
                                           int m0, int n0, int k0, float* As, float* Bs,
                                           int thread) {
    if (TRANS_A) load_tile<BK, BM, THREADS, LDA, true>(A, K, M, k0, m0, As, thread);
    else load_tile<BM, BK, THREADS, LDA, false>(A, M, K, m0, k0, As, thread);
    if (TRANS_B) load_tile<BN, BK, THREADS, LDB, true>(B, N, K, n0, k0, Bs, thread);
    else load_tile<BK, BN, THREADS, LDB, false>(B, K, N, k0, n0, Bs, thread);
}

// v5 to v8: a block of (BM/8) x (BN/8) threads, each computing an 8x8 block of C. Thread
// (tx, ty) owns rows ty*4 + {0..3} and BM/2 + ty*4 + {0..3}, columns tx*4 + {0..3} and
// BN/2 + tx*4 + {0..3}: two groups of 4 consecutive elements in each direction, so that in v6
// its operands are 2 float4 reads of As and 2 of Bs, and a half-warp's 16 float4 reads of Bs
// cover 256 consecutive bytes (no bank conflict).
template <int TILE>
__device__ __forceinline__ int owned(int i, int t) {
    return (i < 4 ? 0 : TILE / 2) + t * 4 + i % 4;
}

// The bias epilogue (the header): `value` as C[m][n] stores it. bias_along 0 returns the value
// itself (not value + 0, which would turn -0 into +0), so that no bias changes no bit.
__device__ __forceinline__ float with_bias(float value, const float* bias, int bias_along,
                                           int m, int n) {
    if (bias_along == 0) return value;
    return value + bias[bias_along == 1 ? m : n];
}

// C[my rows][my columns] = sum (+ the bias, v8); with VECTOR, float4 stores where the rows of C
// are aligned
template <int BM, int BN, bool VECTOR>
__device__ __forceinline__ void store_c(float* C, int M, int N, int m0, int n0, int tx, int ty,
                                        const float sum[8][8], const float* bias = nullptr,
                                        int bias_along = 0) {
    bool vectorized = VECTOR && N % 4 == 0 && aligned_16_bytes(C);
    // Unrolled, so that sum[i][...] are registers: indexed at run time, the compiler would put
    // the whole 8x8 accumulator in (slow, off-chip) local memory.
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        int m = m0 + owned<BM>(i, ty);
        if (m >= M) break;  // the rows increase with i
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            int n = n0 + owned<BN>(4 * half, tx);
            float v[4];  // the bias is read for columns inside C only
#pragma unroll
            for (int j = 0; j < 4; ++j)
                v[j] = n + j < N ? with_bias(sum[i][half * 4 + j], bias, bias_along, m, n + j)
                                 : 0.0f;
            if (vectorized && n < N) {  // N % 4 == 0: then n + 3 < N too
                *reinterpret_cast<float4*>(&C[m * N + n]) = make_float4(v[0], v[1], v[2], v[3]);
            } else {
                for (int j = 0; j < 4; ++j)
                    if (n + j < N) C[m * N + n + j] = v[j];
            }
        }
    }
}

// v6 to v8 load a tile as quads: 4 consecutive floats of a stored row, one float4 where the
// rows are aligned. A tile of (ROWS, COLS) in the stored layout has ROWS * COLS / 4 quads;
// quad q starts at row q / (COLS / 4), column q % (COLS / 4) * 4, and thread t reads quads
// t, t + THREADS, ... (consecutive threads along a row: coalesced).
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

// sum[i][j] += As[k][my rows] * Bs[k][my columns] over the BK steps of a loaded tile
template <int BM, int BN, int BK, int LDA, int LDB>
__device__ __forceinline__ void multiply_tile(const float* As, const float* Bs, int tx, int ty,
                                              float sum[8][8]) {
#pragma unroll
    for (int k = 0; k < BK; ++k) {
        float4 a0 = *reinterpret_cast<const float4*>(&As[k * LDA + ty * 4]);
        float4 a1 = *reinterpret_cast<const float4*>(&As[k * LDA + BM / 2 + ty * 4]);
        float4 b0 = *reinterpret_cast<const float4*>(&Bs[k * LDB + tx * 4]);
        float4 b1 = *reinterpret_cast<const float4*>(&Bs[k * LDB + BN / 2 + tx * 4]);
        float a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
        float b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
        for (int i = 0; i < 8; ++i)
            for (int j = 0; j < 8; ++j) sum[i][j] += a[i] * b[j];
    }
}

// ================================ kernels ================================

// ---- v1: naive, one thread per element of C, threadIdx.x along m ----
template <bool TRANS_A, bool TRANS_B>
__device__ __forceinline__ void sgemm_v1(int M, int N, int K, const float* A, const float* B,
                                         float* C) {
    int m = blockIdx.y * 16 + threadIdx.x;  // neighbours in a warp: neighbouring rows of C,
    int n = blockIdx.x * 16 + threadIdx.y;  // N floats apart in memory
    if (m >= M || n >= N) return;
    float sum = 0.0f;
    for (int k = 0; k < K; ++k)
        sum += element_a<TRANS_A>(A, M, K, m, k) * element_b<TRANS_B>(B, K, N, k, n);
    C[m * N + n] = sum;
}

// ---- v2: + coalescing, threadIdx.x along n ----
template <bool TRANS_A, bool TRANS_B>
__device__ __forceinline__ void sgemm_v2(int M, int N, int K, const float* A, const float* B,
                                         float* C) {
    int n = blockIdx.x * 16 + threadIdx.x;  // neighbours in a warp: neighbouring columns, so
    int m = blockIdx.y * 16 + threadIdx.y;  // B's rows (nn) and C's rows are read contiguously
    if (m >= M || n >= N) return;
    float sum = 0.0f;
    for (int k = 0; k < K; ++k)
        sum += element_a<TRANS_A>(A, M, K, m, k) * element_b<TRANS_B>(B, K, N, k, n);
    C[m * N + n] = sum;
}

// ---- v3: + 16x16 tiles of A and B in shared memory ----
template <bool TRANS_A, bool TRANS_B>
__device__ __forceinline__ void sgemm_v3(int M, int N, int K, const float* A, const float* B,
                                         float* C) {
    constexpr int TILE = 16, LD = TILE + 1;  // +1: a transposed store hits 16 different banks
    __shared__ float As[TILE * LD];          // As[m][k]
    __shared__ float Bs[TILE * LD];          // Bs[k][n]
    int tx = threadIdx.x, ty = threadIdx.y, thread = ty * TILE + tx;
    int m0 = blockIdx.y * TILE, n0 = blockIdx.x * TILE;
    float sum = 0.0f;
    for (int k0 = 0; k0 < K; k0 += TILE) {
        load_tiles<TRANS_A, TRANS_B, TILE, TILE, TILE, TILE * TILE, LD, LD>(
            A, B, M, N, K, m0, n0, k0, As, Bs, thread);
        __syncthreads();  // the tiles are complete
#pragma unroll
        for (int k = 0; k < TILE; ++k) sum += As[ty * LD + k] * Bs[k * LD + tx];
        __syncthreads();  // everyone is done with the tiles before they are overwritten
    }
    if (m0 + ty < M && n0 + tx < N) C[(m0 + ty) * N + n0 + tx] = sum;
}

// ---- v4: + 1-D register blocking, 64x64 tile, 8 elements of a column of C per thread ----
template <bool TRANS_A, bool TRANS_B>
__device__ __forceinline__ void sgemm_v4(int M, int N, int K, const float* A, const float* B,
                                         float* C) {
    constexpr int BM = 64, BN = 64, BK = 8, TM = 8, THREADS = BM * BN / TM;  // 512
    constexpr int LDA = BK + 1;  // As[m][k]; +1: the transposed stores (tn) hit different banks
    constexpr int LDB = BN;      // Bs[k][n]
    __shared__ float As[BM * LDA];
    __shared__ float Bs[BK * LDB];
    int thread = threadIdx.x;
    int col = thread % BN, row = thread / BN * TM;  // my column, and the first of my 8 rows: a
    int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;  // warp shares its rows (broadcast reads)
    float sum[TM] = {};
    for (int k0 = 0; k0 < K; k0 += BK) {
        load_tiles<TRANS_A, TRANS_B, BM, BN, BK, THREADS, LDA, LDB>(
            A, B, M, N, K, m0, n0, k0, As, Bs, thread);
        __syncthreads();
#pragma unroll
        for (int k = 0; k < BK; ++k) {
            float b = Bs[k * LDB + col];  // one shared load, reused for 8 multiply-adds
            for (int i = 0; i < TM; ++i) sum[i] += As[(row + i) * LDA + k] * b;
        }
        __syncthreads();
    }
    for (int i = 0; i < TM; ++i) {
        int m = m0 + row + i, n = n0 + col;
        if (m < M && n < N) C[m * N + n] = sum[i];
    }
}

// ---- v5: + 2-D register blocking, 128x128 tile, an 8x8 block of C per thread ----
template <bool TRANS_A, bool TRANS_B>
__device__ __forceinline__ void sgemm_v5(int M, int N, int K, const float* A, const float* B,
                                         float* C) {
    constexpr int BM = 128, BN = 128, BK = 8, THREADS = 256;
    constexpr int LDA = BK + 1, LDB = BN + 4;  // As[m][k], Bs[k][n]
    __shared__ float As[BM * LDA];
    __shared__ float Bs[BK * LDB];
    int thread = threadIdx.x, tx = thread % 16, ty = thread / 16;
    int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    float sum[8][8] = {};
    for (int k0 = 0; k0 < K; k0 += BK) {
        load_tiles<TRANS_A, TRANS_B, BM, BN, BK, THREADS, LDA, LDB>(
            A, B, M, N, K, m0, n0, k0, As, Bs, thread);
        __syncthreads();
#pragma unroll
        for (int k = 0; k < BK; ++k) {
            float a[8], b[8];  // 16 shared loads feed 64 multiply-adds
            for (int i = 0; i < 8; ++i) a[i] = As[owned<BM>(i, ty) * LDA + k];
            for (int j = 0; j < 8; ++j) b[j] = Bs[k * LDB + owned<BN>(j, tx)];
            for (int i = 0; i < 8; ++i)
                for (int j = 0; j < 8; ++j) sum[i][j] += a[i] * b[j];
        }
        __syncthreads();
    }
    store_c<BM, BN, false>(C, M, N, m0, n0, tx, ty, sum);
}

// ---- v6, v7 and v8: one template. A BM x BN tile per block of (BM/8)(BN/8) threads, an 8x8
// block of C per thread, float4 loads, As[k][m]; over k in [k_begin, k_end) (all of K for v6
// and v7, one split's range for v8); DOUBLE_BUFFER (v7, v8): the next tile loads while this
// one is multiplied.
template <bool TRANS_A, bool TRANS_B, int BM, int BN, bool DOUBLE_BUFFER>
__device__ __forceinline__ void sgemm_tiled(int M, int N, int K, const float* A, const float* B,
                                            float* C, int k_begin, int k_end,
                                            const float* bias = nullptr, int bias_along = 0) {
    constexpr int BK = 8, THREADS = BM / 8 * BN / 8, BUFFERS = DOUBLE_BUFFER ? 2 : 1;
    constexpr int LDA = BM + 4;  // +4 floats: the transposed stores hit different banks, and
    constexpr int LDB = BN + 4;  // every row still starts on a 16-byte boundary
    alignas(16) __shared__ float As[BUFFERS][BK * LDA];  // As[k][m]
    alignas(16) __shared__ float Bs[BUFFERS][BK * LDB];  // Bs[k][n]
    int thread = threadIdx.x, tx = thread % (BN / 8), ty = thread / (BN / 8);
    int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    // float4 loads where the stored rows are a multiple of 4 floats long and the matrix starts
    // on a 16-byte boundary (batch offset included); k_begin is a multiple of 8
    bool vector_a = (TRANS_A ? M : K) % 4 == 0 && aligned_16_bytes(A);
    bool vector_b = (TRANS_B ? K : N) % 4 == 0 && aligned_16_bytes(B);
    float sum[8][8] = {};
    NextTiles<TRANS_A, TRANS_B, BM, BN, BK, THREADS> next;
    if (!DOUBLE_BUFFER) {  // v6: load, wait, multiply, wait
        for (int k0 = k_begin; k0 < k_end; k0 += BK) {
            next.fetch(A, B, M, N, K, k_end, m0, n0, k0, thread, vector_a, vector_b);
            next.template store<LDA, LDB>(As[0], Bs[0], thread);
            __syncthreads();
            multiply_tile<BM, BN, BK, LDA, LDB>(As[0], Bs[0], tx, ty, sum);
            __syncthreads();
        }
    } else {  // v7, v8
        next.fetch(A, B, M, N, K, k_end, m0, n0, k_begin, thread, vector_a, vector_b);
        next.template store<LDA, LDB>(As[0], Bs[0], thread);
        __syncthreads();
        int buffer = 0;
        for (int k0 = k_begin; k0 < k_end; k0 += BK) {
            bool more = k0 + BK < k_end;
            // Issue the next tile's global loads first: they complete while we compute.
            if (more) next.fetch(A, B, M, N, K, k_end, m0, n0, k0 + BK, thread, vector_a, vector_b);
            multiply_tile<BM, BN, BK, LDA, LDB>(As[buffer], Bs[buffer], tx, ty, sum);
            // The other buffer was last read in the previous step, before its __syncthreads.
            if (more) next.template store<LDA, LDB>(As[1 - buffer], Bs[1 - buffer], thread);
            __syncthreads();  // the next tile is complete, and nobody reads this one any more
            buffer = 1 - buffer;
        }
    }
    store_c<BM, BN, true>(C, M, N, m0, n0, tx, ty, sum, bias, bias_along);
}

// ---- v8: v7 over one split of K, the tile chosen per problem ----
template <bool TRANS_A, bool TRANS_B, int BM, int BN>
__device__ __forceinline__ void sgemm_v8(int M, int N, int K, const float* A, const float* B,
                                         float* C, long long batch_stride_A,
                                         long long batch_stride_B, long long batch_stride_C,
                                         int splits, int k_chunk, const float* bias,
                                         int bias_along, long long batch_stride_bias) {
    int b = blockIdx.z / splits, split = blockIdx.z % splits;
    A += b * batch_stride_A;
    B += b * batch_stride_B;
    C += blockIdx.z * batch_stride_C;  // matrix b itself when splits = 1, else a workspace slice
    int k_begin = split * k_chunk;     // < K: cuda.py launches no empty split
    int k_end = K - k_begin < k_chunk ? K : k_begin + k_chunk;
    if (splits > 1) bias_along = 0;  // a partial product: splitk_reduce adds the bias, once
    if (bias_along) bias += b * batch_stride_bias;
    sgemm_tiled<TRANS_A, TRANS_B, BM, BN, true>(M, N, K, A, B, C, k_begin, k_end, bias,
                                                bias_along);
}

// ================================ entry points ================================
// sgemm<VERSION, TRANS_A, TRANS_B> finds the batch's matrices (blockIdx.z) and runs v1..v7;
// the extern "C" kernels below only fix template arguments. The 8x8-per-thread kernels promise
// the compiler their block size and ask for enough resident blocks to make 512 threads per
// multiprocessor (__launch_bounds__): it then keeps to 128 registers per thread, so that one
// block computes while another waits at a __syncthreads.
template <int VERSION, bool TRANS_A, bool TRANS_B>
__device__ __forceinline__ void sgemm(int M, int N, int K, const float* A, const float* B,
                                      float* C, long long batch_stride_A,
                                      long long batch_stride_B, long long batch_stride_C) {
    A += blockIdx.z * batch_stride_A;
    B += blockIdx.z * batch_stride_B;
    C += blockIdx.z * batch_stride_C;
    if (VERSION == 1) sgemm_v1<TRANS_A, TRANS_B>(M, N, K, A, B, C);
    if (VERSION == 2) sgemm_v2<TRANS_A, TRANS_B>(M, N, K, A, B, C);
    if (VERSION == 3) sgemm_v3<TRANS_A, TRANS_B>(M, N, K, A, B, C);
    if (VERSION == 4) sgemm_v4<TRANS_A, TRANS_B>(M, N, K, A, B, C);
    if (VERSION == 5) sgemm_v5<TRANS_A, TRANS_B>(M, N, K, A, B, C);
    if (VERSION == 6) sgemm_tiled<TRANS_A, TRANS_B, 128, 128, false>(M, N, K, A, B, C, 0, K);
    if (VERSION == 7) sgemm_tiled<TRANS_A, TRANS_B, 128, 128, true>(M, N, K, A, B, C, 0, K);
}

// C[b][e] = the sum of the splits' partial products, always in the order s = 0, 1, ..., then
// the bias of element e = m N + n (the epilogue, in the header)
extern "C" __global__ void splitk_reduce(const float* __restrict__ partial,
                                         float* __restrict__ C, long long count, int batch,
                                         int splits, int N, const float* __restrict__ bias,
                                         int bias_along, long long batch_stride_bias) {
    long long total = count * batch;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
         i += (long long)gridDim.x * blockDim.x) {
        long long b = i / count, e = i - b * count;
        const float* p = partial + b * splits * count + e;
        float sum = 0.0f;
        for (int s = 0; s < splits; ++s) sum += p[s * count];
        const float* bias_b = bias_along ? bias + b * batch_stride_bias : bias;
        C[i] = with_bias(sum, bias_b, bias_along, (int)(e / N), (int)(e % N));
    }
}

extern "C" __global__ void sgemm_v1_nn(int M, int N, int K, const float* __restrict__ A,
        const float* __restrict__ B, float* __restrict__ C, long long batch_stride_A,
        long long batch_stride_B, long long batch_stride_C) {
    sgemm<1, false, false>(M, N, K, A, B, C, batch_stride_A, batch_stride_B, batch_stride_C);
}

extern "C" __global__ void sgemm_v1_nt(int M, int N, int K, const float* __restrict__ A,
        const float* __restrict__ B, float* __restrict__ C, long long batch_stride_A,
        long long batch_stride_B, long long batch_stride_C) {
    sgemm<1, false, true>(M, N, K, A, B, C, batch_stride_A, batch_stride_B, batch_stride_C);
}

extern "C" __global__ void sgemm_v1_tn(int M, int N, int K, const float* __restrict__ A,
        const float* __restrict__ B, float* __restrict__ C, long long batch_stride_A,
        long long batch_stride_B, long long batch_stride_C) {
    sgemm<1, true, false>(M, N, K, A, B, C, batch_stride_A, batch_stride_B, batch_stride_C);
}

extern "C" __global__ void sgemm_v2_nn(int M, int N, int K, const float* __restrict__ A,
        const float* __restrict__ B, float* __restrict__ C, long long batch_stride_A,
        long long batch_stride_B, long long batch_stride_C) {
    sgemm<2, false, false>(M, N, K, A, B, C, batch_stride_A, batch_stride_B, batch_stride_C);
}

extern "C" __global__ void sgemm_v2_nt(int M, int N, int K, const float* __restrict__ A,
        const float* __restrict__ B, float* __restrict__ C, long long batch_stride_A,
        long long batch_stride_B, long long batch_stride_C) {
    sgemm<2, false, true>(M, N, K, A, B, C, batch_stride_A, batch_stride_B, batch_stride_C);
}

extern "C" __global__ void sgemm_v2_tn(int M, int N, int K, const float* __restrict__ A,
        const float* __restrict__ B, float* __restrict__ C, long long batch_stride_A,
        long long batch_stride_B, long long batch_stride_C) {
    sgemm<2, true, false>(M, N, K, A, B, C, batch_stride_A, batch_stride_B, batch_stride_C);
}

extern "C" __global__ void sgemm_v3_nn(int M, int N, int K, const float* __restrict__ A,
        const float* __restrict__ B, float* __restrict__ C, long long batch_stride_A,
        long long batch_stride_B, long long batch_stride_C) {
    sgemm<3, false, false>(M, N, K, A, B, C, batch_stride_A, batch_stride_B, batch_stride_C);
}

extern "C" __global__ void sgemm_v3_nt(int M, int N, int K, const float* __restrict__ A,
        const float* __restrict__ B, float* __restrict__ C, long long batch_stride_A,
        long long batch_stride_B, long long batch_stride_C) {
    sgemm<3, false, true>(M, N, K, A, B, C, batch_stride_A, batch_stride_B, batch_stride_C);
}

extern "C" __global__ void sgemm_v3_tn(int M, int N, int K, const float* __restrict__ A,
        const float* __restrict__ B, float* __restrict__ C, long long batch_stride_A,
        long long batch_stride_B, long long batch_stride_C) {
    sgemm<3, true, false>(M, N, K, A, B, C, batch_stride_A, batch_stride_B, batch_stride_C);
}

extern "C" __global__ void __launch_bounds__(512)
sgemm_v4_nn(int M, int N, int K, const float* __restrict__ A,
        const float* __restrict__ B, float* __restrict__ C, long long batch_stride_A,
        long long batch_stride_B, long long batch_stride_C) {
    sgemm<4, false, false>(M, N, K, A, B, C, batch_stride_A, batch_stride_B, batch_stride_C);
}

extern "C" __global__ void __launch_bounds__(512)
sgemm_v4_nt(int M, int N, int K, const float* __restrict__ A,
        const float* __restrict__ B, float* __restrict__ C, long long batch_stride_A,
        long long batch_stride_B, long long batch_stride_C) {
    sgemm<4, false, true>(M, N, K, A, B, C, batch_stride_A, batch_stride_B, batch_stride_C);
}

extern "C" __global__ void __launch_bounds__(512)
sgemm_v4_tn(int M, int N, int K, const float* __restrict__ A,
        const float* __restrict__ B, float* __restrict__ C, long long batch_stride_A,
        long long batch_stride_B, long long batch_stride_C) {
    sgemm<4, true, false>(M, N, K, A, B, C, batch_stride_A, batch_stride_B, batch_stride_C);
}

extern "C" __global__ void __launch_bounds__(256, 2)
sgemm_v5_nn(int M, int N, int K, const float* __restrict__ A,
        const float* __restrict__ B, float* __restrict__ C, long long batch_stride_A,
        long long batch_stride_B, long long batch_stride_C) {
    sgemm<5, false, false>(M, N, K, A, B, C, batch_stride_A, batch_stride_B, batch_stride_C);
}

extern "C" __global__ void __launch_bounds__(256, 2)
sgemm_v5_nt(int M, int N, int K, const float* __restrict__ A,
        const float* __restrict__ B, float* __restrict__ C, long long batch_stride_A,
        long long batch_stride_B, long long batch_stride_C) {
    sgemm<5, false, true>(M, N, K, A, B, C, batch_stride_A, batch_stride_B, batch_stride_C);
}

extern "C" __global__ void __launch_bounds__(256, 2)
sgemm_v5_tn(int M, int N, int K, const float* __restrict__ A,
        const float* __restrict__ B, float* __restrict__ C, long long batch_stride_A,
        long long batch_stride_B, long long batch_stride_C) {
    sgemm<5, true, false>(M, N, K, A, B, C, batch_stride_A, batch_stride_B, batch_stride_C);
}

extern "C" __global__ void __launch_bounds__(256, 2)
sgemm_v6_nn(int M, int N, int K, const float* __restrict__ A,
        const float* __restrict__ B, float* __restrict__ C, long long batch_stride_A,
        long long batch_stride_B, long long batch_stride_C) {
    sgemm<6, false, false>(M, N, K, A, B, C, batch_stride_A, batch_stride_B, batch_stride_C);
}

extern "C" __global__ void __launch_bounds__(256, 2)
sgemm_v6_nt(int M, int N, int K, const float* __restrict__ A,
        const float* __restrict__ B, float* __restrict__ C, long long batch_stride_A,
        long long batch_stride_B, long long batch_stride_C) {
    sgemm<6, false, true>(M, N, K, A, B, C, batch_stride_A, batch_stride_B, batch_stride_C);
}

extern "C" __global__ void __launch_bounds__(256, 2)
sgemm_v6_tn(int M, int N, int K, const float* __restrict__ A,
        const float* __restrict__ B, float* __restrict__ C, long long batch_stride_A,
        long long batch_stride_B, long long batch_stride_C) {
    sgemm<6, true, false>(M, N, K, A, B, C, batch_stride_A, batch_stride_B, batch_stride_C);
}

extern "C" __global__ void __launch_bounds__(256, 2)
sgemm_v7_nn(int M, int N, int K, const float* __restrict__ A,
        const float* __restrict__ B, float* __restrict__ C, long long batch_stride_A,
        long long batch_stride_B, long long batch_stride_C) {
    sgemm<7, false, false>(M, N, K, A, B, C, batch_stride_A, batch_stride_B, batch_stride_C);
}

extern "C" __global__ void __launch_bounds__(256, 2)
sgemm_v7_nt(int M, int N, int K, const float* __restrict__ A,
        const float* __restrict__ B, float* __restrict__ C, long long batch_stride_A,
        long long batch_stride_B, long long batch_stride_C) {
    sgemm<7, false, true>(M, N, K, A, B, C, batch_stride_A, batch_stride_B, batch_stride_C);
}

extern "C" __global__ void __launch_bounds__(256, 2)
sgemm_v7_tn(int M, int N, int K, const float* __restrict__ A,
        const float* __restrict__ B, float* __restrict__ C, long long batch_stride_A,
        long long batch_stride_B, long long batch_stride_C) {
    sgemm<7, true, false>(M, N, K, A, B, C, batch_stride_A, batch_stride_B, batch_stride_C);
}

extern "C" __global__ void __launch_bounds__(256, 2)
sgemm_v8_128x128_nn(int M, int N, int K, const float* __restrict__ A,
        const float* __restrict__ B, float* __restrict__ C, long long batch_stride_A,
        long long batch_stride_B, long long batch_stride_C, int splits, int k_chunk,
        const float* __restrict__ bias, int bias_along, long long batch_stride_bias) {
    sgemm_v8<false, false, 128, 128>(M, N, K, A, B, C, batch_stride_A, batch_stride_B,
                                   batch_stride_C, splits, k_chunk, bias, bias_along,
                                   batch_stride_bias);
}

extern "C" __global__ void __launch_bounds__(256, 2)
sgemm_v8_128x128_nt(int M, int N, int K, const float* __restrict__ A,
        const float* __restrict__ B, float* __restrict__ C, long long batch_stride_A,
        long long batch_stride_B, long long batch_stride_C, int splits, int k_chunk,
        const float* __restrict__ bias, int bias_along, long long batch_stride_bias) {
    sgemm_v8<false, true, 128, 128>(M, N, K, A, B, C, batch_stride_A, batch_stride_B,
                                   batch_stride_C, splits, k_chunk, bias, bias_along,
                                   batch_stride_bias);
}

extern "C" __global__ void __launch_bounds__(256, 2)
sgemm_v8_128x128_tn(int M, int N, int K, const float* __restrict__ A,
        const float* __restrict__ B, float* __restrict__ C, long long batch_stride_A,
        long long batch_stride_B, long long batch_stride_C, int splits, int k_chunk,
        const float* __restrict__ bias, int bias_along, long long batch_stride_bias) {
    sgemm_v8<true, false, 128, 128>(M, N, K, A, B, C, batch_stride_A, batch_stride_B,
                                   batch_stride_C, splits, k_chunk, bias, bias_along,
                                   batch_stride_bias);
}

extern "C" __global__ void __launch_bounds__(128, 4)
sgemm_v8_128x64_nn(int M, int N, int K, const float* __restrict__ A,
        const float* __restrict__ B, float* __restrict__ C, long long batch_stride_A,
        long long batch_stride_B, long long batch_stride_C, int splits, int k_chunk,
        const float* __restrict__ bias, int bias_along, long long batch_stride_bias) {
    sgemm_v8<false, false, 128, 64>(M, N, K, A, B, C, batch_stride_A, batch_stride_B,
                                   batch_stride_C, splits, k_chunk, bias, bias_along,
                                   batch_stride_bias);
}

extern "C" __global__ void __launch_bounds__(128, 4)
sgemm_v8_128x64_nt(int M, int N, int K, const float* __restrict__ A,
        const float* __restrict__ B, float* __restrict__ C, long long batch_stride_A,
        long long batch_stride_B, long long batch_stride_C, int splits, int k_chunk,
        const float* __restrict__ bias, int bias_along, long long batch_stride_bias) {
    sgemm_v8<false, true, 128, 64>(M, N, K, A, B, C, batch_stride_A, batch_stride_B,
                                   batch_stride_C, splits, k_chunk, bias, bias_along,
                                   batch_stride_bias);
}

extern "C" __global__ void __launch_bounds__(128, 4)
sgemm_v8_128x64_tn(int M, int N, int K, const float* __restrict__ A,
        const float* __restrict__ B, float* __restrict__ C, long long batch_stride_A,
        long long batch_stride_B, long long batch_stride_C, int splits, int k_chunk,
        const float* __restrict__ bias, int bias_along, long long batch_stride_bias) {
    sgemm_v8<true, false, 128, 64>(M, N, K, A, B, C, batch_stride_A, batch_stride_B,
                                   batch_stride_C, splits, k_chunk, bias, bias_along,
                                   batch_stride_bias);
}

extern "C" __global__ void __launch_bounds__(64, 8)
sgemm_v8_64x64_nn(int M, int N, int K, const float* __restrict__ A,
        const float* __restrict__ B, float* __restrict__ C, long long batch_stride_A,
        long long batch_stride_B, long long batch_stride_C, int splits, int k_chunk,
        const float* __restrict__ bias, int bias_along, long long batch_stride_bias) {
    sgemm_v8<false, false, 64, 64>(M, N, K, A, B, C, batch_stride_A, batch_stride_B,
                                   batch_stride_C, splits, k_chunk, bias, bias_along,
                                   batch_stride_bias);
}

extern "C" __global__ void __launch_bounds__(64, 8)
sgemm_v8_64x64_nt(int M, int N, int K, const float* __restrict__ A,
        const float* __restrict__ B, float* __restrict__ C, long long batch_stride_A,
        long long batch_stride_B, long long batch_stride_C, int splits, int k_chunk,
        const float* __restrict__ bias, int bias_along, long long batch_stride_bias) {
    sgemm_v8<false, true, 64, 64>(M, N, K, A, B, C, batch_stride_A, batch_stride_B,
                                   batch_stride_C, splits, k_chunk, bias, bias_along,
                                   batch_stride_bias);
}

extern "C" __global__ void __launch_bounds__(64, 8)
sgemm_v8_64x64_tn(int M, int N, int K, const float* __restrict__ A,
        const float* __restrict__ B, float* __restrict__ C, long long batch_stride_A,
        long long batch_stride_B, long long batch_stride_C, int splits, int k_chunk,
        const float* __restrict__ bias, int bias_along, long long batch_stride_bias) {
    sgemm_v8<true, false, 64, 64>(M, N, K, A, B, C, batch_stride_A, batch_stride_B,
                                   batch_stride_C, splits, k_chunk, bias, bias_along,
                                   batch_stride_bias);
}

// ================================ TF32 ================================
//
// sgemm_tf32: v8 on the tensor cores, in TF32. OFF BY DEFAULT: minialex uses it
// only after minialex.cuda.set_float32_matmul_precision("high"), the name PyTorch gives the
// same switch (torch.set_float32_matmul_precision). NOT YET RUN ON A GPU. The CPU shim
// (tests/kernel_shim) cannot run its mma and cvt instructions (inline PTX, which g++ cannot
// compile): there, stand-ins written from the PTX ISA's definition of the instructions take
// their place (without __CUDA_ARCH__), so that tests/test_kernels_sgemm.py checks everything
// around them against NumPy. Whether the GPU's fragments are laid out as the table below says
// only a GPU can tell (benchmarks/bench_kernels.py checks the kernel before timing it).
//
// Same contract, grid and arguments as sgemm_v8_128x128_LL (the header above), bias epilogue
// included (with splits = 1 the store adds the bias, else splitk_reduce does):
//   sgemm_tf32_LL(M, N, K, A, B, C, batch_stride_A, batch_stride_B, batch_stride_C, splits,
//                 k_chunk, bias, bias_along, batch_stride_bias),
//   grid (ceil(N / 128), ceil(M / 128), batches * splits), 256 threads.
// TF32 keeps float32's 8-bit exponent and 10 of its 23 mantissa bits: each input is rounded
// (cvt.rna.tf32.f32), the products and sums stay float32. A K-term dot product of N(0, 1)
// values is off by about 2^-11 sqrt(K) instead of 2^-24 sqrt(K).
//
// The tile loads are v8's (QuadTile and NextTiles above: float4 where aligned, As[k][m], double
// buffering). The multiply: the 8 warps of a block as 2 (along m) x 4 (along n), each warp a
// 64 x 32 piece of the tile as 4 x 4 mma.sync.m16n8k8 (PTX ISA, "Matrix shape m16n8k8",
// .tf32). Lane l of a warp, with g = l / 4 and t = l % 4, holds (row, col) of each
// 16 x 8 x 8 product's fragments:
//   A (16 x 8):  a0 (g, t)   a1 (g + 8, t)   a2 (g, t + 4)   a3 (g + 8, t + 4)
//   B (8 x 8):   b0 (k = t, n = g)           b1 (k = t + 4, n = g)
//   C (16 x 8):  c0 (g, 2t)  c1 (g, 2t + 1)  c2 (g + 8, 2t)  c3 (g + 8, 2t + 1)
// Rows of As and Bs are 128 + 8 floats: the 32 lanes' reads (k = t, m = g) then fall in 32
// different banks (8 t + g), and every row still starts on a 16-byte boundary.

namespace tf32 {  // its tile is fixed: 128 x 128, 256 threads

constexpr int BM = 128, BN = 128, BK = 8, THREADS = 256;
constexpr int LDA = BM + 8, LDB = BN + 8;

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800  // on the GPU: the instructions themselves

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

#elif defined(__CUDA_ARCH__)  // before Ampere: no TF32 tensor cores (cuda.py uses them from 8.0 on)

__device__ __forceinline__ unsigned to_tf32(float) { __trap(); return 0; }
__device__ __forceinline__ void mma_warp(const unsigned[4][4], const unsigned[4][2], int,
                                         float[4][4][4]) { __trap(); }

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

}  // namespace tf32

extern "C" __global__ void __launch_bounds__(256, 2)
sgemm_tf32_nn(int M, int N, int K, const float* __restrict__ A, const float* __restrict__ B,
        float* __restrict__ C, long long batch_stride_A, long long batch_stride_B,
        long long batch_stride_C, int splits, int k_chunk, const float* __restrict__ bias,
        int bias_along, long long batch_stride_bias) {
    tf32::sgemm_tf32<false, false>(M, N, K, A, B, C, batch_stride_A, batch_stride_B, batch_stride_C,
                         splits, k_chunk, bias, bias_along, batch_stride_bias);
}

extern "C" __global__ void __launch_bounds__(256, 2)
sgemm_tf32_nt(int M, int N, int K, const float* __restrict__ A, const float* __restrict__ B,
        float* __restrict__ C, long long batch_stride_A, long long batch_stride_B,
        long long batch_stride_C, int splits, int k_chunk, const float* __restrict__ bias,
        int bias_along, long long batch_stride_bias) {
    tf32::sgemm_tf32<false, true>(M, N, K, A, B, C, batch_stride_A, batch_stride_B, batch_stride_C,
                         splits, k_chunk, bias, bias_along, batch_stride_bias);
}

extern "C" __global__ void __launch_bounds__(256, 2)
sgemm_tf32_tn(int M, int N, int K, const float* __restrict__ A, const float* __restrict__ B,
        float* __restrict__ C, long long batch_stride_A, long long batch_stride_B,
        long long batch_stride_C, int splits, int k_chunk, const float* __restrict__ bias,
        int bias_along, long long batch_stride_bias) {
    tf32::sgemm_tf32<true, false>(M, N, K, A, B, C, batch_stride_A, batch_stride_B, batch_stride_C,
                         splits, k_chunk, bias, bias_along, batch_stride_bias);
}
