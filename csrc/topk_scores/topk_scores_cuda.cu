// Top-k merge on CUDA: one block per query row folds a float32 score block (items v0..v0+C,
// computed by a library GEMM) into the row's running top-k. Score and item travel as one 64-bit
// key, (order-preserving float bits) << 32 | (2^32 - 1 - item), so ranking by key is ranking by
// score, ties by the lower item. Only keys above the current k-th survive a filter into shared
// memory, which is sorted (bitonic) in sub-tiles of kCap - k columns: most columns of later
// blocks cost one load and one compare. Extra memory: none beyond [B, k].
#include "../cuda_common.cuh"
#include "../cuda_kernels.h"

namespace crs::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kCap = 2048;
static_assert(kCap >= 2 * kMaxK, "the sort buffer holds the top-k and a tile at least as large");

__device__ __forceinline__ uint64_t encode(float s, int64_t item) {
  const uint32_t bits = __float_as_uint(s);
  const uint32_t ordered = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
  return (uint64_t(ordered) << 32) | uint64_t(0xFFFFFFFFu - uint32_t(item));
}

__device__ __forceinline__ void decode(uint64_t key, float& s, int64_t& item) {
  if (key == 0) {
    s = -INFINITY;
    item = -1;
    return;
  }
  const uint32_t ordered = uint32_t(key >> 32);
  const uint32_t bits = (ordered & 0x80000000u) ? (ordered & 0x7FFFFFFFu) : ~ordered;
  s = __uint_as_float(bits);
  item = int64_t(0xFFFFFFFFu - uint32_t(key & 0xFFFFFFFFu));
}

__device__ bool excluded(const int64_t* row, int64_t m, int64_t item) {
  int64_t lo = 0, hi = m;  // row sorted ascending
  while (lo < hi) {
    const int64_t mid = (lo + hi) >> 1;
    if (row[mid] < item) lo = mid + 1;
    else hi = mid;
  }
  return lo < m && row[lo] == item;
}

__device__ void sort_desc(uint64_t* keys, int n) {
  for (int size = 2; size <= n; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const int j = i ^ stride;
        if (j > i) {
          const uint64_t a = keys[i], b = keys[j];
          const bool desc = (i & size) == 0;
          if (desc ? a < b : a > b) {
            keys[i] = b;
            keys[j] = a;
          }
        }
      }
      __syncthreads();
    }
  }
}

__global__ void __launch_bounds__(kThreads) merge_kernel(const float* S, int64_t lds, const float* bias,
                                                         const int64_t* excl, int64_t m, float* vals, int64_t* idx,
                                                         int64_t C, int64_t v0, int k) {
  __shared__ uint64_t keys[kCap];
  __shared__ int count;
  const int64_t row = blockIdx.x;
  for (int j = threadIdx.x; j < k; j += blockDim.x) {
    const int64_t it = idx[row * k + j];
    keys[j] = it < 0 ? 0 : encode(vals[row * k + j], it);
  }
  __syncthreads();
  uint64_t thr = keys[k - 1];
  const int tile = kCap - k;
  const float* s = S + row * lds;
  const int64_t* ex = excl == nullptr ? nullptr : excl + row * m;
  for (int64_t c0 = 0; c0 < C; c0 += tile) {
    if (threadIdx.x == 0) count = k;
    __syncthreads();
    const int64_t c1 = c0 + tile < C ? c0 + tile : C;
    for (int64_t c = c0 + threadIdx.x; c < c1; c += blockDim.x) {
      float x = s[c];
      const int64_t item = v0 + c;
      if (bias != nullptr) x += bias[item];
      if (x != x) continue;  // NaN never ranks
      const uint64_t key = encode(x, item);
      if (key <= thr) continue;
      if (ex != nullptr && excluded(ex, m, item)) continue;
      keys[atomicAdd(&count, 1)] = key;
    }
    __syncthreads();
    const int n = count;
    if (n == k) continue;  // nothing beat the current k-th (uniform across the block)
    int p = 1;
    while (p < n) p <<= 1;
    for (int j = n + threadIdx.x; j < p; j += blockDim.x) keys[j] = 0;
    __syncthreads();
    sort_desc(keys, p);
    thr = keys[k - 1];
    __syncthreads();
  }
  for (int j = threadIdx.x; j < k; j += blockDim.x) {
    float v;
    int64_t it;
    decode(keys[j], v, it);
    vals[row * k + j] = v;
    idx[row * k + j] = it;
  }
}

}  // namespace

void topk_block_merge(const float* s, int64_t lds, const float* bias, const int64_t* excl, int64_t m, float* vals,
                      int64_t* idx, int64_t B, int64_t C, int64_t v0, int64_t k, void* stream) {
  if (B == 0 || C == 0) return;
  if (k < 1 || k > kMaxK) throw std::invalid_argument("crs_fast CUDA topk: k must be in [1, 1024]");
  if (v0 + C > 0xFFFFFFFFLL) throw std::invalid_argument("crs_fast CUDA topk: at most 2^32 - 1 items");
  if (B > 2147483647LL) throw std::invalid_argument("crs_fast CUDA topk: more than 2^31 - 1 rows");
  merge_kernel<<<unsigned(B), kThreads, 0, as_stream(stream)>>>(s, lds, bias, m > 0 ? excl : nullptr, m, vals, idx, C,
                                                                v0, int(k));
  check_launch("topk_block_merge");
}

}  // namespace crs::cuda
