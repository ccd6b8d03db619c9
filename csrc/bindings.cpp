// pybind11 module crs_fast._C: thin adapters from Python ints (data pointers) to the kernels.
// No libtorch: crs_fast/ops passes data_ptr()s, sizes and dtype codes, and owns all checks.
#include <pybind11/pybind11.h>

#include "kernels.h"
#ifdef CRS_FAST_WITH_CUDA
#include "cuda_kernels.h"
#endif

namespace py = pybind11;
using crs::DType;
using ptr = std::uintptr_t;

template <typename P = void>
static P* cast(ptr p) { return reinterpret_cast<P*>(p); }

PYBIND11_MODULE(_C, mod) {
  mod.doc() = "crs_fast CPU kernels (torch-free; raw pointers from crs_fast.ops)";
  const auto nogil = py::call_guard<py::gil_scoped_release>();

  mod.def("gae", [](int dt, ptr r, ptr v, ptr m, ptr adv, ptr ret, int64_t B, int64_t T,
                    double gamma, double lam, int mode, bool whiten, int nt) {
    crs::gae(DType(dt), cast(r), cast(v), cast<uint8_t>(m), cast(adv), cast(ret), B, T, gamma, lam,
             mode, whiten, nt);
  }, nogil);
  mod.def("masked_whiten", [](int dt, ptr x, ptr m, ptr out, int64_t n, bool shift, bool unbiased,
                              int nt) {
    crs::masked_whiten(DType(dt), cast(x), cast<uint8_t>(m), cast(out), n, shift, unbiased, nt);
  }, nogil);
  mod.def("reinforce_returns", [](int dt, ptr r, ptr m, ptr out, int64_t B, int64_t T, double gamma,
                                  int nt) {
    crs::reinforce_returns(DType(dt), cast(r), cast<uint8_t>(m), cast(out), B, T, gamma, nt);
  }, nogil);
  mod.def("group_advantages", [](int dt, ptr s, ptr g, ptr out, int64_t B, int mode, double eps,
                                 bool norm) {
    crs::group_advantages(DType(dt), cast(s), cast<int64_t>(g), cast(out), B, mode, eps, norm);
  }, nogil);

  mod.def("kl_forward", [](int dt, ptr lp, ptr ref, ptr out, int64_t n, int kind, bool straight,
                           double clamp, int nt) {
    crs::kl_forward(DType(dt), cast(lp), cast(ref), cast(out), n, kind, straight, clamp, nt);
  }, nogil);
  mod.def("kl_backward", [](int dt, ptr g, ptr lp, ptr ref, ptr glp, int64_t n, int kind,
                            bool straight, double clamp, int nt) {
    crs::kl_backward(DType(dt), cast(g), cast(lp), cast(ref), cast(glp), n, kind, straight, clamp,
                     nt);
  }, nogil);

  mod.def("token_rewards", [](int dt, ptr s, ptr kl, ptr m, ptr out, int64_t B, int64_t T,
                              double beta, double lo, double hi, int nt) {
    crs::token_rewards(DType(dt), cast(s), cast(kl), cast<uint8_t>(m), cast(out), B, T, beta, lo,
                       hi, nt);
  }, nogil);

  mod.def("policy_loss_forward", [](int dt, ptr lp, ptr old, ptr adv, ptr m, int64_t B, int64_t T,
                                    double lo, double hi, double dual, int agg, int nt) {
    const auto s = crs::policy_loss_forward(DType(dt), cast(lp), cast(old), cast(adv),
                                            cast<uint8_t>(m), B, T, lo, hi, dual, agg, nt);
    return py::make_tuple(s.loss, s.clipfrac, s.clipfrac_lower, s.approx_kl);
  });
  mod.def("policy_loss_backward", [](int dt, double g, ptr lp, ptr old, ptr adv, ptr m, ptr glp,
                                     int64_t B, int64_t T, double lo, double hi, double dual,
                                     int agg, int nt) {
    crs::policy_loss_backward(DType(dt), g, cast(lp), cast(old), cast(adv), cast<uint8_t>(m),
                              cast(glp), B, T, lo, hi, dual, agg, nt);
  }, nogil);
  mod.def("value_loss_forward", [](int dt, ptr v, ptr old, ptr ret, ptr m, int64_t B, int64_t T,
                                   double clip, int agg, int nt) {
    const auto s = crs::value_loss_forward(DType(dt), cast(v), cast(old), cast(ret),
                                           cast<uint8_t>(m), B, T, clip, agg, nt);
    return py::make_tuple(s.loss, s.clipfrac);
  });
  mod.def("value_loss_backward", [](int dt, double g, ptr v, ptr old, ptr ret, ptr m, ptr gv,
                                    int64_t B, int64_t T, double clip, int agg, int nt) {
    crs::value_loss_backward(DType(dt), g, cast(v), cast(old), cast(ret), cast<uint8_t>(m),
                             cast(gv), B, T, clip, agg, nt);
  }, nogil);

  mod.def("logprobs_forward", [](int dt, ptr z, ptr y, ptr lp, ptr ent, ptr lse, int64_t N,
                                 int64_t V, double inv_tau, int64_t ignore, int nt) {
    crs::logprobs_forward(DType(dt), cast(z), cast<int64_t>(y), cast(lp), cast(ent), cast(lse), N,
                          V, inv_tau, ignore, nt);
  }, nogil);
  mod.def("logprobs_backward", [](int dt, ptr z, ptr y, ptr glp, ptr gent, ptr lse, ptr ent,
                                  ptr gz, int64_t N, int64_t V, double inv_tau, int64_t ignore,
                                  int nt) {
    crs::logprobs_backward(DType(dt), cast(z), cast<int64_t>(y), cast(glp), cast(gent), cast(lse),
                           cast(ent), cast(gz), N, V, inv_tau, ignore, nt);
  }, nogil);
  mod.def("logprobs_block_update", [](int dt, ptr z, int64_t ldz, ptr y, ptr m, ptr s, ptr w,
                                      ptr zy, int64_t N, int64_t C, int64_t v0, double inv_tau,
                                      int nt) {
    crs::logprobs_block_update(DType(dt), cast(z), ldz, cast<int64_t>(y), cast(m), cast(s), cast(w),
                               cast(zy), N, C, v0, inv_tau, nt);
  }, nogil);
  mod.def("logprobs_block_finish", [](int dt, ptr y, ptr m, ptr s, ptr w, ptr zy, ptr lp, ptr ent,
                                      ptr lse, int64_t N, int64_t V, int64_t ignore, int nt) {
    crs::logprobs_block_finish(DType(dt), cast<int64_t>(y), cast(m), cast(s), cast(w), cast(zy),
                               cast(lp), cast(ent), cast(lse), N, V, ignore, nt);
  }, nogil);
  mod.def("logprobs_block_grad", [](int dt, ptr z, int64_t ldz, ptr y, ptr glp, ptr gent, ptr lse,
                                    ptr ent, int64_t N, int64_t C, int64_t v0, double inv_tau,
                                    int64_t ignore, int nt) {
    crs::logprobs_block_grad(DType(dt), cast(z), ldz, cast<int64_t>(y), cast(glp), cast(gent),
                             cast(lse), cast(ent), N, C, v0, inv_tau, ignore, nt);
  }, nogil);

  mod.def("topk_block_merge", [](ptr s, int64_t lds, ptr bias, ptr excl, int64_t m, ptr vals,
                                 ptr idx, int64_t B, int64_t C, int64_t v0, int64_t k, int nt) {
    crs::topk_block_merge(cast<float>(s), lds, cast<float>(bias), cast<int64_t>(excl), m,
                          cast<float>(vals), cast<int64_t>(idx), B, C, v0, k, nt);
  }, nogil);

#ifdef CRS_FAST_WITH_CUDA
  // CUDA kernels: device pointers and the caller's stream (torch.cuda.current_stream().cuda_stream).
  namespace cu = crs::cuda;
  mod.attr("with_cuda") = true;
  mod.attr("cuda_max_k") = cu::kMaxK;
  mod.def("cuda_kl_forward", [](int dt, ptr lp, ptr ref, ptr out, int64_t n, int kind, bool straight,
                                double clamp, ptr st) {
    cu::kl_forward(dt, cast(lp), cast(ref), cast(out), n, kind, straight, clamp, cast(st));
  }, nogil);
  mod.def("cuda_kl_backward", [](int dt, ptr g, ptr lp, ptr ref, ptr glp, int64_t n, int kind,
                                 bool straight, double clamp, ptr st) {
    cu::kl_backward(dt, cast(g), cast(lp), cast(ref), cast(glp), n, kind, straight, clamp, cast(st));
  }, nogil);
  mod.def("cuda_token_rewards", [](int dt, ptr s, ptr kl, ptr m, ptr last, ptr out, int64_t B,
                                   int64_t T, double beta, double lo, double hi, ptr st) {
    cu::token_rewards(dt, cast(s), cast(kl), cast<uint8_t>(m), cast<int64_t>(last), cast(out), B, T,
                      beta, lo, hi, cast(st));
  }, nogil);
  mod.def("cuda_gae_scan", [](int dt, ptr r, ptr v, ptr m, ptr last, ptr adv, ptr ret, int64_t B,
                              int64_t T, double gamma, double gl, int mode, ptr st) {
    cu::gae_scan(dt, cast(r), cast(v), cast<uint8_t>(m), cast<int64_t>(last), cast(adv), cast(ret), B,
                 T, gamma, gl, mode, cast(st));
  }, nogil);
  mod.def("cuda_loss_rows_forward", [](int dt, bool policy, ptr x, ptr y, ptr z, ptr m, ptr parts,
                                       int64_t B, int64_t T, double p0, double p1, double p2, ptr st) {
    cu::loss_rows_forward(dt, policy, cast(x), cast(y), cast(z), cast<uint8_t>(m), cast<double>(parts),
                          B, T, p0, p1, p2, cast(st));
  }, nogil);
  mod.def("cuda_loss_rows_backward", [](int dt, bool policy, ptr x, ptr y, ptr z, ptr m, ptr w,
                                        ptr out, int64_t B, int64_t T, double p0, double p1, double p2,
                                        ptr st) {
    cu::loss_rows_backward(dt, policy, cast(x), cast(y), cast(z), cast<uint8_t>(m), cast<float>(w),
                           cast(out), B, T, p0, p1, p2, cast(st));
  }, nogil);
  mod.def("cuda_logprobs_forward", [](int dt, ptr z, ptr y, ptr lp, ptr ent, ptr lse, int64_t N,
                                      int64_t V, double inv_tau, int64_t ignore, ptr st) {
    cu::logprobs_forward(dt, cast(z), cast<int64_t>(y), cast(lp), cast(ent), cast(lse), N, V, inv_tau,
                         ignore, cast(st));
  }, nogil);
  mod.def("cuda_logprobs_backward", [](int dt, ptr z, ptr y, ptr glp, ptr gent, ptr lse, ptr ent,
                                       ptr gz, int64_t N, int64_t V, double inv_tau, int64_t ignore,
                                       ptr st) {
    cu::logprobs_backward(dt, cast(z), cast<int64_t>(y), cast(glp), cast(gent), cast(lse), cast(ent),
                          cast(gz), N, V, inv_tau, ignore, cast(st));
  }, nogil);
  mod.def("cuda_topk_block_merge", [](ptr s, int64_t lds, ptr bias, ptr excl, int64_t m, ptr vals,
                                      ptr idx, int64_t B, int64_t C, int64_t v0, int64_t k, ptr st) {
    cu::topk_block_merge(cast<float>(s), lds, cast<float>(bias), cast<int64_t>(excl), m,
                         cast<float>(vals), cast<int64_t>(idx), B, C, v0, k, cast(st));
  }, nogil);
#else
  mod.attr("with_cuda") = false;
#endif
}
