// sgemm.cu: single-precision matrix multiply, the GPU's share of >99% of AlexNet's arithmetic
// (im2col convolution and the fully connected layers are GEMMs).
//
//   C[b] (M, N) = opA(A[b]) (M, K) @ opB(B[b]) (K, N)        b = blockIdx.z, one matrix per batch
//   C[b][m][n] = sum over k of opA(A[b])[m][k] * opB(B[b])[k][n]     (C is overwritten)
//
// Layouts (row-major, contiguous; "n" = as is, "t" = transposed):
//   _nn: A stored (M, K), B stored (K, N)      conv forward W @ col; linear grad_x = gy @ W
//   _nt: A stored (M, K), B stored (N, K)      conv grad_w = gy @ col^T; linear y = x @ W^T
//   _tn: A stored (K, M), B stored (K, N)      conv grad_col = W^T @ gy; linear grad_w = gy^T @ x
// Matrix b starts at A + b * batch_stride_A (likewise B, C). Each matrix has < 2^31 elements.
//
// Every entry point has the signature
//   sgemm_vK_LL(int M, int N, int K, const float* A, const float* B, float* C,
//               long long batch_stride_A, long long batch_stride_B, long long batch_stride_C)
// and the grid (ceil(N / tile_N), ceil(M / tile_M), batches): block (x, y) computes the tile
// C[y*tile_M : (y+1)*tile_M, x*tile_N : (x+1)*tile_N]. Any M, N, K >= 1 works: every load and
// store is bounds-checked, and values outside the matrices count as zeros.
//
// The versions, each a step towards the speed of cuBLAS:
//   v1: naive. One thread per element of C, reading a row of A and a column of B from global
//       memory: 2 loads per multiply-add, so it is bound by memory traffic.
//   v2: shared-memory tiles. A 16x16 block loads a 16x16 tile of A and of B into shared memory,
//       then every thread reads 16 of each from there: each global load is used 16 times.
//   v3: + register blocking. A 64x64 tile of C per block of 256 threads, each thread 4x4 of it.
//       Per step k a thread loads 4 values of A and 4 of B from shared memory into registers
//       and does 16 multiply-adds: 2 shared loads per multiply-add become 0.5.
//   v4: + 128x128 tiles, 8x8 per thread, float4. Global loads are float4 (4 floats at once) when
//       the rows are 16-byte aligned (the row length a multiple of 4 and the pointer aligned), else
//       scalar; the A tile is stored transposed (As[k][m]) so that a thread reads its 8 values of
//       A, like its 8 of B, as two float4 from shared memory: 64 multiply-adds per 4 loads.
//   v5: v4 + double buffering. Two shared-memory buffers: while the block computes on one, the
//       next tile travels from global memory into registers and then into the other buffer, so
//       the global-memory latency hides behind arithmetic, with one __syncthreads per step.
//
// launch geometry (cuda.py and the tests read these lines):
// launch sgemm_v1: tile_M=16 tile_N=16 block=(16,16,1)
// launch sgemm_v2: tile_M=16 tile_N=16 block=(16,16,1)
// launch sgemm_v3: tile_M=64 tile_N=64 block=(256,1,1)
// launch sgemm_v4: tile_M=128 tile_N=128 block=(256,1,1)
// launch sgemm_v5: tile_M=128 tile_N=128 block=(256,1,1)
//
// Sections: helpers (layouts and tile loads), the kernels v1..v5, the extern "C" entry points.
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
// contiguous memory (a "coalesced" load) whatever the layout.
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

// Loads the tiles of opA(A) (BM x BK, at m0, k0) and opB(B) (BK x BN, at k0, n0) into shared
// memory as As[k][m] and Bs[k][n]: each operand is read in its stored layout and transposed on
// the way in when needed.
template <bool TRANS_A, bool TRANS_B, int BM, int BN, int BK, int THREADS, int LDA, int LDB>
__device__ __forceinline__ void load_tiles(const float* A, const float* B, int M, int N, int K,
                                           int m0, int n0, int k0, float* As, float* Bs,
                                           int thread) {
    if (TRANS_A) load_tile<BK, BM, THREADS, LDA, false>(A, K, M, k0, m0, As, thread);
    else load_tile<BM, BK, THREADS, LDA, true>(A, M, K, m0, k0, As, thread);
    if (TRANS_B) load_tile<BN, BK, THREADS, LDB, true>(B, N, K, n0, k0, Bs, thread);
    else load_tile<BK, BN, THREADS, LDB, false>(B, K, N, k0, n0, Bs, thread);
}

