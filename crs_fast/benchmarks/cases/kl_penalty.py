"""The k3 KL penalty, forward + backward, over [B, T] tokens: crs_fast, the reference,
torch.compile, verl, OpenRLHF."""

from ... import ops
from ...ops import reference as R
from ._common import Case, add, compiled, token_case, train

BYTES_PER_TOKEN = 28


def case(B: int, T: int, device: str, compile_: bool) -> Case:
    """The kl_penalty case of [B, T] tokens."""
    case, x, core, orl, no_compile, mf = token_case("kl_penalty", BYTES_PER_TOKEN, B, T, device, compile_)
    ref = lambda: R.kl_penalty(x["lp"], x["ref"], kind="k3")  # noqa: E731
    add(case, "crs_fast", lambda: train(lambda: ops.kl_penalty(x["lp"], x["ref"], kind="k3"), x["lp"]))
    add(case, "reference", lambda: train(ref, x["lp"]))
    add(case, "torch.compile", no_compile or (lambda: train(compiled(ref), x["lp"])))
    add(
        case,
        "verl",
        core
        if isinstance(core, str)
        else lambda: train(lambda: core.kl_penalty(x["lp"], x["ref"], "low_var_kl"), x["lp"]),
    )
    add(
        case,
        "openrlhf",
        orl
        if isinstance(orl, str)
        else lambda: train(lambda: orl[0].compute_approx_kl(x["lp"], x["ref"], kl_estimator="k3"), x["lp"]),
    )
    return case
