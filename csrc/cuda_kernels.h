// Entry points of the CUDA kernels (csrc/<op>/<op>_cuda.cu), compiled when CMake finds nvcc.
// Like the CPU kernels: raw device pointers of contiguous buffers, a dtype code
// (crs_fast/ops/_lib.py: 0 f32, 1 f16, 2 bf16, 3 f64), uint8 masks, int64 indices, and the
// caller's CUDA stream (cudaStream_t as void*). Launch errors throw std::runtime_error.
#pragma once

#include <cstdint>

namespace crs::cuda {

// ---- KL penalty: kind 0 k1, 1 abs, 2 k2, 3 k3 (verl's clamps); straight: gradient of k2 ----
void kl_forward(int dt, const void* lp, const void* ref, void* out, int64_t n, int kind,
                bool straight, double clamp, void* stream);
void kl_backward(int dt, const void* grad, const void* lp, const void* ref, void* grad_lp,
                 int64_t n, int kind, bool straight, double clamp, void* stream);

// ---- token rewards: -beta * kl * m, plus clip(score) at last[b] (index of the last m = 1) ----
void token_rewards(int dt, const void* scores, const void* kl, const uint8_t* mask,
                   const int64_t* last, void* out, int64_t B, int64_t T, double beta, double lo,
                   double hi, void* stream);

// ---- GAE scan (one block per row, affine block scans over time tiles). Raw advantages in
// float32 (float64 for dt = 3), returns in dt. mode 0 verl, 1 TRL, 2 OpenRLHF. ----
void gae_scan(int dt, const void* rewards, const void* values, const uint8_t* mask,
              const int64_t* last, void* adv, void* ret, int64_t B, int64_t T, double gamma,
              double gamma_lam, int mode, void* stream);

// ---- PPO losses: per-row partial sums, double [B, 5] = (loss, clip, lower clip, kl, tokens);
// policy: x = lp, y = old lp, z = advantages, p = (clip_low, clip_high, dual_clip < 0 for none);
// value: x = v, y = old v, z = returns, p0 = clip (inf for none). Backward: out = w[row] * dL/dx
// on masked-in tokens, 0 elsewhere (w float32 [B]). ----
void loss_rows_forward(int dt, bool policy, const void* x, const void* y, const void* z,
                       const uint8_t* mask, double* parts, int64_t B, int64_t T, double p0,
                       double p1, double p2, void* stream);
void loss_rows_backward(int dt, bool policy, const void* x, const void* y, const void* z,
                        const uint8_t* mask, const float* w, void* out, int64_t B, int64_t T,
                        double p0, double p1, double p2, void* stream);

// ---- token log-probs and entropy of z / tau over [N, V] logits: lp, ent, lse float32 (float64
// for dt = 3) [N]; rows whose label is ignore_index give 0. Backward as the CPU kernel. ----
void logprobs_forward(int dt, const void* logits, const int64_t* labels, void* lp, void* ent,
                      void* lse, int64_t N, int64_t V, double inv_tau, int64_t ignore_index,
                      void* stream);
void logprobs_backward(int dt, const void* logits, const int64_t* labels, const void* g_lp,
                       const void* g_ent, const void* lse, const void* ent, void* grad_logits,
                       int64_t N, int64_t V, double inv_tau, int64_t ignore_index, void* stream);

// ---- top-k: merge a float32 score block s[B, C] (row stride lds; items v0..v0+C; plus bias
// if not null) into the running top-k vals/idx [B, k] (descending, ties by lower index; empty
// slots -inf / -1). excl [B, m] item indices (-1 padding) or null. k <= kMaxK. ----
constexpr int64_t kMaxK = 1024;
void topk_block_merge(const float* s, int64_t lds, const float* bias, const int64_t* excl,
                      int64_t m, float* vals, int64_t* idx, int64_t B, int64_t C, int64_t v0,
                      int64_t k, void* stream);

}  // namespace crs::cuda
