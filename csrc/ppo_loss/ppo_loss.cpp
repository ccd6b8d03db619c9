// Clipped PPO policy and value losses with their statistics, in one pass over the tokens
// (per-row partial sums, then the aggregation), and their gradients.
//   policy: ratio = exp(clamp(lp - old, -20, 20)), l1 = -A*ratio, l2 = -A*clamp(ratio, 1-lo, 1+hi),
//           c1 = max(l1, l2); with dual clip c: where A < 0, min(c1, -c*A).
//   value:  vc = clamp(v, old - eps, old + eps), 0.5 * max((v-R)^2, (vc-R)^2).
// Aggregations: token-mean, seq-mean-token-sum, seq-mean-token-mean, seq-mean-token-sum-norm.
#include <algorithm>
#include <memory>
#include <vector>

#include "../kernels.h"

namespace crs {
namespace {

enum Agg : int { TokenMean = 0, SeqMeanTokenSum = 1, SeqMeanTokenMean = 2, SeqMeanTokenSumNorm = 3 };

struct PolicyParams { double lo, hi, dual; };

// Per-token terms, written as selects (no branches) so the row loops vectorise.
template <typename A>
struct PolicyPoint {
  A loss, grad, clip, clip_lower;
};

template <typename A>
CRS_INLINE PolicyPoint<A> policy_point(A lp, A old, A adv, A lo, A hi, A dual) {
  const A d = lp - old;
  const A r = fast_exp(vclamp(d, A(-20), A(20)));
  const A dr = ((d < A(-20)) | (d > A(20))) ? A(0) : r;  // | not ||: no branches; NaN keeps r (NaN)
  const A l1 = -adv * r;
  const A l2 = -adv * vmin(vmax(r, A(1) - lo), A(1) + hi);
  const bool first = !(l1 < l2);  // a NaN term takes this branch: loss and gradient stay NaN
  const A c1 = first ? l1 : l2;
  const A g1 = first ? -adv * dr : A(0);  // the clipped branch is flat in lp
  const A l3 = -dual * adv;
  const bool lower = (dual > A(0)) & (adv < A(0)) & (c1 > l3);  // dual clip caps the loss at -c*A
  return {lower ? l3 : c1, lower ? A(0) : g1, l2 > l1 ? A(1) : A(0), lower ? A(1) : A(0)};
}

template <typename A>
struct ValuePoint {
  A loss, grad, clip;
};

template <typename A>
CRS_INLINE ValuePoint<A> value_point(A v, A old, A ret, A eps) {  // eps = +inf: no clipping
  const A d1 = v - ret;
  // a NaN old value propagates, as in torch; unclipped (eps = inf), old is not read
  const A vc = eps == std::numeric_limits<A>::infinity() ? v : nan_max(nan_min(v, old + eps), old - eps);
  const A d2 = vc - ret;
  const A l1 = d1 * d1, l2 = d2 * d2;
  // torch.maximum(l1, l2): NaN if either is; then the gradient is NaN too (a NaN old value)
  const A g = l1 < l2 ? A(0) : A(2) * d1;  // clipped branch: flat in v
  return {nan_max(l1, l2), l2 != l2 ? l2 : g, l2 > l1 ? A(1) : A(0)};
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
#pragma omp simd reduction(+ : k)
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

// Row sums over the masked tokens of the loss, clip, clip_lower and kl terms. Each chunk of a row
// is computed elementwise into small buffers (a loop GCC vectorises, like the backward ones),
// then summed in 16 float lanes and flushed to double per chunk.
struct RowSums { double loss, clip, clip_lower, kl; };

constexpr int64_t kChunk = 512;

CRS_INLINE double chunk_sum(const float* buf, int64_t n) {
  float lane[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int j = 0; j < 16; ++j) lane[j] += buf[i + j];
  double s = 0;
  for (; i < n; ++i) s += buf[i];
  for (int j = 0; j < 16; ++j) s += lane[j];
  return s;
}

CRS_INLINE double chunk_sum(const double* buf, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += buf[i];
  return s;
}

template <typename T>
RowSums policy_row(const T* lp, const T* old, const T* adv, const uint8_t* m, int64_t n,
                   const PolicyParams& p) {
  using A = acc_t<T>;
  const A lo = A(p.lo), hi = A(p.hi), dual = A(p.dual);
  alignas(64) A bl[kChunk], bc[kChunk], blow[kChunk], bk[kChunk];
  RowSums s{0, 0, 0, 0};
  for (int64_t c0 = 0; c0 < n; c0 += kChunk) {
    const int64_t len = std::min(kChunk, n - c0);
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) {
      const int64_t t = c0 + j;
      const A a = to_float(lp[t]), o = to_float(old[t]);
      const PolicyPoint<A> q = policy_point<A>(a, o, A(to_float(adv[t])), lo, hi, dual);
      const bool on = m[t] != 0;
      bl[j] = on ? q.loss : A(0);
      bc[j] = on ? q.clip : A(0);
      blow[j] = on ? q.clip_lower : A(0);
      bk[j] = on ? o - a : A(0);
    }
    s.loss += chunk_sum(bl, len);
    s.clip += chunk_sum(bc, len);
    s.clip_lower += chunk_sum(blow, len);
    s.kl += chunk_sum(bk, len);
  }
  return s;
}

template <typename T>
RowSums value_row(const T* v, const T* old, const T* ret, const uint8_t* m, int64_t n, double eps) {
  using A = acc_t<T>;
  const A e = eps >= 0 ? A(eps) : std::numeric_limits<A>::infinity();
  alignas(64) A bl[kChunk], bc[kChunk];
  RowSums s{0, 0, 0, 0};
  for (int64_t c0 = 0; c0 < n; c0 += kChunk) {
    const int64_t len = std::min(kChunk, n - c0);
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) {
      const int64_t t = c0 + j;
      const ValuePoint<A> q = value_point<A>(to_float(v[t]), to_float(old[t]), to_float(ret[t]), e);
      const bool on = m[t] != 0;
      bl[j] = on ? q.loss : A(0);
      bc[j] = on ? q.clip : A(0);
    }
    s.loss += chunk_sum(bl, len);
    s.clip += chunk_sum(bc, len);
  }
  return s;
}

// Aggregates the per-row sums of `row(b)` into the loss and the token-mean statistics.
template <typename F>
RowSums aggregate(const uint8_t* M, int64_t B, int64_t T, int agg, int nt, F row) {
  const Counts c = count_mask(M, B, T, nt);
  double s_loss = 0, s_clip = 0, s_low = 0, s_kl = 0;
#pragma omp parallel for num_threads(nt) schedule(static) reduction(+ : s_loss, s_clip, s_low, s_kl)
  for (int64_t b = 0; b < B; ++b) {
    const RowSums r = row(b);
    s_loss += r.loss * row_weight(c, b, T, agg);
    s_clip += r.clip; s_low += r.clip_lower; s_kl += r.kl;
  }
  const double denom = c.tokens > 0 ? c.tokens : 1.0;
  return {s_loss, s_clip / denom, s_low / denom, s_kl / denom};
}

template <typename T>
PolicyStats policy_fwd(const T* lp, const T* old, const T* adv, const uint8_t* M, int64_t B,
                       int64_t T_, PolicyParams p, int agg, int nt) {
  const RowSums s = aggregate(M, B, T_, agg, nt, [&](int64_t b) {
    const int64_t o = b * T_;
    return policy_row(lp + o, old + o, adv + o, M + o, T_, p);
  });
  return {s.loss, s.clip, s.clip_lower, s.kl};
}

template <typename T>
void policy_bwd(double grad, const T* lp, const T* old, const T* adv, const uint8_t* M,
                        T* glp, int64_t B, int64_t T_, PolicyParams p, int agg, int nt) {
  using A = acc_t<T>;
  const Counts c = count_mask(M, B, T_, nt);
  const A lo = A(p.lo), hi = A(p.hi), dual = A(p.dual);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    const A w = static_cast<A>(grad * row_weight(c, b, T_, agg));
#pragma omp simd
    for (int64_t t = 0; t < T_; ++t) {
      const int64_t i = b * T_ + t;
      const PolicyPoint<A> q = policy_point<A>(to_float(lp[i]), to_float(old[i]), to_float(adv[i]), lo, hi, dual);
      glp[i] = from_float<T>(M[i] ? w * q.grad : A(0));
    }
  }
}

