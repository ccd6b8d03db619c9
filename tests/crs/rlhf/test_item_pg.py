"""PPO's expected clipped surrogate over the catalog at item choices: R_phi's value of every item
(vectorised attribute match, item rewards), the loss and its fixed point, and the batch fields."""

import copy
import os
import random
import zlib

import pytest
import torch

from crs_fast.crs.data import generate_catalog
from crs_fast.crs.rlhf import anchor as AN
from crs_fast.crs.rlhf import build as BU
from crs_fast.crs.rlhf import config as CF
from crs_fast.crs.rlhf import evaluate as E
from crs_fast.crs.rlhf import lm as LM
from crs_fast.crs.rlhf import policy as PO
from crs_fast.crs.rlhf import ppo as PPO
from crs_fast.crs.rlhf import reward as RW
from crs_fast.crs.rlhf import rollout as RO

pytest.importorskip("transformers")
os.environ["CRS_FAST_NO_PROGRESS"] = "1"


def test_catalog_match_equals_attribute_match_item_by_item():
    catalog = generate_catalog(60, seed=5)
    match = RW.CatalogMatch(catalog)
    rng = random.Random(0)
    values = sorted(
        {v for it in catalog.items.values() for k in ("genre", "director", "star") for v in it.attributes[k]}
    )
    contexts = ["User: hi\nSystem:", "User: anything?"]
    contexts += [f"User: I like {rng.choice(values)} and {rng.choice(values).upper()}\nSystem:" for _ in range(8)]
    for ctx in contexts:
        fast = match(ctx)
        slow = torch.tensor([RW.attribute_match(ctx.lower(), [i], catalog) for i in catalog.ids()])
        torch.testing.assert_close(fast, slow)
    assert match(contexts[-1])[:, :2].sum() > 0  # the sampled contexts do name some item's values


def test_item_rewards_equal_scoring_each_item_alone(tmp_path):
    catalog = generate_catalog(15, seed=1)

    class Enc:  # deterministic stand-in for the sentence encoder: a hash of the text
        dim = 8

        def encode(self, texts):
            seeds = [zlib.crc32(t.encode()) for t in texts]
            return torch.stack([torch.randn(8, generator=torch.Generator().manual_seed(s)) for s in seeds])

    torch.manual_seed(0)
    rm = RW.RewardModel(dim=8).eval()
    cache = tmp_path / "items.safetensors"
    scorer = RW.Scorer(rm, Enc(), catalog, item_cache=cache)
    ctx = [f"User: I want {catalog[catalog.ids()[3]].attributes['genre'][0]} films\nSystem:", "User: hi\nSystem:"]
    q = scorer.item_rewards(ctx)
    assert q.shape == (2, len(catalog)) and cache.exists()
    for j, c in enumerate(ctx):
        one = torch.stack([scorer([c], [LM.item_token(i)])[0] for i in catalog.ids()])
        torch.testing.assert_close(q[j], one, rtol=1e-5, atol=1e-5)
    again = RW.Scorer(rm, None, catalog, item_cache=cache)  # embeddings from the cache, no encoder needed
    torch.testing.assert_close(again.item_encodings(), scorer.item_encodings())
    c = Enc().encode([LM.render(x, catalog) for x in ctx])
    torch.testing.assert_close(scorer.item_rewards(ctx, embedded=c), q)  # precomputed context embeddings
    other = generate_catalog(15, seed=2)  # same size, other items: the cache is not theirs
    fresh = RW.Scorer(rm, Enc(), other, item_cache=cache)
    expected = Enc().encode([LM.render(LM.item_token(i), other, details=True) for i in other.ids()])
    torch.testing.assert_close(fresh.item_encodings(), expected)


def test_expected_item_loss_is_the_clipped_surrogate_averaged_over_the_catalog():
    torch.manual_seed(0)
    n, n_items, clip = 3, 7, 0.2
    ban = torch.zeros(n, n_items, dtype=torch.bool)
    ban[0, 2] = ban[2, [0, 5]] = True
    old = torch.log_softmax(torch.randn(n, n_items).masked_fill(ban, float("-inf")), -1)
    logits = torch.randn(n, n_items, requires_grad=True)
    logp = torch.log_softmax(logits.masked_fill(ban, float("-inf")), -1)
    adv = torch.randn(n, n_items).masked_fill(ban, 0.0)
    loss = PPO.expected_item_loss(logp, old, adv, ban, clip)
    brute = 0.0
    for s in range(n):
        for a in range(n_items):
            if ban[s, a]:
                continue
            rho, A = float((logp[s, a] - old[s, a]).detach().exp()), float(adv[s, a])
            brute += float(old[s, a].exp()) * min(rho * A, max(min(rho, 1 + clip), 1 - clip) * A)
    assert float(loss.detach()) == pytest.approx(-brute / n, rel=1e-5)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and (logits.grad[ban] == 0).all()


