"""Token log-probs and entropy straight from hidden states and the LM head, never
materialising the [N, V] logits: vocabulary blocks go through BLAS, the online softmax
statistics and the gradient epilogue through the C++ kernels. Extra memory O(N * chunk)."""

import torch

from .._native import _C, acc_dtype, dtype_code, empty, nthreads, ptr
from ..kernels import launcher
from ..kernels._rows import vocab_chunk as default_chunk
from . import _validate as V
from . import reference
from ._dispatch import call, call_autograd, check_backend_arg, eager_autograd, resolve_backend
from .token_logprobs import check_labels


def _blocks(vocab: int, chunk: int):
    for v0 in range(0, vocab, chunk):
        yield v0, min(chunk, vocab - v0)


@torch.library.custom_op("crs_fast::linear_logprobs", mutates_args=())
def _llp_op(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    ignore_index: int,
    chunk_size: int,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    y = labels.to(torch.int64).contiguous()
    check_labels(y, weight.shape[0], ignore_index)
    if backend == "triton":
        tk = launcher("linear_logprobs", "triton")
        return tk.forward(hidden.contiguous(), weight.contiguous(), y, 1.0 / temperature, ignore_index)
    acc = acc_dtype(hidden)
    h = hidden.to(acc).contiguous()
    vocab, n = weight.shape[0], h.shape[0]
    m = torch.full((n,), float("-inf"), dtype=acc)
    s, w, zy = (torch.zeros(n, dtype=acc) for _ in range(3))
    buf = torch.empty(n * min(chunk_size, vocab), dtype=acc)
    dt, inv_tau, nt = dtype_code(h), 1.0 / temperature, nthreads()
    for v0, c in _blocks(vocab, chunk_size):
        z = buf[: n * c].view(n, c)
        torch.mm(h, weight[v0 : v0 + c].to(acc).T, out=z)
        _C.logprobs_block_update(dt, ptr(z), c, ptr(y), ptr(m), ptr(s), ptr(w), ptr(zy), n, c, v0, inv_tau, nt)
    lp, ent, lse = (empty((n,), h, acc) for _ in range(3))
    _C.logprobs_block_finish(
        dt, ptr(y), ptr(m), ptr(s), ptr(w), ptr(zy), ptr(lp), ptr(ent), ptr(lse), n, vocab, ignore_index, nt
    )
    return lp, ent, lse


@_llp_op.register_fake
def _(hidden, weight, labels, temperature, ignore_index, chunk_size, backend):
    acc = acc_dtype(hidden)
    return tuple(empty((hidden.shape[0],), hidden, acc) for _ in range(3))


@torch.library.custom_op("crs_fast::linear_logprobs_backward", mutates_args=())
def _llp_bwd_op(
    grad_lp: torch.Tensor | None,
    grad_ent: torch.Tensor | None,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    lse: torch.Tensor,
    ent: torch.Tensor,
    temperature: float,
    ignore_index: int,
    chunk_size: int,
    backend: str,
    need_hidden: bool = True,
    need_weight: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(d hidden, d weight); a gradient nobody needs (``need_hidden`` / ``need_weight`` False)
    comes back as zeros without its matmul (the CPU path; Triton computes both)."""
    y = labels.to(torch.int64).contiguous()
    # d weight sums over rows: an ignored row's hidden state (NaN, say) must not enter it. A select,
    # not `if ignored.any()`, which would wait for the device on every backward call.
    zero = torch.zeros((), dtype=hidden.dtype, device=hidden.device)
    hidden = torch.where((y == ignore_index)[:, None], zero, hidden)
    if backend == "triton":
        tk = launcher("linear_logprobs", "triton")
        h, w = hidden.contiguous(), weight.contiguous()
        return tk.backward(grad_lp, grad_ent, h, w, y, lse, ent, 1.0 / temperature, ignore_index, chunk_size)
    acc = acc_dtype(hidden)
    h = hidden.to(acc).contiguous()
    vocab, n = weight.shape[0], h.shape[0]
    glp = None if grad_lp is None else grad_lp.to(acc).contiguous()
    gent = None if grad_ent is None else grad_ent.to(acc).contiguous()
    lse, ent = lse.contiguous(), ent.contiguous()
    dh = torch.zeros_like(h)
    dw = (torch.empty if need_weight else torch.zeros)(weight.shape, dtype=weight.dtype)
    buf = torch.empty(n * min(chunk_size, vocab), dtype=acc)
    dt, inv_tau, nt = dtype_code(h), 1.0 / temperature, nthreads()
    for v0, c in _blocks(vocab, chunk_size):
        wb = weight[v0 : v0 + c].to(acc)
        z = buf[: n * c].view(n, c)
        torch.mm(h, wb.T, out=z)
        _C.logprobs_block_grad(
            dt, ptr(z), c, ptr(y), ptr(glp), ptr(gent), ptr(lse), ptr(ent), n, c, v0, inv_tau, ignore_index, nt
        )
        if need_hidden:
            dh.addmm_(z, wb)
        if not need_weight:
            continue
        if dw.dtype == acc:
            torch.mm(z.T, h, out=dw[v0 : v0 + c])
        else:
            dw[v0 : v0 + c] = z.T @ h
    return dh.to(hidden.dtype), dw


@_llp_bwd_op.register_fake
def _(grad_lp, grad_ent, hidden, weight, labels, lse, ent, temperature, ignore_index, chunk_size, backend, *needs):
    return empty(hidden.shape, hidden), empty(weight.shape, weight)


def _llp_setup(ctx, inputs, output):
    hidden, weight, labels, temperature, ignore_index, chunk_size, backend = inputs
    ctx.save_for_backward(hidden, weight, labels, output[2], output[1])
    ctx.args = (temperature, ignore_index, chunk_size, backend)
    ctx.mark_non_differentiable(output[2])


def _llp_backward(ctx, grad_lp, grad_ent, unused):
    hidden, weight, labels, lse, ent = ctx.saved_tensors
    need_h, need_w = bool(ctx.needs_input_grad[0]), bool(ctx.needs_input_grad[1])
    dh, dw = call(_llp_bwd_op, grad_lp, grad_ent, hidden, weight, labels, lse, ent, *ctx.args, need_h, need_w)
    return dh if need_h else None, dw if need_w else None, None, None, None, None, None


_llp_op.register_autograd(_llp_backward, setup_context=_llp_setup)
_EAGER_LLP_OP = eager_autograd(_llp_op, _llp_setup, _llp_backward)


def linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 1.0,
    entropy: bool = False,
    ignore_index: int = -100,
    chunk_size: int | None = None,
    backend: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """:func:`token_logprobs` of the logits ``hidden @ weight.T`` without materialising them.

    ``hidden`` [..., H], ``weight`` [V, H] (the LM head), ``labels`` [...]. The vocabulary is
    walked in blocks of ``chunk_size`` columns (default: :func:`default_chunk`) with an online
    max / sum / weighted sum; the backward pass recomputes each block and accumulates
    ``d hidden`` and ``d weight``. Extra memory O(N * chunk_size). Float32 results. Non-finite
    values as :func:`token_logprobs` (rows whose label is ``ignore_index`` reach neither output
    nor ``d weight``).
    """
    V.tensor("hidden", hidden, min_ndim=1, floating=True)
    V.tensor("weight", weight, ndim=2, floating=True)
    V.tensor("labels", labels, integer=True)
    V.same_device("hidden", hidden, weight=weight, labels=labels)
    V.same_dtype("hidden", hidden, weight=weight)
    if weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"`weight` must have shape [V, {hidden.shape[-1]}] (hidden size last), got {list(weight.shape)}"
        )
    if labels.shape != hidden.shape[:-1]:
        raise ValueError(f"`labels` must have shape {list(hidden.shape[:-1])}, got {list(labels.shape)}")
    V.non_empty("hidden", hidden)
    V.non_empty("weight", weight)
    temperature = V.number("temperature", temperature, min_value=0.0, strict=True)
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"`chunk_size` must be a positive int or None, got {chunk_size!r}")
    # tl.dot has no float64 path on every GPU: the Triton kernel takes float32/float16/bfloat16
    limits = {"triton": "it runs linear_logprobs in float32/float16/bfloat16, not float64"}
    be = resolve_backend(
        check_backend_arg(backend), hidden.device, "linear_logprobs", limits if hidden.dtype == torch.float64 else None
    )
    if be == "torch":
        check_labels(labels, weight.shape[0], ignore_index)
        lp, ent = reference.linear_logprobs(hidden, weight, labels, temperature=temperature, ignore_index=ignore_index)
    else:
        flat_h = hidden.reshape(-1, hidden.shape[-1])
        chunk = chunk_size or default_chunk(flat_h.shape[0])
        lp, ent, _ = call_autograd(
            _llp_op, _EAGER_LLP_OP, flat_h, weight, labels.reshape(-1), temperature, ignore_index, chunk, be
        )
        lp, ent = lp.view(labels.shape), ent.view(labels.shape)
    return (lp, ent) if entropy else lp