// v4 and v5: one thread's share of a tile that holds exactly 4 * THREADS floats: 4 consecutive
// floats of one stored row. The tile is (ROWS, COLS) in the stored layout.
struct Quad {
    int row, col;     // where the 4 floats start, in the whole matrix
    float value[4];   // what was read (zeros outside the matrix)
};

// Reads a thread's 4 floats with one float4 load if `vectorized` (the caller checked that the
// rows are 16-byte aligned: then 4 floats starting at a multiple of 4 are all inside the matrix
// or all outside), else with 4 bounds-checked scalar loads.
template <int COLS>
__device__ __forceinline__ Quad fetch_quad(const float* source, int rows, int cols, int row0,
                                           int col0, int thread, bool vectorized) {
    Quad quad;
    quad.row = row0 + thread / (COLS / 4);
    quad.col = col0 + thread % (COLS / 4) * 4;
    const float* start = source + quad.row * cols + quad.col;
    if (vectorized) {
        float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (quad.row < rows && quad.col < cols) v = *reinterpret_cast<const float4*>(start);
        quad.value[0] = v.x; quad.value[1] = v.y; quad.value[2] = v.z; quad.value[3] = v.w;
    } else {
        for (int i = 0; i < 4; ++i)
            quad.value[i] = (quad.row < rows && quad.col + i < cols) ? start[i] : 0.0f;
    }
    return quad;
}

// Writes a fetched quad into the shared tile (rows of LD floats): as a row, tile[r][c..c+3]
// (one float4 store), or transposed, tile[c..c+3][r] (4 stores).
template <int LD, bool TRANSPOSE>
__device__ __forceinline__ void store_quad(const Quad& quad, int row0, int col0, float* tile) {
    int r = quad.row - row0, c = quad.col - col0;
    if (TRANSPOSE) {
        for (int i = 0; i < 4; ++i) tile[(c + i) * LD + r] = quad.value[i];
    } else {
        *reinterpret_cast<float4*>(&tile[r * LD + c]) =
            make_float4(quad.value[0], quad.value[1], quad.value[2], quad.value[3]);
    }
}

// v4 and v5 fetch the next tiles of A and B into registers (a Quad each), then store them.
template <bool TRANS_A, bool TRANS_B, int BM, int BN, int BK>
struct TileQuads {
    Quad a, b;

    __device__ __forceinline__ void fetch(const float* A, const float* B, int M, int N, int K,
                                          int m0, int n0, int k0, int thread, bool vector_a,
                                          bool vector_b) {
        if (TRANS_A) a = fetch_quad<BM>(A, K, M, k0, m0, thread, vector_a);
        else a = fetch_quad<BK>(A, M, K, m0, k0, thread, vector_a);
        if (TRANS_B) b = fetch_quad<BK>(B, N, K, n0, k0, thread, vector_b);
        else b = fetch_quad<BN>(B, K, N, k0, n0, thread, vector_b);
    }

    template <int LDA, int LDB>
    __device__ __forceinline__ void store(int m0, int n0, int k0, float* As, float* Bs) const {
        if (TRANS_A) store_quad<LDA, false>(a, k0, m0, As);
        else store_quad<LDA, true>(a, m0, k0, As);
        if (TRANS_B) store_quad<LDB, true>(b, n0, k0, Bs);
        else store_quad<LDB, false>(b, k0, n0, Bs);
    }
};

// ================================ kernels ================================