def test_repeated_expected_updates_reach_the_kl_regularised_optimum():
    """Iterating (advantages from Q = R - beta log(pi_old / pi_ref), then clipped steps) converges
    to pi ~ pi_ref exp(R / beta), the optimum of E_pi R - beta KL(pi || pi_ref)."""
    torch.manual_seed(1)
    n_items, beta = 9, 0.5
    ref = torch.log_softmax(torch.randn(1, n_items), -1)
    reward = torch.randn(1, n_items)
    logits = ref.clone().requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=0.05)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.99)  # unit-scale advantages: settle the steps
    ban = torch.zeros(1, n_items, dtype=torch.bool)
    for _ in range(400):
        with torch.no_grad():
            old = torch.log_softmax(logits, -1)
            q = reward - beta * (old - ref)
            adv = q - (old.exp() * q).sum(-1, keepdim=True)
            adv = adv / (old.exp() * adv**2).sum().sqrt().clamp(min=1e-12)
        for _ in range(2):
            loss = PPO.expected_item_loss(torch.log_softmax(logits, -1), old, adv, ban, 0.2)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    target = torch.softmax(ref + reward / beta, -1)
    torch.testing.assert_close(torch.softmax(logits, -1), target, atol=2e-3, rtol=0)
    assert (torch.softmax(ref, -1) - target).abs().max() > 0.05  # the optimum is far from where it started


def test_make_batch_gives_item_advantages_at_each_turn_start():
    catalog = generate_catalog(12, seed=3)
    lm, tok = LM.load_lm("tiny", [it.title for it in catalog.items.values()] + ["User System : hi try"])
    ids = LM.add_item_tokens(lm, tok, catalog)
    policy = PO.Policy(lm, ids).eval()
    ref = BU.frozen_copy(policy)
    with torch.no_grad():  # the policy differs from the reference, so the KL term matters
        policy.lm.get_output_embeddings().weight[ids] += 0.3 * torch.randn(len(ids), lm.config.hidden_size)
    user = tok("User : hi System :", add_special_tokens=False)["input_ids"]
    item = [int(ids[4]), int(ids[7])]
    reply = tok("User : hi System :", add_special_tokens=False)["input_ids"]
    eps = []
    for k in range(3):
        e = RO.Episode(seed=k, ids=list(user), gen=[0] * len(user))
        for t in range(2 if k else 1):  # one dialogue with a single turn
            e.turn_starts.append(len(e.ids))
            e.ids += [item[t], tok.eos_token_id]
            e.gen += [1, 1]
            e.turn_ends.append(len(e.ids) - 1)
            e.rewards.append(0.5)
            if t == 0 and k:
                e.ids += reply
                e.gen += [0] * len(reply)
        e.item_q = torch.randn(len(e.turn_starts), len(ids))
        eps.append(e)
    cfg = CF.Config.quick(minibatch=2, item_pg=1.0)
    batch = PPO.make_batch(policy, ref, eps, tok, 0.1, cfg)
    n_states = 0
    second = 0.0
    for mb in batch.minibatches:
        assert mb.items_at.sum() == len(mb.item_adv) == len(mb.item_old) == len(mb.item_ban)
        rows = mb.items_at.nonzero().tolist()
        for (r, pos), ban in zip(rows, mb.item_ban, strict=True):
            assert int(mb.ids[r, pos + 1]) in item  # the state predicts a system turn's first token
            assert bool(ban[4]) == (int(mb.ids[r, pos + 1]) == item[1])  # item 4 is in the dialogue by then
            assert not ban[7]
        p = mb.item_old.exp()
        torch.testing.assert_close((p * mb.item_adv).sum(-1), torch.zeros(len(p)), atol=1e-5, rtol=0)
        assert (mb.item_adv[mb.item_ban] == 0).all() and (p[mb.item_ban] == 0).all()
        # every turn opens with an item (recommend_first): its old log-prob is the one given an item
        given = mb.item_old.gather(1, mb.item_choice[:, None]).squeeze(1)
        torch.testing.assert_close(mb.old_lp[mb.items_at], given)
        assert (given > mb.item_old.new_tensor(-1e9)).all() and (mb.item_choice >= 0).all()
        n_states += len(p)
        second += float((p * mb.item_adv**2).sum())
    assert n_states == 5
    assert second / n_states == pytest.approx(1.0, rel=1e-4)
    no_q = PPO.make_batch(policy, ref, eps, tok, 0.1, CF.Config.quick(minibatch=2, item_pg=0.0))
    assert all(mb.item_adv is None and mb.item_choice is not None for mb in no_q.minibatches)
    torch.testing.assert_close(no_q.kl, batch.kl)  # the same KL, item choices given an item
    plain = PPO.make_batch(policy, ref, eps, tok, 0.1, CF.Config.quick(minibatch=2, item_pg=0.0, recommend_first=False))
    assert all(mb.items_at is None for mb in plain.minibatches)
    assert not torch.allclose(plain.kl, batch.kl)  # unconditional log-probs at the first tokens
    stats = PPO.ppo_update(policy, torch.optim.SGD(policy.parameters(), lr=1e-3), batch, cfg)
    assert "item_loss" in stats and torch.isfinite(torch.tensor(stats["item_loss"]))
    assert "anchor_kl" not in stats
    anchor = AN.ItemAnchor(policy, ref, tok, ["User : hi\nSystem :", "System :"], max_context=32)
    stats = PPO.ppo_update(policy, torch.optim.SGD(policy.parameters(), lr=1e-3), batch, cfg, anchor=anchor)
    assert -1e-6 <= stats["anchor_kl"] < float("inf")  # a KL, added to every update's loss


