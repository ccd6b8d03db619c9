"""The conversational recommender.

* :mod:`crs_fast.crs.data`: the data layer. ReDial and OpenDialKG loaders, the common schema,
  implicit-feedback labels, recommendation samples and splits, the user simulator and the
  generated catalogs and dialogues (the ``crs-fast data`` commands).
* :mod:`crs_fast.crs.rlhf`: the RLHF application on top of it. SFT, the reward model R_phi on
  implicit feedback, multi-turn PPO through the crs_fast ops, evaluation, and the
  ``crs-fast sft | train-rm | ppo | eval | demo`` stages.

The data layer's public names are re-exported here (``from crs_fast.crs import load_redial``).
"""

from . import data
from .data import *  # noqa: F403  (the data layer's public names, listed in crs_fast.crs.data.__all__)

__all__ = list(data.__all__)
