"""The policies beside the baselines on the same samples: each baseline's ranking metrics
(standard and dedup) on every evaluated sample set, and the paired bootstrap of PPO minus each
baseline (and minus the best of them) that resamples whole users or dialogues."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ..data.schema import Catalog, Dialogue
from .baselines import NAMES, Baselines, baseline_lists, sample_key
from .config import Config
from .evaluate import KS, Sample, cluster_bootstrap_diff, ranking_metrics, ranks, real_samples

Ranks = tuple[list[int | None], list[int | None]]  # standard, dedup


def sample_sets(
    dialogues: Sequence[Dialogue], catalog: Catalog, *, final_only: bool = False
) -> tuple[list[Sample], list[Sample], int]:
    """A dataset's ranking samples, standard and dedup (``final_only``: the targets of each
    dialogue's last turn only, as OpenDialKG's records mean), and how deep a top list must go for
    the dedup ranking to still hold 50 items after the mentioned ones are removed."""
    std = real_samples(dialogues, catalog, dedup=False, final_only=final_only)
    ded = real_samples(dialogues, catalog, dedup=True, final_only=final_only)
    return std, ded, min(len(catalog), max(KS) + max((len(x.mentioned) for x in std), default=0))


def evaluate_baselines(
    catalog: Catalog,
    sets: dict[str, tuple[Sequence[Sample], Sequence[Sample]]],
    train: dict[str, Sequence[Dialogue]],
    cfg: Config,
    encoder=None,
    render_text: Callable[[str], str] | None = None,
) -> tuple[dict[str, dict], dict[str, dict[str, Ranks]]]:
    """For each baseline: {set: {"standard": metrics, "dedup": metrics}} and the ranks behind them.
    ``sets``: set name -> (standard samples, dedup samples); ``train``: set name -> the training
    dialogues of that set's source (what popularity and co-occurrence count)."""
    results: dict[str, dict] = {name: {} for name in NAMES}
    all_ranks: dict[str, dict[str, Ranks]] = {name: {} for name in NAMES}
    for set_name, (std_s, ded_s) in sets.items():
        b = Baselines(catalog, train[set_name], encoder)
        k = min(len(catalog), max(KS) + max((len(x.mentioned) for x in std_s), default=0))
        for name in NAMES:
            if name == "content" and encoder is None:
                continue
            lists = baseline_lists(b, name, [*std_s, *ded_s], k, render_text)
            std, _ = ranks(None, None, catalog, std_s, cfg, lists, key=sample_key)
            _, ded = ranks(None, None, catalog, ded_s, cfg, lists, key=sample_key)
            results[name][set_name] = {"standard": ranking_metrics(std), "dedup": ranking_metrics(ded)}
            all_ranks[name][set_name] = (std, ded)
    return results, all_ranks


def hits(r: Sequence[int | None], k: int) -> list[float]:
    """1.0 where the target ranks within the top ``k``, else 0.0."""
    return [float(x is not None and x < k) for x in r]


def ppo_vs(
    policy_ranks: dict[str, Ranks],
    others: dict[str, dict[str, Ranks]],
    sets: dict[str, tuple[Sequence[Sample], Sequence[Sample]]],
    cfg: Config,
) -> dict[str, Any]:
    """{set: {protocol: {other: {"recall@k": policy - other}}}} for one policy's ranks (PPO's, or
    any other's) as paired bootstraps resampling whole groups (users, dialogues), plus "best": the
    other with the highest Recall@k on that set and protocol (each k on its own)."""
    out: dict[str, Any] = {}
    for set_name, (std_s, ded_s) in sets.items():
        if set_name not in policy_ranks:
            continue
        for p, (samples, col) in {"standard": (std_s, 0), "dedup": (ded_s, 1)}.items():
            groups = [x.group for x in samples]
            mine = policy_ranks[set_name][col]
            block: dict[str, Any] = {}
            for other, by_set in others.items():
                if set_name not in by_set:
                    continue
                theirs = by_set[set_name][col]
                block[other] = {
                    f"recall@{k}": cluster_bootstrap_diff(
                        hits(theirs, k), hits(mine, k), groups, n=cfg.bootstrap, seed=cfg.seed
                    )
                    for k in KS
                }
            best = {}
            for k in KS:
                name = max(block, key=lambda o: sum(hits(others[o][set_name][col], k)), default=None)
                if name is not None:
                    best[f"recall@{k}"] = {"baseline": name, **block[name][f"recall@{k}"]}
            block["best"] = best
            out.setdefault(set_name, {})[p] = block
    return out
