"""The policy: item tokens, responses that open with the item, the frozen trunk shared by policy,
reference and value, and the item attribute features."""

import pytest
import torch

from crs_fast.crs.rlhf import corpus as CO
from crs_fast.crs.rlhf import lm as LM
from crs_fast.crs.rlhf import policy as PO


def test_item_tokens_start_from_the_mean_of_their_title_rows():
    from crs_fast.crs.data import generate_catalog

    catalog = generate_catalog(20, seed=1)
    lm, tok = LM.load_lm("tiny", [it.title for it in catalog.items.values()])
    emb0 = lm.get_input_embeddings().weight.detach().clone()
    ids = LM.add_item_tokens(lm, tok, catalog)
    first = catalog.ids()[0]
    title = tok(catalog[first].title, add_special_tokens=False)["input_ids"]
    torch.testing.assert_close(lm.get_input_embeddings().weight[ids[0]], emb0[title].mean(0))
    text = f"How about {LM.item_token(first)}?"
    assert LM.items_in(text) == [first] and catalog[first].title in LM.render(text, catalog)
    assert tok.convert_ids_to_tokens(int(ids[0])) == LM.item_token(first)


def test_response_puts_the_recommended_item_first():
    from crs_fast.crs.data import generate_catalog
    from crs_fast.crs.data.schema import Turn

    catalog = generate_catalog(10, seed=0)
    i = catalog.ids()[3]
    text = CO.response_text(Turn("system", f"You might like @{i}.", [i]), catalog)
    assert text.split()[0] == LM.item_token(i)


def test_top_layers_mode_shares_the_frozen_trunk():
    from crs_fast.crs.data import generate_catalog

    catalog = generate_catalog(15, seed=2)
    lm, tok = LM.load_lm("tiny", [it.title for it in catalog.items.values()] + ["User System : hi"])
    ids = LM.add_item_tokens(lm, tok, catalog)
    full = PO.Policy(lm, ids, train_layers=0)
    top = PO.Policy(lm, ids, train_layers=1)
    x, attn = CO.pad_right([tok("User : hi System :")["input_ids"], tok("User : hello")["input_ids"]], tok.pad_token_id)
    lp_full, ent_full, _ = full.logprobs(x, attn)
    lp_top, ent_top, _ = top.logprobs(x, attn, state=top.trunk(x, attn))
    torch.testing.assert_close(lp_top, lp_full)  # same weights: splitting the stack changes nothing
    torch.testing.assert_close(ent_top, ent_full)
    trainable = {n for n, p in top.named_parameters() if p.requires_grad}
    assert "out_head" in trainable and any(".layers.1." in n for n in trainable)
    assert not any(".layers.0." in n or "embed_tokens" in n for n in trainable)
    sel = attn[:, 1:] > 0
    lp_sel, _, _ = top.logprobs(x, attn, select=sel)
    torch.testing.assert_close(lp_sel[sel], lp_full[sel])
    lp_sel[sel].sum().backward()
    assert top.out_head.grad is not None and lm.model.layers[1].self_attn.q_proj.weight.grad is not None
    assert lm.model.layers[0].self_attn.q_proj.weight.grad is None


