"""Top-k scoring over an item catalog, with bias and exclusion lists."""

import pytest
import torch
from helpers import rand

import crs_fast as cf
from crs_fast.ops import reference as R


def _check(vals, idx, q, items, bias, k):
    """Values match the true scores of the returned items, sorted, and are the true top-k values."""
    true = q.double() @ items.double().T + (0 if bias is None else bias.double())
    got = torch.where(idx >= 0, true.gather(1, idx.clamp(min=0)), torch.full_like(vals, float("-inf")).double())
    torch.testing.assert_close(vals.double(), got, rtol=1e-5, atol=1e-4)
    assert (vals[:, 1:] <= vals[:, :-1] + 1e-5).all()
    return true


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "B,N,d,k,chunk", [(1, 1, 1, 1, None), (3, 100, 8, 100, 7), (9, 5000, 24, 50, 256), (4, 1013, 5, 10, 1000)]
)
@pytest.mark.parametrize("with_bias", [False, True])
def test_topk_matches_reference(dtype, B, N, d, k, chunk, with_bias, gen):
    q, items = rand(B, d, dtype=dtype, gen=gen, noncontig=True), rand(N, d, dtype=dtype, gen=gen)
    bias = rand(N, dtype=dtype, gen=gen) if with_bias else None
    vals, idx = cf.topk_scores(q, items, k=k, bias=bias, chunk_size=chunk)
    assert vals.shape == (B, k) and idx.dtype == torch.int64
    true = _check(vals, idx, q.float(), items.float(), None if bias is None else bias.float(), k)
    expected = torch.sort(true, dim=1, descending=True).values[:, :k]
    torch.testing.assert_close(vals.double(), expected, rtol=1e-5, atol=1e-4)
    r_vals, r_idx = R.topk_scores(q, items, k=k, bias=bias)
    agree = (idx == r_idx).float().mean()
    assert agree > 0.95  # indices differ only where float rounding swaps near-ties


def test_ties_go_to_lower_index():
    items = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.5, 0.0]])
    q = torch.tensor([[2.0, 0.0]])
    vals, idx = cf.topk_scores(q, items, k=4, chunk_size=2)
    assert idx.tolist() == [[0, 2, 3, 4]]
    r_vals, r_idx = R.topk_scores(q, items, k=4)
    assert torch.equal(idx, r_idx) and torch.equal(vals, r_vals)


def test_exclusion(gen):
    q, items = rand(5, 6, gen=gen), rand(300, 6, gen=gen)
    full_vals, full_idx = cf.topk_scores(q, items, k=10)
    exclude = torch.full((5, 4), -1, dtype=torch.int64)
    exclude[:, :3] = full_idx[:, [0, 2, 5]]
    vals, idx = cf.topk_scores(q, items, k=10, exclude=exclude, chunk_size=64)
    for b in range(5):
        assert not set(idx[b].tolist()) & set(exclude[b, :3].tolist())
    r_vals, r_idx = R.topk_scores(q, items, k=10, exclude=exclude)
    assert torch.equal(idx, r_idx)
    torch.testing.assert_close(vals, r_vals)


def test_fewer_items_than_k_after_exclusion():
    q, items = torch.ones(1, 2), torch.eye(3, 2)
    vals, idx = cf.topk_scores(q, items, k=3, exclude=torch.tensor([[0, 2]]))
    assert idx.tolist() == [[1, -1, -1]] and torch.isinf(vals[0, 1:]).all()


def test_exclude_out_of_range():
    with pytest.raises(ValueError, match="`exclude`"):
        cf.topk_scores(torch.ones(1, 2), torch.ones(4, 2), k=2, exclude=torch.tensor([[7]]))
