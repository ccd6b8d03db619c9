"""One PPO step at a model's head sizes: log-probs and entropy from the LM head, k3 KL to a"""

import torch

from ... import ops
from ...ops import reference as R
from ._common import Case, add, token_inputs


def case(B: int, T: int, H: int, V: int, device: str) -> Case:
    """One PPO step at a model's head sizes: log-probs and entropy from the LM head, k3 KL to a
    reference, token rewards, GAE, policy and value losses, backward; crs_fast ops against the
    same step built from the references."""
    g = torch.Generator().manual_seed(7)
    n = B * T
    h = torch.randn(n, H, generator=g).to(device).requires_grad_(True)
    w = (torch.randn(V, H, generator=g) * H**-0.5).to(device).requires_grad_(True)
    vh = (torch.randn(H, generator=g) * H**-0.5).to(device).requires_grad_(True)
    y = torch.randint(0, V, (n,), generator=g).to(device)
    x = token_inputs(B, T, device)
    case = Case("ppo_step", f"B={B} T={T} H={H} V={V}", n, 0, 6 * n * H * V)

    def step(lib):
        if lib is ops:
            lp, ent = ops.linear_logprobs(h, w, y, entropy=True)
        else:
            lp, ent = R.linear_logprobs(h, w, y)
        lp, ent = lp.view(B, T), ent.view(B, T)
        values = (h @ vh).view(B, T)
        kl = lib.kl_penalty(lp, x["ref"], kind="k3")
        if lib is ops:
            rewards = ops.token_rewards(x["scores"], kl.detach(), x["m"], beta=0.05)
            adv, ret = ops.gae(rewards, values.detach(), x["m"], gamma=1.0, lam=0.95)
        else:
            rewards = R.token_rewards(x["scores"], kl.detach(), x["m"], beta=0.05)
            adv, ret = R.gae(rewards, values.detach(), x["m"], gamma=1.0, lam=0.95)
        pl, _ = lib.ppo_policy_loss(lp, lp.detach() + 0.01, adv, x["m"], clip_low=0.2, clip_high=0.28, dual_clip=3.0)
        vl, _ = lib.ppo_value_loss(values, values.detach() + 0.01, ret, x["m"])
        loss = pl + 0.5 * vl + 0.01 * kl.mean() - 0.01 * ent.mean()
        torch.autograd.grad(loss, [h, w, vh])

    add(case, "crs_fast", lambda: lambda: step(ops))
    add(case, "reference", lambda: lambda: step(R))
    return case
