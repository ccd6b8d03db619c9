"""Hostile inputs for every op, shared by the CPU tests (tests/ops/test_hostile.py) and the Triton
tests (tests/triton/test_hostile_triton.py): masks in every dtype and memory layout, and
non-finite values at excluded and at included positions.

The rules checked (crs_fast/ops/reference.py states them):
- a mask of any dtype and layout gives the same outputs and gradients as the contiguous bool
  mask with the same nonzero pattern, on every backend;
- a NaN or inf at a position the mask excludes changes no output and no gradient anywhere else
  (elementwise outputs at that position itself are exempt where the op's formula reads it there);
- a NaN at an included position gives NaN exactly where the reference gives NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from hypothesis import strategies as st

import crs_fast as cf
from crs_fast.ops import reference as R

MASK_DTYPES = (
    torch.bool,
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
)
LAYOUTS = ("contiguous", "transposed", "step-sliced", "row-sliced", "expanded", "offset-view")
NONFINITE = (float("nan"), float("inf"), float("-inf"))


def lay_out(mask: torch.Tensor, layout: str, dtype: torch.dtype) -> torch.Tensor:
    """A [B, T] tensor equal to ``mask != 0`` (as ``dtype``: nonzero entries 1, or 2 / -0.5 to
    check that any nonzero counts) stored in ``layout``. "expanded" needs equal rows."""
    B, T = mask.shape
    on = torch.tensor(-0.5 if dtype.is_floating_point else 2).to(dtype) if dtype != torch.bool else True
    m = torch.zeros(B, T, dtype=dtype)
    m[mask != 0] = on
    if layout == "contiguous":
        return m
    if layout == "transposed":
        return m.t().contiguous().t()
    if layout == "step-sliced":
        big = torch.zeros(B, 2 * T, dtype=dtype)
        big[:, ::2] = m
        return big[:, ::2]
    if layout == "row-sliced":
        big = torch.zeros(2 * B, T, dtype=dtype)
        big[1::2] = m
        return big[1::2]
    if layout == "expanded":
        assert bool((mask == mask[:1]).all()), "an expanded mask has equal rows"
        return m[:1].expand(B, T)
    if layout == "offset-view":  # a view that starts inside a larger buffer
        big = torch.zeros(B + 1, T + 3, dtype=dtype)
        big[1:, 3:] = m
        return big[1:, 3:]
    raise ValueError(layout)


@st.composite
def masks(draw, max_b: int = 5, max_t: int = 24) -> tuple[torch.Tensor, str, torch.dtype]:
    """(bool mask [B, T], layout, dtype): response spans with interior gaps, empty rows and
    all-masked or all-valid batches drawn as they come."""
    layout = draw(st.sampled_from(LAYOUTS))
    dtype = draw(st.sampled_from(MASK_DTYPES))
    B, T = draw(st.integers(1, max_b)), draw(st.integers(1, max_t))
    kind = draw(st.sampled_from(["random", "spans", "all", "none"]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    if kind == "all":
        m = torch.ones(B, T, dtype=torch.bool)
    elif kind == "none":
        m = torch.zeros(B, T, dtype=torch.bool)
    elif kind == "random":
        m = torch.rand(B, T, generator=g) < 0.6
    else:
        from helpers import make_mask

        m = make_mask(B, T, gen=g)
    if layout == "expanded":
        m = m[:1].expand(B, T).clone()
    return m, layout, dtype


@dataclass
class Case:
    """One op under test: ``make(B, T, gen)`` draws its float inputs (dict), ``run(backend, x,
    mask)`` returns its outputs (a tuple of tensors); ``grad`` names the differentiable inputs;
    ``excluded(name, mask)`` the positions of input ``name`` that the mask excludes (None: the
    input has no excluded positions); ``exempt(out_index, mask)`` the output positions allowed to
    read an excluded input there (elementwise formulas)."""

    name: str
    make: Callable[[int, int, torch.Generator], dict[str, torch.Tensor]]
    run: Callable[[str, dict[str, torch.Tensor], torch.Tensor], tuple[torch.Tensor, ...]]
    grad: tuple[str, ...] = ()
    excluded: Callable[[str, torch.Tensor], torch.Tensor | None] = lambda name, m: ~(m != 0)
    exempt: dict[int, bool] = field(default_factory=dict)  # outputs computed at excluded positions


def _bt(*names: str) -> Callable[[int, int, torch.Generator], dict[str, torch.Tensor]]:
    return lambda B, T, g: {n: torch.randn(B, T, generator=g) for n in names}


def _after_last(name: str, m: torch.Tensor) -> torch.Tensor | None:
    """TRL's GAE excludes only values past each row's last valid token; its rewards are read."""
    if name != "v":
        return None
    pos = torch.arange(m.shape[1])
    return pos[None, :] > R.last_valid(m != 0)[:, None]


def _gae(mode: str) -> Case:
    return Case(
        f"gae-{mode}",
        _bt("r", "v"),
        lambda be, x, m: cf.gae(x["r"], x["v"], m, gamma=0.9, lam=0.8, mode=mode, backend=be),
        excluded=_after_last if mode == "trl" else (lambda name, m: ~(m != 0)),
        exempt={1: True},  # returns = A + V at every position
    )


def _scores_rows(B: int, T: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    return {"kl": torch.randn(B, T, generator=g), "scores": torch.randn(B, generator=g)}


CASES: list[Case] = [
    _gae("verl"),
    _gae("trl"),
    _gae("openrlhf"),
    Case(
        "masked_whiten",
        _bt("x"),
        lambda be, x, m: (cf.masked_whiten(x["x"], m, backend=be),),
        exempt={0: True},  # every element is transformed
    ),
    Case(
        "masked_whiten-keep-mean",
        _bt("x"),
        lambda be, x, m: (cf.masked_whiten(x["x"], m, shift_mean=False, backend=be),),
        exempt={0: True},
    ),
    Case("reinforce_returns", _bt("r"), lambda be, x, m: (cf.reinforce_returns(x["r"], m, gamma=0.9, backend=be),)),
    Case(
        "token_rewards",
        _scores_rows,
        lambda be, x, m: (cf.token_rewards(x["scores"], x["kl"], m, beta=0.1, clip=2.0, backend=be),),
        excluded=lambda name, m: ~(m != 0) if name == "kl" else None,
    ),
    Case(
        "ppo_policy_loss",
        _bt("lp", "old", "adv"),
        lambda be, x, m: _flat(
            cf.ppo_policy_loss(x["lp"], x["old"], x["adv"], m, dual_clip=3.0, agg="seq-mean-token-mean", backend=be)
        ),
        grad=("lp",),
    ),
    Case(
        "ppo_value_loss",
        _bt("v", "old", "ret"),
        lambda be, x, m: _flat(cf.ppo_value_loss(x["v"], x["old"], x["ret"], m, clip=0.2, backend=be)),
        grad=("v",),
    ),
    Case(
        "ppo_value_loss-unclipped",
        _bt("v", "old", "ret"),
        lambda be, x, m: _flat(cf.ppo_value_loss(x["v"], x["old"], x["ret"], m, clip=None, backend=be)),
        grad=("v",),
        # unclipped, old_values is never read: none of it may matter, masked or not
        excluded=lambda name, m: torch.ones_like(m, dtype=torch.bool) if name == "old" else ~(m != 0),
    ),
]


def _flat(out: tuple[torch.Tensor, dict[str, torch.Tensor]]) -> tuple[torch.Tensor, ...]:
    loss, stats = out
    return (loss, *(stats[k] for k in sorted(stats)))


def outputs_and_grads(case: Case, backend: str, x: dict[str, torch.Tensor], mask: torch.Tensor) -> list[torch.Tensor]:
    """The op's outputs, then the gradient of sum(outputs[0] * w) for each differentiable input."""
    xs = {k: v.detach().clone().requires_grad_(k in case.grad) for k, v in x.items()}
    outs = case.run(backend, xs, mask)
    res = [o.detach() for o in outs]
    if case.grad:
        w = torch.linspace(0.5, 1.5, outs[0].numel()).view(outs[0].shape).to(outs[0].dtype)
        grads = torch.autograd.grad((outs[0] * w).sum(), [xs[k] for k in case.grad])
        res += [g.detach() for g in grads]
    return res


