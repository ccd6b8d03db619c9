"""Token log-probs and entropy from logits in one pass, without a second [N, V] buffer."""

import torch

from .._native import _C, acc_dtype, dtype_code, empty, nthreads, ptr
from ..kernels import launcher
from . import _validate as V
from . import reference
from ._dispatch import call, call_autograd, check_backend_arg, eager_autograd, resolve_backend


def check_labels(labels: torch.Tensor, vocab: int, ignore_index: int) -> None:
    """Raise ValueError unless every label is in [0, vocab) or equals ``ignore_index`` (reads data)."""
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= vocab))
    if bool(bad.any()):
        first = labels[bad][0].item()
        raise ValueError(
            f"`labels` must lie in [0, {vocab}) or equal ignore_index={ignore_index}; "
            f"found {first} ({int(bad.sum())} out of range)"
        )


@torch.library.custom_op("crs_fast::token_logprobs", mutates_args=())
def _lp_op(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float, ignore_index: int, backend: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    vocab = logits.shape[-1]
    z = logits.reshape(-1, vocab).contiguous()
    y = labels.reshape(-1).to(torch.int64).contiguous()
    check_labels(y, vocab, ignore_index)
    acc = acc_dtype(logits)
    if backend in ("triton", "cuda"):
        tk = launcher("token_logprobs", backend)
        return tuple(x.to(acc).view(labels.shape) for x in tk.forward(z, y, 1.0 / temperature, ignore_index))
    lp, ent, lse = (empty(labels.shape, logits, acc) for _ in range(3))
    _C.logprobs_forward(
        dtype_code(z),
        ptr(z),
        ptr(y),
        ptr(lp),
        ptr(ent),
        ptr(lse),
        z.shape[0],
        vocab,
        1.0 / temperature,
        ignore_index,
        nthreads(),
    )
    return lp, ent, lse


@_lp_op.register_fake
def _(logits, labels, temperature, ignore_index, backend):
    acc = acc_dtype(logits)
    return tuple(empty(labels.shape, logits, acc) for _ in range(3))


@torch.library.custom_op("crs_fast::token_logprobs_backward", mutates_args=())
def _lp_bwd_op(
    grad_lp: torch.Tensor | None,
    grad_ent: torch.Tensor | None,
    logits: torch.Tensor,
    labels: torch.Tensor,
    lse: torch.Tensor,
    ent: torch.Tensor,
    temperature: float,
    ignore_index: int,
    backend: str,
) -> torch.Tensor:
    vocab = logits.shape[-1]
    z = logits.reshape(-1, vocab).contiguous()
    y = labels.reshape(-1).to(torch.int64).contiguous()
    acc = acc_dtype(logits)
    glp = torch.zeros_like(lse) if grad_lp is None else grad_lp.to(acc).contiguous()
    gent = None if grad_ent is None else grad_ent.to(acc).contiguous()
    if backend in ("triton", "cuda"):
        tk = launcher("token_logprobs", backend)
        kdt = torch.float32 if backend == "triton" else acc  # the Triton kernel keeps float32 statistics
        flat = [t.reshape(-1).to(kdt).contiguous() for t in (glp, lse, ent)]
        gent_f = None if gent is None else gent.reshape(-1).to(kdt).contiguous()
        g = tk.backward(z, y, flat[0], gent_f, flat[1], flat[2], 1.0 / temperature, ignore_index)
        return g.view(logits.shape)
    out = empty(logits.shape, logits)
    _C.logprobs_backward(
        dtype_code(z),
        ptr(z),
        ptr(y),
        ptr(glp),
        ptr(gent),
        ptr(lse.contiguous()),
        ptr(ent.contiguous()),
        ptr(out),
        z.shape[0],
        vocab,
        1.0 / temperature,
        ignore_index,
        nthreads(),
    )
    return out


@_lp_bwd_op.register_fake
def _(grad_lp, grad_ent, logits, labels, lse, ent, temperature, ignore_index, backend):
    return empty(logits.shape, logits)


def _lp_setup(ctx, inputs, output):
    logits, labels, temperature, ignore_index, backend = inputs
    ctx.save_for_backward(logits, labels, output[2], output[1])
    ctx.args = (temperature, ignore_index, backend)
    ctx.mark_non_differentiable(output[2])


def _lp_backward(ctx, grad_lp, grad_ent, unused):
    logits, labels, lse, ent = ctx.saved_tensors
    g = call(_lp_bwd_op, grad_lp, grad_ent, logits, labels, lse, ent, *ctx.args)
    return g, None, None, None, None


_lp_op.register_autograd(_lp_backward, setup_context=_lp_setup)
_EAGER_LP_OP = eager_autograd(_lp_op, _lp_setup, _lp_backward)


def token_logprobs(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 1.0,
    entropy: bool = False,
    ignore_index: int = -100,
    backend: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of each label under ``softmax(logits / temperature)`` and, with ``entropy=True``,
    the entropy ``H = logsumexp(z) - sum softmax(z) * z`` of ``z = logits / temperature``.

    ``logits`` [..., V] (fp32/bf16/fp16/fp64), ``labels`` [...] integer; labels equal to
    ``ignore_index`` give 0 for both. Results are float32 (float64 for float64 logits),
    ``lp <= 0`` and ``0 <= H <= log V``. Differentiable in ``logits``:
    ``d lp/dz = (onehot(y) - p)/tau``, ``dH/dz = -p (log p + H)/tau``. ``-inf`` logits (a masked
    vocabulary) are allowed: their ``p log p`` terms are 0 and their gradient 0; a row with no
    finite logit has no distribution and gives NaN for both, on every backend. A NaN logit makes
    its row NaN; rows whose label is ``ignore_index`` are never read.
    """
    V.tensor("logits", logits, min_ndim=1, floating=True)
    V.tensor("labels", labels, integer=True)
    if labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"`labels` must have shape {list(logits.shape[:-1])} (logits without the vocabulary "
            f"dimension), got {list(labels.shape)}"
        )
    V.same_device("logits", logits, labels=labels)
    V.non_empty("logits", logits)
    temperature = V.number("temperature", temperature, min_value=0.0, strict=True)
    if not isinstance(ignore_index, int) or isinstance(ignore_index, bool):
        raise TypeError(f"`ignore_index` must be an int, got {type(ignore_index).__name__}")
    be = resolve_backend(check_backend_arg(backend), logits.device, "token_logprobs")
    if be == "torch":
        check_labels(labels, logits.shape[-1], ignore_index)
        lp, ent = reference.token_logprobs(logits, labels, temperature=temperature, ignore_index=ignore_index)
    else:
        lp, ent, _ = call_autograd(_lp_op, _EAGER_LP_OP, logits, labels, temperature, ignore_index, be)
    return (lp, ent) if entropy else lp
