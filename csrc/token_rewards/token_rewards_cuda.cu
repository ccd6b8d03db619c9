// Token rewards on CUDA: r = -beta * kl * m, plus the clipped score at each row's last valid
// token (last[b], computed by the caller), elementwise over flattened tokens.
#include "../cuda_common.cuh"
#include "../cuda_kernels.h"

namespace crs::cuda {
namespace {

template <typename T>
__global__ void rewards_kernel(const T* scores, const T* kl, const uint8_t* m, const int64_t* last, T* out,
                               int64_t n, int64_t T_, acc_t<T> nbeta, double lo, double hi) {
  using A = acc_t<T>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / T_, t = i - row * T_;
    A r = m[i] ? nbeta * ld(kl, i) : A(0);
    if (t == last[row]) {
      const double s = static_cast<double>(ld(scores, row));
      r += static_cast<A>(s < lo ? lo : (s > hi ? hi : s));
    }
    st(out, i, r);
  }
}

}  // namespace

void token_rewards(int dt, const void* scores, const void* kl, const uint8_t* mask, const int64_t* last, void* out,
                   int64_t B, int64_t T, double beta, double lo, double hi, void* stream) {
  const int64_t n = B * T;
  if (n == 0) return;
  CRS_CUDA_DISPATCH(dt, (rewards_kernel<scalar_t><<<blocks_for(n, 256), 256, 0, as_stream(stream)>>>(
                            static_cast<const scalar_t*>(scores), static_cast<const scalar_t*>(kl), mask, last,
                            static_cast<scalar_t*>(out), n, T, static_cast<acc_t<scalar_t>>(-beta), lo, hi)));
  check_launch("token_rewards");
}

}  // namespace crs::cuda
