// conv_implicit.cu: convolution as an implicit GEMM, the im2col columns never written to memory.
//
// Notation as in minialex/functions/conv.py: N C H W, F filters, G groups, CG = C / G,
// FG = F / G, KH KW, SH SW, PH PW, OH OW; P = N OH OW output positions; K = CG KH KW, the length
// of one window of one group. The explicit path (im2col.cu + sgemm.cu) computes per group g
//
//   y_g (FG, P) = w_g (FG, K) @ col_g (K, P),   col_g[(c, i, j), (n, oh, ow)]
//                                                   = x[n, g CG + c, oh SH - PH + i, ow SW - PW + j]
//
// and keeps col (C KH KW x P floats: 2.3 GB for AlexNet's five layers at batch 128) for the
// weight gradient. Here the GEMM's B tile is filled straight from x: the element col_g[k, p] is
// computed from (k, p) when the tile is loaded, so col exists only one 8 x 64 tile at a time, in
// shared memory. Backward recomputes the windows the same way. This is what cuDNN calls the
// implicit GEMM algorithm (Chetlur et al. 2014, "cuDNN: Efficient Primitives for Deep Learning",
// section 3.1).
//
// The three products, each one launch over all groups (blockIdx.z = g):
//   forward  y[n, g FG + m, oh, ow] = b[g FG + m] + sum over k < K of w_g[m, k] col_g[k, p]
//   grad_w   dw_g[m, k] = sum over p of gy_g[m, p] col_g[k, p]; with the bias as the weight of
//            an input that is always 1 (column k = K of col is all ones), db[f] = dw_g[m, K]
//            comes out of the same product. The sum over P is long (P = 387,200 for conv1 at
//            batch 128) and the output small (96 x 364), so the batch is split: block z = s G + g
//            sums images s * images_per_split .. (s + 1) * images_per_split - 1 into its own
//            slice partial[s]; conv_implicit_sum_splits then adds the slices in the order
//            s = 0, 1, ... (deterministic: no atomics) and writes dw and db.
//   grad_x   the transposed convolution, a GEMM over pixels: for q = (n, h, w) and r = (f, i, j)
//            dx[n, g CG + c, h, w] = sum over r of w[g FG + f, c, i, j] gy_g[f, (oh, ow)]
//            where oh SH = h + PH - i and ow SW = w + PW - j (the windows that saw pixel (h, w));
//            a term whose oh or ow is not a whole number in range is 0. For stride s that is
//            (s^2 - 1) / s^2 of the terms, wasted work at conv1 (stride 4), which needs no dx
//            in training (its input is the image).
//
// All three share one tiled GEMM, as sgemm.cu's v3: a 64 x 64 tile of the output per block of
// 256 threads, each thread a 4 x 4 block of it (rows ty + 16 a, columns tx + 16 b), the sum
// staged 8 indices at a time through shared memory. What is new is only the tile loads: each
// thread loads the same column of the B tile at every stage, so the costly part of turning an
// index into coordinates (integer division is some 20 instructions on a GPU) is done once per
// thread, and only the other index (8 apart from one stage to the next) is decoded per load.
// Any shape works: every load and store is bounds-checked, values outside count as zeros.
// Indices into x, y, gy and dx are 64-bit; P, N H W, F (K + 1) and the weights are < 2^31.
//
// launch geometry (cuda.py computes it beside each launch):
//   conv_implicit_forward    block (256,1,1), grid (ceil(P / 64), ceil(FG / 64), G)
//   conv_implicit_grad_w     block (256,1,1), grid (ceil((K + 1) / 64), ceil(FG / 64), G splits)
//   conv_implicit_sum_splits block (256,1,1), grid (ceil(F (K + 1) / 256), 1, 1)
//   conv_implicit_grad_x     block (256,1,1), grid (ceil(N H W / 64), ceil(CG / 64), G)

