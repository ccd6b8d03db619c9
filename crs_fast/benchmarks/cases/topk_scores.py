"""topk_scores (k = 50) of B queries over N items."""

import torch

from ... import ops
from ._common import Case, add, compiled


def case(B: int, N: int, d: int, device: str, compile_: bool) -> Case:
    """topk_scores (k = 50) of B queries over N items."""
    g = torch.Generator().manual_seed(B + N + d)
    q, items = torch.randn(B, d, generator=g).to(device), torch.randn(N, d, generator=g).to(device)
    case = Case("topk_scores", f"B={B} N={N} d={d}", N, 4 * N * d, 2 * B * N * d)
    ref = lambda: torch.topk(q @ items.T, 50, dim=1)  # noqa: E731
    add(case, "crs_fast", lambda: lambda: ops.topk_scores(q, items, k=50))
    add(case, "reference", lambda: ref)
    add(case, "torch.compile", "skipped in --quick (compile time)" if not compile_ else lambda: compiled(ref))
    return case
