// Elementwise kernels of the training step: ReLU forward and backward (minialex/functions/
// activation.py), dropout with a counter-based random draw (functions/dropout.py), and the SGD
// update of every parameter in one launch (minialex/optim.py).
//
// Each is one pass over memory with a grid-stride loop (`for (i = first; i < n; i += stride)`),
// so any grid computes every element: cuda.py launches a grid sized to the data, capped at a
// few blocks per SM, and one launch covers a whole tensor (no 1 M-element chunks: those exist
// for the CPU's caches, minialex/fast/elementwise.py; on the GPU they only cost launches).
//
// relu_forward:   y = max(x, 0) (NaN passes, as NumPy's maximum), positive = [x > 0] (uint8)
// relu_backward:  gx = gy * positive                 (dy/dx = 1 where x > 0, else 0)
//
// dropout_forward: mask = [u >= p] / (1 - p), y = x mask, with u in [0, 1) a function of
//   (seed, offset + i): a counter-based generator (Salmon et al., "Parallel random numbers:
//   as easy as 1, 2, 3", SC 2011: a random number is a hash of a counter). Its whole state
//   is two integers, (seed, offset); the caller adds n to offset after each call, so a
//   checkpoint that stores them resumes the same masks. The hash is SplitMix64's finalizer
//   (Steele, Lea, Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014);
//   u = the top 24 bits / 2^24, exact in float32.
//
// sgd_multi_tensor: the update of optim.SGD for every parameter at once. `table` holds, per
//   parameter, four int64: the address of w, of grad, of u (0 without momentum) and the
//   element count. blockIdx.y picks the parameter, blockIdx.x and threadIdx.x stride over it:
//       g = grad + weight_decay w;   u = momentum u + g (with momentum), g = u;   w -= lr g
//   in float32, the same operations in the same order as SGD.update.

extern "C" __global__ void relu_forward(const float* __restrict__ x, float* __restrict__ y,
                                        unsigned char* __restrict__ positive, long long n)
{
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float value = x[i];
        const bool passes = value > 0.0f;
        positive[i] = passes;
        y[i] = (passes || value != value) ? value : 0.0f;
    }
}

extern "C" __global__ void relu_backward(const float* __restrict__ gy,
                                         const unsigned char* __restrict__ positive,
                                         float* __restrict__ gx, long long n)
{
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        gx[i] = positive[i] ? gy[i] : 0.0f * gy[i];  // 0 * NaN stays NaN, as gy * mask
    }
}

__device__ float uniform_of(unsigned long long seed, unsigned long long counter)
{
    unsigned long long z = seed + (counter + 1ULL) * 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    return (float)(z >> 40) * (1.0f / 16777216.0f);  // 24 bits: every value exact, u < 1
}

extern "C" __global__ void dropout_forward(const float* __restrict__ x, float* __restrict__ y,
                                           float* __restrict__ mask, long long n,
                                           long long seed, long long offset, float p,
                                           float scale)
{
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const float u = uniform_of((unsigned long long)seed, (unsigned long long)(offset + i));
        const float m = u >= p ? scale : 0.0f;
        mask[i] = m;
        y[i] = x[i] * m;
    }
}

extern "C" __global__ void sgd_multi_tensor(const long long* __restrict__ table, int count,
                                            float lr, float momentum, float weight_decay)
{
    const int tensor = blockIdx.y;
    if (tensor >= count) return;
    float* w = (float*)table[4 * tensor];
    const float* grad = (const float*)table[4 * tensor + 1];
    float* u = (float*)table[4 * tensor + 2];
    const long long n = table[4 * tensor + 3];
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        float g = grad[i];
        if (weight_decay != 0.0f) g = g + weight_decay * w[i];
        if (u) {
            const float velocity = u[i] * momentum + g;
            u[i] = velocity;
            g = velocity;
        }
        w[i] = w[i] - lr * g;
    }
}
