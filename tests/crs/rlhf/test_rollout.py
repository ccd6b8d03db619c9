"""Rollouts: the greedy first token is one action over the catalog; decoding respects bans and
never ends a turn empty."""

import torch

from crs_fast.crs.rlhf import lm as LM
from crs_fast.crs.rlhf import policy as PO
from crs_fast.crs.rlhf import rollout as RO


def test_greedy_first_token_treats_recommending_as_one_action():
    logits = torch.log(torch.tensor([[0.30, 0.10, 0.20, 0.20, 0.20], [0.50, 0.05, 0.15, 0.15, 0.15]]))
    items = torch.tensor([2, 3, 4])  # together 0.6 > 0.3 in row 0; 0.45 < 0.5 in row 1
    out = RO._greedy_first(logits, items)
    assert out.tolist() == [2, 0]


def test_decoding_never_picks_a_banned_token_and_never_ends_a_turn_empty():
    from crs_fast.crs.data import generate_catalog

    catalog = generate_catalog(12, seed=3)
    lm, tok = LM.load_lm("tiny", [it.title for it in catalog.items.values()] + ["User System : hi"])
    ids = LM.add_item_tokens(lm, tok, catalog)
    policy = PO.Policy(lm, ids).eval()
    x = torch.tensor([tok("User : hi System :")["input_ids"]] * 6)
    attn = torch.ones_like(x)
    V = policy.head().shape[0]
    ban = torch.zeros(6, V, dtype=torch.bool)
    ban[:, ids[:8]] = True  # eight of the twelve items already in the dialogue
    with torch.no_grad():
        policy.lm.get_output_embeddings().weight[tok.eos_token_id] += 50.0  # EOS would win every step
        out = RO._generate(policy, x, attn, 5, tok.eos_token_id, 1.0, torch.Generator().manual_seed(0), ban)
    assert (out[:, 0] != tok.eos_token_id).all()
    assert not torch.isin(out, ids[:8]).any()
    for row in out.tolist():  # an item chosen in a turn is not chosen again in it
        items = [t for t in row if t in set(ids.tolist())]
        assert len(items) == len(set(items))
