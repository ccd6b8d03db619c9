// Per-token KL estimators of d = lp - ref (k1, |d|, k2 = d^2/2, k3 = exp(-d) + d - 1 with
// verl's clamps: argument to +-20, value to +-10), an optional clamp of every value
// (OpenRLHF: +-10), and the straight-through "+" forms (value of the kind, gradient of k2).
#include "../kernels.h"

namespace crs {
namespace {

template <typename A>
struct KlPoint {
  A value, grad;
};

// One token: value and d value / d lp. `clamp` is +inf when no clamp was asked for, so every
// step is a select and the loops vectorise.
template <int KIND, bool STRAIGHT, typename A>
CRS_INLINE KlPoint<A> kl_point(A d, A clamp) {
  A v, g;
  if constexpr (KIND == 0) {
    v = d; g = 1;
  } else if constexpr (KIND == 1) {
    v = std::fabs(d); g = d > 0 ? A(1) : (d < 0 ? A(-1) : A(0));
  } else if constexpr (KIND == 2) {
    v = A(0.5) * d * d; g = d;
  } else {
    const A x = -d;  // k3 in verl's form: exp(x) - x - 1 with x = ref - lp
    const A xc = vclamp(x, A(-20), A(20));
    const A e = fast_exp(xc);
    const A k = e - xc - A(1);
    v = vclamp(k, A(-10), A(10));
    const bool inside = (x >= A(-20)) & (x <= A(20)) & (k >= A(-10)) & (k <= A(10));
    g = inside ? A(1) - e : A(0);
  }
  // outside the clamp the value is flat: torch's clamp backward selects 0 there, then the chain
  // multiplies (0 * d is NaN for an infinite d), hence g * 0 rather than 0; no clamp: no mask
  const bool kept = ((v >= -clamp) & (v <= clamp)) | (clamp == std::numeric_limits<A>::infinity());
  g = kept ? g : g * A(0);
  v = vclamp(v, -clamp, clamp);
  if constexpr (STRAIGHT) g = d;  // a compile-time switch: a runtime bool select blocks vectorisation
  return {v, g};
}

template <int KIND, bool STRAIGHT, typename T>
void kl_fwd_impl(const T* lp, const T* ref, T* out, int64_t n, double clamp, int nt) {
  using A = acc_t<T>;
  const A c = clamp >= 0 ? static_cast<A>(clamp) : std::numeric_limits<A>::infinity();
#pragma omp parallel for simd num_threads(nt) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    out[i] = from_float<T>(kl_point<KIND, STRAIGHT, A>(A(to_float(lp[i])) - A(to_float(ref[i])), c).value);
  }
}

template <int KIND, bool STRAIGHT, typename T>
void kl_bwd_impl(const T* grad, const T* lp, const T* ref, T* glp, int64_t n, double clamp, int nt) {
  using A = acc_t<T>;
  const A c = clamp >= 0 ? static_cast<A>(clamp) : std::numeric_limits<A>::infinity();
#pragma omp parallel for simd num_threads(nt) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const A g = kl_point<KIND, STRAIGHT, A>(A(to_float(lp[i])) - A(to_float(ref[i])), c).grad;
    glp[i] = from_float<T>(A(to_float(grad[i])) * g);
  }
}

// Calls BODY with the constants KIND (estimator code) and STRAIGHT bound.
#define CRS_DISPATCH_KIND_(K, BODY)                         \
  switch (K) {                                              \
    case 0: { constexpr int KIND = 0; BODY; break; }        \
    case 1: { constexpr int KIND = 1; BODY; break; }        \
    case 2: { constexpr int KIND = 2; BODY; break; }        \
    default: { constexpr int KIND = 3; BODY; break; }       \
  }
#define CRS_DISPATCH_KIND(K, S, BODY)                                            \
  if (S) { constexpr bool STRAIGHT = true; CRS_DISPATCH_KIND_(K, BODY); }       \
  else { constexpr bool STRAIGHT = false; CRS_DISPATCH_KIND_(K, BODY); }

}  // namespace

void kl_forward(DType dt, const void* lp, const void* ref, void* out, int64_t n, int kind,
                bool straight, double clamp, int nthreads) {
  const int nt = threads(nthreads, n);
  CRS_DISPATCH_FLOAT(dt, CRS_DISPATCH_KIND(kind, straight, (kl_fwd_impl<KIND, STRAIGHT>)(static_cast<const scalar_t*>(lp),
                                                                   static_cast<const scalar_t*>(ref),
                                                                   static_cast<scalar_t*>(out), n,
                                                                   clamp, nt)));
}

void kl_backward(DType dt, const void* grad, const void* lp, const void* ref, void* grad_lp,
                 int64_t n, int kind, bool straight, double clamp, int nthreads) {
  const int nt = threads(nthreads, n);
  CRS_DISPATCH_FLOAT(dt, CRS_DISPATCH_KIND(kind, straight, (kl_bwd_impl<KIND, STRAIGHT>)(static_cast<const scalar_t*>(grad),
                                                                   static_cast<const scalar_t*>(lp),
                                                                   static_cast<const scalar_t*>(ref),
                                                                   static_cast<scalar_t*>(grad_lp), n,
                                                                   clamp, nt)));
}

}  // namespace crs