// ---- v1: one thread per element of C ----
template <bool TRANS_A, bool TRANS_B>
__device__ __forceinline__ void sgemm_v1(int M, int N, int K, const float* A, const float* B,
                                         float* C) {
    int n = blockIdx.x * 16 + threadIdx.x;  // threadIdx.x along n: a warp reads B's rows
    int m = blockIdx.y * 16 + threadIdx.y;  // contiguously (nn) and writes C contiguously
    if (m >= M || n >= N) return;
    float sum = 0.0f;
    for (int k = 0; k < K; ++k)
        sum += element_a<TRANS_A>(A, M, K, m, k) * element_b<TRANS_B>(B, K, N, k, n);
    C[m * N + n] = sum;
}

// ---- v2: 16x16 tiles of A and B in shared memory ----
template <bool TRANS_A, bool TRANS_B>
__device__ __forceinline__ void sgemm_v2(int M, int N, int K, const float* A, const float* B,
                                         float* C) {
    constexpr int TILE = 16, LD = TILE + 1;  // +1: a transposed store hits 16 different banks
    __shared__ float As[TILE * LD];          // As[k][m]
    __shared__ float Bs[TILE * LD];          // Bs[k][n]
    int tx = threadIdx.x, ty = threadIdx.y, thread = ty * TILE + tx;
    int m0 = blockIdx.y * TILE, n0 = blockIdx.x * TILE;
    float sum = 0.0f;
    for (int k0 = 0; k0 < K; k0 += TILE) {
        load_tiles<TRANS_A, TRANS_B, TILE, TILE, TILE, TILE * TILE, LD, LD>(
            A, B, M, N, K, m0, n0, k0, As, Bs, thread);
        __syncthreads();  // the tiles are complete
#pragma unroll
        for (int k = 0; k < TILE; ++k) sum += As[k * LD + ty] * Bs[k * LD + tx];
        __syncthreads();  // everyone is done with the tiles before they are overwritten
    }
    if (m0 + ty < M && n0 + tx < N) C[(m0 + ty) * N + n0 + tx] = sum;
}

// ---- v3: 64x64 tile per block, 4x4 per thread in registers ----
template <bool TRANS_A, bool TRANS_B>
__device__ __forceinline__ void sgemm_v3(int M, int N, int K, const float* A, const float* B,
                                         float* C) {
    constexpr int BM = 64, BN = 64, BK = 8, THREADS = 256;
    constexpr int LDA = BM + 4;  // As[k][m]; +4 makes the transposed stores conflict-free
    constexpr int LDB = BN + 4;
    __shared__ float As[BK * LDA];
    __shared__ float Bs[BK * LDB];
    int thread = threadIdx.x;
    // The thread's 4x4 elements are strided by 16: rows ty + 16 i, columns tx + 16 j. Then the
    // 16 threads of a half-warp read 16 consecutive floats of Bs (no bank conflict) and write
    // 16 consecutive floats of C.
    int tx = thread % 16, ty = thread / 16;
    int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    float sum[4][4] = {};
    for (int k0 = 0; k0 < K; k0 += BK) {
        load_tiles<TRANS_A, TRANS_B, BM, BN, BK, THREADS, LDA, LDB>(
            A, B, M, N, K, m0, n0, k0, As, Bs, thread);
        __syncthreads();
#pragma unroll
        for (int k = 0; k < BK; ++k) {
            float a[4], b[4];
            for (int i = 0; i < 4; ++i) a[i] = As[k * LDA + ty + 16 * i];
            for (int j = 0; j < 4; ++j) b[j] = Bs[k * LDB + tx + 16 * j];
            for (int i = 0; i < 4; ++i)
                for (int j = 0; j < 4; ++j) sum[i][j] += a[i] * b[j];
        }
        __syncthreads();
    }
    for (int i = 0; i < 4; ++i) {
        int m = m0 + ty + 16 * i;
        for (int j = 0; j < 4; ++j) {
            int n = n0 + tx + 16 * j;
            if (m < M && n < N) C[m * N + n] = sum[i][j];
        }
    }
}

