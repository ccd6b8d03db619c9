"""Log-probs of what the rollouts sampled from: tokens banned while sampling (items already in the
dialogue, items chosen earlier in the turn, EOS at a turn's start) are removed from the
distribution PPO's ratios and KL estimates use, against the materialised masked softmax (values,
entropy, gradients) and against the probabilities ``rollout`` itself drew from."""

import pytest
import torch
from helpers import assert_same_gradients, tiny_bonus_policy

from crs_fast.crs.data import generate_catalog
from crs_fast.crs.rlhf import build as BU
from crs_fast.crs.rlhf import config as CF
from crs_fast.crs.rlhf import corpus as CO
from crs_fast.crs.rlhf import lm as LM
from crs_fast.crs.rlhf import policy as PO
from crs_fast.crs.rlhf import ppo as PPO
from crs_fast.crs.rlhf import rollout as RO

pytest.importorskip("transformers")


@pytest.fixture(scope="module", params=["collab", "plain"])
def setup(request):
    catalog, policy, tok, ids = tiny_bonus_policy(request.param == "collab", 5, 1.3)
    items = [LM.item_token(i) for i in catalog.ids()]
    texts = [
        f"User : hi {items[2]} like {items[5]} System : {items[7]} hi {items[3]}",
        f"User : {items[1]} System : hi",
        "User : hi like System : hi",
    ]
    x, attn = CO.pad_right([tok(t, add_special_tokens=False)["input_ids"] for t in texts], tok.pad_token_id)
    return policy, x, attn, ids, tok


def _random_ban(x, ids, eos, seed):
    """(tokens [B, M], banned [B, T-1, M]): a few item tokens and EOS per row, banned at random
    positions, never at a position whose label they are."""
    gen = torch.Generator().manual_seed(seed)
    B, T = x.shape
    tokens = torch.full((B, 4), -1, dtype=torch.int64)
    for b in range(B):
        pick = ids[torch.randperm(len(ids), generator=gen)[: 3 - (b == 2)]]
        tokens[b, : len(pick)] = pick
        tokens[b, len(pick)] = eos
    banned = torch.rand(B, T - 1, 4, generator=gen) < 0.6
    banned &= tokens[:, None, :] >= 0
    banned &= tokens[:, None, :] != x[:, 1:, None]
    return tokens, banned


def _top_ban(z, labels):
    """(tokens, banned): the most likely token other than the label banned at even positions, the
    second and third at odd ones (so the banned mass is above one half at some, below at others)."""
    B, T, _ = z.shape
    top = z.masked_fill(torch.nn.functional.one_hot(labels, z.shape[-1]).bool(), float("-inf")).topk(3, -1).indices
    top[:, 0::2, 1:] = top[:, 0::2, :1]
    top[:, 1::2, 0] = top[:, 1::2, 1]
    per_row = [sorted(set(top[b].flatten().tolist())) for b in range(B)]
    tokens = torch.full((B, max(len(r) for r in per_row)), -1, dtype=torch.int64)
    for b, r in enumerate(per_row):
        tokens[b, : len(r)] = torch.tensor(r)
    banned = (top[:, :, :, None] == tokens[:, None, None, :]).any(2) & (tokens[:, None, :] >= 0)
    return tokens, banned


def _naive(policy, x, attn):
    """[B, T-1, V]: the head's logits with the context bonus, materialised."""
    h = policy.with_features(policy.top(x, attn), x)[:, :-1]
    z = h @ policy.head().T
    if policy.context_bonus(x[:, :-1]) is not None:
        B, T = x.shape[0], x.shape[1] - 1
        bonus = policy.bonus_at(x[:, :-1], torch.arange(B).repeat_interleave(T), torch.arange(T).repeat(B))
        z = z.index_add(2, policy.item_ids, bonus.view(B, T, -1))
    return z


