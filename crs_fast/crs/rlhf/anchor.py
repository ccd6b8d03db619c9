"""The real-context item anchor of PPO: a KL to the reference policy's catalog distribution at
recommendation states of real training dialogues, added to PPO's loss.

PPO's rollouts run against synthetic users and R_phi, whose item preferences do not carry over to
real users: on ReDial's validation dialogues R_phi alone ranks the true next item at Recall@10
0.003, and the PPO policy's learned item rows (not its hidden states, its co-occurrence part or
its mention bonus) took the SFT policy's valid Recall@10 from 0.197 to 0.096
(docs/results/ppo-erosion-2026-11-30). The anchor is PPO's counterpart of InstructGPT's
pretraining mix (PPO-ptx): with ``pi(. | c)`` the policy's distribution over the catalog after a
real training context ``c`` (the item scores :meth:`Policy.rank_items` ranks, mention bonus
included), the loss

    L_anchor = mean_c KL(pi_ref(. | c) || pi(. | c)) = mean_c sum_i pi_ref(i | c) (log pi_ref(i | c) - log pi(i | c))

weighted by ``cfg.anchor_kl``, keeps the real-data ranking where the reference had it while the
synthetic users' objective moves the rest. The contexts' frozen-trunk activations and the
reference log-probabilities are computed once; each PPO update uses the next chunk of contexts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..data.schema import Catalog, Dialogue
from ..data.splits import rec_samples
from .build import build_policy, frozen_copy
from .config import Config
from .corpus import CRSData, clip_context, pad_right, prompt
from .policy import Policy


def catalog_logprobs(
    policy: Policy, ids: torch.Tensor, attn: torch.Tensor, state=None, temperature: float = 1.0
) -> torch.Tensor:
    """[B, I] float32: ``log softmax_i(z_i / temperature)`` of the item scores ``z`` after each
    row's last real token (rows right-padded): ``q . w_i``, plus the context bonus (items the row
    mentions, people it names)."""
    q = policy.next_query(ids, attn, state).float()
    logits = q @ policy.item_rows().float().T
    rows = torch.arange(ids.shape[0], device=ids.device)
    bonus = policy.bonus_at(ids, rows, torch.full_like(rows, ids.shape[1] - 1))
    if bonus is not None:
        logits = logits + bonus
    return torch.log_softmax(logits / temperature, dim=-1)


class ItemAnchor:
    """``KL(pi_ref || pi)`` over the catalog at fixed real contexts (module docstring).

    ``prompts``: the contexts (distinct prompt strings); ``batch`` of them per :meth:`loss` call,
    cycling through all of them in order. ``temperature``: both distributions are taken at it
    (``softmax(z / T)``); below 1 they are sharper and the KL weights the top of the reference's
    ranking, which a nearly flat distribution at T = 1 barely guards."""

    def __init__(
        self,
        policy: Policy,
        ref: Policy,
        tok,
        prompts: Sequence[str],
        max_context: int,
        batch: int = 8,
        temperature: float = 1.0,
    ):
        if not prompts:
            raise ValueError("ItemAnchor needs at least one context")
        if batch <= 0:
            raise ValueError(f"batch must be > 0, got {batch}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.chunks = []
        with torch.no_grad():
            for i in range(0, len(prompts), batch):
                seqs = [
                    clip_context(tok, tok(p, add_special_tokens=False)["input_ids"], max_context)
                    for p in prompts[i : i + batch]
                ]
                ids, attn = pad_right(seqs, tok.pad_token_id, policy.device)
                state = policy.trunk(ids, attn)  # frozen: the same for the policy and the reference
                self.chunks.append((ids, attn, state, catalog_logprobs(ref, ids, attn, state, temperature)))
        self.next = 0

    def __len__(self) -> int:
        return sum(len(c[0]) for c in self.chunks)

    def loss(self, policy: Policy) -> torch.Tensor:
        """The mean KL(pi_ref || pi) over the next chunk of contexts (differentiable in ``policy``)."""
        ids, attn, state, ref_lp = self.chunks[self.next]
        self.next = (self.next + 1) % len(self.chunks)
        lp = catalog_logprobs(policy, ids, attn, state, self.temperature)
        return (ref_lp.exp() * (ref_lp - lp)).sum(-1).mean()


def anchor_prompts(dialogues: Sequence[Dialogue], catalog: Catalog, n: int, seed: int) -> list[str]:
    """``n`` distinct prompts of recommendation states (system turns that mention a catalog item)
    of ``dialogues``, drawn without replacement (seeded; all of them when there are fewer)."""
    found = [prompt(s.context, catalog) for s in rec_samples(dialogues) if s.targets[0] in catalog]
    prompts = list(dict.fromkeys(found))
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(prompts), generator=g)[:n].tolist()
    return [prompts[i] for i in order]


def build_anchor(policy: Policy, ref: Policy, tok, data: CRSData, cfg: Config) -> ItemAnchor | None:
    """The run's anchor: ``cfg.anchor_contexts`` contexts of the real training dialogues (none
    without real data, ``anchor_kl`` 0 or ``anchor_contexts`` 0), keeping ``ref``'s distribution
    there (PPO's reference, the SFT policy), or with ``cfg.anchor_ref = "base"`` the untrained
    policy's (built here: its item scores are the co-occurrence part, prior and mention bonus)."""
    real = [d for d in data.train if not d.id.startswith("synth")]
    if cfg.anchor_kl <= 0 or cfg.anchor_contexts <= 0 or not real:
        return None
    prompts = anchor_prompts(real, data.catalog, cfg.anchor_contexts, cfg.seed)
    if not prompts:
        return None
    if cfg.anchor_ref == "base":  # the untrained policy's distribution (item parts from the data only)
        ref = frozen_copy(build_policy(cfg, data)[0]).to(policy.device)
    return ItemAnchor(policy, ref, tok, prompts, cfg.max_context, temperature=cfg.anchor_temp)