// ---- v4 and v5 share the tile geometry, the inner product and the store of C ----
// Block tile 128x128, BK = 8, 256 threads as 16 x 16, each thread 8x8 of C. Thread (tx, ty)
// owns rows {ty*4 + i, 64 + ty*4 + i} and columns {tx*4 + j, 64 + tx*4 + j}, i, j < 4: two
// groups of 4 consecutive floats in each direction, so its operands are 2 float4 reads of As
// and 2 of Bs, and a half-warp's 16 float4 reads of Bs cover 256 consecutive bytes.
constexpr int BIG_BM = 128, BIG_BN = 128, BIG_BK = 8, BIG_THREADS = 256;
constexpr int BIG_LDA = BIG_BM + 4;  // +4 floats: the transposed stores hit 32 different banks,
constexpr int BIG_LDB = BIG_BN + 4;  // and every row still starts on a 16-byte boundary
static_assert(BIG_BM * BIG_BK == 4 * BIG_THREADS && BIG_BN * BIG_BK == 4 * BIG_THREADS,
              "v4/v5 load a tile with one quad (4 floats) per thread");
static_assert(BIG_BM == 16 * 8 && BIG_BN == 16 * 8, "16 x 16 threads of 8 x 8 elements");

// sum[i][j] += As[k][my rows] * Bs[k][my columns] over the BK steps of a loaded tile
__device__ __forceinline__ void multiply_tile(const float* As, const float* Bs, int tx, int ty,
                                              float sum[8][8]) {
#pragma unroll
    for (int k = 0; k < BIG_BK; ++k) {
        float4 a0 = *reinterpret_cast<const float4*>(&As[k * BIG_LDA + ty * 4]);
        float4 a1 = *reinterpret_cast<const float4*>(&As[k * BIG_LDA + 64 + ty * 4]);
        float4 b0 = *reinterpret_cast<const float4*>(&Bs[k * BIG_LDB + tx * 4]);
        float4 b1 = *reinterpret_cast<const float4*>(&Bs[k * BIG_LDB + 64 + tx * 4]);
        float a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
        float b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
        for (int i = 0; i < 8; ++i)
            for (int j = 0; j < 8; ++j) sum[i][j] += a[i] * b[j];
    }
}

// C[my rows][my columns] = sum: float4 stores where the rows of C are 16-byte aligned
__device__ __forceinline__ void store_c(float* C, int M, int N, int m0, int n0, int tx, int ty,
                                        const float sum[8][8]) {
    bool vectorized = N % 4 == 0 && aligned_16_bytes(C);
    for (int i = 0; i < 8; ++i) {
        int m = m0 + (i < 4 ? ty * 4 + i : 64 + ty * 4 + i - 4);
        if (m >= M) break;  // the rows increase with i
        for (int half = 0; half < 2; ++half) {
            int n = n0 + half * 64 + tx * 4;
            const float* v = &sum[i][half * 4];
            if (vectorized && n < N) {  // N % 4 == 0: then n + 3 < N too
                *reinterpret_cast<float4*>(&C[m * N + n]) = make_float4(v[0], v[1], v[2], v[3]);
            } else {
                for (int j = 0; j < 4; ++j)
                    if (n + j < N) C[m * N + n + j] = v[j];
            }
        }
    }
}

// Whether each operand can be read with float4: its stored rows are a multiple of 4 floats long
// and the matrix starts on a 16-byte boundary (batch offset included).
template <bool TRANS_A, bool TRANS_B>
__device__ __forceinline__ void vector_loads(int M, int N, int K, const float* A, const float* B,
                                             bool& vector_a, bool& vector_b) {
    vector_a = (TRANS_A ? M : K) % 4 == 0 && aligned_16_bytes(A);
    vector_b = (TRANS_B ? K : N) % 4 == 0 && aligned_16_bytes(B);
}