def test_trunk_cache_shares_the_frozen_part_only_between_identical_trunks():

    catalog = generate_catalog(12, seed=3)
    words = [it.title for it in catalog.items.values()] + ["User System : hi I like movies"]
    lm, tok = LM.load_lm("tiny", words)
    ids = LM.add_item_tokens(lm, tok, catalog)
    a = PO.Policy(lm, ids, train_layers=1).eval()
    b = copy.deepcopy(a)
    with torch.no_grad():  # b: a trained top layer and head, the same frozen trunk
        for p in b.backbone().layers[-1].parameters():
            p.add_(0.05 * torch.randn_like(p))
        b.out_head.add_(0.05 * torch.randn_like(b.out_head))
    prompts = ["User : hi\nSystem :", "User : I like movies\nSystem :", "User : hi hi hi\nSystem :"]
    cfg = CF.Config.quick()
    cache = E.TrunkCache()
    for policy in (a, b):
        shared = E.top_lists(policy, tok, prompts, 5, cfg, cache.for_policy(policy))
        assert shared == E.top_lists(policy, tok, prompts, 5, cfg)
    assert len(cache.states) == 1 and cache.for_policy(b) is cache
    assert E.top_lists(a, tok, prompts, 5, cfg) != E.top_lists(b, tok, prompts, 5, cfg)  # the tops differ
    c = copy.deepcopy(a)
    with torch.no_grad():
        c.backbone().layers[0].mlp.up_proj.weight.add_(0.1)  # a different trunk: no sharing
    assert cache.for_policy(c) is None


@pytest.mark.parametrize("collab", [False, True])
def test_ranking_reuse_only_between_policies_with_equal_item_scores(collab):
    """A policy differing only in its value head and the head's text rows reuses the first one's
    rankings (and they are indeed equal); one whose item scores can differ gets its own store."""
    catalog = generate_catalog(12, seed=4)
    words = [it.title for it in catalog.items.values()] + ["User System : hi I like movies"]
    lm, tok = LM.load_lm("tiny", words)
    ids = LM.add_item_tokens(lm, tok, catalog)
    factors = (torch.randn(12, 3), torch.randn(12, 3)) if collab else None
    a = PO.Policy(lm, ids, train_layers=1, collab=factors).eval()
    text = torch.ones(a.out_head.shape[0], dtype=torch.bool)
    text[ids] = False
    b = copy.deepcopy(a)
    with torch.no_grad():
        b.value_head.weight.add_(torch.randn_like(b.value_head.weight))
        b.out_head[text] += 0.5 * torch.randn_like(b.out_head[text])
    prompts = ["User : hi\nSystem :", "User : I like movies\nSystem :", "User : hi hi hi\nSystem :"]
    cfg = CF.Config.quick()
    reuse = E.RankingReuse()
    store, same = reuse.store_for("a", a)
    assert same is None and store == {}
    store["lists"] = E.top_lists(a, tok, prompts, 12, cfg)
    got, same = reuse.store_for("b", b)
    assert same == "a" and got is store
    assert E.top_lists(b, tok, prompts, 12, cfg) == store["lists"]  # the premise: equal rankings
    c = copy.deepcopy(a)  # the item rows moved: no reuse
    with torch.no_grad():
        if collab:
            c.item_bias.add_(torch.randn_like(c.item_bias))
        else:
            c.out_head[ids] += torch.randn_like(c.out_head[ids])
    got, same = reuse.store_for("c", c)
    assert same is None and got == {} and got is not store
    d = copy.deepcopy(a)  # the top layer moved: no reuse
    with torch.no_grad():
        d.backbone().layers[-1].mlp.up_proj.weight.add_(0.1)
    assert reuse.store_for("d", d)[1] is None


def test_top_lists_of_a_batch_equal_each_prompt_alone():
    """Prompts are batched by length (right padding): every prompt's list is the one it gets alone."""
    catalog = generate_catalog(12, seed=5)
    words = [it.title for it in catalog.items.values()] + ["User System : hi I like movies"]
    lm, tok = LM.load_lm("tiny", words)
    ids = LM.add_item_tokens(lm, tok, catalog)
    policy = PO.Policy(lm, ids, train_layers=1, collab=(torch.randn(12, 3), torch.randn(12, 3))).eval()
    rng = random.Random(1)
    vocab = ["hi", "I", "like", "movies", *[it.title for it in catalog.items.values()]]
    prompts = [
        "User : " + " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 30))) + "\nSystem :" for _ in range(45)
    ]
    cfg = CF.Config.quick()
    together = E.top_lists(policy, tok, prompts, 12, cfg, E.TrunkCache().for_policy(policy))
    assert set(together) == set(prompts)
    for p in prompts:
        assert together[p] == E.top_lists(policy, tok, [p], 12, cfg)[p], p