@pytest.mark.parametrize(("temperature", "kind"), [(1.0, "random"), (0.8, "random"), (0.3, "top"), (0.1, "top")])
def test_banned_logprobs_and_entropy_equal_the_masked_softmax(setup, temperature, kind):
    policy, x, attn, ids, tok = setup
    z = _naive(policy, x, attn)
    if kind == "random":
        tokens, banned = _random_ban(x, ids, tok.eos_token_id, 0)
    else:
        tokens, banned = _top_ban(z.detach(), x[:, 1:])
    mask = torch.zeros_like(z, dtype=torch.bool)
    for b in range(x.shape[0]):
        for m in range(tokens.shape[1]):
            if tokens[b, m] >= 0:
                mask[b, :, tokens[b, m]] |= banned[b, :, m]
    if kind == "top":  # both regimes: banned mass below and above one half (materialised there)
        share = (torch.softmax(z.detach() / temperature, -1) * mask).sum(-1)
        assert (share > 0.5).any() and ((share > 1e-3) & (share < 0.5)).any()
    logp = torch.log_softmax((z / temperature).masked_fill(mask, float("-inf")), -1)
    want_lp = logp.gather(-1, x[:, 1:, None]).squeeze(-1)
    want_ent = -(logp.exp() * logp.masked_fill(mask, 0.0)).sum(-1)  # no -inf * 0 (nan gradients)
    lp, ent, _ = policy.logprobs(x, attn, temperature=temperature, token_ban=(tokens, banned))
    torch.testing.assert_close(lp, want_lp, atol=3e-5, rtol=3e-5)
    torch.testing.assert_close(ent, want_ent, atol=3e-5, rtol=3e-5)
    plain, _, _ = policy.logprobs(x, attn, temperature=temperature)
    gain = (lp - plain).detach()
    assert gain.min() > -1e-5 and gain.max() > 1e-3  # banning mass raises the kept tokens' log-probs
    # relative to the largest entry: at low temperature gradients scale with 1 / T^2
    assert_same_gradients(policy, (lp, ent), (want_lp, want_ent), atol=1e-4, rtol=1e-4, relative=True)
    sel = torch.zeros_like(lp, dtype=torch.bool)
    sel[:, 1::2] = True
    lp_s, ent_s, _ = policy.logprobs(x, attn, select=sel, temperature=temperature, token_ban=(tokens, banned))
    torch.testing.assert_close(lp_s, torch.where(sel, want_lp, 0).detach(), atol=3e-5, rtol=3e-5)
    torch.testing.assert_close(ent_s, torch.where(sel, want_ent, 0).detach(), atol=3e-5, rtol=3e-5)


def test_token_ban_of_the_wrong_shape_or_type_is_an_error_and_strided_bans_work(setup):
    policy, x, attn, ids, tok = setup
    tokens, banned = _random_ban(x, ids, tok.eos_token_id, 1)
    for bad in ((tokens, banned[:, :-1]), (tokens[:, :2], banned), (tokens, banned.float()), (tokens[0], banned)):
        with pytest.raises(ValueError, match="token_ban: expected"):
            policy.logprobs(x, attn, token_ban=bad)
    want = policy.logprobs(x, attn, token_ban=(tokens, banned))[0]
    strided = (tokens.T.contiguous().T, banned.permute(2, 0, 1).contiguous().permute(1, 2, 0))
    assert not strided[1].is_contiguous()
    torch.testing.assert_close(policy.logprobs(x, attn, token_ban=strided)[0], want)


def test_a_banned_label_is_an_error(setup):
    policy, x, attn, ids, tok = setup
    tokens = x[:, 2:3].clone()  # each row's third token, banned where it is the label
    banned = torch.zeros(x.shape[0], x.shape[1] - 1, 1, dtype=torch.bool)
    banned[:, 1, 0] = True
    with pytest.raises(ValueError, match="label is banned"):
        policy.logprobs(x, attn, token_ban=(tokens, banned))
    # where the position is not selected, the ban does not apply
    sel = torch.ones(x.shape[0], x.shape[1] - 1, dtype=torch.bool)
    sel[:, 1] = False
    policy.logprobs(x, attn, select=sel, token_ban=(tokens, banned))


