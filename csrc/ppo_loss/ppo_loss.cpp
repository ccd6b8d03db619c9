// Clipped PPO policy and value losses with their statistics, in one pass over the tokens
// (per-row partial sums, then the aggregation), and their gradients.
//   policy: ratio = exp(clamp(lp - old, -20, 20)), l1 = -A*ratio, l2 = -A*clamp(ratio, 1-lo, 1+hi),
//           c1 = max(l1, l2); with dual clip c: where A < 0, min(c1, -c*A).
//   value:  vc = clamp(v, old - eps, old + eps), 0.5 * max((v-R)^2, (vc-R)^2).
// Aggregations: token-mean, seq-mean-token-sum, seq-mean-token-mean, seq-mean-token-sum-norm.
#include <memory>
#include <vector>

#include "../kernels.h"

namespace crs {
namespace {

enum Agg : int { TokenMean = 0, SeqMeanTokenSum = 1, SeqMeanTokenMean = 2, SeqMeanTokenSumNorm = 3 };

struct PolicyParams { double lo, hi, dual; };

template <typename A>
inline void policy_point(A lp, A old, A adv, const PolicyParams& p, A* loss, A* grad, bool* clip,
                         bool* clip_lower) {
  const A d = lp - old;
  const A dc = std::fmin(std::fmax(d, A(-20)), A(20));
  const A r = fast_exp(dc);
  const A dr = (d >= A(-20) && d <= A(20)) ? r : A(0);
  const A l1 = -adv * r;
  const A rc = std::fmin(std::fmax(r, A(1 - p.lo)), A(1 + p.hi));
  const A l2 = -adv * rc;
  A c1 = l1 >= l2 ? l1 : l2;
  A g = l1 >= l2 ? -adv * dr : A(0);
  *clip = l2 > l1;
  *clip_lower = false;
  if (p.dual > 0 && adv < 0) {
    const A l3 = -A(p.dual) * adv;
    *clip_lower = c1 > l3;
    if (c1 > l3) { c1 = l3; g = 0; }
  }
  *loss = c1;
  *grad = g;
}

template <typename A>
inline void value_point(A v, A old, A ret, double eps, A* loss, A* grad, bool* clip) {
  const A d1 = v - ret;
  A vc = v;
  if (eps >= 0) vc = std::fmax(std::fmin(v, old + A(eps)), old - A(eps));
  const A d2 = vc - ret;
  const A l1 = d1 * d1, l2 = d2 * d2;
  *clip = l2 > l1;
  *loss = l1 >= l2 ? l1 : l2;
  *grad = l1 >= l2 ? A(2) * d1 : A(0);  // the clipped branch is flat in v
}

// Per-row token counts, the number of non-empty rows and the total token count.
struct Counts {
  std::vector<double> row;
  double rows = 0, tokens = 0;
};

Counts count_mask(const uint8_t* M, int64_t B, int64_t T, int nt) {
  Counts c;
  c.row.assign(B, 0.0);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    int64_t k = 0;
    for (int64_t t = 0; t < T; ++t) k += M[b * T + t] != 0;
    c.row[b] = static_cast<double>(k);
  }
  for (int64_t b = 0; b < B; ++b) { c.tokens += c.row[b]; c.rows += c.row[b] > 0; }
  return c;
}

// Weight of each token of row b in the aggregated loss.
inline double row_weight(const Counts& c, int64_t b, int64_t T, int agg) {
  switch (agg) {
    case TokenMean: return c.tokens > 0 ? 1.0 / c.tokens : 0.0;
    case SeqMeanTokenSum: return c.rows > 0 ? 1.0 / c.rows : 0.0;
    case SeqMeanTokenMean: return (c.rows > 0 && c.row[b] > 0) ? 1.0 / (c.row[b] * c.rows) : 0.0;
    default: return c.rows > 0 ? 1.0 / (c.rows * static_cast<double>(T)) : 0.0;
  }
}

// Runs `point(i, &loss, &clip, &clip_lower, &kl)` over every masked token and aggregates.
template <typename F>
void reduce_rows(const uint8_t* M, int64_t B, int64_t T, int agg, int nt, F point, double* loss,
                 double* clip, double* clip_lower, double* kl, double* tokens) {
  const Counts c = count_mask(M, B, T, nt);
  double s_loss = 0, s_clip = 0, s_low = 0, s_kl = 0;
#pragma omp parallel for num_threads(nt) schedule(static) reduction(+ : s_loss, s_clip, s_low, s_kl)
  for (int64_t b = 0; b < B; ++b) {
    double rl = 0, rc = 0, rlow = 0, rk = 0;
    for (int64_t t = 0; t < T; ++t) {
      const int64_t i = b * T + t;
      if (!M[i]) continue;
      double l, k;
      bool cl, clow;
      point(i, &l, &cl, &clow, &k);
      rl += l; rc += cl; rlow += clow; rk += k;
    }
    s_loss += rl * row_weight(c, b, T, agg);
    s_clip += rc; s_low += rlow; s_kl += rk;
  }
  const double denom = c.tokens > 0 ? c.tokens : 1.0;
  *loss = s_loss;
  *clip = s_clip / denom;
  *clip_lower = s_low / denom;
  *kl = s_kl / denom;
  *tokens = c.tokens;
}

template <typename T>
PolicyStats policy_fwd(const T* lp, const T* old, const T* adv, const uint8_t* M, int64_t B,
                       int64_t T_, PolicyParams p, int agg, int nt) {
  using A = acc_t<T>;
  PolicyStats s{};
  double tokens;
  reduce_rows(M, B, T_, agg, nt,
              [&](int64_t i, double* l, bool* c, bool* cl, double* k) {
                A loss, g;
                const A a = to_float(lp[i]), o = to_float(old[i]);
                policy_point<A>(a, o, A(to_float(adv[i])), p, &loss, &g, c, cl);
                *l = loss;
                *k = o - a;
              },
              &s.loss, &s.clipfrac, &s.clipfrac_lower, &s.approx_kl, &tokens);
  return s;
}

template <typename T>
CRS_HOT void policy_bwd(double grad, const T* lp, const T* old, const T* adv, const uint8_t* M,
                        T* glp, int64_t B, int64_t T_, PolicyParams p, int agg, int nt) {
  using A = acc_t<T>;
  const Counts c = count_mask(M, B, T_, nt);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    const A w = static_cast<A>(grad * row_weight(c, b, T_, agg));
    for (int64_t t = 0; t < T_; ++t) {
      const int64_t i = b * T_ + t;
      A loss, g;
      bool cl, clow;
      policy_point<A>(to_float(lp[i]), to_float(old[i]), to_float(adv[i]), p, &loss, &g, &cl, &clow);
      glp[i] = from_float<T>(M[i] ? w * g : A(0));
    }
  }
}

