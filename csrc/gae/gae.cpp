// GAE in the verl, TRL and OpenRLHF conventions, masked whitening, REINFORCE returns and
// GRPO/RLOO group advantages. Rows are independent scans, run in parallel; the whitening
// statistics are a global reduction over the masked tokens, accumulated in double.
#include <algorithm>
#include <memory>
#include <numeric>
#include <vector>

#include "../kernels.h"

namespace crs {
namespace {

// Mean and 1/std of x over mask (verl: unbiased var, rsqrt(var + 1e-8);
// OpenRLHF: biased var, rsqrt(max(var, 1e-8))). n == 0 leaves x as it is (mean 0, rstd 1).
// mean and 1/std from sum, sum of squares and count (double); see whiten_stats.
void stats_from_sums(double sum, double sq, double cnt, bool unbiased, bool clamp_eps, double* mean_out,
                     double* rstd_out) {
  if (cnt == 0.0) { *mean_out = 0.0; *rstd_out = 1.0; return; }
  const double mean = sum / cnt;
  double var = std::max(sq / cnt - mean * mean, 0.0);
  if (unbiased && cnt > 1.0) var *= cnt / (cnt - 1.0);
  *mean_out = mean;
  *rstd_out = clamp_eps ? 1.0 / std::sqrt(std::max(var, 1e-8)) : 1.0 / std::sqrt(var + 1e-8);
}

template <typename A>
void whiten_stats(const A* x, const uint8_t* mask, int64_t n, bool unbiased, bool clamp_eps,
                  int nt, double* mean_out, double* rstd_out) {
  double sum = 0.0, cnt = 0.0;
#pragma omp parallel for num_threads(nt) reduction(+ : sum, cnt) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    if (mask[i]) { sum += x[i]; cnt += 1.0; }
  }
  if (cnt == 0.0) { *mean_out = 0.0; *rstd_out = 1.0; return; }
  const double mean = sum / cnt;
  double ss = 0.0;
#pragma omp parallel for num_threads(nt) reduction(+ : ss) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    if (mask[i]) { const double d = x[i] - mean; ss += d * d; }
  }
  double var = ss / cnt;
  if (unbiased && cnt > 1.0) var *= cnt / (cnt - 1.0);
  *mean_out = mean;
  *rstd_out = clamp_eps ? 1.0 / std::sqrt(std::max(var, 1e-8)) : 1.0 / std::sqrt(var + 1e-8);
}

template <typename T>
void gae_impl(const T* R, const T* V, const uint8_t* M, T* adv, T* ret, int64_t B, int64_t T_,
              double gamma_d, double lam_d, GaeMode mode, bool whiten, int nt) {
  using A = acc_t<T>;
  const A gamma = static_cast<A>(gamma_d), gl = static_cast<A>(gamma_d * lam_d);
  const int64_t n = B * T_;
  std::unique_ptr<A[]> scratch;
  A* abuf;
  if constexpr (std::is_same_v<T, A>) {
    abuf = adv;
  } else {
    scratch.reset(new A[n]);
    abuf = scratch.get();
  }
  // the whitening sums are accumulated during the scan (double, per row), saving two passes
  std::vector<double> row_sum(B, 0.0), row_sq(B, 0.0), row_n(B, 0.0);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    double sum = 0.0, sq = 0.0, cnt = 0.0;
    const T* r = R + b * T_;
    const T* v = V + b * T_;
    const uint8_t* m = M + b * T_;
    A* a = abuf + b * T_;
    T* rt = ret + b * T_;
    if (mode == GaeMode::Verl) {
      A next_v = 0, last_a = 0;
      for (int64_t t = T_ - 1; t >= 0; --t) {
        const A vt = to_float(v[t]);
        const A cand = to_float(r[t]) + gamma * next_v - vt + gl * last_a;
        if (m[t]) { next_v = vt; last_a = cand; sum += last_a; sq += double(last_a) * last_a; cnt += 1; }
        a[t] = last_a;
        rt[t] = from_float<T>(last_a + vt);
      }
    } else {
      int64_t last = -1;  // TRL: values past the last valid token are zeroed
      for (int64_t t = T_ - 1; t >= 0; --t) if (m[t]) { last = t; break; }
      const bool orl = mode == GaeMode::OpenRLHF;
      A next_v = 0, last_a = 0;
      for (int64_t t = T_ - 1; t >= 0; --t) {
        // selects, not products with the mask: a NaN at an excluded position must not leak
        const bool keep = orl ? m[t] != 0 : t <= last;
        const A vt = keep ? A(to_float(v[t])) : A(0);
        const A rw = (orl && !keep) ? A(0) : A(to_float(r[t]));
        last_a = rw + gamma * next_v - vt + gl * last_a;
        next_v = vt;
        a[t] = last_a;
        rt[t] = from_float<T>(last_a + vt);
        if (m[t]) { sum += last_a; sq += double(last_a) * last_a; cnt += 1; }
      }
    }
    row_sum[b] = sum; row_sq[b] = sq; row_n[b] = cnt;
  }
  double mean = 0.0, rstd = 1.0;
  if (whiten) {
    double sum = 0.0, sq = 0.0, cnt = 0.0;
    for (int64_t b = 0; b < B; ++b) { sum += row_sum[b]; sq += row_sq[b]; cnt += row_n[b]; }
    stats_from_sums(sum, sq, cnt, mode != GaeMode::OpenRLHF, mode == GaeMode::OpenRLHF, &mean, &rstd);
  }
  const bool zero_pad = mode == GaeMode::Trl;
  const A am = static_cast<A>(mean), ar = static_cast<A>(rstd);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    A x = whiten ? (abuf[i] - am) * ar : abuf[i];
    if (zero_pad && !M[i]) x = 0;
    adv[i] = from_float<T>(x);
  }
}

