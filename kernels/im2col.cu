// im2col and col2im: the copies around the GEMM of a convolution (minialex/functions/conv.py).
//
// Notation (as in conv.py):
//   N            batch size;   C, H, W  input channels, height, width
//   KH, KW       kernel height and width;  SH, SW  strides;  PH, PW  zero padding
//   OH, OW       output size: OH = (H + 2 PH - KH) / SH + 1, and likewise OW
//
// im2col copies every window of the zero-padded input into a column of col, with the layout
// of conv.py's im2col, col (C, KH, KW, N, OH, OW):
//
//   col[c, i, j, n, oh, ow] = x[n, c, oh SH - PH + i, ow SW - PW + j]   (0 outside the input)
//
// col2im is its adjoint, the gradient of the copy: each pixel gets the sum of every column
// entry that was copied from it,
//
//   x[n, c, h, w] = sum of col[c, i, j, n, oh, ow] over all (i, oh, j, ow) with
//                   oh SH - PH + i = h  and  ow SW - PW + j = w.
//
// (Groups need nothing here: each group's rows of col are one contiguous block.)
//
// Versions
//   v1 (im2col_v1): one thread per col element, its (c, i, j, n, oh, ow) decomposed from the
//       thread's index. Consecutive threads take consecutive ow, so the writes, which are most
//       of the traffic (col is about KH KW / (SH SW) times larger than x), are coalesced.
//       But the decomposition costs about nine integer divisions or remainders per element,
//       and a GPU has no divide instruction: each is a sequence of some 20 instructions. At
//       well over 100 instructions per 4-byte store, v1 is likely bound by this arithmetic
//       rather than by memory (benchmarks/bench_kernels.py times both versions).
//   v2 (im2col, the one minialex uses): one block per row (c, i, j, n) of col, its threads
//       striding along the row's OH OW positions. The row's coordinates are the same for the
//       whole block, computed once per row; each element costs one division (oh = position /
//       OW), so the kernel is back to being bound by its stores. A block of 64 threads wastes
//       little at the end of a row: AlexNet's rows are 3025, 729 and 169 = 2 x 64 + 41 long.
//   v1 (col2im): one thread per x element, GATHERING the entries that were copied from it: for
//       row h the windows are oh = ceil((h + PH - KH + 1) / SH) .. floor((h + PH) / SH) with
//       i = h + PH - oh SH, and likewise for w. Every pixel is written once by one thread, so
//       no atomics are needed and the result does not depend on the order threads run in.
//       Its divisions are spread over the KH KW / (SH SW) entries each pixel gathers (25 in
//       conv2), and reading col is the bulk of its time, so there is no v2.
//
// All loop with a grid stride (over elements, or over rows for v2), so any grid computes the
// whole output; the launches below give one thread per element (v2: one block per row).
// Indices into x and col are 64-bit (col of AlexNet's conv2 at batch 256 has 448 million
// entries).
//
// launch im2col_v1: block=(256,1,1) grid=(ceil(C*KH*KW*N*OH*OW / 256),1,1)
// launch im2col: block=(64,1,1) grid=(C*KH*KW*N,1,1)
// launch col2im: block=(256,1,1) grid=(ceil(N*C*H*W / 256),1,1)

extern "C" __global__ void im2col_v1(const float* __restrict__ x, float* __restrict__ col,
                                     int N, int C, int H, int W, int KH, int KW,
                                     int SH, int SW, int PH, int PW, int OH, int OW)
{
    const long long positions = (long long)OH * OW;                     // per (c, i, j, n)
    const long long total = (long long)C * KH * KW * N * positions;
    const long long step = (long long)blockDim.x * gridDim.x;
    for (long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x; index < total;
         index += step) {
        // index = (((c KH + i) KW + j) N + n) OH OW + oh OW + ow
        const int row = (int)(index / positions);      // (c, i, j, n): < C KH KW N, an int
        const int position = (int)(index - (long long)row * positions);
        const int ow = position % OW, oh = position / OW;
        const int n = row % N, j = (row / N) % KW, i = (row / (N * KW)) % KH;
        const int c = row / (N * KW * KH);
        const int h = oh * SH - PH + i, w = ow * SW - PW + j;
        const bool inside = 0 <= h && h < H && 0 <= w && w < W;
        col[index] = inside ? x[((long long)(n * C + c) * H + h) * W + w] : 0.0f;
    }
}

extern "C" __global__ void im2col(const float* __restrict__ x, float* __restrict__ col,
                                  int N, int C, int H, int W, int KH, int KW,
                                  int SH, int SW, int PH, int PW, int OH, int OW)
{
    const int positions = OH * OW;                                      // per row of col
    const int rows = C * KH * KW * N;
    for (int row = blockIdx.x; row < rows; row += gridDim.x) {
        // row = ((c KH + i) KW + j) N + n, the same for the whole block
        const int n = row % N, j = (row / N) % KW, i = (row / (N * KW)) % KH;
        const int c = row / (N * KW * KH);
        const float* plane = x + (long long)(n * C + c) * H * W;       // x[n, c]
        float* out = col + (long long)row * positions;                  // col[c, i, j, n]
        for (int position = threadIdx.x; position < positions; position += blockDim.x) {
            const int oh = position / OW, ow = position - oh * OW;
            const int h = oh * SH - PH + i, w = ow * SW - PW + j;
            const bool inside = 0 <= h && h < H && 0 <= w && w < W;
            out[position] = inside ? plane[h * W + w] : 0.0f;
        }
    }
}

// The first window index o whose rows o S - P .. o S - P + K - 1 contain pixel p, and the
// number of windows that do (0 if none): o from ceil((p + P - K + 1) / S) to floor((p + P) / S),
// clipped to [0, O - 1].
__device__ __forceinline__ void windows_containing(int p, int K, int S, int P, int O,
                                                   int* first, int* last)
{
    const int low = p + P - K + 1;
    *first = low <= 0 ? 0 : (low + S - 1) / S;
    const int high = (p + P) / S;
    *last = high < O - 1 ? high : O - 1;
}

extern "C" __global__ void col2im(const float* __restrict__ col, float* __restrict__ x,
                                  int N, int C, int H, int W, int KH, int KW,
                                  int SH, int SW, int PH, int PW, int OH, int OW)
{
    const long long total = (long long)N * C * H * W;
    const long long step = (long long)blockDim.x * gridDim.x;
    for (long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x; index < total;
         index += step) {
        // index = ((n C + c) H + h) W + w
        const int image = (int)(index / ((long long)H * W));  // n C + c: < N C, an int
        const int pixel = (int)(index - (long long)image * H * W);
        const int w = pixel % W, h = pixel / W;
        const int c = image % C, n = image / C;
        int oh_first, oh_last, ow_first, ow_last;
        windows_containing(h, KH, SH, PH, OH, &oh_first, &oh_last);
        windows_containing(w, KW, SW, PW, OW, &ow_first, &ow_last);
        float sum = 0.0f;
        for (int oh = oh_first; oh <= oh_last; ++oh) {
            const int i = h + PH - oh * SH;                              // 0 <= i < KH
            for (int ow = ow_first; ow <= ow_last; ++ow) {
                const int j = w + PW - ow * SW;                          // 0 <= j < KW
                const long long row = ((long long)(c * KH + i) * KW + j) * N + n;
                sum += col[(row * OH + oh) * OW + ow];
            }
        }
        x[index] = sum;
    }
}
