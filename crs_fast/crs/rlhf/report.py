"""What a run shows: ``report.md`` (the evaluation table beside the published ReDial figures,
with paired bootstrap intervals) and ``plots/*.png`` (training curves from ``metrics.jsonl``, the
evaluation bars)."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

from .evaluate import KS
from .run_io import Tracker

PUBLISHED = {  # ../shared/data/README.md: Recall@1/10/50 on ReDial
    "KBRD": (0.030, 0.163, 0.338),
    "KGSF": (0.039, 0.183, 0.378),
    "UniCRS": (0.051, 0.224, 0.428),
    "UniCRS (dedup)": (0.024, 0.180, 0.335),
}
PUBLISHED_OPENDIALKG = {  # the same README: Recall@1/10/50 on OpenDialKG, iEvaLM protocol
    "KBRD": (0.231, 0.423, 0.492),
    "UniCRS": (0.308, 0.513, 0.574),
}
SET_LABELS = {
    "synthetic": "synthetic",
    "redial": "ReDial test",
    "redial_valid": "ReDial valid",
    "opendialkg": "OpenDialKG test",
    "opendialkg_valid": "OpenDialKG valid",
}


def _dedup(res: dict) -> str:
    d = res["dedup"]
    return " / ".join(f"{d[f'recall@{k}']:.3f}" for k in KS)


def report(result: dict) -> str:
    """The comparison table, the PPO - SFT intervals, KL and R_phi figures, and links to the plots
    (Markdown, paths relative to the run directory)."""
    lines = [
        "| policy | data | R@1 | R@10 | R@50 | NDCG@10 | MRR@10 | dedup R@1 / R@10 / R@50 | satisfaction | coherence "
        "| distinct-2 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("base", "sft", "ppo"):
        res = result.get(name)
        if not res:
            continue
        s = res["synthetic"]
        st = s["standard"]
        lines.append(
            f"| {name} | synthetic | {st['recall@1']:.3f} | {st['recall@10']:.3f} | {st['recall@50']:.3f} | "
            f"{st['ndcg@10']:.3f} | {st['mrr@10']:.3f} | {_dedup(s)} | {s['satisfaction']:.3f} | "
            f"{s['coherence']:.3f} | {s['distinct2']:.3f} |"
        )
        for set_name, label in SET_LABELS.items():
            if set_name == "synthetic" or set_name not in res:
                continue
            r = res[set_name]
            st = r["standard"]
            success = f"success {r['success_rate']:.3f}" if "success_rate" in r else "-"
            lines.append(
                f"| {name} | {label} | {st['recall@1']:.3f} | {st['recall@10']:.3f} | {st['recall@50']:.3f} | "
                f"{st['ndcg@10']:.3f} | {st['mrr@10']:.3f} | {_dedup(r)} | {success} | - | - |"
            )
    for name, by_set in result.get("baselines", {}).items():
        for set_name, label in SET_LABELS.items():
            if set_name not in by_set:
                continue
            st = by_set[set_name]["standard"]
            lines.append(
                f"| {name} (baseline) | {label} | {st['recall@1']:.3f} | {st['recall@10']:.3f} | "
                f"{st['recall@50']:.3f} | {st['ndcg@10']:.3f} | {st['mrr@10']:.3f} | {_dedup(by_set[set_name])} "
                "| - | - | - |"
            )
    published = PUBLISHED_OPENDIALKG if result.get("dataset") == "opendialkg" else PUBLISHED
    where = "OpenDialKG" if result.get("dataset") == "opendialkg" else "ReDial"
    for name, (r1, r10, r50) in published.items():
        dedup = f"{r1:.3f} / {r10:.3f} / {r50:.3f}" if "dedup" in name else "-"
        std = ("-", "-", "-") if "dedup" in name else (f"{r1:.3f}", f"{r10:.3f}", f"{r50:.3f}")
        lines.append(f"| {name} (published) | {where} | {' | '.join(std)} | - | - | {dedup} | - | - | - |")
    if "ppo_vs_sft" in result:
        lines.append("")
        for k, v in result["ppo_vs_sft"].items():
            whole = f", {v['groups']} users resampled whole" if "groups" in v else ", paired by user"
            lines.append(
                f"PPO - SFT, {SYNTHETIC_LABELS.get(k, k)}: {v['diff']:+.4f} "
                f"(95% bootstrap CI {v['lo']:+.4f} .. {v['hi']:+.4f}{whole})"
            )
    for name in ("sft", "ppo"):
        if result.get(name, {}).get("rankings_same_as"):
            lines.append(
                f"{name}'s item scores equal {result[name]['rankings_same_as']}'s tensor for tensor "
                "(only the head's text rows and the value head differ): its rankings are that policy's."
            )
    for ds in ("redial", "opendialkg"):
        for k, v in result.get(f"{ds}_ppo_vs_sft", {}).items():
            lines.append(
                f"PPO - SFT, {SET_LABELS[ds]} {k}: {v['diff']:+.4f} (95% bootstrap CI {v['lo']:+.4f} .. "
                f"{v['hi']:+.4f}, {v['groups']} dialogues resampled whole)"
            )
    for set_name, by_protocol in result.get("ppo_vs_baselines", {}).items():
        lines.append("")
        unit = "users" if set_name == "synthetic" else "dialogues"
        for protocol, block in by_protocol.items():
            for key, v in block.get("best", {}).items():
                lines.append(
                    f"PPO - best baseline ({v['baseline']}), {SET_LABELS.get(set_name, set_name)} {protocol} {key}: "
                    f"{v['diff']:+.4f} "
                    f"(95% bootstrap CI {v['lo']:+.4f} .. {v['hi']:+.4f}, {v['groups']} {unit} resampled whole)"
                )
    for name, by_set in result.get("vs_baselines", {}).items():
        if name == "ppo":  # above, every set
            continue
        for set_name, by_protocol in by_set.items():
            if set_name == "synthetic":
                continue
            for protocol, block in by_protocol.items():
                v = block.get("best", {}).get("recall@10")
                if v:
                    lines.append(
                        f"{name} - best baseline ({v['baseline']}), {SET_LABELS.get(set_name, set_name)} {protocol} "
                        f"recall@10: {v['diff']:+.4f} (95% bootstrap CI {v['lo']:+.4f} .. {v['hi']:+.4f})"
                    )
    if "ppo_kl_final" in result:
        lines.append(
            f"\nKL(PPO || SFT reference) per dialogue at the last iteration: {result['ppo_kl_final']:.4f} nats"
        )
    if "reward_model" in result:
        q = result["reward_model"]
        lines.append(
            "\nR_phi held-out quality: " + ", ".join(f"{k} {v:.3f}" for k, v in q.items() if isinstance(v, float))
        )
    if "rm_onpolicy_sentiment_spearman" in result:
        o = result["rm_onpolicy_sentiment_spearman"]
        lines.append(
            f"\nR_phi on-policy (each PPO batch before the refit on it), sentiment Spearman: mean {o['mean']:.3f} "
            f"over {o['n']} iterations, last {o['last']:.3f}"
        )
    if "rm_fixed_onpolicy_sentiment_spearman" in result:
        o = result["rm_fixed_onpolicy_sentiment_spearman"]
        lines.append(
            f"\nFixed offline R_phi on the same batches, sentiment Spearman: mean {o['mean']:.3f} "
            f"over {o['n']} iterations, last {o['last']:.3f}"
        )
    if "reward_fixed_rm" in result:
        f = result["reward_fixed_rm"]
        lines.append(
            f"\nReward per dialogue of the PPO rollouts under the fixed offline R_phi: {f['first']:.3f} "
            f"(mean of the first {f['iterations']} iterations) -> {f['last']:.3f} (mean of the last {f['iterations']})"
        )
    lines.append("\n![base, SFT and PPO](plots/eval.png)")
    if "ppo_kl_final" in result:  # PPO ran: plots/ppo.png is drawn from its metrics
        lines.append("\n![PPO training](plots/ppo.png)")
    return "\n".join(lines) + "\n"


def ppo_summary(rows: Sequence[dict]) -> dict:
    """eval.json's PPO figures from its ``metrics.jsonl`` rows: the final KL; R_phi's on-policy
    Spearman against the simulator (each new rollout batch, before refitting on it: mean, last,
    n); the fixed offline R_phi's reward per dialogue over the first and last ``SMOOTH``
    iterations. Empty without rows."""
    if not rows:
        return {}
    out: dict = {"ppo_kl_final": rows[-1]["kl"]}
    for key in ("rm_onpolicy_sentiment_spearman", "rm_fixed_onpolicy_sentiment_spearman"):
        onp = [x for r in rows if (x := r.get(key)) is not None and x == x]
        if onp:
            out[key] = {"mean": sum(onp) / len(onp), "last": onp[-1], "n": len(onp)}
    fixed = [r["reward_fixed_rm"] for r in rows if "reward_fixed_rm" in r]
    if len(fixed) >= 2 * SMOOTH:
        out["reward_fixed_rm"] = {
            "first": sum(fixed[:SMOOTH]) / SMOOTH,
            "last": sum(fixed[-SMOOTH:]) / SMOOTH,
            "iterations": SMOOTH,
        }
    return out


def _save_fig(plt, fig, path: pathlib.Path) -> pathlib.Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


SMOOTH = 5  # iterations in the trailing mean drawn over noisy per-iteration curves


def trailing_mean(values: Sequence[float], k: int) -> list[float]:
    """``m_i = mean(values[i - k + 1 .. i])`` for ``i = k - 1 .. n - 1`` (``n - k + 1`` values)."""
    if k < 1:
        raise ValueError(f"trailing_mean: k must be >= 1, got {k}")
    return [sum(values[i - k + 1 : i + 1]) / k for i in range(k - 1, len(values))]


def plots(out: pathlib.Path, *, kl_target: float | None = None) -> list[pathlib.Path]:
    """PNG plots over PPO iterations of the R_phi reward (under the refit R_phi PPO trains on,
    whose scale moves with each refit, and under the fixed offline R_phi), the simulated users'
    satisfaction in the rollouts (the ground truth R_phi stands in for), the KL (k1 and k3), the value loss
    and Recall@10 (and the SFT loss); curves with at least
    ``2 * SMOOTH`` points also get the trailing mean of the last ``SMOOTH`` iterations, and the
    KL panel the adaptive controller's ``kl_target`` when one is given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tracker = Tracker(out)
    rows = tracker.rows("ppo")
    written = []
    (out / "plots").mkdir(parents=True, exist_ok=True)
    panels = [  # (title, [(metrics key, legend label)])
        (
            "R_phi reward per dialogue",
            [("reward", "refit R_phi (trained on)"), ("reward_fixed_rm", "fixed offline R_phi")],
        ),
        ("simulated satisfaction (rollouts)", [("satisfaction", "")]),
        ("KL to reference (nats / dialogue)", [("kl", "k1 (in the reward)"), ("kl_k3", "k3 (terms >= 0)")]),
        ("value loss", [("value_loss", "")]),
        ("Recall@10 (validation users)", [("recall@10", "")]),
    ]
    if rows:
        fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2))
        for ax, (title, keys) in zip(axes, panels, strict=True):
            for j, (key, label) in enumerate(keys):
                pts = [(r["step"], r[key]) for r in rows if key in r]
                if not pts:
                    continue
                color = f"C{j}"
                name = f"{label}, " if label else ""
                ax.plot(*zip(*pts, strict=True), marker="o", ms=3, alpha=0.4, color=color, label=f"{name}per iteration")
                if len(pts) >= 2 * SMOOTH:
                    steps, vals = zip(*pts, strict=True)
                    ax.plot(
                        steps[SMOOTH - 1 :],
                        trailing_mean(vals, SMOOTH),
                        lw=2,
                        color=color,
                        label=f"{name}mean of last {SMOOTH}",
                    )
            if title.startswith("KL") and kl_target is not None:
                ax.axhline(kl_target, color="grey", ls="--", lw=1, label=f"target {kl_target:g}")
            if len(ax.get_legend_handles_labels()[0]) > 1:
                ax.legend(fontsize=7)
            ax.set_title(title)
            ax.set_xlabel("PPO iteration")
        written.append(_save_fig(plt, fig, out / "plots" / "ppo.png"))
    sft_rows = tracker.rows("sft")
    if sft_rows:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot([r["step"] for r in sft_rows], [r["sft_loss"] for r in sft_rows])
        ax.set_title("SFT loss")
        ax.set_xlabel("step")
        written.append(_save_fig(plt, fig, out / "plots" / "sft.png"))
    return written


