"""The ``crs-fast`` command."""

import argparse
import sys

DESCRIPTION = (
    "crs_fast: fused RLHF kernels and an implicit-feedback RLHF pipeline for LLM conversational "
    "recommenders. `crs-fast demo --out runs/demo` runs SFT -> reward model -> PPO -> evaluation; "
    "`crs-fast COMMAND --help` describes each command."
)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``crs-fast`` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # every later argument belongs to the benchmark runner, in order
        from .benchmarks.run import main as bench_main

        return bench_main(argv[1:])
    parser = argparse.ArgumentParser(prog="crs-fast", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    ops_demo = sub.add_parser("ops-demo", help="run every op at realistic shapes against its reference")
    ops_demo.add_argument("--quick", action="store_true", help="small shapes (seconds)")
    bench = sub.add_parser(
        "bench", help="benchmarks against the reference, torch.compile and published code", add_help=False
    )
    bench.add_argument("bench_args", nargs="*", help="the benchmark runner's arguments (crs-fast bench --help)")
    from .crs.data import cli as data_cli
    from .crs.rlhf import cli as rlhf_cli

    rlhf_cli.add_commands(sub)
    data_cli.add_commands(sub)
    args = parser.parse_args(argv)
    if args.command == "ops-demo":
        from .ops_demo import run_demo

        return run_demo(quick=args.quick)
    if args.command in rlhf_cli.STAGES:
        return rlhf_cli.run(args)
    return data_cli.run(args)


if __name__ == "__main__":
    sys.exit(main())
