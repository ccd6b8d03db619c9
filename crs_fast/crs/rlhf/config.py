"""The run configuration (:class:`Config`): every option of SFT, R_phi, PPO and evaluation, checked
when constructed, loadable from TOML. The method: multi-turn PPO on implicit feedback. Every per-
token step of PPO runs through crs_fast ops: log-probs and entropy from the LM head
(``linear_logprobs``), the KL estimate (``kl_penalty``), per-token rewards (``token_rewards``), GAE
over system tokens with user tokens masked (``gae``, verl mode), and the clipped policy and value
losses.

Hyper-parameters (the paper publishes none; ours, with the reason; all in :class:`Config`):

* Policy: SmolLM2-135M-Instruct, only the top 2 of 30 decoder layers, the final norm, an untied
  LM head and the value head train (``train_layers=2``): the frozen trunk is computed once per
  batch and shared by policy, reference and value: SFT + PPO + evaluation on all of one dataset
  took 18-22 minutes on 2 CPU cores (configs/demo.toml's sizes: 8). Item rows of the LM head get a
  learned attribute part (``item_features``: genre, director and star embeddings shared by every
  item that has them, from zero, lr ``item_lr``): independent rows cannot generalise from a few
  hundred samples over thousands of items.
* Settings chosen per dataset on its validation dialogues: :data:`TUNED`, with their figures.
* Synthetic users know the ``user_pool`` = 400 most-mentioned ReDial movies (anchors and targets
  come from there; any item may be suggested): real demand concentrates on popular titles, and
  it keeps the part of the catalog that the held-out users' ground truth lives in learnable.
* SFT: AdamW lr 5e-4 (only the top layers train; 3e-3 for the tiny random model), batch 8 (half
  synthetic, half ReDial turns when both exist), 180 steps = 3 epochs over 60 batches whose frozen
  trunk activations are cached (the trunk is ~80% of a step), context cut to its last 128 tokens,
  responses to 24 tokens plus EOS.
* R_phi: a frozen MiniLM encoder, one MLP (1536 + 3 -> 128 -> 4) over [c, r, c*r, |c-r|] of
  context and response embeddings and three lexical attribute matches; heads dwell (z-scored
  log, MSE), sentiment (MSE), engagement (BCE),
  satisfaction (MSE where labelled, rescaled to [0, 1]); 30 epochs, lr 1e-3. Reward =
  0.25 dwell + 1.0 sentiment + 0.5 (2 p_engage - 1) + 0.5 satisfaction: sentiment is the most
  direct signal of a fitting suggestion, dwell the noisiest. During PPO, R_phi is refit online on
  the rollouts' own feedback (:class:`OnlineRM`, 16 steps per iteration), the guard against the
  reward hacking an offline R_phi invites.
* PPO: 20 iterations of 16 dialogues, at most 3 system turns of at most 8 new tokens, each turn
  opening with an item not yet in the dialogue (``recommend_first``, ``no_repeat_items``; for
  every policy alike, in training and evaluation), clip 0.2, value clip 0.2, vf coef 0.5,
  entropy coef 0.001, gamma 1, lambda 0.95, k1 KL in the reward with an adaptive beta (init 0.05,
  target 6 nats per dialogue, horizon 32 dialogues: beta may move 10% per iteration), 4 epochs
  over fixed mini-batches of 8 dialogues grouped by length (the trunk runs once per mini-batch
  per iteration), grad norm 1.0, lr 1e-4 (tiny: 1e-3), the item attribute embeddings 3e-4
  (``ppo_item_lr``).
* The item choice (each turn's first token) also gets the clipped surrogate in expectation over
  the whole catalog, weight ``item_pg`` = 3 (:func:`make_batch`, :func:`expected_item_loss`):
  R_phi scores recommending every catalog item at each item-choice state of the rollouts
  (:meth:`Scorer.item_rewards`), so the gradient is exact where the sampled one sees one item
  of 6,924 per state. Measured on the SFT policy's first-turn rankings: the KL-regularised
  optimum ``pi_ref exp(R_phi / beta)`` at beta 0.1 reaches synthetic Recall@10 0.116 (SFT 0.037,
  KL 2.3 nats per choice, hence the KL target of 6 per 3-turn dialogue), 40 steps of the expected
  surrogate on 32 first-turn contexts each 0.084-0.089, while 20 iterations of sampled PPO, or
  REINFORCE with the simulator's true reward over 1,280 contexts, stayed within noise (0.021-0.053).
  item_pg 3 with 4 epochs beat item_pg 1 / 3 with 2 epochs and lr 3e-4 for everything (the text
  tokens drifted, KL 10 nats, satisfaction fell).
* The real-context anchor (:mod:`~crs_fast.crs.rlhf.anchor`): every PPO update adds ``anchor_kl``
  = 10 times KL(pi_ref || pi) over the catalog at 8 of 256 fixed real training contexts. R_phi
  ranks real ReDial items at chance (valid Recall@10 0.003) and PPO's learned item rows took the
  valid ranking from 0.197 (SFT) to 0.096; with the anchor at 1 / 10 it ends at 0.168 / 0.197
  (docs/results/ppo-erosion-2026-11-30).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import tomllib
from dataclasses import dataclass
from typing import Any

DATASETS = ("redial", "opendialkg")  # the real datasets; a config file's [redial] / [opendialkg] tables
EVAL_SEED_BASE = 10**9  # held-out synthetic users: seeds never used for training data or PPO

# Settings chosen per dataset on its validation dialogues, applied by Config.load (what the CLI runs)
# over the defaults and under a config file's values; Config(...) and Config.quick() leave them out.
TUNED: dict[str, dict[str, Any]] = {
    "redial": {
        # chosen by 5-fold cross-validation over the 1,450 training dialogues pooled with valid
        # (6,012 / 5,540 samples; the 100 valid dialogues alone were too few to tell these apart):
        # Recall@10 standard / dedup 0.216 / 0.171 for the settings chosen on valid (rank 64, decay
        # 0.7, damping 0.5 at weight 2, people 1.5) -> 0.219 / 0.182 here, the best of 648 at rank
        # 256 (0.221 / 0.181 at 512; docs/results/cv-tune-2026-12-01)
        "collab_rank": 256,
        "collab_norm": 0.25,  # a context item's co-occurrence row damped by (1 + its mentions)^-0.25
        "genre_cues": 0.25,  # genres named by the dialogue's words ("scary", "comedy")
        "people_cues": 3.0,  # directors and stars the dialogue names
        # what recommenders answered to the 200 most similar training contexts (neighbours.py): pooled
        # 0.219 / 0.182 -> 0.227 / 0.190 at 0.25 (0.5 the same, 1.5 less; valid alone 0.241 / 0.195 ->
        # 0.236 / 0.201; docs/results/ctx-knn-2026-12-01)
        "knn_weight": 0.25,
        # SFT and PPO keep that ranking: SFT's item parts at 1e-6 (valid 0.231 / 0.184 kept; 1e-5
        # gave 0.197 / 0.142; docs/results/ppo-erosion-2026-11-30), PPO leaves every item part as
        # SFT left it (valid after PPO 0.238 / 0.195; learned rows alone frozen 0.225 / 0.184;
        # neither, with the anchor, 0.202 / 0.159: docs/results/dedup-signal-2026-12-01); PPO's text
        # layers too (as on OpenDialKG, below): the item scores stay SFT's at every context
        "item_lr": 1e-6,
        "ppo_freeze": "query",
    },
    "opendialkg": {
        # low ranks lose its sparse co-mentions (valid dedup Recall@10 0.112 at 64, 0.179 at 512)
        "collab_rank": 512,
        # the item prior costs its valid turns (dedup Recall@10 0.190 at 0.1, 0.203 at 0;
        # docs/results/collab-valid-2026-11-30, section 4)
        "item_prior": 0.0,
        # 73% of its valid prompts name a director or star: valid Recall@10 0.459 / 0.170 ->
        # 0.786 / 0.685 at 3, the best of 0.5-3 (docs/results/people-cues-2026-12-01)
        "people_cues": 3.0,
        # popularity damping as on ReDial: valid 0.786 / 0.685 -> 0.795 / 0.700 (alpha 0.5, weight 1,
        # the best of the same 14 pairs; docs/results/collab-norm-2026-12-01)
        "collab_norm": 0.5,
        # item_lr carried over from ReDial's validation evidence. With the item parts alone frozen,
        # PPO's top layers still moved the query: valid PPO - SFT Recall@10 / 50 -0.002 / -0.002
        # (dedup -0.002 / -0.002; anchor_temp 3 or anchor_kl 30 no better); "query" keeps them
        # exactly (docs/results/ppo-vs-sft-2026-12-01)
        "item_lr": 1e-6,
        "ppo_freeze": "query",
    },
}


# Config keys that must be > 0 and >= 0 (Config.__post_init__).
# fmt: off
_CFG_POSITIVE = [
    "catalog_items", "synthetic_users", "max_context", "max_response", "sft_batch", "sft_epochs", "sft_lr",
    "item_lr", "ppo_item_lr", "anchor_temp", "item_fit_lr", "item_fit_batch", "rm_lr", "rm_batch", "ppo_iters",
    "episodes", "turns", "new_tokens", "ppo_epochs", "minibatch", "ppo_lr", "clip", "value_clip", "kl_horizon",
    "max_grad_norm", "eval_users", "eval_every", "val_users", "save_every", "bootstrap", "knn_k", "knn_tau",
    "knn_turns"
]
# fmt: on


# fmt: off
_CFG_NON_NEGATIVE = [
    "user_pool", "redial_train_max", "rm_redial_max", "sft_steps", "rm_epochs", "rm_online_steps", "w_dwell",
    "w_sentiment", "w_engagement", "w_satisfaction", "vf_coef", "ent_coef", "kl_beta", "temperature", "item_pg",
    "eval_offset", "redial_eval_max", "lora_r", "train_layers", "collab_rank", "collab_weight", "collab_norm",
    "mention_bonus", "item_prior", "genre_cues", "people_cues", "anchor_kl", "anchor_contexts", "item_fit_epochs",
    "item_fit_wd", "item_fit_contexts", "knn_weight"
]
# fmt: on


@dataclass
class Config:
    """Every knob of the pipeline; ``Config.load(toml, **overrides)``."""

    model: str = "smollm2"
    seed: int = 0
    real_data: str = "auto"  # auto | on | off: use the real dataset (catalog, train/valid/test) from the data dir
    dataset: str = "redial"  # the real dataset: "redial" or "opendialkg"
    catalog_items: int = 600  # generated catalog size when no real catalog is used
    user_pool: int = 400  # real catalog: synthetic users' anchors and targets among its most-mentioned items; 0 all
    item_features: bool = True  # item rows of the LM head += learned embeddings of their genres, director, stars
    collab_rank: int = 64  # rank of the co-occurrence factors in the item logits (+ a learned item bias); 0 off
    collab_weight: float = 1.0  # scale of the co-occurrence score in the item logits
    item_prior: float = 0.1  # the item bias starts at item_prior * log(1 + training mentions) (with collab_rank)
    mention_bonus: float = 3.0  # logit bonus (learned from this value) of items already mentioned; 0 off
    collab_norm: float = 0.0  # >= 0: a context item's co-occurrence row weighs (1 + its training mentions)^-collab_norm
    collab_decay: float = 1.0  # in (0, 1]: the context's items weigh decay^(items mentioned after them); 1 plain sum
    genre_cues: float = 0.0  # weight of the genres named by the dialogue's words in the item logits (collab_rank > 0)
    people_cues: float = 0.0  # bonus on the items of the directors and stars the dialogue names (people.py); 0 off
    knn_weight: float = 0.0  # bonus on what recommenders answered to the most similar training contexts (neighbours.py)
    knn_k: int = 200  # how many similar training contexts vote
    knn_tau: float = 0.1  # their votes exp((sim - best sim) / tau)
    knn_turns: int = 3  # a context is matched by its last knn_turns lines
    synthetic_users: int = 400  # synthetic logged dialogues (SFT and R_phi data)
    redial_train_max: int = 0  # ReDial training dialogues (train_data, then train_extra); 0: all of them
    rm_redial_max: int = 200  # ReDial dialogues whose turns train R_phi (with all synthetic ones)
    max_context: int = 128
    max_response: int = 24
    sft_steps: int = 180
    sft_epochs: int = 3  # each distinct batch (its frozen-trunk activations cached) is seen this often
    sft_batch: int = 8
    sft_lr: float = 5e-4
    item_lr: float = 1e-5  # SFT lr of the item parts: attribute embeddings, output rows, bias (new, starting at zero)
    ppo_item_lr: float = 3e-4
    ppo_freeze: str = "none"  # what PPO leaves as SFT left it: "none", "rows", "items", "query" (build.FROZEN)
    item_fit_epochs: int = 0  # after SFT: epochs fitting the item parts on real recommendations (valid-stopped); 0 off
    item_fit_lr: float = 1e-3  # its learning rate
    item_fit_opt: str = "sgd"  # its optimiser: "sgd" (momentum 0.9) or "adamw"
    item_fit_wd: float = 0.0  # its decoupled weight decay on the item rows and attribute embeddings
    item_fit_batch: int = 256  # its minibatch (samples)
    item_fit_contexts: int = 0  # how many real training contexts it fits on (a seeded draw); 0: all
    rm_epochs: int = 30
    rm_lr: float = 1e-3
    rm_batch: int = 128
    rm_online_steps: int = 16  # R_phi refit steps on the rollouts' feedback after each PPO iteration; 0 off
    w_dwell: float = 0.25
    w_sentiment: float = 1.0
    w_engagement: float = 0.5
    w_satisfaction: float = 0.5
    ppo_iters: int = 20
    episodes: int = 16
    turns: int = 3
    new_tokens: int = 8
    ppo_epochs: int = 4
    minibatch: int = 8
    ppo_lr: float = 1e-4
    clip: float = 0.2
    value_clip: float = 0.2
    vf_coef: float = 0.5
    ent_coef: float = 0.001
    gamma: float = 1.0
    lam: float = 0.95
    kl_beta: float = 0.05
    kl_target: float | None = 6.0
    kl_horizon: int = 32
    max_grad_norm: float = 1.0
    temperature: float = 1.0
    anchor_kl: float = 10.0  # PPO: weight of KL(pi_ref || pi) over the catalog at real training contexts; 0 off
    anchor_contexts: int = 256  # how many real training contexts the anchor holds (8 per PPO update)
    anchor_temp: float = 1.0  # temperature of both anchor distributions (< 1: the top of the ranking weighs more)
    anchor_ref: str = "sft"  # whose catalog distribution the anchor keeps: "sft" (PPO's reference) or "base"
    item_pg: float = 3.0  # weight of the expected clipped surrogate over the catalog at item choices; 0: off
    no_repeat_items: bool = True  # decoding: items already in the dialogue are not suggested again
    recommend_first: bool = True  # decoding: every system turn opens with an item (its first token is one)
    eval_users: int = 192
    eval_offset: int = 0  # first held-out user's index (a fresh set of users: eval_offset >= eval_users used before)
    eval_every: int = 5
    val_users: int = 32
    save_every: int = 5
    redial_eval_max: int = 0  # ReDial test (and valid) dialogues evaluated; 0: all of them
    bootstrap: int = 1000
    lora_r: int = 0  # > 0: train LoRA adapters (peft) instead of the whole LM
    train_layers: int = 2  # > 0: train only the top layers (+ untied head, value head); 0: everything

    @property
    def expected_item_surrogate(self) -> bool:
        """Whether PPO adds the expected clipped surrogate over the catalog at item choices (and
        the rollouts ask R_phi for every item's value): the one place ``item_pg`` is read as a switch."""
        return self.item_pg > 0

    def __post_init__(self) -> None:
        """Check every value's type against its annotation (an int is taken where a float is
        expected) and its range, naming the key: a wrong value fails here, not minutes into a run."""
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), str(f.type)
            if value is None and "None" in kind:
                continue
            if kind.startswith("float") and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
                setattr(self, f.name, value)
            want = {"int": int, "float": float, "bool": bool, "str": str}[kind.split(" |")[0]]
            if not isinstance(value, want) or (want is int and isinstance(value, bool)):
                raise TypeError(f"Config.{f.name}: expected {kind}, got {value!r} ({type(value).__name__})")
            if want is float and not math.isfinite(value):
                raise ValueError(f"Config.{f.name}: expected a finite number, got {value!r}")
        for name in _CFG_POSITIVE:
            if not getattr(self, name) > 0:
                raise ValueError(f"Config.{name}: expected > 0, got {getattr(self, name)!r}")
        if not self.clip <= 1:  # after the > 0 check above
            raise ValueError(
                f"Config.clip: expected a value in (0, 1] (the ratio is clipped to 1 +- clip), got {self.clip!r}"
            )
        for name in _CFG_NON_NEGATIVE:
            if not getattr(self, name) >= 0:
                raise ValueError(f"Config.{name}: expected >= 0, got {getattr(self, name)!r}")
        if not 0 < self.collab_decay <= 1:
            raise ValueError(f"Config.collab_decay: expected a value in (0, 1], got {self.collab_decay!r}")
        for name in ("gamma", "lam"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"Config.{name}: expected a value in [0, 1], got {getattr(self, name)!r}")
        if self.kl_target is not None and not self.kl_target >= 0:
            raise ValueError(f"Config.kl_target: expected None, 0 (fixed beta) or > 0, got {self.kl_target!r}")
        if self.dataset not in DATASETS:
            hint = " ('both' runs each in turn, in `crs-fast demo` only)" if self.dataset == "both" else ""
            raise ValueError(f"Config.dataset: expected 'redial' or 'opendialkg'{hint}, got {self.dataset!r}")
        if self.real_data not in ("auto", "on", "off"):
            raise ValueError(f"Config.real_data: expected 'auto', 'on' or 'off', got {self.real_data!r}")
        if self.item_fit_opt not in ("sgd", "adamw"):
            raise ValueError(f"Config.item_fit_opt: expected 'sgd' or 'adamw', got {self.item_fit_opt!r}")
        if self.ppo_freeze not in ("none", "rows", "items", "query"):
            raise ValueError(f"Config.ppo_freeze: expected 'none', 'rows', 'items' or 'query', got {self.ppo_freeze!r}")
        if self.anchor_ref not in ("sft", "base"):
            raise ValueError(f"Config.anchor_ref: expected 'sft' or 'base', got {self.anchor_ref!r}")

    @classmethod
    def quick(cls, **overrides: Any) -> Config:
        """The tiny model and small sizes: the CI pipeline (about a minute on 2 cores)."""
        base = dict(
            model="tiny",
            catalog_items=120,
            synthetic_users=160,
            redial_train_max=150,
            max_context=64,
            max_response=16,
            sft_steps=60,
            sft_epochs=1,
            sft_batch=16,
            sft_lr=3e-3,
            rm_epochs=40,
            ppo_iters=12,
            episodes=16,
            new_tokens=8,
            ppo_lr=1e-3,
            eval_users=64,
            eval_every=4,
            val_users=24,
            save_every=4,
            redial_eval_max=60,
            bootstrap=300,
            train_layers=0,
        )
        base.update(overrides)
        return cls(**base)

    @classmethod
    def load(cls, path: str | pathlib.Path | None = None, *, quick: bool = False, **overrides: Any) -> Config:
        """Defaults (or :meth:`quick`), then :data:`TUNED`'s settings for the run's dataset (chosen on
        its validation data; not with ``quick``), then a TOML file's top-level keys, then its table
        named after the run's dataset (``[redial]`` or ``[opendialkg]``), then ``overrides`` (None
        ignored)."""
        values = cls._file_values(path, overrides, quick=quick)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown configuration keys {unknown}; known: {sorted(names)}")
        return cls.quick(**values) if quick else cls(**values)

    @classmethod
    def load_each(
        cls, path: str | pathlib.Path | None = None, *, quick: bool = False, **overrides: Any
    ) -> list[Config]:
        """:meth:`load`, or with ``dataset = "both"`` one configuration per dataset (each with its
        own table applied): what ``crs-fast demo`` runs."""
        dataset = cls._file_values(path, overrides).get("dataset")
        if dataset != "both":
            return [cls.load(path, quick=quick, **overrides)]
        return [cls.load(path, quick=quick, **{**overrides, "dataset": d}) for d in DATASETS]

    @classmethod
    def _file_values(
        cls, path: str | pathlib.Path | None, overrides: dict[str, Any], *, quick: bool = False
    ) -> dict[str, Any]:
        """The keys a TOML file and ``overrides`` set, the dataset's table merged in, over
        :data:`TUNED`'s settings for the run's dataset (not with ``quick``: the tiny model)."""
        values: dict[str, Any] = {}
        if path is not None:
            try:
                with open(path, "rb") as f:
                    values = tomllib.load(f)
            except FileNotFoundError:
                raise ValueError(f"config file {path} not found") from None
            except IsADirectoryError:
                raise ValueError(f"config file {path} is a directory, not a TOML file") from None
            except tomllib.TOMLDecodeError as exc:
                raise ValueError(f"config file {path}: invalid TOML ({exc})") from None
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(f"config file {path}: cannot be read ({exc})") from None
        tables = {k: values.pop(k) for k in list(values) if isinstance(values[k], dict)}
        odd = sorted(set(tables) - set(DATASETS))
        if odd:
            raise ValueError(f"config file {path}: unknown tables {odd}; tables name a dataset: {list(DATASETS)}")
        given = {k: v for k, v in overrides.items() if v is not None}
        dataset = given.get("dataset", values.get("dataset", "redial"))
        values.update(tables.get(dataset, {}))
        values.update(given)
        if not quick and dataset in TUNED:
            values = {**TUNED[dataset], **values}
        return values

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (JSON, checkpoints)."""
        return dataclasses.asdict(self)
