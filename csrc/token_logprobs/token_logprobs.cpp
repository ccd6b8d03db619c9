// Token log-probs and entropy of softmax(z / tau) over the vocabulary, one row at a time:
// a max pass and an exp pass over the same row (which stays in cache), no [N, V] buffer.
//   lp = (z_y/tau - m) - log S,  lse = m + log S,  H = log S - sum(e * (z/tau - m)) / S,
// with m the row max of z/tau and S = sum exp(z/tau - m) >= 1, so lp <= 0 and H >= 0 hold
// in floating point. The block functions run the same statistics online over vocabulary
// blocks (the fused LM head), rescaling the running sums when the running max grows.
#include <algorithm>

#include "../kernels.h"

namespace crs {
namespace {

template <typename A>
inline void finish_row(A zy_minus_m, A m, A s, A w, A log_v, A* lp, A* ent, A* lse) {
  const A log_s = std::log(s);
  *lp = vmin(zy_minus_m - log_s, A(0));
  *lse = m + log_s;
  *ent = vclamp(log_s - w / s, A(0), log_v);
}

template <typename T>
void fwd_impl(const T* Z, const int64_t* labels, acc_t<T>* LP, acc_t<T>* ENT,
                      acc_t<T>* LSE, int64_t N, int64_t V, double inv_tau_d, int64_t ignore,
                      int nt) {
  using A = acc_t<T>;
  const A inv_tau = static_cast<A>(inv_tau_d);
  const A log_v = std::log(static_cast<A>(V));
#pragma omp parallel for num_threads(nt) schedule(dynamic, 16)
  for (int64_t n = 0; n < N; ++n) {
    const int64_t y = labels[n];
    if (y == ignore) { LP[n] = 0; ENT[n] = 0; LSE[n] = 0; continue; }
    const T* row = Z + n * V;
    A m = -std::numeric_limits<A>::infinity();
#pragma omp simd reduction(max : m)
    for (int64_t v = 0; v < V; ++v) m = std::max(m, A(to_float(row[v])));
    m *= inv_tau;
    A s = 0, w = 0;
#pragma omp simd reduction(+ : s, w)
    for (int64_t v = 0; v < V; ++v) {
      const A x = A(to_float(row[v])) * inv_tau - m;
      const A e = fast_exp(x);
      s += e;
      w += xlogx_term(e, x);
    }
    finish_row<A>(A(to_float(row[y])) * inv_tau - m, m, s, w, log_v, &LP[n], &ENT[n], &LSE[n]);
  }
}

template <typename T>
void bwd_impl(const T* Z, const int64_t* labels, const acc_t<T>* GLP,
                      const acc_t<T>* GENT, const acc_t<T>* LSE, const acc_t<T>* ENT, T* G,
                      int64_t N, int64_t V, double inv_tau_d, int64_t ignore, int nt) {
  using A = acc_t<T>;
  const A inv_tau = static_cast<A>(inv_tau_d);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 16)
  for (int64_t n = 0; n < N; ++n) {
    const int64_t y = labels[n];
    T* g = G + n * V;
    if (y == ignore) {
      for (int64_t v = 0; v < V; ++v) g[v] = from_float<T>(0.0);
      continue;
    }
    const T* row = Z + n * V;
    const A gl = GLP[n], ge = GENT ? GENT[n] : A(0), lse = LSE[n], h = ENT[n];
#pragma omp simd
    for (int64_t v = 0; v < V; ++v) {
      const A logp = A(to_float(row[v])) * inv_tau - lse;
      const A p = fast_exp(logp);
      g[v] = from_float<T>(inv_tau * (-gl * p - ge * xlogx_term(p, logp + h)));
    }
    const A logp = A(to_float(row[y])) * inv_tau - lse;
    const A p = fast_exp(logp);
    g[y] = from_float<T>(inv_tau * (gl * (A(1) - p) - ge * xlogx_term(p, logp + h)));
  }
}

}  // namespace

void logprobs_forward(DType dt, const void* logits, const int64_t* labels, void* lp, void* ent,
                      void* lse, int64_t N, int64_t V, double inv_tau, int64_t ignore_index,
                      int nthreads) {
  const int nt = threads(nthreads, N * V);
  CRS_DISPATCH_FLOAT(dt, {
    using A = acc_t<scalar_t>;
    fwd_impl(static_cast<const scalar_t*>(logits), labels, static_cast<A*>(lp),
             static_cast<A*>(ent), static_cast<A*>(lse), N, V, inv_tau, ignore_index, nt);
  });
}

void logprobs_backward(DType dt, const void* logits, const int64_t* labels, const void* g_lp,
                       const void* g_ent, const void* lse, const void* ent, void* grad_logits,
                       int64_t N, int64_t V, double inv_tau, int64_t ignore_index, int nthreads) {
  const int nt = threads(nthreads, N * V);
  CRS_DISPATCH_FLOAT(dt, {
    using A = acc_t<scalar_t>;
    bwd_impl(static_cast<const scalar_t*>(logits), labels, static_cast<const A*>(g_lp),
             static_cast<const A*>(g_ent), static_cast<const A*>(lse), static_cast<const A*>(ent),
             static_cast<scalar_t*>(grad_logits), N, V, inv_tau, ignore_index, nt);
  });
}

