// Entry points of the CPU kernels. Raw pointers, row-major contiguous [B, T] (or [N, V])
// buffers, a dtype code for the float inputs/outputs, uint8 masks, int64 indices.
// `nthreads` <= 0 means OpenMP's default.
#pragma once

#include <cstdint>

#include "common.h"

namespace crs {

// ---- advantages (csrc/gae) ----
enum class GaeMode : int { Verl = 0, Trl = 1, OpenRLHF = 2 };
void gae(DType dt, const void* rewards, const void* values, const uint8_t* mask, void* adv,
         void* ret, int64_t B, int64_t T, double gamma, double lam, int mode, bool whiten,
         int nthreads);
void masked_whiten(DType dt, const void* x, const uint8_t* mask, void* out, int64_t n,
                   bool shift_mean, bool unbiased, int nthreads);
void reinforce_returns(DType dt, const void* rewards, const uint8_t* mask, void* out, int64_t B,
                       int64_t T, double gamma, int nthreads);
// mode 0 = GRPO, 1 = RLOO.
void group_advantages(DType dt, const void* scores, const int64_t* groups, void* out, int64_t B,
                      int mode, double eps, bool norm_by_std);

// ---- KL penalty (csrc/kl) ----
// kind: 0 k1, 1 abs, 2 k2, 3 k3; straight: value of `kind`, gradient of k2.
void kl_forward(DType dt, const void* lp, const void* ref, void* out, int64_t n, int kind,
                bool straight, double clamp, int nthreads);
void kl_backward(DType dt, const void* grad, const void* lp, const void* ref, void* grad_lp,
                 int64_t n, int kind, bool straight, double clamp, int nthreads);

// ---- token rewards (csrc/token_rewards) ----
void token_rewards(DType dt, const void* scores, const void* kl, const uint8_t* mask, void* out,
                   int64_t B, int64_t T, double beta, double clip_lo, double clip_hi, int nthreads);

// ---- PPO losses (csrc/ppo_loss) ----
// agg: 0 token-mean, 1 seq-mean-token-sum, 2 seq-mean-token-mean, 3 seq-mean-token-sum-norm.
struct PolicyStats { double loss, clipfrac, clipfrac_lower, approx_kl; };
PolicyStats policy_loss_forward(DType dt, const void* lp, const void* old_lp, const void* adv,
                                const uint8_t* mask, int64_t B, int64_t T, double clip_low,
                                double clip_high, double dual_clip, int agg, int nthreads);
void policy_loss_backward(DType dt, double grad, const void* lp, const void* old_lp,
                          const void* adv, const uint8_t* mask, void* grad_lp, int64_t B,
                          int64_t T, double clip_low, double clip_high, double dual_clip, int agg,
                          int nthreads);
struct ValueStats { double loss, clipfrac; };
ValueStats value_loss_forward(DType dt, const void* v, const void* old_v, const void* ret,
                              const uint8_t* mask, int64_t B, int64_t T, double clip, int agg,
                              int nthreads);
void value_loss_backward(DType dt, double grad, const void* v, const void* old_v, const void* ret,
                         const uint8_t* mask, void* grad_v, int64_t B, int64_t T, double clip,
                         int agg, int nthreads);

// ---- log-probs (csrc/logprobs) ----
// Row statistics of z/tau over [N, V] logits: lp (label log-prob), ent, lse (all float32/64
// like the accumulator). Rows whose label equals ignore_index give lp = ent = 0.
void logprobs_forward(DType dt, const void* logits, const int64_t* labels, void* lp, void* ent,
                      void* lse, int64_t N, int64_t V, double inv_tau, int64_t ignore_index,
                      int nthreads);
// grad_logits = inv_tau * (g_lp * (onehot - p) - g_ent * p * (log p + H)); g_ent may be null.
void logprobs_backward(DType dt, const void* logits, const int64_t* labels, const void* g_lp,
                       const void* g_ent, const void* lse, const void* ent, void* grad_logits,
                       int64_t N, int64_t V, double inv_tau, int64_t ignore_index, int nthreads);
// Online-softmax state for vocabulary blocks of raw logits z[N, C] (columns v0..v0+C), in
// float32 or float64 (dt). state: m, s, w (running max of z/tau, sum exp, sum exp*(x - m)) and
// the label's scaled logit, each [N] of the block dtype.
void logprobs_block_update(DType dt, const void* z, int64_t ldz, const int64_t* labels, void* m,
                           void* s, void* w, void* zy, int64_t N, int64_t C, int64_t v0,
                           double inv_tau, int nthreads);
void logprobs_block_finish(DType dt, const int64_t* labels, const void* m, const void* s,
                           const void* w, const void* zy, void* lp, void* ent, void* lse,
                           int64_t N, int64_t V, int64_t ignore_index, int nthreads);
// In place: z[N, C] raw logits of columns v0.. -> their gradient (as logprobs_backward).
void logprobs_block_grad(DType dt, void* z, int64_t ldz, const int64_t* labels, const void* g_lp,
                         const void* g_ent, const void* lse, const void* ent, int64_t N,
                         int64_t C, int64_t v0, double inv_tau, int64_t ignore_index,
                         int nthreads);

// ---- top-k (csrc/topk) ----
// Merges a float32 score block s[B, C] (items v0..v0+C, plus bias[v0..] if not null) into the
// running per-row top-k (vals descending, ties by lower index; empty slots idx = -1).
// excl: [B, m] sorted ascending per row, -1 padding first (or null).
void topk_block_merge(const float* s, int64_t lds, const float* bias, const int64_t* excl,
                      int64_t m, float* vals, int64_t* idx, int64_t B, int64_t C, int64_t v0,
                      int64_t k, int nthreads);

}  // namespace crs