constexpr int TILE = 64;        // the block's tile of the output: TILE x TILE
constexpr int STEP = 8;         // indices of the sum staged per round through shared memory
constexpr int THREADS = 256;    // 16 x 16 threads, 4 x 4 outputs each
constexpr int LD = TILE + 4;    // row length of a shared tile: +4 as in sgemm.cu's v3
static_assert(TILE * STEP == 2 * THREADS, "each thread loads 2 elements of each tile");
static_assert(TILE == 16 * 4, "16 threads of 4 outputs along each side of the tile");

// acc[a][b] += sum over s < STEP of As[s][ty + 16 a] * Bs[s][tx + 16 b]
__device__ __forceinline__ void multiply_stage(const float* As, const float* Bs, int tx, int ty,
                                               float acc[4][4]) {
#pragma unroll
    for (int s = 0; s < STEP; ++s) {
        float a[4], b[4];
        for (int u = 0; u < 4; ++u) a[u] = As[s * LD + ty + 16 * u];
        for (int v = 0; v < 4; ++v) b[v] = Bs[s * LD + tx + 16 * v];
        for (int u = 0; u < 4; ++u)
            for (int v = 0; v < 4; ++v) acc[u][v] += a[u] * b[v];
    }
}

// x[n, g CG + c, h0 + i, w0 + j] for the window index k = (c KH + i) KW + j, 0 in the padding;
// x_image points at x[n, g CG].
__device__ __forceinline__ float window_value(const float* x_image, int H, int W, int KH,
                                              int KW, int h0, int w0, int k) {
    const int c = k / (KH * KW), ij = k - c * KH * KW, i = ij / KW, j = ij - i * KW;
    const int h = h0 + i, w = w0 + j;
    return (0 <= h && h < H && 0 <= w && w < W) ? x_image[((long long)c * H + h) * W + w]
                                                : 0.0f;
}

extern "C" __global__ void __launch_bounds__(256) conv_implicit_forward(
    const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
    float* __restrict__ y, int N, int C, int H, int W, int KH, int KW, int SH, int SW, int PH,
    int PW, int OH, int OW, int F, int G)
{
    __shared__ float As[STEP * LD];   // As[s][m] = w_g[m0 + m, k0 + s]
    __shared__ float Bs[STEP * LD];   // Bs[s][p] = col_g[k0 + s, p0 + p]
    const int CG = C / G, FG = F / G, K = CG * KH * KW;
    const int positions = OH * OW, P = N * positions;
    const int g = blockIdx.z, m0 = blockIdx.y * TILE, p0 = blockIdx.x * TILE;
    const int thread = threadIdx.x, tx = thread % 16, ty = thread / 16;
    const float* w_g = w + (long long)g * FG * K;                     // (FG, K), row-major
    // A: the thread loads w_g[m0 + a_m + 32 r, k0 + a_s], r = 0, 1: 8 threads read 8
    // consecutive floats of a row of w.
    const int a_s = thread % STEP, a_m = thread / STEP;
    // B: the thread loads column p = p0 + b_p at rows b_s and b_s + 4 of every stage; its
    // window (image n, corner h0, w0) is decoded once.
    const int b_p = thread % TILE, b_s = thread / TILE;
    const int p = p0 + b_p;
    const bool p_inside = p < P;
    const int n = p_inside ? p / positions : 0, position = p_inside ? p - n * positions : 0;
    const int oh = position / OW, ow = position - oh * OW;
    const int h0 = oh * SH - PH, w0 = ow * SW - PW;
    const float* x_image = x + ((long long)n * C + (long long)g * CG) * H * W;
    float acc[4][4] = {};
    for (int k0 = 0; k0 < K; k0 += STEP) {
        for (int r = 0; r < 2; ++r) {
            const int m = a_m + 32 * r, k = k0 + a_s;
            As[a_s * LD + m] = (m0 + m < FG && k < K) ? w_g[(long long)(m0 + m) * K + k] : 0.0f;
            const int s = b_s + 4 * r;
            Bs[s * LD + b_p] = (p_inside && k0 + s < K)
                ? window_value(x_image, H, W, KH, KW, h0, w0, k0 + s) : 0.0f;
        }
        __syncthreads();
        multiply_stage(As, Bs, tx, ty, acc);
        __syncthreads();
    }
    for (int u = 0; u < 4; ++u) {
        const int m = m0 + ty + 16 * u;
        if (m >= FG) continue;
        const int f = g * FG + m;
        for (int v = 0; v < 4; ++v) {
            const int q = p0 + tx + 16 * v;
            if (q >= P) continue;
            const int image = q / positions;
            y[((long long)image * F + f) * positions + (q - image * positions)] =
                acc[u][v] + bias[f];
        }
    }
}

