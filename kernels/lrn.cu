// Local response normalization across channels, forward and backward
// (minialex/functions/lrn.py; Krizhevsky et al. 2012, section 3.3).
//
// Notation (as in lrn.py):
//   N, C         batch and channels;  HW = H W  the pixels of one channel plane
//   x, y, scale, gy, gx: (N, C, HW), contiguous
//   size         channels in a window;  before = size / 2,  after = (size - 1) / 2
//   window(c)    channels c - before .. c + after, clipped to [0, C - 1]
//
//   scale[c] = k + (alpha / size) sum over j in window(c) of x[j]^2       (per n and pixel)
//   y[c]     = x[c] scale[c]^(-beta)
//
// Backward (derived in lrn.py): with g = gy,
//   gx[j] = g[j] scale[j]^(-beta)
//           - (2 beta alpha / size) x[j] sum_{c : j in window(c)} g[c] x[c] scale[c]^(-beta-1)
// and g[c] x[c] scale[c]^(-beta-1) = g[c] y[c] / scale[c]: a division, not a second power,
// which is why backward takes y. j is in window(c) when j - after <= c <= j + before: the
// mirrored window (before and after swap; they differ for an even size).
//
// Versions
//   v1: one thread per (n, pixel), looping over the C channels; consecutive threads take
//       consecutive pixels, so every load and store of a channel plane is coalesced. Each
//       window sum is added up afresh from its `size` neighbours (AlexNet: 5), which come
//       from the cache after the first read. A running sum (add the channel entering the
//       window, subtract the one leaving) would save those cached reads, but subtracting a
//       large square from the sum loses the small ones beside it (float32 has 24 bits), so
//       the window sum would depend on the channels before it; v1 stays exact instead.
//       The op is memory-bound (AlexNet: x, y, scale of conv1 and conv2's outputs), so
//       there is no v2.
//
// Both loop over (n, pixel) with a grid stride, so any grid computes the whole output; the
// launch below gives one thread per (n, pixel).
//
// launch lrn_forward: block=(256,1,1) grid=(ceil(N*HW / 256),1,1)
// launch lrn_backward: block=(256,1,1) grid=(ceil(N*HW / 256),1,1)

extern "C" __global__ void lrn_forward(const float* __restrict__ x, float* __restrict__ y,
                                       float* __restrict__ scale, int N, int C, int HW,
                                       int size, float alpha, float beta, float k)
{
    const int before = size / 2, after = (size - 1) / 2;
    const float alpha_over_size = alpha / (float)size;
    const long long total = (long long)N * HW;
    const long long step = (long long)blockDim.x * gridDim.x;
    for (long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x; index < total;
         index += step) {
        const int n = (int)(index / HW), pixel = (int)(index - (long long)n * HW);
        const long long start = (long long)n * C * HW + pixel;    // (n, channel 0, pixel)
        for (int c = 0; c < C; ++c) {
            const int first = c - before > 0 ? c - before : 0;
            const int last = c + after < C - 1 ? c + after : C - 1;
            float sum_of_squares = 0.0f;
            for (int j = first; j <= last; ++j) {
                const float value = x[start + (long long)j * HW];
                sum_of_squares += value * value;
            }
            const float s = k + alpha_over_size * sum_of_squares;
            const long long at = start + (long long)c * HW;
            scale[at] = s;
            y[at] = x[at] * powf(s, -beta);
        }
    }
}

extern "C" __global__ void lrn_backward(const float* __restrict__ x, const float* __restrict__ y,
                                        const float* __restrict__ scale,
                                        const float* __restrict__ gy, float* __restrict__ gx,
                                        int N, int C, int HW, int size, float alpha, float beta,
                                        float k)
{
    (void)k;  // scale already holds it; the parameter keeps the two signatures alike
    const int before = size / 2, after = (size - 1) / 2;
    const float cross_factor = 2.0f * beta * alpha / (float)size;
    const long long total = (long long)N * HW;
    const long long step = (long long)blockDim.x * gridDim.x;
    for (long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x; index < total;
         index += step) {
        const int n = (int)(index / HW), pixel = (int)(index - (long long)n * HW);
        const long long start = (long long)n * C * HW + pixel;    // (n, channel 0, pixel)
        for (int j = 0; j < C; ++j) {
            // the outputs c whose window holds j: the mirrored window around j
            const int first = j - after > 0 ? j - after : 0;
            const int last = j + before < C - 1 ? j + before : C - 1;
            float cross_sum = 0.0f;
            for (int c = first; c <= last; ++c) {
                const long long at_c = start + (long long)c * HW;
                cross_sum += gy[at_c] * y[at_c] / scale[at_c];
            }
            const long long at = start + (long long)j * HW;
            gx[at] = gy[at] * powf(scale[at], -beta) - cross_factor * x[at] * cross_sum;
        }
    }
}