# ``ppo_vs_sft`` keys -> what they measure, on the held-out synthetic users
SYNTHETIC_LABELS = {
    "satisfaction": "synthetic satisfaction (the simulator's)",
    "accepted": "synthetic acceptance rate",
    "rphi_reward": "offline R_phi reward per turn (the proxy PPO maximises)",
    "coherence": "synthetic coherence",
    "recall@10": "synthetic Recall@10",
}


def eval_plot(result: dict, path: pathlib.Path) -> pathlib.Path | None:
    """``path`` (PNG): base, SFT and PPO side by side on synthetic satisfaction (the
    simulator's, the true reward) and the offline R_phi's reward (the proxy PPO maximises) and, with the
    baselines on the same samples, synthetic Recall@10 and, when evaluated, ReDial test
    Recall@1/10/50 beside the published UniCRS numbers; each panel's title carries PPO - SFT with
    its 95% bootstrap interval. None when no policy was evaluated."""
    names = [n for n in ("base", "sft", "ppo") if n in result]
    if not names:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def diff(group: str, key: str) -> str:
        d = result.get(group, {}).get(key)
        return f"\nPPO - SFT {d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]" if d else ""

    baselines = result.get("baselines", {})

    def with_baselines(set_name: str, get_metrics) -> tuple[list[str], list[float]]:
        """The policies' values, then each baseline's on the same samples (when evaluated)."""
        labels, vals = list(names), [get_metrics(result[n][set_name]) for n in names]
        for b, by_set in baselines.items():
            if set_name in by_set:
                labels.append(b)
                vals.append(get_metrics(by_set[set_name]))
        return labels, vals

    panels = [
        (
            "synthetic satisfaction" + diff("ppo_vs_sft", "satisfaction"),
            lambda: (names, [result[n]["synthetic"]["satisfaction"] for n in names]),
            None,
        ),
        (
            "synthetic Recall@10" + diff("ppo_vs_sft", "recall@10"),
            lambda: with_baselines("synthetic", lambda r: r["standard"]["recall@10"]),
            None,
        ),
    ]
    if all("rphi_reward" in result[n]["synthetic"] for n in names):  # eval.json files before 2026-12-06 lack it
        panels.insert(
            1,
            (
                "offline R_phi reward (proxy)" + diff("ppo_vs_sft", "rphi_reward"),
                lambda: (names, [result[n]["synthetic"]["rphi_reward"] for n in names]),
                None,
            ),
        )
    ds = result.get("dataset", "redial")
    published = (PUBLISHED_OPENDIALKG if ds == "opendialkg" else PUBLISHED)["UniCRS"]
    if all(ds in result[n] for n in names):
        for i, k in enumerate(KS):
            panels.append(
                (
                    f"{SET_LABELS[ds]} Recall@{k}" + diff(f"{ds}_ppo_vs_sft", f"recall@{k}"),
                    lambda k=k: with_baselines(ds, lambda r: r["standard"][f"recall@{k}"]),
                    published[i],
                )
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.9 * len(panels), 3.6))
    for ax, (title, get, published) in zip(axes, panels, strict=True):
        labels, vals = get()
        bars = ax.bar(labels, vals, color=[f"C{i}" for i in range(len(labels))])
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
        if published is not None:
            ax.axhline(published, color="grey", ls="--", lw=1, label=f"UniCRS (published) {published:.3f}")
            ax.legend(fontsize=7, loc="upper left")
        ax.set_title(title, fontsize=9)
        ax.margins(y=0.15)
    return _save_fig(plt, fig, path)