def test_item_features_start_at_zero_and_share_what_one_item_learns():
    from crs_fast.crs.data.schema import Catalog, Item

    items = [
        Item("a", "Alpha One", {"genre": ["comedy"], "star": ["Ann Lee"]}),
        Item("b", "Beta Two", {"genre": ["comedy", "drama"], "star": ["Bo Ray"]}),
        Item("c", "Gamma Three", {"genre": ["horror"], "star": ["Ann Lee"]}),
        Item("d", "Delta Four", {"genre": ["western"]}),  # no value shared with another item
    ]
    catalog = Catalog(items)
    attrs = LM.item_attribute_index(catalog)
    assert attrs[3] == [] and len({v for a in attrs for v, _ in a}) == 2  # comedy, Ann Lee
    assert attrs[0] == [(attrs[1][0][0], 1.0), (attrs[2][0][0], 1.0)]  # one comedy, one star: weight 1 each
    lm, tok = LM.load_lm("tiny", [it.title for it in items] + ["User System : hi"])
    ids = LM.add_item_tokens(lm, tok, catalog)
    plain = PO.Policy(lm, ids, train_layers=1)
    feat = PO.Policy(lm, ids, train_layers=1, item_attrs=attrs)
    torch.testing.assert_close(feat.head(), plain.head())  # starts exactly as built
    x, attn = CO.pad_right([tok("User : hi System :")["input_ids"]], tok.pad_token_id)
    torch.testing.assert_close(feat.rank_items(x, attn, 4), plain.rank_items(x, attn, 4))
    # raise item "a" (comedy, Ann Lee): the other comedy and the other Ann Lee film rise with it
    h = feat.top(x, attn)[0, -1].detach()
    opt = torch.optim.SGD(feat.item_attr.parameters(), lr=0.5)
    before = (feat.head()[ids] @ h).detach()
    for _ in range(3):
        loss = -(feat.head()[ids[0]] @ h)
        opt.zero_grad()
        loss.backward()
        opt.step()
    gain = (feat.head()[ids] @ h).detach() - before
    assert gain[0] > 0 and gain[1] > 0 and gain[2] > 0 and gain[3].abs() < 1e-6
    with pytest.raises(ValueError, match="item_attrs has 2 entries for 4 items"):
        PO.Policy(lm, ids, item_attrs=attrs[:2])


def _head_as_defined(policy):
    """The head written out as its docstring defines it: token rows (item rows replaced by
    ``item_out`` with co-occurrence factors), plus the attribute part, plus the extra columns."""
    w = policy._token_head()
    if policy.item_bias is not None:
        w = w.index_copy(0, policy.item_ids, policy.item_out)
    if policy.item_attr is not None:
        w = w.index_add(0, policy.item_ids, policy._item_content())
    if policy.item_bias is None:
        return w
    extra = w.new_zeros(w.shape[0], policy.item_bias_dims()).index_copy(0, policy.item_ids, policy._item_extra())
    return torch.cat([w, extra], 1)


@pytest.mark.parametrize("attrs", [False, True])
@pytest.mark.parametrize("collab", [False, True])
def test_head_and_its_rows_equal_the_definition_values_and_gradients(attrs, collab):
    from crs_fast.crs.data import generate_catalog
    from crs_fast.crs.rlhf import mention as ME

    catalog = generate_catalog(10, seed=6)
    lm, tok = LM.load_lm("tiny", [it.title for it in catalog.items.values()] + ["User System : hi"])
    ids = LM.add_item_tokens(lm, tok, catalog)
    torch.manual_seed(0)
    kw = {"item_attrs": LM.item_attribute_index(catalog)} if attrs else {}
    if collab:
        kw["collab"] = (torch.randn(10, 3), torch.randn(10, 3))
    policy = PO.Policy(lm, ids, train_layers=1, **kw)
    with torch.no_grad():  # every part non-zero, so a wrong row or a lost term shows
        for p in policy.parameters():
            p.add_(0.1 * torch.randn_like(p))
    V = policy._token_head().shape[0]
    tokens = torch.cat([ids[:4], torch.randint(0, V, (7,)), ids[-2:]]).view(1, 13)
    g = torch.randn(13, _head_as_defined(policy).shape[1])

    def grads(build):
        policy.zero_grad()
        out = build()
        (out * g).sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}

    ref, want = grads(lambda: _head_as_defined(policy)[tokens[0]])
    assert want  # the head's parts are trainable
    for build in (lambda: policy.head()[tokens[0]], lambda: ME.head_rows(policy, tokens)[0]):
        out, got = grads(build)
        assert torch.equal(out, ref)
        assert got.keys() == want.keys()
        for n in want:
            torch.testing.assert_close(got[n], want[n], rtol=0, atol=0, msg=n)
    assert torch.equal(policy.head(), _head_as_defined(policy))
