// Shared helpers for the torch-free CPU kernels: dtype codes, 16-bit float conversion,
// a vectorisable exp, and the hot-loop attribute. Nothing here knows about torch.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <type_traits>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__GNUC__)
#define CRS_INLINE inline __attribute__((always_inline))
#else
#define CRS_INLINE inline
#endif

namespace crs {

// Dtype codes shared with crs_fast/ops/_lib.py.
enum class DType : int { F32 = 0, F16 = 1, BF16 = 2, F64 = 3 };

struct bf16 { uint16_t bits; };
struct f16 { uint16_t bits; };

CRS_INLINE float to_float(float v) { return v; }
CRS_INLINE double to_float(double v) { return v; }

CRS_INLINE float to_float(bf16 v) {
  return std::bit_cast<float>(static_cast<uint32_t>(v.bits) << 16);
}

#if defined(__FLT16_MANT_DIG__) && !defined(__CUDACC__)
CRS_INLINE float to_float(f16 v) { return static_cast<float>(std::bit_cast<_Float16>(v.bits)); }
#else
inline float to_float(f16 v) {
  // IEEE binary16 -> binary32, subnormals and specials included.
  const uint32_t h = v.bits;
  const uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1fu) {
    bits = sign | 0x7f800000u | (man << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + 112u) << 23) | (man << 13);
  } else if (man == 0) {
    bits = sign;
  } else {  // subnormal: renormalise
    exp = 113;
    while ((man & 0x400u) == 0) { man <<= 1; --exp; }
    bits = sign | (exp << 23) | ((man & 0x3ffu) << 13);
  }
  return std::bit_cast<float>(bits);
}
#endif

template <typename T> inline T from_float(double v);
template <> CRS_INLINE float from_float<float>(double v) { return static_cast<float>(v); }
template <> CRS_INLINE double from_float<double>(double v) { return v; }

template <> CRS_INLINE bf16 from_float<bf16>(double dv) {
  const float v = static_cast<float>(dv);
  uint32_t u = std::bit_cast<uint32_t>(v);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{static_cast<uint16_t>((u >> 16) | 0x40u)};  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  return bf16{static_cast<uint16_t>(u >> 16)};
}

#if defined(__FLT16_MANT_DIG__) && !defined(__CUDACC__)
template <> CRS_INLINE f16 from_float<f16>(double dv) {
  return f16{std::bit_cast<uint16_t>(static_cast<_Float16>(static_cast<float>(dv)))};
}
#else
template <> inline f16 from_float<f16>(double dv) {
  const float v = static_cast<float>(dv);
  const uint32_t u = std::bit_cast<uint32_t>(v);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t au = u & 0x7fffffffu;
  if (au > 0x7f800000u) return f16{static_cast<uint16_t>(sign | 0x7e00u)};  // NaN
  if (au >= 0x477ff000u) return f16{static_cast<uint16_t>(sign | 0x7c00u)};  // overflow -> inf
  if (au < 0x38800000u) {  // subnormal or zero in half: round via float arithmetic
    const float a = std::bit_cast<float>(au);
    const float scaled = a * 16777216.0f;  // 2^24: half subnormal unit
    const uint32_t m = static_cast<uint32_t>(std::nearbyint(scaled));
    return f16{static_cast<uint16_t>(sign | m)};
  }
  uint32_t r = au + 0xfffu + ((au >> 13) & 1u);  // round to nearest even at bit 13
  r -= 112u << 23;
  return f16{static_cast<uint16_t>(sign | (r >> 13))};
}
#endif

// min / max / clamp as selects: they compile to vector min/max, where std::fmin/fmax are
// libm calls (whose rule drops a NaN). Here a NaN first operand propagates, as torch.clamp and
// torch.minimum do: vclamp(NaN, lo, hi) is NaN, never a bound.
template <typename A> CRS_INLINE A vmin(A a, A b) { return b < a ? b : a; }
template <typename A> CRS_INLINE A vmax(A a, A b) { return b > a ? b : a; }
template <typename A> CRS_INLINE A vclamp(A x, A lo, A hi) { return vmin(vmax(x, lo), hi); }
// min / max that are NaN when either operand is (torch.minimum / torch.maximum), as selects.
template <typename A> CRS_INLINE A nan_min(A a, A b) { return a < b ? a : (b <= a ? b : a + b); }
template <typename A> CRS_INLINE A nan_max(A a, A b) { return a > b ? a : (b >= a ? b : a + b); }

// Accumulation type: double for double inputs, float otherwise.
template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

// exp that GCC vectorises (Cephes-style range reduction and polynomial, ~2 ulp);
// exact 0 below the float range, so -inf logits give 0; NaN gives NaN.
CRS_INLINE float fast_exp(float x) {
  const float xc = vclamp(x, -87.0f, 88.0f);
  // round to nearest by adding and subtracting 1.5 * 2^23 (std::floor would not vectorise)
  const float fn = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = xc - fn * 0.693359375f + fn * 2.12194440e-4f;
  const float r2 = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r2 + r + 1.0f;
  const int32_t e = static_cast<int32_t>(fn) + 127;
  const float scale = std::bit_cast<float>(static_cast<uint32_t>(e) << 23);
  return x < -87.0f ? 0.0f : p * scale;
}
// x * e for an entropy term e = exp(x): 0 where e is 0 (x = -inf, a masked logit), so that
// p log p = 0 at p = 0; NaN still propagates.
template <typename A> CRS_INLINE A xlogx_term(A e, A x) { return e == A(0) ? A(0) : e * x; }
CRS_INLINE double fast_exp(double x) { return std::exp(x); }

// Threads for `work` elements: one below 64K elements, where a parallel region's start and
// barrier cost more than the loop (much more on a shared, oversubscribed machine).
inline int threads(int requested, int64_t work) {
#ifdef _OPENMP
  if (work < (int64_t{1} << 16)) return 1;
  return requested > 0 ? requested : omp_get_max_threads();
#else
  (void)requested;
  (void)work;
  return 1;
#endif
}

}  // namespace crs

// Calls BODY with `scalar_t` bound to the C++ type of a float dtype code.
#define CRS_DISPATCH_FLOAT(DT, BODY)                                      \
  switch (DT) {                                                           \
    case ::crs::DType::F32: { using scalar_t = float; BODY; break; }      \
    case ::crs::DType::F64: { using scalar_t = double; BODY; break; }     \
    case ::crs::DType::BF16: { using scalar_t = ::crs::bf16; BODY; break; } \
    case ::crs::DType::F16: { using scalar_t = ::crs::f16; BODY; break; } \
    default: throw std::invalid_argument("crs_fast._C: unsupported dtype code"); \
  }
