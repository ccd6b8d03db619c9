"""GAE (verl convention) over [B, T] tokens: crs_fast, the reference, verl, OpenRLHF."""

from ... import ops
from ...ops import reference as R
from ._common import Case, add, token_case

BYTES_PER_TOKEN = 17


def case(B: int, T: int, device: str, compile_: bool) -> Case:
    """The gae case of [B, T] tokens."""
    case, x, core, orl, no_compile, mf = token_case("gae", BYTES_PER_TOKEN, B, T, device, compile_)
    ours = lambda: ops.gae(x["r"], x["v"].detach(), x["m"], gamma=0.99, lam=0.95)  # noqa: E731
    ref = lambda: R.gae(x["r"], x["v"].detach(), x["m"], gamma=0.99, lam=0.95)  # noqa: E731
    add(case, "crs_fast", lambda: ours)
    add(case, "reference", lambda: ref)
    add(case, "torch.compile", "not measured: compiling the reference unrolls its T-step Python loop")
    add(
        case,
        "verl",
        core
        if isinstance(core, str)
        else lambda: lambda: core.compute_gae_advantage_return(x["r"], x["v"].detach(), mf, 0.99, 0.95),
    )
    add(
        case,
        "openrlhf",
        orl
        if isinstance(orl, str)
        else lambda: (
            lambda: orl[2].RemoteExperienceMaker.get_advantages_and_returns(
                None, x["v"].detach(), x["r"], mf, 0.99, 0.95
            )
        ),
    )
    return case