namespace {

template <typename A>
void block_update(const A* z, int64_t ldz, const int64_t* labels, A* M, A* S, A* W, A* ZY,
                          int64_t N, int64_t C, int64_t v0, double inv_tau_d, int nt) {
  const A inv_tau = static_cast<A>(inv_tau_d);
  const A neg_inf = -std::numeric_limits<A>::infinity();
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    const A* row = z + n * ldz;
    A bm = neg_inf;
#pragma omp simd reduction(max : bm)
    for (int64_t v = 0; v < C; ++v) bm = std::max(bm, row[v]);
    bm *= inv_tau;
    const A m_old = M[n];
    const A m = std::max(m_old, bm);
    A s = 0, w = 0;
    if (m_old > neg_inf) {  // rescale the running sums to the new max
      const A delta = m_old - m;
      const A scale = std::exp(delta);
      s = S[n] * scale;
      w = scale * (W[n] + delta * S[n]);
    }
#pragma omp simd reduction(+ : s, w)
    for (int64_t v = 0; v < C; ++v) {
      const A x = row[v] * inv_tau - m;
      const A e = fast_exp(x);
      s += e;
      w += xlogx_term(e, x);
    }
    M[n] = m; S[n] = s; W[n] = w;
    const int64_t y = labels[n];
    if (y >= v0 && y < v0 + C) ZY[n] = row[y - v0] * inv_tau;
  }
}

template <typename A>
void block_finish(const int64_t* labels, const A* M, const A* S, const A* W, const A* ZY, A* LP,
                  A* ENT, A* LSE, int64_t N, int64_t V, int64_t ignore, int nt) {
  const A log_v = std::log(static_cast<A>(V));
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    if (labels[n] == ignore) { LP[n] = 0; ENT[n] = 0; LSE[n] = 0; continue; }
    finish_row<A>(ZY[n] - M[n], M[n], S[n], W[n], log_v, &LP[n], &ENT[n], &LSE[n]);
  }
}

template <typename A>
void block_grad(A* z, int64_t ldz, const int64_t* labels, const A* GLP, const A* GENT,
                        const A* LSE, const A* ENT, int64_t N, int64_t C, int64_t v0,
                        double inv_tau_d, int64_t ignore, int nt) {
  const A inv_tau = static_cast<A>(inv_tau_d);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t n = 0; n < N; ++n) {
    A* row = z + n * ldz;
    const int64_t y = labels[n];
    if (y == ignore) {
      for (int64_t v = 0; v < C; ++v) row[v] = 0;
      continue;
    }
    const A gl = GLP ? GLP[n] : A(0), ge = GENT ? GENT[n] : A(0), lse = LSE[n], h = ENT[n];
#pragma omp simd
    for (int64_t v = 0; v < C; ++v) {
      const A logp = row[v] * inv_tau - lse;
      const A p = fast_exp(logp);
      row[v] = inv_tau * (-gl * p - ge * xlogx_term(p, logp + h));
    }
    if (y >= v0 && y < v0 + C) row[y - v0] += inv_tau * gl;
  }
}

}  // namespace

#define CRS_DISPATCH_ACC(DT, BODY)                                              \
  switch (DT) {                                                                 \
    case DType::F32: { using A = float; BODY; break; }                          \
    case DType::F64: { using A = double; BODY; break; }                         \
    default: throw std::invalid_argument("crs_fast._C: blocks are float32 or float64"); \
  }

void logprobs_block_update(DType dt, const void* z, int64_t ldz, const int64_t* labels, void* m,
                           void* s, void* w, void* zy, int64_t N, int64_t C, int64_t v0,
                           double inv_tau, int nthreads) {
  const int nt = threads(nthreads, N * C);
  CRS_DISPATCH_ACC(dt, block_update(static_cast<const A*>(z), ldz, labels, static_cast<A*>(m),
                                    static_cast<A*>(s), static_cast<A*>(w), static_cast<A*>(zy), N,
                                    C, v0, inv_tau, nt));
}

void logprobs_block_finish(DType dt, const int64_t* labels, const void* m, const void* s,
                           const void* w, const void* zy, void* lp, void* ent, void* lse,
                           int64_t N, int64_t V, int64_t ignore_index, int nthreads) {
  const int nt = threads(nthreads, N);
  CRS_DISPATCH_ACC(dt, block_finish(labels, static_cast<const A*>(m), static_cast<const A*>(s),
                                    static_cast<const A*>(w), static_cast<const A*>(zy),
                                    static_cast<A*>(lp), static_cast<A*>(ent), static_cast<A*>(lse),
                                    N, V, ignore_index, nt));
}

void logprobs_block_grad(DType dt, void* z, int64_t ldz, const int64_t* labels, const void* g_lp,
                         const void* g_ent, const void* lse, const void* ent, int64_t N,
                         int64_t C, int64_t v0, double inv_tau, int64_t ignore_index,
                         int nthreads) {
  const int nt = threads(nthreads, N * C);
  CRS_DISPATCH_ACC(dt, block_grad(static_cast<A*>(z), ldz, labels, static_cast<const A*>(g_lp),
                                  static_cast<const A*>(g_ent), static_cast<const A*>(lse),
                                  static_cast<const A*>(ent), N, C, v0, inv_tau, ignore_index, nt));
}

}  // namespace crs
