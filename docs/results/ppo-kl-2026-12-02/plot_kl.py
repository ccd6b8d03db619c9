"""k1 (with its standard error over the 16 dialogues) and k3 per PPO iteration, ReDial, before and
after PPO stopped scoring appended EOS tokens: kl.png."""

import json
import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

here = pathlib.Path(__file__).parent
fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharey=True)
for ax, (name, title) in zip(
    axes, (("before", "before (appended EOS scored)"), ("after", "after (only sampled tokens)")), strict=True
):
    lines = (here / f"{name}_metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines if '"ppo"' in line]
    step = [r["step"] for r in rows]
    k1 = [r["kl"] for r in rows]
    se = [r["kl_se"] for r in rows]
    ax.errorbar(step, k1, yerr=[2 * s for s in se], marker="o", ms=3, capsize=2, label="k1 (in the reward), +-2 SE")
    ax.plot(step, [r["kl_k3"] for r in rows], marker="s", ms=3, label="k3 (terms >= 0)")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_title(title)
    ax.set_xlabel("PPO iteration")
axes[0].set_ylabel("KL to SFT (nats / dialogue)")
axes[0].legend(fontsize=8)
fig.tight_layout()
fig.savefig(here / "kl.png", dpi=110)