def same(a: torch.Tensor, b: torch.Tensor, where: torch.Tensor | None = None) -> bool:
    """Equal values (NaN equal to NaN), optionally only where ``where`` is True."""
    if where is not None:
        a, b = a[where], b[where]
    return bool(((a == b) | (a.isnan() & b.isnan())).all())


def check_layouts(case: Case, backend: str, drawn, seed: int) -> None:
    """Any mask dtype / layout == the contiguous bool mask, outputs and gradients bit for bit (the
    kernels); the reference to rounding, since torch's reduction order follows the memory layout."""
    mask, layout, dtype = drawn
    x = case.make(*mask.shape, torch.Generator().manual_seed(seed))
    want = outputs_and_grads(case, backend, x, mask)
    got = outputs_and_grads(case, backend, x, lay_out(mask, layout, dtype))
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        what = f"{case.name} [{backend}] output {i} differs with a {layout} {dtype} mask"
        if backend == "torch":
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, equal_nan=True, msg=what)
        else:
            assert same(a, b), what


def check_excluded(case: Case, backend: str, mask: torch.Tensor, value: float, seed: int) -> None:
    """A non-finite value at every excluded position of one input changes nothing else."""
    x = case.make(*mask.shape, torch.Generator().manual_seed(seed))
    clean = outputs_and_grads(case, backend, x, mask)
    for name in x:
        where = case.excluded(name, mask)
        if where is None or x[name].shape != mask.shape or not bool(where.any()):
            continue
        bad = dict(x)
        bad[name] = x[name].masked_fill(where, value)
        got = outputs_and_grads(case, backend, bad, mask)
        for i, (a, b) in enumerate(zip(got, clean, strict=True)):
            keep = ~where if (case.exempt.get(i) and a.shape == where.shape) else None
            assert same(a, b, keep), f"{case.name} [{backend}]: {value} at excluded `{name}` changed output {i}"