template <typename T>
void masked_whiten_impl(const T* x, const uint8_t* M, T* out, int64_t n, bool shift_mean,
                        bool unbiased, int nt) {
  using A = acc_t<T>;
  std::unique_ptr<A[]> buf(new A[n]);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t i = 0; i < n; ++i) buf[i] = to_float(x[i]);
  double mean, rstd;
  whiten_stats(buf.get(), M, n, unbiased, false, nt, &mean, &rstd);
  const A am = static_cast<A>(mean), ar = static_cast<A>(rstd);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    A y = (buf[i] - am) * ar;
    if (!shift_mean) y += am;
    out[i] = from_float<T>(y);
  }
}

template <typename T>
void reinforce_impl(const T* R, const uint8_t* M, T* out, int64_t B, int64_t T_, double gamma_d,
                    int nt) {
  using A = acc_t<T>;
  const A gamma = static_cast<A>(gamma_d);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    A g = 0;
    for (int64_t t = T_ - 1; t >= 0; --t) {
      const int64_t i = b * T_ + t;
      g = (M[i] ? A(to_float(R[i])) : A(0)) + gamma * g;
      out[i] = from_float<T>(g);
    }
  }
}

template <typename T>
void group_impl(const T* S, const int64_t* G, T* out, int64_t B, int mode, double eps,
                bool norm_by_std) {
  std::vector<int64_t> order(B);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return G[a] < G[b]; });
  for (int64_t lo = 0; lo < B;) {
    int64_t hi = lo;
    while (hi < B && G[order[hi]] == G[order[lo]]) ++hi;
    const double cnt = static_cast<double>(hi - lo);
    double sum = 0.0;
    for (int64_t j = lo; j < hi; ++j) sum += to_float(S[order[j]]);
    const double mean = sum / cnt;
    double ss = 0.0;
    for (int64_t j = lo; j < hi; ++j) { const double d = to_float(S[order[j]]) - mean; ss += d * d; }
    const double std_ = cnt > 1 ? std::sqrt(ss / (cnt - 1)) : 1.0;
    for (int64_t j = lo; j < hi; ++j) {
      const double s = to_float(S[order[j]]);
      double a;
      if (mode == 0) {  // GRPO: a singleton group has mean 0 and std 1
        const double mu = cnt > 1 ? mean : 0.0;
        a = norm_by_std ? (s - mu) / (std_ + eps) : s - mu;
      } else {  // RLOO: s - mean of the others = (s - mean) * n / (n - 1)
        a = cnt > 1 ? s * cnt / (cnt - 1) - mean * cnt / (cnt - 1) : s;
      }
      out[order[j]] = from_float<T>(a);
    }
    lo = hi;
  }
}

}  // namespace

void gae(DType dt, const void* rewards, const void* values, const uint8_t* mask, void* adv,
         void* ret, int64_t B, int64_t T, double gamma, double lam, int mode, bool whiten,
         int nthreads) {
  const int nt = threads(nthreads, B * T);
  CRS_DISPATCH_FLOAT(dt, gae_impl(static_cast<const scalar_t*>(rewards),
                                  static_cast<const scalar_t*>(values), mask,
                                  static_cast<scalar_t*>(adv), static_cast<scalar_t*>(ret), B, T,
                                  gamma, lam, static_cast<GaeMode>(mode), whiten, nt));
}

void masked_whiten(DType dt, const void* x, const uint8_t* mask, void* out, int64_t n,
                   bool shift_mean, bool unbiased, int nthreads) {
  const int nt = threads(nthreads, n);
  CRS_DISPATCH_FLOAT(dt, masked_whiten_impl(static_cast<const scalar_t*>(x), mask,
                                            static_cast<scalar_t*>(out), n, shift_mean, unbiased,
                                            nt));
}

void reinforce_returns(DType dt, const void* rewards, const uint8_t* mask, void* out, int64_t B,
                       int64_t T, double gamma, int nthreads) {
  const int nt = threads(nthreads, B * T);
  CRS_DISPATCH_FLOAT(dt, reinforce_impl(static_cast<const scalar_t*>(rewards), mask,
                                        static_cast<scalar_t*>(out), B, T, gamma, nt));
}

void group_advantages(DType dt, const void* scores, const int64_t* groups, void* out, int64_t B,
                      int mode, double eps, bool norm_by_std) {
  CRS_DISPATCH_FLOAT(dt, group_impl(static_cast<const scalar_t*>(scores), groups,
                                    static_cast<scalar_t*>(out), B, mode, eps, norm_by_std));
}

}  // namespace crs
