// PPO clipped policy and value losses on CUDA. Forward: one block per row reduces the row's
// (loss, clip, lower clip, kl, tokens) sums into double [B, 5]; the caller aggregates rows
// (token-mean, seq-mean-*) in float64. Backward: elementwise, out = w[row] * dL/dx on masked-in
// tokens. Rows are grid dimension x, so any T runs.
#include "../cuda_common.cuh"
#include "../cuda_kernels.h"

namespace crs::cuda {
namespace {


template <typename A> struct PointT { A loss, grad, clip, lower; };

template <typename A> __device__ __forceinline__ PointT<A> policy_point(A lp, A old, A a, A lo, A hi, A dual) {
  const A d = lp - old;
  const A dc = d < A(-20) ? A(-20) : (d > A(20) ? A(20) : d);
  const A r = exp(dc);
  const A dr = (d < A(-20) || d > A(20)) ? A(0) : r;  // NaN keeps r (NaN)
  const A l1 = -a * r;
  const A rc = r < A(1) - lo ? A(1) - lo : (r > A(1) + hi ? A(1) + hi : r);
  const A l2 = -a * rc;
  const bool first = !(l1 < l2);  // a NaN term takes this branch: loss and gradient stay NaN
  const A c1 = first ? l1 : l2;
  A g = first ? -a * dr : A(0);
  const A l3 = -dual * a;
  const bool lower = dual > A(0) && a < A(0) && c1 > l3;
  return {lower ? l3 : c1, lower ? A(0) : g, l2 > l1 ? A(1) : A(0), lower ? A(1) : A(0)};
}

template <typename A> __device__ __forceinline__ PointT<A> value_point(A v, A old, A ret, A eps) {
  const A d1 = v - ret;
  // torch.max(torch.min(v, old + eps), old - eps): NaN in v or old propagates
  const A hi = old + eps, lo = old - eps;
  A vc = v < hi ? v : (hi <= v ? hi : v + hi);
  vc = vc > lo ? vc : (lo >= vc ? lo : vc + lo);
  if (eps == A(INFINITY)) vc = v;  // unclipped: old is not read
  const A d2 = vc - ret;
  const A l1 = d1 * d1, l2 = d2 * d2;
  // torch.maximum(l1, l2): NaN if either is (a NaN old value); the gradient then NaN too
  const A loss = l1 > l2 ? l1 : (l2 >= l1 ? l2 : l1 + l2);
  const A g = l1 < l2 ? A(0) : A(2) * d1;
  return {loss, l2 != l2 ? l2 : g, l2 > l1 ? A(1) : A(0), A(0)};
}

template <typename T, bool POLICY>
__global__ void rows_fwd(const T* X, const T* Y, const T* Z, const uint8_t* M, double* parts, int64_t T_,
                         acc_t<T> p0, acc_t<T> p1, acc_t<T> p2) {
  using A = acc_t<T>;
  __shared__ A scratch[32];
  const int64_t base = int64_t(blockIdx.x) * T_;
  A loss = 0, clip = 0, lower = 0, kl = 0, n = 0;
  for (int64_t t = threadIdx.x; t < T_; t += blockDim.x) {
    const int64_t i = base + t;
    if (!M[i]) continue;
    const A x = ld(X, i), y = ld(Y, i), z = ld(Z, i);
    PointT<A> p;
    if constexpr (POLICY) {
      p = policy_point(x, y, z, p0, p1, p2);
      kl += y - x;
    } else {
      p = value_point(x, y, z, p0);
    }
    loss += p.loss;
    clip += p.clip;
    lower += p.lower;
    n += A(1);
  }
  double* out = parts + int64_t(blockIdx.x) * 5;
  const A sums[5] = {block_sum(loss, scratch), block_sum(clip, scratch), block_sum(lower, scratch),
                     block_sum(kl, scratch), block_sum(n, scratch)};
  if (threadIdx.x == 0) {
    for (int j = 0; j < 5; ++j) out[j] = static_cast<double>(sums[j]);
  }
}

template <typename T, bool POLICY>
__global__ void rows_bwd(const T* X, const T* Y, const T* Z, const uint8_t* M, const float* w, T* out, int64_t n,
                         int64_t T_, acc_t<T> p0, acc_t<T> p1, acc_t<T> p2) {
  using A = acc_t<T>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    A g = 0;
    if (M[i]) {
      const A x = ld(X, i), y = ld(Y, i), z = ld(Z, i);
      const PointT<A> p = POLICY ? policy_point(x, y, z, p0, p1, p2) : value_point(x, y, z, p0);
      g = A(w[i / T_]) * p.grad;
    }
    st(out, i, g);
  }
}

}  // namespace

void loss_rows_forward(int dt, bool policy, const void* x, const void* y, const void* z, const uint8_t* mask,
                       double* parts, int64_t B, int64_t T, double p0, double p1, double p2, void* stream) {
  if (B == 0) return;
  if (B > 2147483647LL) throw std::invalid_argument("crs_fast CUDA ppo loss: more than 2^31 - 1 rows");
  CRS_CUDA_DISPATCH(dt, {
    using A = acc_t<scalar_t>;
    const auto* xx = static_cast<const scalar_t*>(x);
    const auto* yy = static_cast<const scalar_t*>(y);
    const auto* zz = static_cast<const scalar_t*>(z);
    cudaStream_t s = as_stream(stream);
    if (policy) rows_fwd<scalar_t, true><<<unsigned(B), 256, 0, s>>>(xx, yy, zz, mask, parts, T, A(p0), A(p1), A(p2));
    else rows_fwd<scalar_t, false><<<unsigned(B), 256, 0, s>>>(xx, yy, zz, mask, parts, T, A(p0), A(p1), A(p2));
  });
  check_launch("loss_rows_forward");
}

void loss_rows_backward(int dt, bool policy, const void* x, const void* y, const void* z, const uint8_t* mask,
                        const float* w, void* out, int64_t B, int64_t T, double p0, double p1, double p2,
                        void* stream) {
  const int64_t n = B * T;
  if (n == 0) return;
  CRS_CUDA_DISPATCH(dt, {
    using A = acc_t<scalar_t>;
    const auto* xx = static_cast<const scalar_t*>(x);
    const auto* yy = static_cast<const scalar_t*>(y);
    const auto* zz = static_cast<const scalar_t*>(z);
    auto* o = static_cast<scalar_t*>(out);
    cudaStream_t s = as_stream(stream);
    const unsigned g = blocks_for(n, 256);
    if (policy) rows_bwd<scalar_t, true><<<g, 256, 0, s>>>(xx, yy, zz, mask, w, o, n, T, A(p0), A(p1), A(p2));
    else rows_bwd<scalar_t, false><<<g, 256, 0, s>>>(xx, yy, zz, mask, w, o, n, T, A(p0), A(p1), A(p2));
  });
  check_launch("loss_rows_backward");
}

}  // namespace crs::cuda
