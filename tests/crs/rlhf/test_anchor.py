"""PPO's real-context item anchor: KL(pi_ref || pi) over the catalog at fixed contexts, against
the naive formula on materialised logits; zero at the reference, positive and differentiable
away from it; the contexts it draws; and one PPO update with it keeps the policy's catalog
distribution closer to the reference than the same update without it."""

import copy

import pytest
import torch
from helpers import tiny_item_lm

from crs_fast.crs.rlhf import anchor as AN
from crs_fast.crs.rlhf import build as BU
from crs_fast.crs.rlhf import corpus as CO
from crs_fast.crs.rlhf import lm as LM
from crs_fast.crs.rlhf import policy as PO

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def setup():
    catalog, lm, tok, ids = tiny_item_lm()
    gen = torch.Generator().manual_seed(3)
    collab = (torch.randn(12, 3, generator=gen), torch.randn(12, 3, generator=gen))
    policy = PO.Policy(lm, ids, train_layers=1, collab=collab, mention_bonus=1.3)
    with torch.no_grad():
        policy.item_bias.copy_(torch.randn(12, generator=gen))
        policy.item_out.copy_(torch.randn(policy.item_out.shape, generator=gen))
    items = [LM.item_token(i) for i in catalog.ids()]
    prompts = [
        f"User : hi {items[2]} like {items[5]}\nSystem:",
        f"User : {items[1]} System : hi\nUser : like\nSystem:",
        "User : hi like\nSystem:",  # no item
    ]
    return policy, tok, prompts, catalog


def _naive_catalog_logprobs(policy, tok, prompt):
    x = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
    h = policy.with_features(policy.top(x, torch.ones_like(x)), x)[0, -1]
    z = h @ policy.item_rows().T
    seen = policy.item_index[x[0]]
    z[seen[seen >= 0]] += policy.item_repeat
    return torch.log_softmax(z, -1)


def _perturbed(policy, scale=0.5, seed=9):
    other = copy.deepcopy(policy)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=g))
    return other


def test_catalog_logprobs_match_the_materialised_scores(setup):
    policy, tok, prompts, _ = setup
    seqs = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    ids, attn = CO.pad_right(seqs, tok.pad_token_id)
    got = AN.catalog_logprobs(policy, ids, attn)
    for b, p in enumerate(prompts):
        torch.testing.assert_close(got[b], _naive_catalog_logprobs(policy, tok, p), rtol=1e-4, atol=1e-4)


def test_anchor_is_the_kl_to_the_reference(setup):
    policy, tok, prompts, _ = setup
    anchor = AN.ItemAnchor(policy, policy, tok, prompts, max_context=64, batch=2)
    assert len(anchor) == 3 and len(anchor.chunks) == 2
    for _ in range(2):  # zero at the reference, each chunk
        assert abs(float(anchor.loss(policy).detach())) < 1e-5
    other = _perturbed(policy)
    losses = [anchor.loss(other) for _ in range(2)]  # chunk 0 ([0, 1]), then chunk 1 ([2])
    for loss, chunk in zip(losses, ([0, 1], [2]), strict=True):
        want = []
        for b in chunk:
            r = _naive_catalog_logprobs(policy, tok, prompts[b])
            q = _naive_catalog_logprobs(other, tok, prompts[b])
            want.append((r.exp() * (r - q)).sum())
        torch.testing.assert_close(loss, torch.stack(want).mean(), rtol=1e-4, atol=1e-5)
        assert float(loss) > 0
    losses[0].backward()
    grads = [p.grad for n, p in other.named_parameters() if n.startswith(("item_out", "item_bias", "item_repeat"))]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)


def test_anchor_at_a_temperature_is_the_kl_of_the_sharpened_distributions(setup):
    policy, tok, prompts, _ = setup
    other = _perturbed(policy, seed=4)
    for t in (0.25, 2.0):
        anchor = AN.ItemAnchor(policy, policy, tok, prompts, max_context=64, batch=3, temperature=t)
        assert abs(float(anchor.loss(policy).detach())) < 1e-5
        want = []
        for p in prompts:
            r = torch.log_softmax(_naive_catalog_logprobs(policy, tok, p) / t, -1)  # log-softmax is shift-free
            q = torch.log_softmax(_naive_catalog_logprobs(other, tok, p) / t, -1)
            want.append((r.exp() * (r - q)).sum())
        torch.testing.assert_close(anchor.loss(other), torch.stack(want).mean(), rtol=1e-4, atol=1e-5)
    sharp = AN.ItemAnchor(policy, policy, tok, prompts, max_context=64, batch=3, temperature=0.25)
    flat = AN.ItemAnchor(policy, policy, tok, prompts, max_context=64, batch=3, temperature=4.0)
    assert float(sharp.loss(other)) > float(flat.loss(other))  # a sharper view sees more of the move


