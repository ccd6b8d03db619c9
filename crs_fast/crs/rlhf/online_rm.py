"""R_phi refit online during PPO on the rollouts' own implicit feedback (dwell, sentiment,
engagement, satisfaction), a few steps per iteration: the guard against the reward hacking that
a fixed offline reward model invites."""

from __future__ import annotations

import copy
import math
import pathlib
from collections.abc import Sequence

import torch

from ..data.schema import Catalog
from .config import Config
from .lm import render
from .reward import RewardModel, rm_loss, spearman
from .rollout import Episode


class OnlineRM:
    """Online refits of R_phi during PPO on the implicit feedback of the policy's own dialogues.

    An R_phi fit once on logged dialogues is wrong exactly where PPO goes: responses unlike any
    logged one (measured: with the offline R_phi alone, PPO drifted to near-empty turns; an offline
    R_phi scored an empty turn 1.26 against 0.56 for the average of 30 recommendations in one
    context, while simulated users rate a turn without a suggestion 0.2). So after each PPO
    iteration the rollouts' feedback is labelled as the logged data is (dwell per 100 characters
    read; sentiment from the liked/disliked reaction to a suggestion, else the reply's polarity;
    engagement), appended, and R_phi takes ``cfg.rm_online_steps`` AdamW steps on batches half
    online, half offline. Before each refit, the Spearman correlation of R_phi's sentiment head with
    the new labels is its on-policy held-out quality. Under DDP each process refits its own copy
    on its own rollouts (the policy's gradients are still averaged, so its ranks stay identical).

    A frozen copy of the offline R_phi (as ``rm`` is when this is built) is the fixed yardstick:
    each batch's reward per dialogue and sentiment Spearman under it are recorded beside the
    refit model's, since the refit model's reward moves with its refits and cannot be compared
    across iterations. It is never trained and takes no random numbers: training is unchanged.
    """

    def __init__(self, rm: RewardModel, cfg: Config, x_off: torch.Tensor, y_off: torch.Tensor) -> None:
        self.rm, self.cfg = rm, cfg
        self.fixed = copy.deepcopy(rm).eval().requires_grad_(False)
        self.x_off, self.y_off = x_off, y_off
        self.x = torch.zeros(0, x_off.shape[1])
        self.y = torch.zeros(0, y_off.shape[1])
        self.opt = torch.optim.AdamW(rm.parameters(), lr=cfg.rm_lr, weight_decay=1e-4)

    def labels(self, eps: Sequence[Episode], catalog: Catalog) -> torch.Tensor:
        """[n, 4] labels (dwell z-scored, sentiment, engaged, satisfaction = NaN) per system turn,
        in the order the scorer saw them."""
        from ..data.labels import text_sentiment

        rows = []
        for e in eps:
            for k, fb in enumerate(e.feedback):
                read = max(len(render(e.responses[k], catalog)), 1)
                dwell = (math.log1p(fb.dwell / read * 100) - float(self.rm.dwell_mu)) / float(self.rm.dwell_sd)
                if e.recs[k]:  # the liked / disliked label the logs would carry
                    sent = 1.0 if fb.sentiment > 0.2 else -1.0 if fb.sentiment < -0.2 else 0.0
                else:
                    sent = text_sentiment(e.replies[k])
                rows.append([dwell, sent, 1.0, float("nan")])
        return torch.tensor(rows, dtype=torch.float32).reshape(len(rows), 4)

    def update(self, features: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """Record the on-policy quality of R_phi on (``features``, ``labels``) (and of the fixed
        offline R_phi), append them and refit."""
        with torch.no_grad():
            pred = self.rm.net(features)[:, 1]
            fixed = self.fixed.net(features)[:, 1]
        quality = {
            "rm_onpolicy_sentiment_spearman": spearman(pred, labels[:, 1]),
            "rm_fixed_onpolicy_sentiment_spearman": spearman(fixed, labels[:, 1]),
        }
        self.x, self.y = torch.cat([self.x, features]), torch.cat([self.y, labels])
        half = self.cfg.rm_batch // 2
        self.rm.train()
        for _ in range(self.cfg.rm_online_steps):
            i_on = torch.randint(len(self.x), (half,))
            i_off = torch.randint(len(self.x_off), (half,))
            x = torch.cat([self.x[i_on], self.x_off[i_off]])
            y = torch.cat([self.y[i_on], self.y_off[i_off]])
            loss = rm_loss(self.rm.net(x), y)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
        self.rm.eval()
        return quality

    def observe(self, eps: Sequence[Episode], catalog: Catalog) -> dict[str, float]:
        """:meth:`update` on the scored system turns of ``eps`` (features kept by :func:`rollout`)."""
        feats = [e.features for e in eps if e.features is not None and len(e.features)]
        if not feats:
            return {}
        x = torch.cat(feats)
        with torch.no_grad():  # the reward per dialogue under the fixed offline R_phi
            fixed_reward = float(self.fixed.reward_of(x).sum()) / len(eps)
        return {"reward_fixed_rm": fixed_reward, **self.update(x, self.labels(eps, catalog))}

    def save(self, directory: pathlib.Path) -> None:
        """R_phi as refit so far, the online examples and the optimizer, into ``directory``."""
        from safetensors.torch import save_file, save_model

        save_model(self.rm, str(directory / "reward_model.safetensors"))
        save_file({"x": self.x, "y": self.y}, str(directory / "rm_online.safetensors"))
        torch.save(self.opt.state_dict(), directory / "rm_optimizer.pt")

    def load(self, directory: pathlib.Path) -> None:
        """Back to what :meth:`save` wrote in ``directory``."""
        from safetensors.torch import load_file, load_model

        load_model(self.rm, str(directory / "reward_model.safetensors"))
        saved = load_file(str(directory / "rm_online.safetensors"))
        self.x, self.y = saved["x"], saved["y"]
        self.opt.load_state_dict(torch.load(directory / "rm_optimizer.pt", weights_only=True))
