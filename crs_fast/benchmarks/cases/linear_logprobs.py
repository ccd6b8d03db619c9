"""linear_logprobs with entropy (the fused LM head), forward + backward (fp32 on CPU, bf16 on CUDA)."""

import torch

from ... import ops
from ...ops import reference as R
from ._common import Case, add, compiled, train, try_import


def case(N: int, H: int, V: int, device: str, compile_: bool) -> Case:
    """linear_logprobs with entropy (the fused LM head), forward + backward (fp32 on CPU, bf16 on CUDA)."""
    g = torch.Generator().manual_seed(N + H + V)
    dt = torch.bfloat16 if device == "cuda" else torch.float32
    h = torch.randn(N, H, generator=g).to(device=device, dtype=dt).requires_grad_(True)
    w = (torch.randn(V, H, generator=g) * H**-0.5).to(device=device, dtype=dt).requires_grad_(True)
    y = torch.randint(0, V, (N,), generator=g).to(device)
    case = Case(
        "linear_logprobs",
        f"N={N} H={H} V={V} {str(dt)[6:]}",
        N * V,
        h.element_size() * (N * H + 2 * V * H),
        6 * N * H * V,
        dtype="bf16" if dt == torch.bfloat16 else "fp32",
    )
    ref = lambda: R.linear_logprobs(h, w, y)  # noqa: E731
    add(case, "crs_fast", lambda: train(lambda: ops.linear_logprobs(h, w, y, entropy=True), h, w))
    add(case, "reference", lambda: train(ref, h, w))
    add(
        case,
        "torch.compile",
        "skipped in --quick (compile time)" if not compile_ else (lambda: train(compiled(ref), h, w)),
    )
    ef = try_import("verl.utils.experimental.torch_functional")
    add(case, "verl", ef if isinstance(ef, str) else lambda: train(lambda: ef.FusedLinearForPPO()(h, w, y), h, w))
    if device != "cuda":
        add(case, "liger", "Liger-Kernel's fused linear losses are Triton kernels for CUDA")
    else:
        lg = try_import("liger_kernel.chunked_loss")
        add(case, "liger", lg if isinstance(lg, str) else "not wired: Liger's GRPO loss fuses the loss, not log-probs")
    return case
