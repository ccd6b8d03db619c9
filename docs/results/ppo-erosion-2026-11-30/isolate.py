"""Which part of a trained policy moves its item ranking: the item scores of the run's SFT and PPO
policies taken apart and recombined on the real dataset's validation samples, and the ranking
that the KL-regularised optimum of R_phi, ``pi_sft(a|s) exp(R_phi(s, a) / beta)``, would give.

    python docs/results/ppo-erosion-2026-11-30/isolate.py RUN_DIR [--set KEY=VALUE ...]

An item's score after a context is ``h . w_i + x . e_i + rho [i mentioned]``: ``h`` the top
layers' hidden state, ``w_i`` the learned item row (``item_out`` + attribute embeddings), ``x``
the context features (1, the sum of the mentioned items' co-occurrence factors), ``e_i`` the
item's bias and co-occurrence factor, ``rho`` the mention bonus. A variant takes each part from
one policy (``b`` base, ``s`` SFT, ``p`` PPO, ``0`` zero) and reports Recall@10 / @50 (standard
and dedup) with the paired dialogue-level bootstrap interval against SFT.
"""

import argparse
import pathlib

import torch

from crs_fast.crs.rlhf.build import build_policy
from crs_fast.crs.rlhf.config import Config
from crs_fast.crs.rlhf.corpus import clip_context, pad_right, prepare_data
from crs_fast.crs.rlhf.encoder import SentenceEncoder
from crs_fast.crs.rlhf.evaluate import cluster_bootstrap_diff, real_samples
from crs_fast.crs.rlhf.reward import Scorer
from crs_fast.crs.rlhf.run_io import load_policy, load_reward_model


@torch.no_grad()
def parts(policy, tok, prompts, cfg, states):
    """(h [n, H], x [n, 1 + r], w [I, H], e [I, 1 + r], rho) of ``policy`` after each prompt."""
    H = policy.lm.config.hidden_size
    qs = []
    for i in range(0, len(prompts), 32):
        chunk = prompts[i : i + 32]
        seqs = [clip_context(tok, tok(p, add_special_tokens=False)["input_ids"], cfg.max_context) for p in chunk]
        ids, attn = pad_right(seqs, tok.pad_token_id, policy.device)
        if i not in states:
            states[i] = policy.trunk(ids, attn)
        qs.append(policy.next_query(ids, attn, states[i]).float())
    q = torch.cat(qs)
    rows = policy.item_rows().float()
    return q[:, :H], q[:, H:], rows[:, :H], rows[:, H:], float(policy.item_repeat)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=pathlib.Path)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--ppo", default="ppo", help="the PPO stage's folder in the run")
    a = ap.parse_args()
    cfg = Config(**{k: type(getattr(Config(), k))(v) for k, v in (s.split("=", 1) for s in a.set)})
    data = prepare_data(cfg, a.out / "data")
    ids = list(data.catalog.ids())
    index = {x: n for n, x in enumerate(ids)}
    std_s = real_samples(data.real_valid, data.catalog, dedup=False, final_only=cfg.dataset == "opendialkg")
    ded_s = real_samples(data.real_valid, data.catalog, dedup=True, final_only=cfg.dataset == "opendialkg")
    prompts = list(dict.fromkeys(s.prompt for s in std_s + ded_s))
    row_of = {p: n for n, p in enumerate(prompts)}
    ment = torch.zeros(len(prompts), len(ids), dtype=torch.bool)
    for s in std_s + ded_s:
        for x in s.mentioned:
            if x in index:
                ment[row_of[s.prompt], index[x]] = True

    states: dict[int, object] = {}
    P = {}
    tok = None
    for name, stage in (("b", None), ("s", "sft"), ("p", a.ppo)):
        policy, tok = build_policy(cfg, data)
        if stage:
            load_policy(policy, a.out / stage / "policy.safetensors")
        policy.eval()
        P[name] = parts(policy, tok, prompts, cfg, states)
        h, x, w, e, rho = P[name]
        print(
            f"{name}: |h| {h.norm(dim=1).mean():.1f}  |w| {w.norm(dim=1).mean():.3f}  h.w std "
            f"{(h @ w.T).std():.3f}  x.e std {(x @ e.T).std():.3f}  bias mean {e[:, 0].mean():.3f}  rho {rho:.3f}",
            flush=True,
        )

    def score(spec: str) -> torch.Tensor:
        """spec: four letters, the source of h, w, e, rho (0: that part zero)."""
        sh, sw, se, sr = spec
        out = torch.zeros(len(prompts), len(ids))
        if "0" not in (sh, sw):
            out += P[sh][0] @ P[sw][2].T
        if se != "0":
            out += P[se][1] @ P[se][3].T
        if sr != "0":
            out += P[sr][4] * ment
        return out

    def hits(s: torch.Tensor, samples, dedup: bool, k: int) -> list[float]:
        s = s.masked_fill(ment, float("-inf")) if dedup else s
        out = []
        for x in samples:
            r = row_of[x.prompt]
            out.append(float((s[r] > s[r, index[x.target]]).sum() < k))
        return out

    ref = score("ssss")

    def show(label: str, s: torch.Tensor) -> None:
        cells = []
        for samples, dedup in ((std_s, False), (ded_s, True)):
            for k in (10, 50):
                h, h0 = hits(s, samples, dedup, k), hits(ref, samples, dedup, k)
                b = cluster_bootstrap_diff(h0, h, [x.group for x in samples], n=1000, seed=0)
                cells.append(f"{sum(h) / len(h):.3f} ({b['diff']:+.3f} {b['lo']:+.3f}..{b['hi']:+.3f})")
        print(f"{label:34s} " + "  ".join(cells), flush=True)

    print(f"valid: {len(std_s)} standard / {len(ded_s)} dedup samples, {len(prompts)} contexts")
    print(f"{'variant (h w e rho)':34s} R@10 std (vs SFT), R@50 std, R@10 dedup, R@50 dedup")
    for spec, label in [
        ("bbbb", "base"),
        ("ssss", "SFT"),
        ("pppp", "PPO"),
        ("00bb", "base without h.w (its w is 0)"),
        ("00ss", "SFT without h.w"),
        ("00pp", "PPO without h.w"),
        ("ppsp", "PPO, SFT's e"),
        ("spss", "SFT h, PPO w"),
        ("psss", "PPO h, SFT w"),
        ("ppps", "PPO, SFT's rho"),
    ]:
        show(f"{spec} {label}", score(spec))

    rm = load_reward_model(a.out, SentenceEncoder().dim)
    scorer = Scorer(rm, SentenceEncoder(), data.catalog, item_cache=a.out / "rm" / "item_encodings.safetensors")
    R = torch.cat([scorer.item_rewards(prompts[i : i + 64]) for i in range(0, len(prompts), 64)])
    print(f"R_phi over items: mean {R.mean():.3f}, std across items per context {R.std(1).mean():.3f}")
    show("R_phi alone", R)
    base = torch.log_softmax(ref, -1)
    for beta in (0.05, 0.1, 0.3, 1.0, 3.0, 10.0):
        show(f"SFT + R_phi / {beta}", base + R / beta)


if __name__ == "__main__":
    main()
