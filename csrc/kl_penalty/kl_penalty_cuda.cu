// KL penalty estimators on CUDA, elementwise over flattened tokens (grid-stride, int64 offsets).
#include "../cuda_common.cuh"
#include "../cuda_kernels.h"

namespace crs::cuda {
namespace {

template <int KIND, bool STRAIGHT, typename A>
__device__ __forceinline__ void kl_point(A d, A clamp, A& v, A& g) {
  if constexpr (KIND == 0) {
    v = d; g = A(1);
  } else if constexpr (KIND == 1) {
    v = d < A(0) ? -d : d; g = d > A(0) ? A(1) : (d < A(0) ? A(-1) : A(0));
  } else if constexpr (KIND == 2) {
    v = A(0.5) * d * d; g = d;
  } else {  // k3 = exp(-d) + d - 1 with verl's clamps: argument to +-20, value to +-10
    const A x = -d;
    const A xc = x < A(-20) ? A(-20) : (x > A(20) ? A(20) : x);
    const A e = exp(xc);
    const A k = e - xc - A(1);
    v = k < A(-10) ? A(-10) : (k > A(10) ? A(10) : k);
    const bool inside = x >= A(-20) && x <= A(20) && k >= A(-10) && k <= A(10);
    g = inside ? A(1) - e : A(0);
  }
  if (!(v >= -clamp && v <= clamp) && clamp != A(INFINITY)) g = g * A(0);  // as torch: 0 * inf is NaN
  v = v < -clamp ? -clamp : (v > clamp ? clamp : v);
  if constexpr (STRAIGHT) g = d;
}

template <typename T, int KIND, bool STRAIGHT>
__global__ void kl_fwd_kernel(const T* lp, const T* ref, T* out, int64_t n, acc_t<T> clamp) {
  using A = acc_t<T>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    A v, g;
    kl_point<KIND, STRAIGHT>(ld(lp, i) - ld(ref, i), clamp, v, g);
    st(out, i, v);
  }
}

template <typename T, int KIND, bool STRAIGHT>
__global__ void kl_bwd_kernel(const T* grad, const T* lp, const T* ref, T* out, int64_t n, acc_t<T> clamp) {
  using A = acc_t<T>;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    A v, g;
    kl_point<KIND, STRAIGHT>(ld(lp, i) - ld(ref, i), clamp, v, g);
    st(out, i, ld(grad, i) * g);
  }
}

template <typename T, bool BWD, int KIND, bool STRAIGHT>
void launch(const void* grad, const void* lp, const void* ref, void* out, int64_t n, double clamp, cudaStream_t s) {
  using A = acc_t<T>;
  const A c = clamp < 0 ? A(INFINITY) : A(clamp);
  if constexpr (BWD) {
    kl_bwd_kernel<T, KIND, STRAIGHT><<<blocks_for(n, 256), 256, 0, s>>>(
        static_cast<const T*>(grad), static_cast<const T*>(lp), static_cast<const T*>(ref), static_cast<T*>(out), n, c);
  } else {
    kl_fwd_kernel<T, KIND, STRAIGHT><<<blocks_for(n, 256), 256, 0, s>>>(
        static_cast<const T*>(lp), static_cast<const T*>(ref), static_cast<T*>(out), n, c);
  }
}

template <typename T, bool BWD>
void dispatch(const void* grad, const void* lp, const void* ref, void* out, int64_t n, int kind, bool straight,
              double clamp, cudaStream_t s) {
#define CRS_KL_CASE(K)                                                          \
  case K:                                                                       \
    if (straight) launch<T, BWD, K, true>(grad, lp, ref, out, n, clamp, s);     \
    else launch<T, BWD, K, false>(grad, lp, ref, out, n, clamp, s);             \
    break;
  switch (kind) {
    CRS_KL_CASE(0)
    CRS_KL_CASE(1)
    CRS_KL_CASE(2)
    CRS_KL_CASE(3)
    default: throw std::invalid_argument("crs_fast CUDA kl: kind must be 0..3");
  }
#undef CRS_KL_CASE
}

}  // namespace

void kl_forward(int dt, const void* lp, const void* ref, void* out, int64_t n, int kind, bool straight,
                double clamp, void* stream) {
  if (n == 0) return;
  CRS_CUDA_DISPATCH(dt, (dispatch<scalar_t, false>(nullptr, lp, ref, out, n, kind, straight, clamp, as_stream(stream))));
  check_launch("kl_forward");
}

void kl_backward(int dt, const void* grad, const void* lp, const void* ref, void* grad_lp, int64_t n, int kind,
                 bool straight, double clamp, void* stream) {
  if (n == 0) return;
  CRS_CUDA_DISPATCH(dt, (dispatch<scalar_t, true>(grad, lp, ref, grad_lp, n, kind, straight, clamp, as_stream(stream))));
  check_launch("kl_backward");
}

}  // namespace crs::cuda