def check_included(case: Case, backend: str, mask: torch.Tensor, value: float, seed: int) -> None:
    """A non-finite value at one included position: NaN and inf exactly where the reference has them."""
    g = torch.Generator().manual_seed(seed)
    x = case.make(*mask.shape, g)
    valid = (mask != 0).nonzero()
    if valid.shape[0] == 0:
        return
    b, t = valid[int(torch.randint(0, valid.shape[0], (1,), generator=g))].tolist()
    for name in x:
        if x[name].shape != mask.shape:
            continue
        bad = dict(x)
        bad[name] = x[name].clone()
        bad[name][b, t] = value
        got = outputs_and_grads(case, backend, bad, mask)
        ref = outputs_and_grads(case, "torch", bad, mask)
        for i, (a, r) in enumerate(zip(got, ref, strict=True)):
            assert torch.equal(a.isnan(), r.isnan()), f"{case.name} [{backend}]: NaN pattern of output {i} ({name})"
            assert torch.equal(a.isinf(), r.isinf()), f"{case.name} [{backend}]: inf pattern of output {i} ({name})"
        excluded = case.excluded(name, mask)
        if math.isnan(value) and not (excluded is not None and bool(excluded[b, t])):
            assert any(bool(o.isnan().any()) for o in got), f"{case.name}: a NaN at a valid `{name}` vanished"


def entropy64(z: torch.Tensor) -> torch.Tensor:
    z = z.double()
    logp = torch.log_softmax(z, -1)
    p = logp.exp()
    return -(p * torch.where(p > 0, logp, 0.0)).sum(-1)


def masked_logits(gen, N=6, V=37):
    z = torch.randn(N, V, generator=gen) * 2
    z[torch.rand(N, V, generator=gen) < 0.4] = float("-inf")
    z[:, 0] = torch.randn(N, generator=gen)  # every row keeps a finite logit
    return z
