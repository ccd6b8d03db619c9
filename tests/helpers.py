"""Shared test helpers: input makers and the one table of tolerances (DESIGN.md, "Tolerances").

fp32 against an fp64 oracle: relative error <= 1e-5 for elementwise ops, <= 1e-4 for reductions
(over V, or over the batch). bf16/fp16: the kernel's error against the fp64 oracle at most twice
the error of the same PyTorch reference run in that low precision (plus a floor of one unit of
that precision's rounding of the result, for outputs the reference happens to get exact).
"""

import math

import torch

LOW = (torch.bfloat16, torch.float16)
ALL = (torch.float32, torch.bfloat16, torch.float16)
RTOL = {"elementwise": 1e-5, "reduction": 1e-4}
# one unit in the last place, relative: the rounding floor any result stored in that dtype carries
ULP = {torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10, torch.float32: 2.0**-23}


def rand(
    *shape: int,
    dtype: torch.dtype = torch.float32,
    scale: float = 1.0,
    noncontig: bool = False,
    gen: torch.Generator | None = None,
) -> torch.Tensor:
    """Standard normal values; with ``noncontig`` a strided view of a larger buffer."""
    if noncontig:
        big = torch.randn(*shape[:-1], shape[-1] * 2, generator=gen) * scale
        return big[..., ::2].to(dtype)
    return (torch.randn(*shape, generator=gen) * scale).to(dtype)


def make_mask(B: int, T: int, *, gen: torch.Generator | None = None, empty_row: bool = True) -> torch.Tensor:
    """A multi-turn style mask: response prefix, interior observation gaps, padding, and (when
    B > 1 and ``empty_row``) one all-masked row."""
    m = torch.zeros(B, T, dtype=torch.bool)
    for b in range(B):
        length = int(torch.randint(1, T + 1, (1,), generator=gen))
        m[b, :length] = True
        if length > 3:  # an interior gap: a user turn inside the response
            start = int(torch.randint(1, length - 1, (1,), generator=gen))
            m[b, start : min(start + 2, length - 1)] = False
    if empty_row and B > 1:
        m[int(torch.randint(0, B, (1,), generator=gen))] = False
    return m


def max_err(x: torch.Tensor, oracle: torch.Tensor) -> float:
    """Largest absolute difference, computed in float64; NaN where they disagree on NaN."""
    x64, o64 = x.double(), oracle.double()
    if torch.isnan(x64).ne(torch.isnan(o64)).any():
        return float("nan")
    d = (x64 - o64).abs()
    d = torch.where(torch.isinf(o64) & (x64 == o64), torch.zeros_like(d), d)
    return float(d.max()) if d.numel() else 0.0


def assert_fp32_close(x: torch.Tensor, oracle: torch.Tensor, kind: str = "elementwise", what: str = "") -> None:
    """fp32 result against the fp64 oracle, relative to the oracle's magnitude."""
    scale = max(float(oracle.double().abs().max()) if oracle.numel() else 0.0, 1.0)
    err = max_err(x, oracle)
    assert err <= RTOL[kind] * scale, f"{what}: fp32 error {err:.3e} > {RTOL[kind]:.0e} x {scale:.3g}"


def assert_within_budget(
    x: torch.Tensor, low_ref: torch.Tensor, oracle: torch.Tensor, dtype: torch.dtype, what: str = ""
) -> None:
    """Kernel error <= 2 x (error of the PyTorch reference run in ``dtype``) + rounding floor."""
    scale = max(float(oracle.double().abs().max()) if oracle.numel() else 0.0, 1e-3)
    low_err = max_err(low_ref, oracle)
    if math.isnan(low_err):  # the low-precision reference breaks down: hold the kernel to a few roundings
        budget = 8.0 * ULP[dtype] * scale
    else:
        budget = 2.0 * low_err + ULP[dtype] * scale
    err = max_err(x, oracle)
    assert err <= budget, f"{what}: {dtype} error {err:.3e} > budget {budget:.3e}"


def check(
    x: torch.Tensor,
    dtype: torch.dtype,
    oracle: torch.Tensor,
    low_ref: torch.Tensor | None = None,
    kind: str = "elementwise",
    what: str = "",
) -> None:
    """Dispatch to the fp32 tolerance or the low-precision budget."""
    if dtype in (torch.float32, torch.float64):
        assert_fp32_close(x, oracle, kind, what)
    else:
        assert low_ref is not None
        assert_within_budget(x, low_ref, oracle, dtype, what)


