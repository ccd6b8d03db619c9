"""`crs-fast ops-demo`: every op at realistic RLHF shapes, checked against the PyTorch reference,
with its speedup over that reference on this machine. (The conversational-recommender pipeline
takes this command over when it lands.)"""

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import ops
from ._timing import median_seconds
from .ops import reference as R


@dataclass
class Case:
    name: str
    shape: str
    ours: Callable[[], object]
    ref: Callable[[], object]
    reps: int = 5


def _max_rel_err(a: object, b: object) -> float:
    """Largest error relative to the reference's magnitude over all tensors in a and b."""
    if isinstance(a, dict):
        return max(_max_rel_err(a[k], b[k]) for k in a)
    if isinstance(a, tuple | list):
        return max(_max_rel_err(x, y) for x, y in zip(a, b, strict=True))
    a64, b64 = a.detach().double(), b.detach().double()
    if a.dtype == torch.int64:  # top-k indices: fraction that differ
        return float((a != b).double().mean())
    return float((a64 - b64).abs().max() / b64.abs().max().clamp(min=1.0))


def _train(fn: Callable[[], object], *leaves: torch.Tensor) -> Callable[[], object]:
    """Forward + backward of the sum of fn's first (and second) outputs."""

    def step():
        out = fn()
        head = out[0] if isinstance(out, tuple) else out
        total = head.sum() + (out[1].sum() if isinstance(out, tuple) and torch.is_tensor(out[1]) else 0)
        return (out, torch.autograd.grad(total, leaves))

    return step


def cases(quick: bool) -> list[Case]:
    """The demo's shapes: SmolLM2-135M sizes (H=576, V=49,152), or small ones with ``quick``."""
    g = torch.Generator().manual_seed(0)
    B, T = (8, 128) if quick else (64, 1024)
    N, H, V = (256, 64, 4096) if quick else (2048, 576, 49152)
    n_items, d = (5000, 64) if quick else (100_000, 576)

    def rn(*s, scale=1.0):
        return torch.randn(*s, generator=g) * scale

    r, v, lp_old, ref_lp = rn(B, T), rn(B, T), rn(B, T) - 2, rn(B, T) - 2
    lp = (lp_old + rn(B, T, scale=0.1)).requires_grad_(True)
    m = torch.rand(B, T, generator=g) > 0.15
    adv, vals = rn(B, T), rn(B, T).requires_grad_(True)
    logits, labels = rn(N, V, scale=2.0).requires_grad_(True), torch.randint(0, V, (N,), generator=g)
    hidden, head = rn(N, H).requires_grad_(True), rn(V, H, scale=H**-0.5).requires_grad_(True)
    q, items = rn(256, d), rn(n_items, d)
    scores = rn(B)
    pol = dict(clip_low=0.2, clip_high=0.28, dual_clip=3.0)
    return [
        Case(
            "gae (verl, whitened)",
            f"B={B} T={T}",
            lambda: ops.gae(r, v, m, gamma=0.99, lam=0.95),
            lambda: R.gae(r, v, m, gamma=0.99, lam=0.95),
            reps=3,
        ),
        Case(
            "kl_penalty k3 fwd+bwd",
            f"B={B} T={T}",
            _train(lambda: ops.kl_penalty(lp, ref_lp, kind="k3"), lp),
            _train(lambda: R.kl_penalty(lp, ref_lp, kind="k3"), lp),
            reps=20,
        ),
        Case(
            "token_rewards",
            f"B={B} T={T}",
            lambda: ops.token_rewards(scores, r, m, beta=0.05, clip=5.0),
            lambda: R.token_rewards(scores, r, m, beta=0.05, clip=(-5.0, 5.0)),
            reps=20,
        ),
        Case(
            "ppo_policy_loss fwd+bwd",
            f"B={B} T={T}",
            _train(lambda: ops.ppo_policy_loss(lp, lp_old, adv, m, **pol)[0], lp),
            _train(lambda: R.ppo_policy_loss(lp, lp_old, adv, m, **pol)[0], lp),
            reps=20,
        ),
        Case(
            "ppo_value_loss fwd+bwd",
            f"B={B} T={T}",
            _train(lambda: ops.ppo_value_loss(vals, v, r, m)[0], vals),
            _train(lambda: R.ppo_value_loss(vals, v, r, m)[0], vals),
            reps=20,
        ),
        Case(
            "token_logprobs+entropy fwd+bwd",
            f"N={N} V={V}",
            _train(lambda: ops.token_logprobs(logits, labels, entropy=True), logits),
            _train(lambda: R.token_logprobs(logits, labels), logits),
            reps=3,
        ),
        Case(
            "linear_logprobs+entropy fwd+bwd",
            f"N={N} H={H} V={V}",
            _train(lambda: ops.linear_logprobs(hidden, head, labels, entropy=True), hidden, head),
            _train(lambda: R.linear_logprobs(hidden, head, labels), hidden, head),
            reps=3,
        ),
        Case(
            "topk_scores k=50",
            f"B=256 N={n_items} d={d}",
            lambda: ops.topk_scores(q, items, k=50),
            lambda: R.topk_scores(q, items, k=50),
            reps=3,
        ),
    ]


def run_demo(quick: bool = False) -> int:
    """Run every case; returns 0 if every op matches its reference, else 1."""
    print(
        f"crs_fast demo on {torch.get_num_threads()} threads: crs_fast ops (C++ backend) against the "
        f"PyTorch reference, fp32{' (quick shapes)' if quick else ''}"
    )
    print(f"{'op':<34} {'shape':<24} {'max rel err':>11} {'reference':>11} {'crs_fast':>10} {'speedup':>8}")
    failed = 0
    start = time.perf_counter()
    for case in cases(quick):
        err = _max_rel_err(case.ours(), case.ref())
        ok = err <= (0.01 if "topk" in case.name else 1e-4)
        failed += not ok
        t_ref = median_seconds(case.ref, warmup=1, reps=case.reps)
        t_ours = median_seconds(case.ours, warmup=1, reps=case.reps)
        print(
            f"{case.name:<34} {case.shape:<24} {err:>11.2e} {t_ref * 1e3:>9.2f}ms {t_ours * 1e3:>8.2f}ms "
            f"{t_ref / t_ours:>7.1f}x{'' if ok else '  MISMATCH'}",
            flush=True,
        )
    print(
        f"{'all ops match the reference' if not failed else f'{failed} op(s) differ from the reference'} "
        f"({time.perf_counter() - start:.0f} s)"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run_demo(quick="--quick" in sys.argv))
