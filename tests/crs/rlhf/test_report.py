"""The report's plots: training curves and evaluation bars."""

import json

import pytest

from crs_fast.crs.rlhf import evaluate as E
from crs_fast.crs.rlhf import report as REP


def test_trailing_mean_and_ppo_plot(tmp_path):
    import random

    vals = [random.uniform(-1, 1) for _ in range(random.randint(5, 30))]
    k = random.randint(1, 5)
    got = REP.trailing_mean(vals, k)
    assert len(got) == len(vals) - k + 1
    for i, m in enumerate(got):
        assert m == pytest.approx(sum(vals[i : i + k]) / k)
    with pytest.raises(ValueError, match="k must be >= 1"):
        REP.trailing_mean(vals, 0)
    rows = [{"stage": "ppo", "step": i, "reward": v, "kl": abs(v) * 10} for i, v in enumerate(vals)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    written = REP.plots(tmp_path, kl_target=6.0)
    assert [w.name for w in written] == ["ppo.png"]
    assert written[0].stat().st_size > 1000


def test_eval_plot_with_and_without_redial(tmp_path):
    import random

    def policy(redial: bool) -> dict:
        res = {"synthetic": {"satisfaction": random.random(), "standard": {"recall@10": random.random()}}}
        if redial:
            res["redial"] = {"standard": {f"recall@{k}": random.random() for k in E.KS}}
        return res

    ci = {"diff": 0.1, "lo": 0.05, "hi": 0.15}
    for redial in (False, True):
        for proxy in (False, True):  # with the offline R_phi's reward, and an older eval.json without it
            result = {name: policy(redial) for name in ("base", "sft", "ppo")}
            result["ppo_vs_sft"] = {"satisfaction": ci, "recall@10": ci}
            if proxy:
                for name in ("base", "sft", "ppo"):
                    result[name]["synthetic"]["rphi_reward"] = random.random()
                result["ppo_vs_sft"]["rphi_reward"] = ci
            path = REP.eval_plot(result, tmp_path / f"plots{redial}{proxy}" / "eval.png")
            assert path is not None and path.stat().st_size > 1000
    assert REP.eval_plot({"config": {}}, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
