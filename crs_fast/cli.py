"""The ``crs-fast`` command."""

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``crs-fast`` console script."""
    parser = argparse.ArgumentParser(prog="crs-fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run every op at realistic shapes against its reference")
    demo.add_argument("--quick", action="store_true", help="small shapes (seconds)")
    from .crs import cli as data_cli

    data_cli.add_commands(sub)
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(quick=args.quick)
    return data_cli.run(args)


if __name__ == "__main__":
    sys.exit(main())