// ---- v4: 128x128 tiles, 8x8 per thread, float4 loads ----
template <bool TRANS_A, bool TRANS_B>
__device__ __forceinline__ void sgemm_v4(int M, int N, int K, const float* A, const float* B,
                                         float* C) {
    alignas(16) __shared__ float As[BIG_BK * BIG_LDA];  // As[k][m]
    alignas(16) __shared__ float Bs[BIG_BK * BIG_LDB];  // Bs[k][n]
    int thread = threadIdx.x, tx = thread % 16, ty = thread / 16;
    int m0 = blockIdx.y * BIG_BM, n0 = blockIdx.x * BIG_BN;
    bool vector_a, vector_b;
    vector_loads<TRANS_A, TRANS_B>(M, N, K, A, B, vector_a, vector_b);
    float sum[8][8] = {};
    TileQuads<TRANS_A, TRANS_B, BIG_BM, BIG_BN, BIG_BK> quads;
    for (int k0 = 0; k0 < K; k0 += BIG_BK) {
        quads.fetch(A, B, M, N, K, m0, n0, k0, thread, vector_a, vector_b);
        quads.template store<BIG_LDA, BIG_LDB>(m0, n0, k0, As, Bs);
        __syncthreads();
        multiply_tile(As, Bs, tx, ty, sum);
        __syncthreads();
    }
    store_c(C, M, N, m0, n0, tx, ty, sum);
}

// ---- v5: v4 with two shared buffers, the next tile loading while this one is used ----
template <bool TRANS_A, bool TRANS_B>
__device__ __forceinline__ void sgemm_v5(int M, int N, int K, const float* A, const float* B,
                                         float* C) {
    alignas(16) __shared__ float As[2][BIG_BK * BIG_LDA];
    alignas(16) __shared__ float Bs[2][BIG_BK * BIG_LDB];
    int thread = threadIdx.x, tx = thread % 16, ty = thread / 16;
    int m0 = blockIdx.y * BIG_BM, n0 = blockIdx.x * BIG_BN;
    bool vector_a, vector_b;
    vector_loads<TRANS_A, TRANS_B>(M, N, K, A, B, vector_a, vector_b);
    float sum[8][8] = {};
    TileQuads<TRANS_A, TRANS_B, BIG_BM, BIG_BN, BIG_BK> quads;
    quads.fetch(A, B, M, N, K, m0, n0, 0, thread, vector_a, vector_b);
    quads.template store<BIG_LDA, BIG_LDB>(m0, n0, 0, As[0], Bs[0]);
    __syncthreads();
    int buffer = 0;
    for (int k0 = 0; k0 < K; k0 += BIG_BK) {
        bool more = k0 + BIG_BK < K;
        // Issue the next tile's global loads first: they complete while we compute.
        if (more) quads.fetch(A, B, M, N, K, m0, n0, k0 + BIG_BK, thread, vector_a, vector_b);
        multiply_tile(As[buffer], Bs[buffer], tx, ty, sum);
        // The other buffer was last read in the previous step, before its __syncthreads.
        if (more) quads.template store<BIG_LDA, BIG_LDB>(m0, n0, k0 + BIG_BK,
                                                         As[1 - buffer], Bs[1 - buffer]);
        __syncthreads();  // the next tile is complete, and nobody reads this one any more
        buffer = 1 - buffer;
    }
    store_c(C, M, N, m0, n0, tx, ty, sum);
}

// ================================ entry points ================================
// sgemm<VERSION, TRANS_A, TRANS_B> finds the batch's matrices (blockIdx.z) and runs the version;
// the extern "C" kernels below only fix its template arguments. v4 and v5 promise the compiler
// at most 256 threads per block and ask for 2 blocks per multiprocessor (__launch_bounds__): it
// then keeps to 128 registers per thread, so that one block computes while the other waits at
// a __syncthreads.
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

extern "C" __global__ void __launch_bounds__(256, 2)
sgemm_v4_nn(int M, int N, int K, const float* __restrict__ A,
        const float* __restrict__ B, float* __restrict__ C, long long batch_stride_A,
        long long batch_stride_B, long long batch_stride_C) {
    sgemm<4, false, false>(M, N, K, A, B, C, batch_stride_A, batch_stride_B, batch_stride_C);
}

extern "C" __global__ void __launch_bounds__(256, 2)
sgemm_v4_nt(int M, int N, int K, const float* __restrict__ A,
        const float* __restrict__ B, float* __restrict__ C, long long batch_stride_A,
        long long batch_stride_B, long long batch_stride_C) {
    sgemm<4, false, true>(M, N, K, A, B, C, batch_stride_A, batch_stride_B, batch_stride_C);
}

extern "C" __global__ void __launch_bounds__(256, 2)
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
