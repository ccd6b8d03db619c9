"""R_phi refit online on the rollouts' feedback."""

import pytest
import torch

from crs_fast.crs.rlhf import config as CF
from crs_fast.crs.rlhf import lm as LM
from crs_fast.crs.rlhf import online_rm as ORM
from crs_fast.crs.rlhf import reward as RW
from crs_fast.crs.rlhf import rollout as RO


def test_online_rm_labels_like_the_logs_and_refits_towards_them():
    from crs_fast.crs.data import Feedback, generate_catalog

    catalog = generate_catalog(10, seed=0)
    i = catalog.ids()[0]
    ep = RO.Episode(seed=0, ids=[], gen=[])
    ep.responses = [f"{LM.item_token(i)} try it", "What kind of movies do you like?"]
    ep.recs = [[i], []]
    ep.replies = ["Oh, sounds great!", "No suggestion? That does not help."]
    ep.feedback = [
        Feedback(dwell=30.0, sentiment=0.7, engagement=1.0, accepted=False, satisfaction=0.8),
        Feedback(dwell=8.0, sentiment=-0.6, engagement=1.0, accepted=False, satisfaction=0.5),
    ]
    cfg = CF.Config.quick(rm_online_steps=40, rm_batch=8)
    rm = RW.RewardModel(dim=4)
    x_off = torch.randn(32, 4 * 4 + RW.N_MATCH)
    y_off = torch.randn(32, 4)
    online = ORM.OnlineRM(rm, cfg, x_off, y_off)
    y = online.labels([ep], catalog)
    assert y.shape == (2, 4) and y[0, 1] == 1.0 and y[1, 1] < 0  # liked suggestion / disappointed reply
    assert y[0, 0] > y[1, 0] and y[:, 2].eq(1.0).all() and y[:, 3].isnan().all()
    feats = torch.randn(2, x_off.shape[1])
    with torch.no_grad():
        before = float(RW.rm_loss(rm.net(feats), y))
        offline = rm.reward_of(feats).clone()
    quality = online.update(feats, y)
    assert {"rm_onpolicy_sentiment_spearman", "rm_fixed_onpolicy_sentiment_spearman"} <= set(quality)
    assert len(online.x) == 2
    with torch.no_grad():
        assert float(RW.rm_loss(rm.net(feats), y)) < before
        # the fixed yardstick is the offline R_phi, untouched by the refit
        torch.testing.assert_close(online.fixed.reward_of(feats), offline)
        assert not torch.allclose(rm.reward_of(feats), offline)
    assert not any(p.requires_grad for p in online.fixed.parameters())
    ep.features = feats
    seen = online.observe([ep], catalog)
    assert seen["reward_fixed_rm"] == pytest.approx(float(offline.sum()))  # one dialogue: its turns' sum