extern "C" __global__ void __launch_bounds__(256) conv_implicit_grad_w(
    const float* __restrict__ x, const float* __restrict__ gy, float* __restrict__ partial,
    int N, int C, int H, int W, int KH, int KW, int SH, int SW, int PH, int PW, int OH, int OW,
    int F, int G, int images_per_split)
{
    __shared__ float As[STEP * LD];   // As[s][m] = gy_g[m0 + m, q0 + s]
    __shared__ float Bs[STEP * LD];   // Bs[s][k] = col_g[k0 + k, q0 + s] (1 at k = K: the bias)
    const int CG = C / G, FG = F / G, K = CG * KH * KW;
    const int positions = OH * OW;
    const int g = blockIdx.z % G, split = blockIdx.z / G;
    const int m0 = blockIdx.y * TILE, k0 = blockIdx.x * TILE;
    const int first_image = split * images_per_split;
    const int last_image = first_image + images_per_split < N ? first_image + images_per_split
                                                              : N;
    const int q_begin = first_image * positions, q_end = last_image * positions;
    const int thread = threadIdx.x, tx = thread % 16, ty = thread / 16;
    // A: gy_g[m0 + a_m + 32 r, q0 + a_s]: 8 threads read 8 consecutive positions of one image
    const int a_s = thread % STEP, a_m = thread / STEP;
    // B: the thread's column k = k0 + b_k is fixed: its (c, i, j) decoded once
    const int b_k = thread % TILE, b_s = thread / TILE;
    const int k = k0 + b_k;
    const int c = k / (KH * KW), ij = k - c * KH * KW, i = ij / KW, j = ij - i * KW;
    const float* x_channel = x + ((long long)g * CG + c) * H * W;    // x[0, g CG + c]
    float acc[4][4] = {};
    for (int q0 = q_begin; q0 < q_end; q0 += STEP) {
        {
            const int q = q0 + a_s, image = q / positions, position = q - image * positions;
            for (int r = 0; r < 2; ++r) {
                const int m = a_m + 32 * r;
                As[a_s * LD + m] = (m0 + m < FG && q < q_end)
                    ? gy[((long long)image * F + g * FG + m0 + m) * positions + position] : 0.0f;
            }
        }
        for (int r = 0; r < 2; ++r) {
            const int s = b_s + 4 * r, q = q0 + s;
            float value = 0.0f;
            if (q < q_end && k < K) {
                const int image = q / positions, position = q - image * positions;
                const int oh = position / OW, ow = position - oh * OW;
                const int h = oh * SH - PH + i, w = ow * SW - PW + j;
                if (0 <= h && h < H && 0 <= w && w < W)
                    value = x_channel[((long long)image * C * H + h) * W + w];
            } else if (q < q_end && k == K) {
                value = 1.0f;                                            // the bias's input
            }
            Bs[s * LD + b_k] = value;
        }
        __syncthreads();
        multiply_stage(As, Bs, tx, ty, acc);
        __syncthreads();
    }
    float* out = partial + ((long long)split * F + g * FG) * (K + 1);   // partial[split, g FG]
    for (int u = 0; u < 4; ++u) {
        const int m = m0 + ty + 16 * u;
        for (int v = 0; v < 4; ++v) {
            const int column = k0 + tx + 16 * v;
            if (m < FG && column <= K) out[(long long)m * (K + 1) + column] = acc[u][v];
        }
    }
}

