"""The ``crs-fast`` command."""

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``crs-fast`` console script."""
    parser = argparse.ArgumentParser(prog="crs-fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run every op at realistic shapes against its reference")
    demo.add_argument("--quick", action="store_true", help="small shapes (seconds)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(quick=args.quick)
    return 2


if __name__ == "__main__":
    sys.exit(main())
