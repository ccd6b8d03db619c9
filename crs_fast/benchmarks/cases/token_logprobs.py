"""token_logprobs with entropy, forward + backward, logits [N, V] (fp32 on CPU, bf16 on CUDA)."""

import torch

from ... import ops
from ...ops import reference as R
from ._common import Case, add, compiled, openrlhf, train, try_import


def case(N: int, V: int, device: str, compile_: bool) -> Case:
    """token_logprobs with entropy, forward + backward, logits [N, V] (fp32 on CPU, bf16 on CUDA)."""
    g = torch.Generator().manual_seed(N + V)
    dt = torch.bfloat16 if device == "cuda" else torch.float32
    z = (torch.randn(N, V, generator=g) * 2).to(device=device, dtype=dt).requires_grad_(True)
    y = torch.randint(0, V, (N,), generator=g).to(device)
    nb = z.element_size()
    case = Case("token_logprobs", f"N={N} V={V} {str(dt)[6:]}", N * V, 3 * nb * N * V, 0)
    ref = lambda: R.token_logprobs(z, y)  # noqa: E731
    add(case, "crs_fast", lambda: train(lambda: ops.token_logprobs(z, y, entropy=True), z))
    add(case, "reference", lambda: train(ref, z))
    add(
        case,
        "torch.compile",
        "skipped in --quick (compile time)" if not compile_ else (lambda: train(compiled(ref), z)),
    )
    vf = try_import("verl.utils.torch_functional")
    add(
        case,
        "verl",
        vf
        if isinstance(vf, str)
        else lambda: train(lambda: (vf.logprobs_from_logits(z, y), vf.entropy_from_logits(z)), z),
    )
    tu = try_import("trl.trainer.utils")
    add(
        case,
        "trl",
        tu
        if isinstance(tu, str)
        else lambda: train(lambda: (tu.selective_log_softmax(z, y), tu.entropy_from_logits(z)), z),
    )
    orl = openrlhf()
    add(
        case,
        "openrlhf",
        orl
        if isinstance(orl, str)
        else lambda: train(lambda: (orl[0].log_probs_from_logits(z, y), orl[0].compute_entropy(z)), z),
    )
    return case