// grad_w[f, k] = sum over s of partial[s, f, k] for k < K, grad_b[f] = the same at k = K,
// added in the order s = 0, 1, ..., splits - 1: the same bits on every run.
extern "C" __global__ void conv_implicit_sum_splits(const float* __restrict__ partial,
                                                    float* __restrict__ grad_w,
                                                    float* __restrict__ grad_b,
                                                    int splits, int F, int K)
{
    const int index = blockIdx.x * blockDim.x + threadIdx.x;          // f (K + 1) + k
    if (index >= F * (K + 1)) return;
    float sum = 0.0f;
    for (int s = 0; s < splits; ++s) sum += partial[(long long)s * F * (K + 1) + index];
    const int f = index / (K + 1), k = index - f * (K + 1);
    if (k < K) grad_w[f * K + k] = sum;
    else grad_b[f] = sum;
}

extern "C" __global__ void __launch_bounds__(256) conv_implicit_grad_x(
    const float* __restrict__ gy, const float* __restrict__ w, float* __restrict__ gx,
    int N, int C, int H, int W, int KH, int KW, int SH, int SW, int PH, int PW, int OH, int OW,
    int F, int G)
{
    __shared__ float As[STEP * LD];   // As[s][c] = w[g FG + f, c0 + c, i, j], r0 + s = (f, i, j)
    __shared__ float Bs[STEP * LD];   // Bs[s][q] = gy_g[f, the window of (i, j) at pixel q0 + q]
    const int CG = C / G, FG = F / G, window = KH * KW, R = FG * window;
    const int pixels = H * W, Q = N * pixels, positions = OH * OW;
    const int g = blockIdx.z, c0 = blockIdx.y * TILE, q0 = blockIdx.x * TILE;
    const int thread = threadIdx.x, tx = thread % 16, ty = thread / 16;
    // Both tiles: the thread loads column thread % 64 at rows thread / 64 and that + 4.
    const int column = thread % TILE, row = thread / TILE;
    const int c = c0 + column;                                        // A: channel c of group g
    const int q = q0 + column;                                        // B: pixel (n, h, w)
    const bool q_inside = q < Q;
    const int n = q_inside ? q / pixels : 0, pixel = q_inside ? q - n * pixels : 0;
    const int h = pixel / W, w_ = pixel - h * W;
    const float* gy_image = gy + ((long long)n * F + g * FG) * positions;  // gy[n, g FG]
    float acc[4][4] = {};
    for (int r0 = 0; r0 < R; r0 += STEP) {
        for (int half = 0; half < 2; ++half) {
            const int s = row + 4 * half, r = r0 + s;
            const int f = r / window, ij = r - f * window, i = ij / KW, j = ij - i * KW;
            As[s * LD + column] = (c < CG && r < R)
                ? w[((long long)(g * FG + f) * CG + c) * window + ij] : 0.0f;
            float value = 0.0f;
            const int top = h + PH - i, left = w_ + PW - j;               // oh SH and ow SW
            if (q_inside && r < R && top >= 0 && left >= 0 && top % SH == 0 && left % SW == 0) {
                const int oh = top / SH, ow = left / SW;
                if (oh < OH && ow < OW)
                    value = gy_image[(long long)f * positions + oh * OW + ow];
            }
            Bs[s * LD + column] = value;
        }
        __syncthreads();
        multiply_stage(As, Bs, tx, ty, acc);
        __syncthreads();
    }
    for (int u = 0; u < 4; ++u) {
        const int channel = c0 + ty + 16 * u;
        if (channel >= CG) continue;
        for (int v = 0; v < 4; ++v) {
            const int out = q0 + tx + 16 * v;
            if (out >= Q) continue;
            const int image = out / pixels;
            gx[((long long)image * C + g * CG + channel) * pixels + (out - image * pixels)] =
                acc[u][v];
        }
    }
}
