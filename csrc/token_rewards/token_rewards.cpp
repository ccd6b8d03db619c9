// r_t = -beta * kl_t * m_t, plus the (clipped) sequence score at the last token with m = 1.
#include <algorithm>

#include "../kernels.h"

namespace crs {
namespace {

template <typename T>
void token_rewards_impl(const T* S, const T* KL, const uint8_t* M, T* out, int64_t B, int64_t T_,
                        double beta, double lo, double hi, int nt) {
  using A = acc_t<T>;
  const A nb = static_cast<A>(-beta);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    const T* kl = KL + b * T_;
    const uint8_t* m = M + b * T_;
    T* o = out + b * T_;
    int64_t last = -1;
    for (int64_t t = 0; t < T_; ++t) {
      o[t] = from_float<T>(m[t] ? nb * A(to_float(kl[t])) : A(0));
      if (m[t]) last = t;
    }
    if (last >= 0) {
      const A s = static_cast<A>(std::clamp<double>(to_float(S[b]), lo, hi));
      o[last] = from_float<T>(nb * A(to_float(kl[last])) + s);
    }
  }
}

}  // namespace

void token_rewards(DType dt, const void* scores, const void* kl, const uint8_t* mask, void* out,
                   int64_t B, int64_t T, double beta, double clip_lo, double clip_hi,
                   int nthreads) {
  const int nt = threads(nthreads, B * T);
  CRS_DISPATCH_FLOAT(dt, token_rewards_impl(static_cast<const scalar_t*>(scores),
                                            static_cast<const scalar_t*>(kl), mask,
                                            static_cast<scalar_t*>(out), B, T, beta, clip_lo,
                                            clip_hi, nt));
}

}  // namespace crs