def headline(results: dict[str, dict]) -> str:
    """The headline table of a run per dataset (``{dataset: eval.json}``): Recall@1/10/50 of SFT,
    PPO and each baseline on the test set, standard and dedup, the validation Recall@10 the
    settings were chosen on, and PPO minus the best baseline and minus SFT with their intervals."""

    def cell(m: dict) -> str:
        return " / ".join(f"{m[f'recall@{k}']:.3f}" for k in KS)

    lines = ["# Headline: Recall@1 / 10 / 50 on each dataset's test set", ""]
    for ds, r in results.items():
        label = SET_LABELS.get(ds, ds)
        lines += [f"## {label}", "", "| recommender | standard | dedup | valid R@10 (std) |", "|---|---|---|---|"]
        rows = [(name, r[name]) for name in ("sft", "ppo") if ds in r.get(name, {})]
        rows += [(f"{name} (baseline)", b) for name, b in r.get("baselines", {}).items() if ds in b]
        for name, m in rows:
            valid = m.get(f"{ds}_valid", {}).get("standard", {}).get("recall@10")
            v = "" if valid is None else f"{valid:.3f}"
            lines.append(f"| {name} | {cell(m[ds]['standard'])} | {cell(m[ds]['dedup'])} | {v} |")
        lines.append("")
        for protocol in ("standard", "dedup"):
            best = r.get("ppo_vs_baselines", {}).get(ds, {}).get(protocol, {}).get("best", {}).get("recall@10")
            if best:
                lines.append(
                    f"- PPO - best baseline ({best['baseline']}), {protocol} Recall@10: {best['diff']:+.3f} "
                    f"(95% CI {best['lo']:+.3f} .. {best['hi']:+.3f}, {best['groups']} dialogues)"
                )
        d = r.get(f"{ds}_ppo_vs_sft", {}).get("recall@10")
        if d:
            lines.append(f"- PPO - SFT, standard Recall@10: {d['diff']:+.3f} (95% CI {d['lo']:+.3f} .. {d['hi']:+.3f})")
        for key in ("satisfaction", "rphi_reward"):
            d = r.get("ppo_vs_sft", {}).get(key)
            if d:
                lines.append(
                    f"- PPO - SFT, {SYNTHETIC_LABELS[key]}: {d['diff']:+.3f} (95% CI {d['lo']:+.3f} .. {d['hi']:+.3f})"
                )
        lines.append("")
    return "\n".join(lines)