@pytest.mark.parametrize(("no_repeat", "first"), [(True, True), (False, True), (True, False), (False, False)])
def test_make_batch_log_probs_are_those_the_rollout_sampled_from(monkeypatch, no_repeat, first):
    catalog = generate_catalog(12, seed=3)
    words = [it.title for it in catalog.items.values()] + ["User System : hi like try"]
    lm, tok = LM.load_lm("tiny", words)
    ids = LM.add_item_tokens(lm, tok, catalog)
    policy = PO.Policy(lm, ids, mention_bonus=0.7).eval()
    with torch.no_grad():  # items likely everywhere, so bans bite within a turn too
        policy.lm.get_output_embeddings().weight[ids] += 0.5 * torch.randn(len(ids), lm.config.hidden_size)
    ref = BU.frozen_copy(policy)
    drawn = []
    real = torch.multinomial

    def record(p, n, generator=None):
        out = real(p, n, generator=generator)
        drawn.append((p.clone(), out.clone()))
        return out

    monkeypatch.setattr(RO.torch, "multinomial", record)
    cfg = CF.Config.quick(turns=1, new_tokens=6, no_repeat_items=no_repeat, recommend_first=first, item_pg=0.0)
    eps = RO.rollout(policy, tok, catalog, list(range(5)), cfg, None, gen_seed=1)
    monkeypatch.undo()
    batch = PPO.make_batch(policy, ref, eps, tok, 0.1, cfg)
    lp = torch.zeros(len(eps), batch.mask.shape[1])
    for mb in batch.minibatches:
        rows = [
            next(i for i, e in enumerate(eps) if len(e.ids) == int(a.sum()) and e.ids == r[: len(e.ids)].tolist())
            for r, a in zip(mb.ids, mb.attn, strict=True)
        ]
        lp[rows, : mb.old_lp.shape[1]] = mb.old_lp
    checked = forced = 0
    for i, e in enumerate(eps):
        for start, end in zip(e.turn_starts, e.turn_ends, strict=True):
            sampled = e.gen[start : end + 1]
            assert e.ids[end] == tok.eos_token_id and all(sampled[:-1])
            forced += end - start == cfg.new_tokens  # ran out of tokens: the EOS was appended, not sampled
            assert sampled[-1] == int(end - start < cfg.new_tokens)
        assert PPO.reward_positions(e) == [end - 1 - (1 - e.gen[end]) for end in e.turn_ends]
        start = e.turn_starts[0]
        for s, (p, out) in enumerate(drawn):
            pos = start + s
            if pos > e.turn_ends[0] or (pos == e.turn_ends[0] and out[i, 0] != e.ids[pos]):
                break  # past the turn, or the EOS appended to a turn that ran out of tokens
            assert int(out[i, 0]) == e.ids[pos]
            want = torch.log(p[i, e.ids[pos]])
            torch.testing.assert_close(lp[i, pos - 1], want, atol=2e-5, rtol=2e-5)
            checked += 1
    assert checked >= 10 and forced >= 1
    assert (batch.kl[batch.mask > 0].abs() < 1e-5).all()  # the policy is its reference: no KL, banned or not
    assert (batch.kl_k3[batch.mask > 0].abs() < 1e-5).all() and batch.kl_summary()["kl_k3"] < 1e-4


def test_kl_summary_sums_each_dialogue_and_k3_is_never_negative():
    gen = torch.Generator().manual_seed(0)
    lp, ref = -torch.rand(4, 6, generator=gen) * 3, -torch.rand(4, 6, generator=gen) * 3
    mask = (torch.rand(4, 6, generator=gen) < 0.7).float()
    mask[:, 0] = 1.0
    d = lp - ref
    batch = PPO.PPOBatch([], mask, d * mask, (torch.exp(-d) + d - 1) * mask)
    out = batch.kl_summary()
    per = (d * mask).sum(1)
    assert out["kl"] == pytest.approx(float(per.mean()))
    assert out["kl_se"] == pytest.approx(float(per.std() / 2.0))
    assert out["kl_k3"] == pytest.approx(float(((torch.exp(-d) + d - 1) * mask).sum(1).mean()))
    assert out["kl_k3"] >= 0
    assert "kl_k3" not in PPO.PPOBatch([], mask, d * mask).kl_summary()
