// Device helpers shared by the CUDA kernels: dtype dispatch, loads/stores through float (or
// double), launch checks, and block reductions.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace crs::cuda {

template <typename T> struct Acc { using type = float; };
template <> struct Acc<double> { using type = double; };
template <typename T> using acc_t = typename Acc<T>::type;

template <typename T> __device__ __forceinline__ acc_t<T> ld(const T* p, int64_t i) {
  return static_cast<acc_t<T>>(p[i]);
}
template <> __device__ __forceinline__ float ld(const __half* p, int64_t i) { return __half2float(p[i]); }
template <> __device__ __forceinline__ float ld(const __nv_bfloat16* p, int64_t i) {
  return __bfloat162float(p[i]);
}
template <typename T, typename A> __device__ __forceinline__ void st(T* p, int64_t i, A v) {
  p[i] = static_cast<T>(v);
}
template <> __device__ __forceinline__ void st(__half* p, int64_t i, float v) { p[i] = __float2half_rn(v); }
template <> __device__ __forceinline__ void st(__nv_bfloat16* p, int64_t i, float v) {
  p[i] = __float2bfloat16_rn(v);
}

inline cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }

inline void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("crs_fast CUDA kernel ") + what + ": " + cudaGetErrorString(err));
  }
}

inline unsigned blocks_for(int64_t n, int threads, int64_t cap = 65535LL * 8) {
  int64_t b = (n + threads - 1) / threads;
  if (b < 1) b = 1;
  return static_cast<unsigned>(b < cap ? b : cap);
}

#define CRS_CUDA_DISPATCH(DT, ...)                                                   \
  switch (DT) {                                                                      \
    case 0: { using scalar_t = float; __VA_ARGS__; break; }                                 \
    case 1: { using scalar_t = __half; __VA_ARGS__; break; }                                \
    case 2: { using scalar_t = __nv_bfloat16; __VA_ARGS__; break; }                         \
    case 3: { using scalar_t = double; __VA_ARGS__; break; }                                \
    default: throw std::invalid_argument("crs_fast CUDA kernels: unsupported dtype code"); \
  }

// Sum over the block of one value per thread (blockDim.x a multiple of 32, at most 1024).
template <typename A> __device__ A block_sum(A v, A* scratch) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = threadIdx.x < nwarps ? scratch[threadIdx.x] : A(0);
  if (warp == 0) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    if (lane == 0) scratch[0] = v;
  }
  __syncthreads();
  return scratch[0];
}

}  // namespace crs::cuda