template <typename T>
ValueStats value_fwd(const T* v, const T* old, const T* ret, const uint8_t* M, int64_t B,
                     int64_t T_, double eps, int agg, int nt) {
  using A = acc_t<T>;
  double loss, clip, unused_low, unused_kl, tokens;
  reduce_rows(M, B, T_, agg, nt,
              [&](int64_t i, double* l, bool* c, bool* cl, double* k) {
                A lv, g;
                value_point<A>(to_float(v[i]), to_float(old[i]), to_float(ret[i]), eps, &lv, &g, c);
                *l = lv;
                *cl = false;
                *k = 0;
              },
              &loss, &clip, &unused_low, &unused_kl, &tokens);
  return ValueStats{0.5 * loss, clip};
}

template <typename T>
CRS_HOT void value_bwd(double grad, const T* v, const T* old, const T* ret, const uint8_t* M,
                       T* gv, int64_t B, int64_t T_, double eps, int agg, int nt) {
  using A = acc_t<T>;
  const Counts c = count_mask(M, B, T_, nt);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    const A w = static_cast<A>(0.5 * grad * row_weight(c, b, T_, agg));
    for (int64_t t = 0; t < T_; ++t) {
      const int64_t i = b * T_ + t;
      A lv, g;
      bool cl;
      value_point<A>(to_float(v[i]), to_float(old[i]), to_float(ret[i]), eps, &lv, &g, &cl);
      gv[i] = from_float<T>(M[i] ? w * g : A(0));
    }
  }
}

}  // namespace

PolicyStats policy_loss_forward(DType dt, const void* lp, const void* old_lp, const void* adv,
                                const uint8_t* mask, int64_t B, int64_t T, double clip_low,
                                double clip_high, double dual_clip, int agg, int nthreads) {
  const int nt = threads(nthreads);
  const PolicyParams p{clip_low, clip_high, dual_clip};
  PolicyStats s{};
  CRS_DISPATCH_FLOAT(dt, s = policy_fwd(static_cast<const scalar_t*>(lp),
                                        static_cast<const scalar_t*>(old_lp),
                                        static_cast<const scalar_t*>(adv), mask, B, T, p, agg, nt));
  return s;
}

void policy_loss_backward(DType dt, double grad, const void* lp, const void* old_lp,
                          const void* adv, const uint8_t* mask, void* grad_lp, int64_t B,
                          int64_t T, double clip_low, double clip_high, double dual_clip, int agg,
                          int nthreads) {
  const int nt = threads(nthreads);
  const PolicyParams p{clip_low, clip_high, dual_clip};
  CRS_DISPATCH_FLOAT(dt, policy_bwd(grad, static_cast<const scalar_t*>(lp),
                                    static_cast<const scalar_t*>(old_lp),
                                    static_cast<const scalar_t*>(adv), mask,
                                    static_cast<scalar_t*>(grad_lp), B, T, p, agg, nt));
}

ValueStats value_loss_forward(DType dt, const void* v, const void* old_v, const void* ret,
                              const uint8_t* mask, int64_t B, int64_t T, double clip, int agg,
                              int nthreads) {
  const int nt = threads(nthreads);
  ValueStats s{};
  CRS_DISPATCH_FLOAT(dt, s = value_fwd(static_cast<const scalar_t*>(v),
                                       static_cast<const scalar_t*>(old_v),
                                       static_cast<const scalar_t*>(ret), mask, B, T, clip, agg,
                                       nt));
  return s;
}

void value_loss_backward(DType dt, double grad, const void* v, const void* old_v, const void* ret,
                         const uint8_t* mask, void* grad_v, int64_t B, int64_t T, double clip,
                         int agg, int nthreads) {
  const int nt = threads(nthreads);
  CRS_DISPATCH_FLOAT(dt, value_bwd(grad, static_cast<const scalar_t*>(v),
                                   static_cast<const scalar_t*>(old_v),
                                   static_cast<const scalar_t*>(ret), mask,
                                   static_cast<scalar_t*>(grad_v), B, T, clip, agg, nt));
}

}  // namespace crs
