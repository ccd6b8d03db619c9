// Token log-probs and entropy on CUDA: one block per row; each thread keeps an online-softmax
// state (max m, sum s of exp(x - m), w = sum exp(x - m) * (x - m)) over its strided columns,
// and the states are merged across the block. No [N, V] buffer besides the gradient; int64
// offsets (N * V beyond 2^31); rows on grid x.
#include "../cuda_common.cuh"
#include "../cuda_kernels.h"

namespace crs::cuda {
namespace {

constexpr int kThreads = 256;

template <typename A> struct Soft { A m, s, w; };

template <typename A> __device__ __forceinline__ Soft<A> merge(Soft<A> x, Soft<A> y) {
  // A state that saw no finite logit holds s = w = 0, or NaN after a NaN logit: adding keeps it.
  if (x.m == -INFINITY) return {y.m, y.s + x.s, y.w + x.w};
  if (y.m == -INFINITY) return {x.m, x.s + y.s, x.w + y.w};
  const A M = x.m > y.m ? x.m : y.m;
  const A dx = x.m - M, dy = y.m - M;
  const A ex = exp(dx), ey = exp(dy);
  return {M, x.s * ex + y.s * ey, ex * (x.w + dx * x.s) + ey * (y.w + dy * y.s)};
}

template <typename A> __device__ Soft<A> block_merge(Soft<A> v, Soft<A>* smem) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  for (int o = 16; o > 0; o >>= 1) {
    const Soft<A> other{__shfl_down_sync(0xffffffffu, v.m, o), __shfl_down_sync(0xffffffffu, v.s, o),
                        __shfl_down_sync(0xffffffffu, v.w, o)};
    v = merge(v, other);
  }
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < nwarps ? smem[lane] : Soft<A>{A(-INFINITY), A(0), A(0)};
    for (int o = 16; o > 0; o >>= 1) {
      const Soft<A> other{__shfl_down_sync(0xffffffffu, v.m, o), __shfl_down_sync(0xffffffffu, v.s, o),
                          __shfl_down_sync(0xffffffffu, v.w, o)};
      v = merge(v, other);
    }
    if (lane == 0) smem[0] = v;
  }
  __syncthreads();
  return smem[0];
}

template <typename T>
__global__ void __launch_bounds__(kThreads) fwd_kernel(const T* Z, const int64_t* Y, acc_t<T>* lp, acc_t<T>* ent,
                                                       acc_t<T>* lse, int64_t V, acc_t<T> inv_tau, int64_t ignore) {
  using A = acc_t<T>;
  __shared__ Soft<A> smem[32];
  const int64_t row = blockIdx.x;
  const T* z = Z + row * V;
  Soft<A> st_{A(-INFINITY), A(0), A(0)};
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
    const A x = ld(z, v) * inv_tau;
    if (x == A(-INFINITY)) continue;
    if (x > st_.m) {
      if (st_.m == A(-INFINITY)) {  // s and w are 0, or NaN after a NaN logit: keep the NaN
        st_.s *= A(0);
        st_.w *= A(0);
      } else {
        const A d = st_.m - x, sc = exp(d);
        st_.w = sc * (st_.w + d * st_.s);
        st_.s *= sc;
      }
      st_.m = x;
    }
    const A xm = x - st_.m, e = exp(xm);
    st_.s += e;
    st_.w += e == A(0) ? A(0) : e * xm;
  }
  const Soft<A> all = block_merge(st_, smem);
  if (threadIdx.x == 0) {
    const int64_t y = Y[row];
    const bool keep = y != ignore;
    const A log_s = log(all.s);
    const A zy = keep ? ld(z, y) * inv_tau : A(0);
    const A l = zy - all.m - log_s;
    A h = log_s - all.w / all.s;
    const A hmax = log(A(V));
    h = h < A(0) ? A(0) : (h > hmax ? hmax : h);
    lp[row] = keep ? (l < A(0) ? l : A(0)) : A(0);
    ent[row] = keep ? h : A(0);
    lse[row] = keep ? all.m + log_s : A(0);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) bwd_kernel(const T* Z, const int64_t* Y, const acc_t<T>* glp,
                                                       const acc_t<T>* gent, const acc_t<T>* lse, const acc_t<T>* ent,
                                                       T* out, int64_t V, acc_t<T> inv_tau, int64_t ignore) {
  using A = acc_t<T>;
  const int64_t row = blockIdx.x;
  const int64_t y = Y[row];
  const bool keep = y != ignore;
  const A gl = keep ? glp[row] : A(0);
  const A ge = (keep && gent != nullptr) ? gent[row] : A(0);
  const A l = lse[row], h = ent[row];
  const T* z = Z + row * V;
  T* o = out + row * V;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
    const A logp = ld(z, v) * inv_tau - l;
    const A p = exp(logp);
    const A g = inv_tau * ((v == y ? gl : A(0)) - gl * p - ge * (p == A(0) ? A(0) : p * (logp + h)));  // 0 log 0 = 0
    st(o, v, keep ? g : A(0));
  }
}

}  // namespace

void logprobs_forward(int dt, const void* logits, const int64_t* labels, void* lp, void* ent, void* lse, int64_t N,
                      int64_t V, double inv_tau, int64_t ignore_index, void* stream) {
  if (N == 0) return;
  if (N > 2147483647LL) throw std::invalid_argument("crs_fast CUDA logprobs: more than 2^31 - 1 rows");
  CRS_CUDA_DISPATCH(dt, {
    using A = acc_t<scalar_t>;
    fwd_kernel<scalar_t><<<unsigned(N), kThreads, 0, as_stream(stream)>>>(
        static_cast<const scalar_t*>(logits), labels, static_cast<A*>(lp), static_cast<A*>(ent), static_cast<A*>(lse),
        V, A(inv_tau), ignore_index);
  });
  check_launch("logprobs_forward");
}

void logprobs_backward(int dt, const void* logits, const int64_t* labels, const void* g_lp, const void* g_ent,
                       const void* lse, const void* ent, void* grad_logits, int64_t N, int64_t V, double inv_tau,
                       int64_t ignore_index, void* stream) {
  if (N == 0) return;
  if (N > 2147483647LL) throw std::invalid_argument("crs_fast CUDA logprobs: more than 2^31 - 1 rows");
  CRS_CUDA_DISPATCH(dt, {
    using A = acc_t<scalar_t>;
    bwd_kernel<scalar_t><<<unsigned(N), kThreads, 0, as_stream(stream)>>>(
        static_cast<const scalar_t*>(logits), labels, static_cast<const A*>(g_lp), static_cast<const A*>(g_ent),
        static_cast<const A*>(lse), static_cast<const A*>(ent), static_cast<scalar_t*>(grad_logits), V, A(inv_tau),
        ignore_index);
  });
  check_launch("logprobs_backward");
}

}  // namespace crs::cuda