def test_anchor_prompts_are_distinct_real_recommendation_states(setup):
    from crs_fast.crs.data.schema import Dialogue, Turn

    _, _, _, catalog = setup
    ids = list(catalog.ids())
    dialogues = [
        Dialogue(
            f"d{k}",
            [
                Turn("user", f"hi {k}", []),
                Turn("system", "try", [ids[k]]),
                Turn("user", "and", []),
                Turn("system", "also", [ids[k + 1], "not-in-catalog"]),
            ],
        )
        for k in range(4)
    ]
    got = AN.anchor_prompts(dialogues, catalog, 5, seed=0)
    assert len(got) == len(set(got)) == 5  # 8 states, 5 drawn
    every = AN.anchor_prompts(dialogues, catalog, 100, seed=0)
    assert len(every) == 8 and set(got) <= set(every)
    assert all(p.endswith("System:") for p in every)
    assert AN.anchor_prompts(dialogues, catalog, 5, seed=0) == got
    assert AN.anchor_prompts(dialogues, catalog, 5, seed=1) != got


def test_bad_arguments(setup):
    policy, tok, prompts, _ = setup
    with pytest.raises(ValueError, match="at least one context"):
        AN.ItemAnchor(policy, policy, tok, [], max_context=64)
    with pytest.raises(ValueError, match="batch must be > 0"):
        AN.ItemAnchor(policy, policy, tok, prompts, max_context=64, batch=0)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        AN.ItemAnchor(policy, policy, tok, prompts, max_context=64, temperature=0.0)


def test_the_anchor_pulls_the_update_towards_the_reference(setup):
    """Gradient steps on a loss that moves the item rows away from the reference: with the anchor
    added, the catalog distribution at the anchor's contexts ends closer to the reference."""
    policy, tok, prompts, _ = setup
    ref = BU.frozen_copy(policy)
    target = torch.randn(policy.item_out.shape, generator=torch.Generator().manual_seed(5))
    ends = []
    for weight in (0.0, 10.0):
        p = copy.deepcopy(policy)
        anchor = AN.ItemAnchor(p, ref, tok, prompts, max_context=64, batch=3)
        opt = torch.optim.SGD([x for x in p.parameters() if x.requires_grad], lr=0.05)
        for _ in range(20):
            loss = ((p.item_out - target) ** 2).sum() + weight * anchor.loss(p)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            ends.append(float(anchor.loss(p)))
    assert ends[1] < 0.5 * ends[0], ends


def test_build_anchor_draws_real_contexts_and_keeps_the_chosen_reference(tmp_path):
    from crs_fast.crs.rlhf import config as CF

    cfg = CF.Config.quick(real_data="off", collab_rank=4, anchor_contexts=6)
    data = CO.prepare_data(cfg, tmp_path)
    base, tok = BU.build_policy(cfg, data)
    sft = _perturbed(base, scale=0.2)  # stands for the SFT policy, PPO's reference
    assert AN.build_anchor(sft, sft, tok, data, cfg) is None  # generated data only: no real contexts
    for d in data.train[:20]:
        d.id = "real-" + d.id  # now the pipeline takes them for real dialogues
    assert AN.build_anchor(sft, sft, tok, data, CF.Config.quick(real_data="off", anchor_kl=0.0)) is None
    anchor = AN.build_anchor(sft, sft, tok, data, cfg)
    assert len(anchor) == 6
    assert abs(float(anchor.loss(sft).detach())) < 1e-5 and float(anchor.loss(base).detach()) > 1e-4
    anchor = AN.build_anchor(sft, sft, tok, data, CF.Config.quick(real_data="off", collab_rank=4, anchor_ref="base"))
    assert abs(float(anchor.loss(base).detach())) < 1e-5 and float(anchor.loss(sft).detach()) > 1e-4
    with pytest.raises(ValueError, match="anchor_ref"):
        CF.Config.quick(anchor_ref="reference")
    with pytest.raises(ValueError, match="anchor_temp"):
        CF.Config.quick(anchor_temp=0.0)
    sharp = AN.build_anchor(sft, sft, tok, data, CF.Config.quick(real_data="off", collab_rank=4, anchor_temp=0.2))
    assert sharp.temperature == 0.2