template <typename T>
ValueStats value_fwd(const T* v, const T* old, const T* ret, const uint8_t* M, int64_t B,
                     int64_t T_, double eps, int agg, int nt) {
  const RowSums s = aggregate(M, B, T_, agg, nt, [&](int64_t b) {
    const int64_t o = b * T_;
    return value_row(v + o, old + o, ret + o, M + o, T_, eps);
  });
  return ValueStats{0.5 * s.loss, s.clip};
}

template <typename T>
void value_bwd(double grad, const T* v, const T* old, const T* ret, const uint8_t* M,
                       T* gv, int64_t B, int64_t T_, double eps, int agg, int nt) {
  using A = acc_t<T>;
  const Counts c = count_mask(M, B, T_, nt);
  const A e = eps >= 0 ? A(eps) : std::numeric_limits<A>::infinity();
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t b = 0; b < B; ++b) {
    const A w = static_cast<A>(0.5 * grad * row_weight(c, b, T_, agg));
#pragma omp simd
    for (int64_t t = 0; t < T_; ++t) {
      const int64_t i = b * T_ + t;
      const ValuePoint<A> q = value_point<A>(to_float(v[i]), to_float(old[i]), to_float(ret[i]), e);
      gv[i] = from_float<T>(M[i] ? w * q.grad : A(0));
    }
  }
}

}  // namespace

PolicyStats policy_loss_forward(DType dt, const void* lp, const void* old_lp, const void* adv,
                                const uint8_t* mask, int64_t B, int64_t T, double clip_low,
                                double clip_high, double dual_clip, int agg, int nthreads) {
  const int nt = threads(nthreads, B * T);
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
  const int nt = threads(nthreads, B * T);
  const PolicyParams p{clip_low, clip_high, dual_clip};
  CRS_DISPATCH_FLOAT(dt, policy_bwd(grad, static_cast<const scalar_t*>(lp),
                                    static_cast<const scalar_t*>(old_lp),
                                    static_cast<const scalar_t*>(adv), mask,
                                    static_cast<scalar_t*>(grad_lp), B, T, p, agg, nt));
}

ValueStats value_loss_forward(DType dt, const void* v, const void* old_v, const void* ret,
                              const uint8_t* mask, int64_t B, int64_t T, double clip, int agg,
                              int nthreads) {
  const int nt = threads(nthreads, B * T);
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
  const int nt = threads(nthreads, B * T);
  CRS_DISPATCH_FLOAT(dt, value_bwd(grad, static_cast<const scalar_t*>(v),
                                   static_cast<const scalar_t*>(old_v),
                                   static_cast<const scalar_t*>(ret), mask,
                                   static_cast<scalar_t*>(grad_v), B, T, clip, agg, nt));
}

}  // namespace crs
