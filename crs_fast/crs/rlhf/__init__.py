"""Implicit-feedback RLHF for the conversational recommender, in layers (a module imports only
from the layers above it in this list, and from :mod:`crs_fast.crs.data` and :mod:`crs_fast.ops`):

1. :mod:`.config` (every option, checked; the hyper-parameters and why), :mod:`.lm` (loading
   the language models, item tokens), :mod:`.encoder` (the frozen sentence encoder),
   :mod:`.collab` (co-occurrence counts, and their factors for the policy's item logits),
   :mod:`.mention` (the items a context mentions; the mention bonus, exact on a fused head)
2. :mod:`.corpus` (the data a run trains on; prompts, turn text, SFT pairs), :mod:`.baselines`
   (popularity, repeat, co-occurrence, content retrieval)
3. :mod:`.policy` (the policy with its value head), :mod:`.reward` (R_phi, catalog matches, the
   scorer)
4. :mod:`.sft`, :mod:`.rollout` (multi-turn dialogues with simulated users)
5. :mod:`.online_rm` (R_phi refit on the rollouts), :mod:`.ppo` (batches and losses through the
   crs_fast ops), :mod:`.evaluate`
6. :mod:`.run_io` (metrics tracker, checkpoints), :mod:`.compare` (the baselines on the policies'
   samples, PPO minus each with intervals)
7. :mod:`.report`: report.md, plots
8. :mod:`.stages`: ``sft``, ``train-rm``, ``ppo``, ``eval``, ``demo``
9. :mod:`.cli`, :mod:`.analysis`, :mod:`.ddp_check`

``tests/test_layout.py`` checks the order from the source.
"""