def grad_of(fn, *inputs: torch.Tensor, weights=None) -> list[torch.Tensor]:
    """Gradients of sum(w_i * out_i) for fn's tensor outputs w.r.t. the inputs."""
    xs = [x.detach().clone().requires_grad_(True) for x in inputs]
    outs = fn(*xs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    weights = weights or [None] * len(outs)
    total = sum((o.double() * (1.0 if w is None else w)).sum() for o, w in zip(outs, weights, strict=True))
    return list(torch.autograd.grad(total, xs, allow_unused=True))


def real_data_dir():
    """The real-data directory ($CRS_FAST_DATA or ../shared/data beside the repository). Tests
    that need it skip with the reason when it is absent, except under CI, where it must exist."""
    import os
    import pathlib

    import pytest

    path = pathlib.Path(
        os.environ.get("CRS_FAST_DATA") or pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
    )
    if not (path / "redial").is_dir() or not (path / "opendialkg").is_dir():
        msg = f"real datasets not found in {path} (set CRS_FAST_DATA to a directory with redial/ and opendialkg/)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def next_token_logits(policy, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
    """[B, V]: generation's first-step logits (``rollout._step`` with the policy's context features
    and mention bonus) for right-padded ``x`` / ``attn`` turned into left-padded prompts."""
    from crs_fast.crs.rlhf import rollout

    left = torch.stack([torch.roll(r, int((1 - a).sum())) for r, a in zip(x, attn, strict=True)])
    la = torch.stack([torch.roll(a, int((1 - a).sum())) for a in attn])
    pos = (la.cumsum(1) - 1).clamp(min=0)
    _, logits = rollout._step(
        policy.backbone(),
        policy.head(),
        policy.context_features(left),
        policy.mention_bias(left),
        input_ids=left,
        attention_mask=la,
        position_ids=pos,
    )
    return logits


def tiny_item_lm():
    """(catalog of 12 generated items, the tiny random LM, its tokenizer, the item token ids): the
    small policy setup the RLHF tests build their policies on."""
    from crs_fast.crs.data import generate_catalog
    from crs_fast.crs.rlhf import lm as LM

    catalog = generate_catalog(12, seed=4)
    lm, tok = LM.load_lm("tiny", [it.title for it in catalog.items.values()] + ["User System : hi like"], seed=1)
    return catalog, lm, tok, LM.add_item_tokens(lm, tok, catalog)


def tiny_bonus_policy(collab: bool, seed: int, mention_bonus: float):
    """(catalog, policy, tokenizer, item ids): :func:`tiny_item_lm` as a policy training its top
    layer, with the mention bonus and, with ``collab``, random co-occurrence factors, item bias and
    item rows (drawn from ``seed``)."""
    from crs_fast.crs.rlhf import policy as PO

    catalog, lm, tok, ids = tiny_item_lm()
    gen = torch.Generator().manual_seed(seed)
    factors = (torch.randn(12, 3, generator=gen), torch.randn(12, 3, generator=gen))
    policy = PO.Policy(lm, ids, train_layers=1, collab=factors if collab else None, mention_bonus=mention_bonus)
    if policy.item_bias is not None:
        with torch.no_grad():
            policy.item_bias.copy_(torch.randn(12, generator=gen))
            policy.item_out.copy_(torch.randn(policy.item_out.shape, generator=gen))
    return catalog, policy, tok, ids


def assert_same_gradients(policy, got: tuple, want: tuple, *, atol: float, rtol: float, relative: bool = False) -> None:
    """The gradients of every trained parameter of ``policy`` under ``sum w * (lp + entropy)`` (one
    random weight per position) agree between ``got = (lp, ent)`` and the reference ``want``;
    ``relative``: ``atol`` scaled by the largest reference entry of each parameter."""
    params = [p for p in policy.parameters() if p.requires_grad]
    w = torch.randn(got[0].shape, generator=torch.Generator().manual_seed(3))
    g_got = torch.autograd.grad(sum((x * w).sum() for x in got), params, allow_unused=True)
    g_want = torch.autograd.grad(sum((x * w).sum() for x in want), params, allow_unused=True)
    for g, r in zip(g_got, g_want, strict=True):
        if r is None:
            assert g is None or not g.any()
        else:
            torch.testing.assert_close(g, r, atol=atol * (float(r.abs().max()) if relative else 1.0), rtol=rtol)
