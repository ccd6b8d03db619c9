"""Top-k scoring of queries against an item catalog, item block by item block, without a
[B, N] score matrix."""

import torch

from .._native import _C, empty, nthreads, ptr
from ..kernels import launcher
from . import _validate as V
from . import reference
from ._dispatch import call, check_backend_arg, resolve_backend

TRITON_MAX_K = 64  # crs_fast.kernels.triton.topk_scores.MAX_K (not imported: Triton is optional)
CUDA_MAX_K = 1024  # crs_fast._C.cuda_max_k


def default_chunk(n_queries: int) -> int:
    """Item block: about 2M scores per block (8 MiB), 256 to 16384 items."""
    return max(256, min(16384, ((1 << 21) // max(n_queries, 1)) // 128 * 128))


@torch.library.custom_op("crs_fast::topk_scores", mutates_args=())
def _topk_op(
    queries: torch.Tensor,
    items: torch.Tensor,
    k: int,
    bias: torch.Tensor | None,
    exclude: torch.Tensor | None,
    chunk_size: int,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    n_items, B = items.shape[0], queries.shape[0]
    ex, m = None, 0
    if exclude is not None and exclude.shape[1] > 0:
        ex = exclude.to(torch.int64)
        reference.check_exclude(ex, n_items)
    if backend in ("triton", "cuda"):
        tk = launcher("topk_scores", backend)
        return tk.topk(queries, items, k, bias, ex)
    q = queries.float().contiguous()
    vals = torch.full((B, k), float("-inf"), dtype=torch.float32)
    idx = torch.full((B, k), -1, dtype=torch.int64)
    b = None if bias is None else bias.float().contiguous()
    if ex is not None:
        ex, m = torch.sort(ex, dim=1).values.contiguous(), ex.shape[1]
    buf = torch.empty(B * min(chunk_size, n_items), dtype=torch.float32)
    nt = nthreads()
    for v0 in range(0, n_items, chunk_size):
        c = min(chunk_size, n_items - v0)
        s = buf[: B * c].view(B, c)
        torch.mm(q, items[v0 : v0 + c].float().T, out=s)
        _C.topk_block_merge(ptr(s), c, ptr(b), ptr(ex), m, ptr(vals), ptr(idx), B, c, v0, k, nt)
    return vals, idx


@_topk_op.register_fake
def _(queries, items, k, bias, exclude, chunk_size, backend):
    B = queries.shape[0]
    return empty((B, k), queries, torch.float32), empty((B, k), queries, torch.int64)


def topk_scores(
    queries: torch.Tensor,
    items: torch.Tensor,
    *,
    k: int,
    bias: torch.Tensor | None = None,
    exclude: torch.Tensor | None = None,
    chunk_size: int | None = None,
    backend: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` best items per query by ``q @ E^T + bias`` -> (values [B, k] float32, indices
    [B, k] int64), sorted by score descending, ties broken by the lower index.

    ``queries`` [B, d], ``items`` [N, d], ``bias`` [N] or None; ``exclude`` [B, m] int64 lists
    item indices that row may not return (padded with -1). Items are scored in blocks of
    ``chunk_size`` and merged into a running top-k, so no [B, N] buffer exists. If fewer than
    ``k`` items remain after exclusion, the last slots hold -inf and index -1; NaN scores never rank.
    Not differentiable: the inputs are read detached (an ``nn.Parameter`` is fine) and the
    outputs never require grad.
    """
    V.tensor("queries", queries, ndim=2, floating=True)
    V.tensor("items", items, ndim=2, floating=True)
    V.same_device("queries", queries, items=items, bias=bias, exclude=exclude)
    if items.shape[1] != queries.shape[1]:
        raise ValueError(f"`items` must have shape [N, {queries.shape[1]}], got {list(items.shape)}")
    V.non_empty("queries", queries)
    V.non_empty("items", items)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"`k` must be a positive int, got {k!r}")
    if k > items.shape[0]:
        raise ValueError(f"`k` = {k} exceeds the number of items N = {items.shape[0]}")
    if bias is not None:
        V.tensor("bias", bias, ndim=1, floating=True)
        if bias.shape[0] != items.shape[0]:
            raise ValueError(f"`bias` must have shape [{items.shape[0]}], got {list(bias.shape)}")
    if exclude is not None:
        V.tensor("exclude", exclude, ndim=2, integer=True)
        if exclude.shape[0] != queries.shape[0]:
            raise ValueError(f"`exclude` must have {queries.shape[0]} rows, got {list(exclude.shape)}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"`chunk_size` must be a positive int or None, got {chunk_size!r}")
    limits = {
        name: f"it keeps at most {limit} items per row, got k = {k}"
        for name, limit in (("triton", TRITON_MAX_K), ("cuda", CUDA_MAX_K))
        if k > limit
    }
    queries, items = queries.detach(), items.detach()
    bias = None if bias is None else bias.detach()
    be = resolve_backend(check_backend_arg(backend), queries.device, "topk_scores", limits)
    if be == "torch":
        return reference.topk_scores(queries, items, k=k, bias=bias, exclude=exclude)
    chunk = chunk_size or default_chunk(queries.shape[0])
    return call(_topk_op, queries, items, k, bias, exclude, chunk, be)
