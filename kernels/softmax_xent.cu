// Fused softmax cross-entropy, forward and backward (minialex/functions/loss.py, CrossEntropy;
// Krizhevsky et al. 2012, section 4: the network minimizes the cross-entropy of a softmax).
//
// Notation (as in loss.py):
//   N            batch size (rows);   K  classes (1000 for ImageNet)
//   logits       (N, K) unnormalized scores;   labels (N,) class indices (int64)
//   probs        (N, K) softmax of each row;   losses (N,) the loss of each row
//
//   m[n]         = max_k logits[n, k]                       (the shift: every exponent <= 0)
//   S[n]         = sum_k exp(logits[n, k] - m[n])           (in [1, K]: its log is finite)
//   probs[n, k]  = exp(logits[n, k] - m[n]) / S[n]
//   losses[n]    = -log probs[n, label] = log S[n] - (logits[n, label] - m[n])
//   grad_logits[n, k] = (probs[n, k] - [k = label[n]]) gy[0] inverse_batch
//
// The mean over the batch is the caller's: loss = mean(losses), and the gradient is scaled by
// gy / N, with gy the loss's incoming gradient (1 for loss.backward()). gy is read on the
// device, through a pointer: reading it on the host (float(gy)) would wait for every kernel
// queued before it, a host sync in the middle of each training step.
// A label outside [0, K) (checked in Python first) names a class of probability 0: its loss
// is -log 0 = +inf and its one-hot row is all zeros; nothing is read out of bounds.
// (Written -logf(0.0f): INFINITY is a math.h macro, and NVRTC, without host headers, may
// not define it.)
//
// Versions
//   v1 (forward): one block per row. The block's threads stride over the row's K entries, each
//       keeping its own max, then its own sum of exponentials; a tree reduction in shared
//       memory (halving the active threads each step, __syncthreads() between steps) combines
//       the block's values into the row's max m, then its sum S. Last, every thread scales
//       the exponentials it wrote, and thread 0 writes the row's loss. Reads each logit twice
//       and writes each probability twice (the second time from the cache).
//   v1 (backward): one block per row, every thread writing the entries it strides over.
//   A 1000-way softmax over a batch of 128 is 0.5 MB: far from the GEMMs' cost, so no v2.
//
// Both loop over rows with a grid stride, so any grid computes every row. Forward needs at
// most XENT_THREADS threads per block (any count up to it; more and it writes nothing);
// backward takes any block.
//
// launch softmax_xent_forward: block=(256,1,1) grid=(N,1,1)
// launch softmax_xent_backward: block=(256,1,1) grid=(N,1,1)

constexpr int XENT_THREADS = 256;   // the size of the reductions' shared arrays

// The max (or the sum) of `value` over the block's threads, returned to every thread.
// partial holds blockDim.x values; each step folds its upper half onto the lower half
// (the middle one waits a step when the count is odd), until one value is left.
__device__ float block_reduce(float* partial, float value, bool take_max)
{
    const int t = threadIdx.x;
    partial[t] = value;
    __syncthreads();
    for (int count = blockDim.x; count > 1;) {
        const int half = (count + 1) / 2;
        if (t + half < count) {
            partial[t] = take_max ? fmaxf(partial[t], partial[t + half])
                                  : partial[t] + partial[t + half];
        }
        __syncthreads();       // this step's values are all written before the next reads
        count = half;
    }
    const float result = partial[0];
    __syncthreads();           // every thread has read partial[0] before it is written again
    return result;
}

extern "C" __global__ void softmax_xent_forward(const float* __restrict__ logits,
                                                const long long* __restrict__ labels,
                                                float* __restrict__ probs,
                                                float* __restrict__ losses, int N, int K)
{
    __shared__ float partial[XENT_THREADS];
    if (blockDim.x > XENT_THREADS || K < 1) return;  // the same for the whole block: no deadlock
    for (int row = blockIdx.x; row < N; row += gridDim.x) {
        const float* x = logits + (long long)row * K;
        float* p = probs + (long long)row * K;

        float thread_max = x[0];   // a value of the row: threads with no entries stay neutral
        for (int k = threadIdx.x; k < K; k += blockDim.x) thread_max = fmaxf(thread_max, x[k]);
        const float row_max = block_reduce(partial, thread_max, true);

        float thread_sum = 0.0f;
        for (int k = threadIdx.x; k < K; k += blockDim.x) {
            const float e = expf(x[k] - row_max);
            p[k] = e;
            thread_sum += e;
        }
        const float total = block_reduce(partial, thread_sum, false);

        const float inverse = 1.0f / total;
        for (int k = threadIdx.x; k < K; k += blockDim.x) p[k] *= inverse;  // its own entries
        if (threadIdx.x == 0) {
            const long long label = labels[row];
            const bool known = 0 <= label && label < K;
            losses[row] = known ? logf(total) - (x[label] - row_max) : -logf(0.0f);  // +inf
        }
    }
}

extern "C" __global__ void softmax_xent_backward(const float* __restrict__ probs,
                                                 const long long* __restrict__ labels,
                                                 const float* __restrict__ gy,
                                                 float inverse_batch,
                                                 float* __restrict__ grad_logits, int N, int K)
{
    const float grad_scale = gy[0] * inverse_batch;
    for (int row = blockIdx.x; row < N; row += gridDim.x) {
        const long long label = labels[row];
        for (int k = threadIdx.x; k < K; k += blockDim.x) {
            const long long at = (long long)row * K + k;
            const float target = k == label ? 1.0f : 0.0f;   // the one-hot row
            grad_logits[at] = (probs[at] - target) * grad_scale;
        }
    }
}
