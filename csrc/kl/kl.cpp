// Per-token KL estimators of d = lp - ref (k1, |d|, k2 = d^2/2, k3 = exp(-d) + d - 1 with
// verl's clamps: argument to +-20, value to +-10), an optional clamp of every value
// (OpenRLHF: +-10), and the straight-through "+" forms (value of the kind, gradient of k2).
#include "../kernels.h"

namespace crs {
namespace {

template <typename A>
inline void kl_point(A d, int kind, bool straight, A clamp, bool has_clamp, A* val, A* grad) {
  A v, g;
  switch (kind) {
    case 0: v = d; g = 1; break;
    case 1: v = std::fabs(d); g = d > 0 ? A(1) : (d < 0 ? A(-1) : A(0)); break;
    case 2: v = A(0.5) * d * d; g = d; break;
    default: {
      const A x = -d;  // k3 in verl's form: exp(x) - x - 1 with x = ref - lp
      const A xc = std::fmin(std::fmax(x, A(-20)), A(20));
      const A e = fast_exp(xc);
      const A k = e - xc - A(1);
      v = std::fmin(std::fmax(k, A(-10)), A(10));
      const bool inside = (x >= A(-20) && x <= A(20)) && (k >= A(-10) && k <= A(10));
      g = inside ? A(1) - e : A(0);
    }
  }
  if (has_clamp) {
    if (!(v >= -clamp && v <= clamp)) g = 0;
    v = std::fmin(std::fmax(v, -clamp), clamp);
  }
  if (straight) g = d;
  *val = v;
  *grad = g;
}

template <typename T>
CRS_HOT void kl_fwd_impl(const T* lp, const T* ref, T* out, int64_t n, int kind, bool straight,
                         double clamp, int nt) {
  using A = acc_t<T>;
  const bool hc = clamp >= 0;
  const A c = static_cast<A>(clamp);
#pragma omp parallel for simd num_threads(nt) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    A v, g;
    kl_point<A>(A(to_float(lp[i])) - A(to_float(ref[i])), kind, straight, c, hc, &v, &g);
    out[i] = from_float<T>(v);
  }
}

template <typename T>
CRS_HOT void kl_bwd_impl(const T* grad, const T* lp, const T* ref, T* glp, int64_t n, int kind,
                         bool straight, double clamp, int nt) {
  using A = acc_t<T>;
  const bool hc = clamp >= 0;
  const A c = static_cast<A>(clamp);
#pragma omp parallel for simd num_threads(nt) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    A v, g;
    kl_point<A>(A(to_float(lp[i])) - A(to_float(ref[i])), kind, straight, c, hc, &v, &g);
    glp[i] = from_float<T>(A(to_float(grad[i])) * g);
  }
}

}  // namespace

void kl_forward(DType dt, const void* lp, const void* ref, void* out, int64_t n, int kind,
                bool straight, double clamp, int nthreads) {
  const int nt = threads(nthreads);
  CRS_DISPATCH_FLOAT(dt, kl_fwd_impl(static_cast<const scalar_t*>(lp),
                                     static_cast<const scalar_t*>(ref),
                                     static_cast<scalar_t*>(out), n, kind, straight, clamp, nt));
}

void kl_backward(DType dt, const void* grad, const void* lp, const void* ref, void* grad_lp,
                 int64_t n, int kind, bool straight, double clamp, int nthreads) {
  const int nt = threads(nthreads);
  CRS_DISPATCH_FLOAT(dt, kl_bwd_impl(static_cast<const scalar_t*>(grad),
                                     static_cast<const scalar_t*>(lp),
                                     static_cast<const scalar_t*>(ref),
                                     static_cast<scalar_t*>(grad_lp), n, kind, straight, clamp,
                                     nt));
}

}  // namespace crs
