// GAE on CUDA: one block per row walks time backwards in tiles of kThreads * kItems tokens. The
// recursion A_t = a_t * A_{t+1} + b_t is a composition of affine maps, so each tile is one block
// scan (warp shuffles, then warp totals) and the tile's result carries into the next. verl's
// masked tokens are the identity map (1, 0) and its "value of the next valid token" is a second
// affine scan, x_t = (1 - m_{t+1}) x_{t+1} + m_{t+1} v_{t+1}. No limit on T; rows on grid x.
#include "../cuda_common.cuh"
#include "../cuda_kernels.h"

namespace crs::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kItems = 8;
constexpr int kTile = kThreads * kItems;

template <typename A> struct Aff { A a, b; };

// First apply `first` (later in time), then `second`.
template <typename A> __device__ __forceinline__ Aff<A> then(Aff<A> first, Aff<A> second) {
  return {second.a * first.a, second.a * first.b + second.b};
}

// Exclusive scan of one map per thread in thread order; `total` gets the whole block's map.
template <typename A> __device__ Aff<A> block_exclusive(Aff<A> mine, Aff<A>* smem, Aff<A>& total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  Aff<A> inc = mine;
  for (int o = 1; o < 32; o <<= 1) {
    const A pa = __shfl_up_sync(0xffffffffu, inc.a, o), pb = __shfl_up_sync(0xffffffffu, inc.b, o);
    if (lane >= o) inc = then(Aff<A>{pa, pb}, inc);
  }
  const A ea = __shfl_up_sync(0xffffffffu, inc.a, 1), eb = __shfl_up_sync(0xffffffffu, inc.b, 1);
  const Aff<A> ex = lane == 0 ? Aff<A>{A(1), A(0)} : Aff<A>{ea, eb};
  if (lane == 31) smem[warp] = inc;
  __syncthreads();
  if (warp == 0) {
    Aff<A> w = lane < nwarps ? smem[lane] : Aff<A>{A(1), A(0)};
    for (int o = 1; o < 32; o <<= 1) {
      const A pa = __shfl_up_sync(0xffffffffu, w.a, o), pb = __shfl_up_sync(0xffffffffu, w.b, o);
      if (lane >= o) w = then(Aff<A>{pa, pb}, w);
    }
    __syncwarp();
    if (lane < nwarps) smem[lane] = w;
  }
  __syncthreads();
  const Aff<A> prefix = warp == 0 ? Aff<A>{A(1), A(0)} : smem[warp - 1];
  total = smem[nwarps - 1];
  __syncthreads();  // smem is reused by the next scan
  return then(prefix, ex);
}

template <typename T, int MODE>
__global__ void __launch_bounds__(kThreads) gae_kernel(const T* R, const T* Vv, const uint8_t* M, const int64_t* last,
                                                       acc_t<T>* adv, T* ret, int64_t T_, acc_t<T> gamma, acc_t<T> gl) {
  using A = acc_t<T>;
  __shared__ Aff<A> smem[32];
  const int64_t row = blockIdx.x;
  const int64_t base = row * T_;
  const int64_t lastv = last[row];
  A carry_a = 0, carry_x = 0;
  for (int64_t end = T_; end > 0; end -= kTile) {
    A v[kItems], nv[kItems], delta[kItems];
    bool on[kItems], ok[kItems];
    Aff<A> e[kItems];
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const int64_t t = end - 1 - (int64_t(threadIdx.x) * kItems + k);
      ok[k] = t >= 0;
      const bool ok1 = ok[k] && t + 1 < T_;
      on[k] = ok[k] && M[base + t] != 0;
      const bool on1 = ok1 && M[base + t + 1] != 0;
      A r = ok[k] ? ld(R, base + t) : A(0);
      v[k] = ok[k] ? ld(Vv, base + t) : A(0);
      const A v1 = ok1 ? ld(Vv, base + t + 1) : A(0);
      if constexpr (MODE == 0) {
        e[k] = on1 ? Aff<A>{A(0), v1} : Aff<A>{A(1), A(0)};
      } else if constexpr (MODE == 1) {
        if (t > lastv) v[k] = A(0);
        nv[k] = (t + 1 <= lastv) ? v1 : A(0);
      } else {
        r = on[k] ? r : A(0);
        v[k] = on[k] ? v[k] : A(0);
        nv[k] = on1 ? v1 : A(0);
      }
      delta[k] = r - v[k];
    }
    if constexpr (MODE == 0) {
      Aff<A> comp{A(1), A(0)};
#pragma unroll
      for (int k = 0; k < kItems; ++k) comp = then(comp, e[k]);
      Aff<A> total;
      const Aff<A> ex = block_exclusive(comp, smem, total);
      A x = ex.a * carry_x + ex.b;
#pragma unroll
      for (int k = 0; k < kItems; ++k) {
        x = e[k].a * x + e[k].b;
        nv[k] = x;
      }
      carry_x = total.a * carry_x + total.b;
    }
    Aff<A> comp{A(1), A(0)};
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      const A d = delta[k] + gamma * nv[k];
      const bool step = ok[k] && (MODE != 0 || on[k]);
      e[k] = step ? Aff<A>{gl, d} : Aff<A>{A(1), A(0)};
      comp = then(comp, e[k]);
    }
    Aff<A> total;
    const Aff<A> ex = block_exclusive(comp, smem, total);
    A a = ex.a * carry_a + ex.b;
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      a = e[k].a * a + e[k].b;
      const int64_t t = end - 1 - (int64_t(threadIdx.x) * kItems + k);
      if (ok[k]) {
        adv[base + t] = a;
        st(ret, base + t, a + v[k]);
      }
    }
    carry_a = total.a * carry_a + total.b;
  }
}

}  // namespace

void gae_scan(int dt, const void* rewards, const void* values, const uint8_t* mask, const int64_t* last, void* adv,
              void* ret, int64_t B, int64_t T, double gamma, double gamma_lam, int mode, void* stream) {
  if (B == 0 || T == 0) return;
  if (B > 2147483647LL) throw std::invalid_argument("crs_fast CUDA gae: more than 2^31 - 1 rows");
  CRS_CUDA_DISPATCH(dt, {
    using A = acc_t<scalar_t>;
    const auto* r = static_cast<const scalar_t*>(rewards);
    const auto* v = static_cast<const scalar_t*>(values);
    auto* a = static_cast<A*>(adv);
    auto* o = static_cast<scalar_t*>(ret);
    const dim3 grid(static_cast<unsigned>(B));
    cudaStream_t s = as_stream(stream);
    switch (mode) {
      case 0: gae_kernel<scalar_t, 0><<<grid, kThreads, 0, s>>>(r, v, mask, last, a, o, T, A(gamma), A(gamma_lam)); break;
      case 1: gae_kernel<scalar_t, 1><<<grid, kThreads, 0, s>>>(r, v, mask, last, a, o, T, A(gamma), A(gamma_lam)); break;
      case 2: gae_kernel<scalar_t, 2><<<grid, kThreads, 0, s>>>(r, v, mask, last, a, o, T, A(gamma), A(gamma_lam)); break;
      default: throw std::invalid_argument("crs_fast CUDA gae: mode must be 0 (verl), 1 (TRL) or 2 (OpenRLHF)");
    }
  });
  check_launch("gae_scan");
}

}  // namespace crs::cuda
