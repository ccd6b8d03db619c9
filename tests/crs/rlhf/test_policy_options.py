"""The policy's options beyond the default: LoRA adapters (peft) and any Hugging Face causal LM
from a local directory."""

import pathlib

import pytest
import torch

from crs_fast.crs.rlhf import build as BU
from crs_fast.crs.rlhf import config as CF
from crs_fast.crs.rlhf import corpus as CO
from crs_fast.crs.rlhf import lm as LM
from crs_fast.crs.rlhf import sft as SFT

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    cfg = CF.Config.quick(real_data="off")
    return CO.prepare_data(cfg, tmp_path_factory.mktemp("data"))


def test_lora_trains_only_the_adapters_value_head_and_item_parts(data):
    pytest.importorskip("peft")
    cfg = CF.Config.quick(real_data="off", lora_r=4, sft_steps=3, sft_epochs=1, sft_batch=4)
    policy, tok = BU.build_policy(cfg, data)
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable, "nothing to train"
    for name in trainable:
        assert (
            ".lora_A." in name
            or ".lora_B." in name
            or name.startswith(("value_head.", "item_attr.", "item_bias", "item_out", "item_repeat"))
        ), name
    assert any(".lora_B." in n for n in trainable)
    frozen = {n: p.detach().clone() for n, p in policy.named_parameters() if not p.requires_grad}
    lora_b = {n: p.detach().clone() for n, p in policy.named_parameters() if ".lora_B." in n}
    assert all(bool((b == 0).all()) for b in lora_b.values())  # LoRA starts as the identity
    history = SFT.sft(policy, tok, data, cfg)
    assert len(history) == 3 and all(torch.isfinite(torch.tensor(h["sft_loss"])) for h in history)
    for n, p in policy.named_parameters():
        if n in frozen:
            assert torch.equal(p.detach(), frozen[n]), f"{n} changed under LoRA"
    assert any(not torch.equal(p.detach(), lora_b[n]) for n, p in policy.named_parameters() if n in lora_b)


def test_a_local_model_directory_loads_as_the_policy(data, tmp_path):
    cfg = CF.Config.quick(real_data="off")
    lm, tok = LM.load_lm("tiny", CO.corpus(data), seed=3)
    directory = tmp_path / "my-model"
    lm.save_pretrained(directory)
    tok.save_pretrained(directory)
    again, tok2 = LM.load_lm(str(directory))
    ids = torch.tensor([tok("hello , I like comedy movies", add_special_tokens=False)["input_ids"]])
    assert tok2("hello , I like comedy movies", add_special_tokens=False)["input_ids"] == ids[0].tolist()
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, lm(ids).logits)
    policy, _ = BU.build_policy(CF.Config.quick(real_data="off", model=str(directory)), data)
    assert len(policy.item_ids) == len(data.catalog)
    with pytest.raises(FileNotFoundError, match="expected 'smollm2', 'tiny' or a local model directory"):
        LM.load_lm(str(pathlib.Path(tmp_path) / "missing"))
    assert cfg.model == "tiny"


def test_lora_runs_the_whole_pipeline(tmp_path):
    """SFT -> R_phi -> PPO -> evaluation with LoRA adapters: the saved PPO policy differs from the
    SFT one in the adapters (and value head, item attributes) only."""
    pytest.importorskip("peft")
    from safetensors.torch import load_file

    from crs_fast.cli import main

    small = "lora_r=4 ppo_iters=2 episodes=4 minibatch=2 eval_users=8 val_users=4 eval_every=2 save_every=2"
    small += " sft_steps=10 rm_epochs=5 bootstrap=50"
    args = ["demo", "--quick", "--out", str(tmp_path), "--real-data", "off"]
    for kv in small.split():
        args += ["--set", kv]
    assert main(args) == 0
    sft = load_file(str(tmp_path / "sft" / "policy.safetensors"))
    ppo = load_file(str(tmp_path / "ppo" / "policy.safetensors"))
    assert sft.keys() == ppo.keys()
    moved = {k for k in sft if not torch.equal(sft[k], ppo[k])}
    assert moved and any(".lora_" in k for k in moved)
    assert all(
        ".lora_" in k or k.startswith(("value_head.", "item_attr.", "item_bias", "item_out", "item_repeat"))
        for k in moved
    ), sorted(moved)
