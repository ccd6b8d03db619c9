"""Token rewards with a clipped score over [B, T] tokens: crs_fast, the reference, OpenRLHF."""

from ... import ops
from ...ops import reference as R
from ._common import Case, add, token_case

BYTES_PER_TOKEN = 9


def case(B: int, T: int, device: str, compile_: bool) -> Case:
    """The token_rewards case of [B, T] tokens."""
    case, x, core, orl, no_compile, mf = token_case("token_rewards", BYTES_PER_TOKEN, B, T, device, compile_)
    kl = x["ref"]
    ref = lambda: R.token_rewards(x["scores"], kl, x["m"], beta=0.05, clip=(-5.0, 5.0))  # noqa: E731
    add(case, "crs_fast", lambda: lambda: ops.token_rewards(x["scores"], kl, x["m"], beta=0.05, clip=5.0))
    add(case, "reference", lambda: ref)
    add(case, "torch.compile", "not measured: the reference indexes rows data-dependently (graph breaks)")
    add(
        case,
        "openrlhf",
        orl
        if isinstance(orl, str)
        else lambda: (
            lambda: orl[0].compute_reward(x["scores"], 0.05, kl * mf, action_mask=mf, reward_clip_range=(-5, 5))
        ),
    )
    return case
