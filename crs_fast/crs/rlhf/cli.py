"""``crs-fast sft | train-rm | ppo | eval | demo``: the RLHF pipeline's commands."""

from __future__ import annotations

import argparse
import ast
import pathlib
import sys

from ..data.schema import DataError
from .config import Config
from .report import headline, plots
from .run_io import RunMismatch
from .stages import run_demo, run_eval, run_ppo, run_sft, run_train_rm

STAGES = {
    "sft": "supervised fine-tuning of the policy on the logged system turns",
    "train-rm": "train the reward model R_phi on implicit feedback (dwell, sentiment, engagement, satisfaction)",
    "ppo": "multi-turn PPO against R_phi with a KL penalty to the SFT policy",
    "eval": "evaluate base, SFT and PPO: top-k accuracy, coherence, satisfaction; writes eval.json, report.md",
    "demo": "the whole pipeline: SFT -> R_phi -> PPO -> evaluation, the comparison table and plots",
}


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register the pipeline's commands."""
    for name, help_ in STAGES.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--config", type=pathlib.Path, help="TOML file of Config keys (crs_fast/crs/rlhf/config.py)")
        p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/crs"), help="output directory")
        p.add_argument("--quick", action="store_true", help="the tiny model and small sizes (CI, ~1-2 minutes)")
        p.add_argument("--model", help="'smollm2' (default), 'tiny' or a local Hugging Face model directory")
        p.add_argument("--seed", type=int)
        p.add_argument("--real-data", choices=["auto", "on", "off"], help="use ReDial from $CRS_FAST_DATA")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any Config key, repeatable")
        if name == "ppo":
            p.add_argument("--resume", action="store_true", help="continue from ppo/checkpoint in --out")
        if name == "eval":
            p.add_argument(
                "--redial-test",
                type=pathlib.Path,
                metavar="FILE",
                help="evaluate on this ReDial test file (original format) instead of the data directory's",
            )
            p.add_argument(
                "--opendialkg-test",
                type=pathlib.Path,
                metavar="FILE",
                help="evaluate on this OpenDialKG test file (processed .jsonl turns, .json sessions or .csv)",
            )


def _config(args: argparse.Namespace, *, each: bool = False):
    """The run's :class:`Config` from ``--config``, the flags and ``--set``; with ``each``, the
    list :meth:`Config.load_each` gives (one per dataset for ``dataset = "both"``)."""
    flags = {"model": args.model, "seed": args.seed, "real_data": args.real_data}
    values = {k: v for k, v in flags.items() if v is not None}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"crs-fast {args.command}: --set expects KEY=VALUE, got {item!r}")
        if key in values:
            raise SystemExit(f"crs-fast {args.command}: {key} given twice (--{key.replace('_', '-')} and --set {item})")
        try:
            values[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            values[key] = value
    try:
        if each:
            return Config.load_each(args.config, quick=args.quick, **values)
        return Config.load(args.config, quick=args.quick, **values)
    except (ValueError, TypeError) as exc:
        raise SystemExit(f"crs-fast {args.command}: {exc}") from exc


def run(args: argparse.Namespace) -> int:
    """Run one pipeline command; Ctrl-C during PPO leaves a checkpoint and exits with 130."""

    cfg = _config(args, each=args.command == "demo")
    out = args.out
    try:  # the stages have progress bars of their own; transformers' would print at every model load
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    try:
        if args.command == "sft":
            print(f"SFT policy: {run_sft(cfg, out)}")
        elif args.command == "train-rm":
            print(f"R_phi held-out quality: {run_train_rm(cfg, out)}")
        elif args.command == "ppo":
            run_ppo(cfg, out, resume=args.resume)
            print(f"PPO policy: {out / 'ppo' / 'policy.safetensors'}")
            plots(out, kl_target=cfg.kl_target)
        elif args.command == "eval":
            run_eval(cfg, out, redial_test=args.redial_test, opendialkg_test=args.opendialkg_test)
            print((out / "report.md").read_text())
        elif len(cfg) == 1:
            run_demo(cfg[0], out, quick=args.quick)
        else:  # dataset = "both": one run per dataset under --out, then the headline table of both
            results = {c.dataset: run_demo(c, out / c.dataset, quick=args.quick) for c in cfg}
            out.mkdir(parents=True, exist_ok=True)
            (out / "headline.md").write_text(headline(results))
            print((out / "headline.md").read_text())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (OSError, DataError, RunMismatch) as exc:  # missing output or file, file as --out, bad data, other settings
        print(f"crs-fast {args.command}: {exc}", file=sys.stderr)
        return 2
    return 0
