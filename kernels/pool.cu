// Max pooling, forward and backward (minialex/functions/pool.py, MaxPool2d).
//
// Notation (as in pool.py and conv.py):
//   N, C, H, W   batch, channels, input height and width        x, gx: (N, C, H, W)
//   KH, KW       window height and width;  SH, SW  strides;  PH, PW  padding (-inf)
//   OH, OW       output height and width (floor or ceil mode: the caller computes them, and
//                every window holds at least one input pixel)   y, gy, argmax: (N, C, OH, OW)
//
//   y[n, c, oh, ow] = max over di < KH, dj < KW of xpad[n, c, oh SH + di, ow SW + dj]
//   argmax[n, c, oh, ow] = di KW + dj of the FIRST offset that holds the max (as pool.py and
//                          PyTorch: ties go to the first; uint8, so KH KW <= 256)
//   gx[n, c, h, w] = sum of gy[n, c, oh, ow] over the windows whose max sits at (h, w)
//
// where xpad is x padded with -inf: PH, PW rows/columns before, and as many after as the last
// (ceil mode) window needs. -inf is never the max, so the padding is never stored or read:
// a window's offsets outside x are skipped. (Each window holds at least one pixel of x: it
// starts before row H, and at -PH >= -KH/2 at the earliest.) No INFINITY is needed either,
// which is as well: it is a math.h macro, and NVRTC, without host headers, may not define it.
// A NaN in a window becomes its max (PyTorch propagates NaN too), so a diverged network shows.
//
// Versions
//   v1 (forward): one thread per output (n, c, oh, ow), scanning its KH x KW window.
//   v1 (backward): one thread per input pixel (n, c, h, w), GATHERING from the windows that
//       contain it (oh from ceil((h + PH - KH + 1) / SH) to floor((h + PH) / SH), likewise ow)
//       the gy of those whose argmax points back at it. Overlapping windows (AlexNet: 3x3,
//       stride 2) send up to four gradients to one pixel; gathering adds them in one thread,
//       with no atomics and no dependence on the order threads run in.
//   Both are memory-bound and read each input about once (windows overlap in the cache), so
//   there is no v2.
//
// Both loop with a grid stride, so any grid computes the whole output; the launch below gives
// one thread per element.
//
// launch maxpool_forward: block=(256,1,1) grid=(ceil(N*C*OH*OW / 256),1,1)
// launch maxpool_backward: block=(256,1,1) grid=(ceil(N*C*H*W / 256),1,1)

extern "C" __global__ void maxpool_forward(const float* __restrict__ x, float* __restrict__ y,
                                           unsigned char* __restrict__ argmax,
                                           int N, int C, int H, int W, int KH, int KW,
                                           int SH, int SW, int PH, int PW, int OH, int OW)
{
    const long long total = (long long)N * C * OH * OW;
    const long long step = (long long)blockDim.x * gridDim.x;
    for (long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x; index < total;
         index += step) {
        // index = (n C + c) OH OW + oh OW + ow
        const int image = (int)(index / ((long long)OH * OW));   // n C + c
        const int position = (int)(index - (long long)image * OH * OW);
        const int ow = position % OW, oh = position / OW;
        const float* plane = x + (long long)image * H * W;       // x[n, c]
        float best = 0.0f;
        int best_offset = -1;                                    // none seen yet
        for (int di = 0; di < KH; ++di) {
            const int h = oh * SH - PH + di;
            if (h < 0 || h >= H) continue;                       // a padding row
            for (int dj = 0; dj < KW; ++dj) {
                const int w = ow * SW - PW + dj;
                if (w < 0 || w >= W) continue;                   // a padding column
                const float value = plane[(long long)h * W + w];
                // strictly greater: a tie keeps the first offset; value != value: NaN wins
                if (best_offset < 0 || value > best || value != value) {
                    best = value;
                    best_offset = di * KW + dj;
                }
            }
        }
        if (best_offset < 0) best_offset = 0;                    // (a window of padding only)
        y[index] = best;
        argmax[index] = (unsigned char)best_offset;
    }
}

// The first window index o whose rows o S - P .. o S - P + K - 1 contain pixel p, and the
// last: o from ceil((p + P - K + 1) / S) to floor((p + P) / S), clipped to [0, O - 1]
// (first > last when no window contains p).
__device__ __forceinline__ void windows_containing(int p, int K, int S, int P, int O,
                                                   int* first, int* last)
{
    const int low = p + P - K + 1;
    *first = low <= 0 ? 0 : (low + S - 1) / S;
    const int high = (p + P) / S;
    *last = high < O - 1 ? high : O - 1;
}

extern "C" __global__ void maxpool_backward(const float* __restrict__ gy,
                                            const unsigned char* __restrict__ argmax,
                                            float* __restrict__ gx,
                                            int N, int C, int H, int W, int KH, int KW,
                                            int SH, int SW, int PH, int PW, int OH, int OW)
{
    const long long total = (long long)N * C * H * W;
    const long long step = (long long)blockDim.x * gridDim.x;
    for (long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x; index < total;
         index += step) {
        // index = (n C + c) H W + h W + w
        const int image = (int)(index / ((long long)H * W));     // n C + c
        const int pixel = (int)(index - (long long)image * H * W);
        const int w = pixel % W, h = pixel / W;
        const long long plane = (long long)image * OH * OW;      // gy[n, c], argmax[n, c]
        int oh_first, oh_last, ow_first, ow_last;
        windows_containing(h, KH, SH, PH, OH, &oh_first, &oh_last);
        windows_containing(w, KW, SW, PW, OW, &ow_first, &ow_last);
        float sum = 0.0f;
        for (int oh = oh_first; oh <= oh_last; ++oh) {
            const int di = h + PH - oh * SH;                     // this pixel's offset in
            for (int ow = ow_first; ow <= ow_last; ++ow) {       // window (oh, ow)
                const int dj = w + PW - ow * SW;
                const long long window = plane + (long long)oh * OW + ow;
                if (argmax[window] == di * KW + dj) sum += gy[window];
            }
        }
        gx[index] = sum;
    }
}
