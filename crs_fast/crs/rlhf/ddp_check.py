"""One PPO iteration under ``torch.distributed.run`` (Accelerate picks gloo on CPUs): each rank
writes its final parameters, so a test can check that DDP kept the ranks identical.

    python -m torch.distributed.run --nproc_per_node 2 -m crs_fast.crs.rlhf.ddp_check OUT_DIR
(OUT_DIR holds sft/ and rm/ from a quick run.)"""

import os
import pathlib
import sys

import torch

from .config import Config
from .stages import run_ppo


def main(out: str) -> None:
    cfg = Config.quick(real_data="off", ppo_iters=1, episodes=4, minibatch=2, save_every=100, eval_every=100)
    os.environ.setdefault("CRS_FAST_NO_PROGRESS", "1")
    from accelerate import Accelerator

    policy = run_ppo(cfg, pathlib.Path(out))
    rank = Accelerator().process_index
    flat = torch.cat([p.detach().flatten() for p in policy.parameters()])
    torch.save(flat, pathlib.Path(out) / f"params_rank{rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
