"""The PPO policy loss (dual clip, token-mean) and value loss (clipped), forward + backward, over
[B, T] tokens: crs_fast, the reference, torch.compile, verl, OpenRLHF."""

from ... import ops
from ...ops import reference as R
from ._common import Case, Cfg, add, compiled, token_case, train

BYTES_PER_TOKEN = 30


def policy_case(B: int, T: int, device: str, compile_: bool) -> Case:
    """ppo_policy_loss over [B, T] tokens."""
    case, x, core, orl, no_compile, mf = token_case("ppo_policy_loss", BYTES_PER_TOKEN, B, T, device, compile_)
    kw = dict(clip_low=0.2, clip_high=0.28, dual_clip=3.0)
    ref = lambda: R.ppo_policy_loss(x["lp"], x["old"], x["adv"], x["m"], **kw)[0]  # noqa: E731
    cfg = Cfg(clip_ratio=0.2, clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0, global_batch_info={})
    add(
        case,
        "crs_fast",
        lambda: train(lambda: ops.ppo_policy_loss(x["lp"], x["old"], x["adv"], x["m"], **kw)[0], x["lp"]),
    )
    add(case, "reference", lambda: train(ref, x["lp"]))
    add(case, "torch.compile", no_compile or (lambda: train(compiled(ref), x["lp"])))
    add(
        case,
        "verl",
        core
        if isinstance(core, str)
        else lambda: train(
            lambda: core.compute_policy_loss_vanilla(x["old"], x["lp"], x["adv"], mf, "token-mean", cfg)[0], x["lp"]
        ),
    )
    if not isinstance(orl, str):
        pl = orl[1].PolicyLoss(clip_eps_low=0.2, clip_eps_high=0.28, dual_clip=3.0)
    add(
        case,
        "openrlhf",
        orl if isinstance(orl, str) else lambda: train(lambda: pl(x["lp"], x["old"], x["adv"], mf)[0], x["lp"]),
    )
    return case


def value_case(B: int, T: int, device: str, compile_: bool) -> Case:
    """ppo_value_loss over [B, T] tokens."""
    case, x, core, orl, no_compile, mf = token_case("ppo_value_loss", BYTES_PER_TOKEN, B, T, device, compile_)
    ref = lambda: R.ppo_value_loss(x["v"], x["old_v"], x["ret"], x["m"], clip=0.2)[0]  # noqa: E731
    add(
        case,
        "crs_fast",
        lambda: train(lambda: ops.ppo_value_loss(x["v"], x["old_v"], x["ret"], x["m"])[0], x["v"]),
    )
    add(case, "reference", lambda: train(ref, x["v"]))
    add(case, "torch.compile", no_compile or (lambda: train(compiled(ref), x["v"])))
    add(
        case,
        "verl",
        core
        if isinstance(core, str)
        else lambda: train(lambda: core.compute_value_loss(x["v"], x["ret"], x["old_v"], mf, 0.2)[0], x["v"]),
    )
    if not isinstance(orl, str):
        vl = orl[1].ValueLoss(clip_eps=0.2)
    add(
        case,
        "openrlhf",
        orl if isinstance(orl, str) else lambda: train(lambda: vl(x["v"], x["old_v"], x["ret"], mf), x["v"]),
    )
    return case
