"""``crs-fast data stats <path>`` and ``crs-fast data synth --users N --out FILE``."""

import argparse
import json
import pathlib
import statistics

from .labels import feedback_labels, label_coverage
from .opendialkg import load_opendialkg, load_opendialkg_catalog
from .redial import load_redial, load_redial_catalog
from .schema import Catalog, DialogueSet, data_dir
from .synthetic import generate_catalog, write_synthetic_redial


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``data stats`` and ``data synth``."""
    data = sub.add_parser("data", help="conversational-recommendation data: statistics, synthetic dialogues")
    cmds = data.add_subparsers(dest="data_command", required=True)
    stats = cmds.add_parser("stats", help="counts, label coverage and distributions of a dataset file")
    stats.add_argument("path", type=pathlib.Path, help="ReDial .jsonl, OpenDialKG .jsonl/.json/.csv")
    stats.add_argument("--on-error", choices=["raise", "skip"], default="raise")
    stats.add_argument("--json", action="store_true", help="print JSON instead of tables")
    synth = cmds.add_parser("synth", help="write synthetic dialogues in the raw ReDial format")
    synth.add_argument("--users", type=int, required=True, help="number of simulated users (dialogues)")
    synth.add_argument("--out", type=pathlib.Path, required=True)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument(
        "--catalog",
        choices=["generated", "redial"],
        default="generated",
        help="'redial' reads movie_info.json from the data directory ($CRS_FAST_DATA)",
    )


def _load(path: pathlib.Path, on_error: str) -> DialogueSet:
    if not path.is_file():
        raise SystemExit(f"crs-fast data stats: no such file: {path}")
    if path.suffix == ".jsonl":
        with open(path, "rb") as f:
            first = f.readline()
        if b'"movieMentions"' in first:
            return load_redial(path, on_error=on_error)
    catalog = None
    info = path.parent / "item_info.json"
    if info.exists():
        catalog = load_opendialkg_catalog(info)
    return load_opendialkg(path, catalog, on_error=on_error)


def _summary(values: list[float]) -> str:
    if not values:
        return "-"
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return f"mean {statistics.fmean(values):.3f}  q25 {q[0]:.3f}  median {q[1]:.3f}  q75 {q[2]:.3f}"


def _stats(args: argparse.Namespace) -> int:
    dialogues = _load(args.path, args.on_error)
    labels = feedback_labels(dialogues)
    counts = dialogues.stats.as_dict()
    reasons = counts.pop("skip_reasons")
    coverage = label_coverage(labels)
    dist = {
        name: _summary([getattr(x, name) for x in labels if getattr(x, name) is not None])
        for name in ("dwell", "sentiment_liked", "sentiment_text", "satisfaction")
    }
    dist["next_user_chars"] = _summary([float(x.next_user_chars) for x in labels if x.engaged])
    if args.json:
        print(
            json.dumps(
                {
                    "counts": counts,
                    "system_turns": len(labels),
                    "coverage": coverage,
                    "distributions": dist,
                    "skip_reasons": reasons,
                },
                indent=2,
            )
        )
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"{args.path.name}: what was read")
    table.add_column("count")
    table.add_column("value", justify="right")
    for key, value in counts.items():
        if key != "file":
            table.add_row(key, str(value))
    table.add_row("system turns", str(len(labels)))
    console.print(table)
    table = Table(title="implicit-feedback labels per system turn")
    for col in ("label", "coverage", "distribution"):
        table.add_column(col)
    for name in dist:
        table.add_row(name, f"{coverage[name]:.1%}" if name in coverage else "-", dist[name])
    console.print(table)
    for reason in reasons[:20]:
        console.print(f"[yellow]skipped[/]: {reason}")
    return 0


def _synth(args: argparse.Namespace) -> int:
    if args.users < 1:
        raise SystemExit("crs-fast data synth: --users must be >= 1")
    if args.catalog == "redial":
        root = data_dir() / "redial"
        if not (root / "movie_info.json").exists():
            raise SystemExit(f"crs-fast data synth: no ReDial catalog in {root} (set CRS_FAST_DATA)")
        catalog: Catalog = load_redial_catalog(root / "movies_with_mentions.csv", root / "movie_info.json")
    else:
        catalog = generate_catalog(seed=args.seed)
    if args.out.is_dir():
        raise SystemExit(f"crs-fast data synth: --out {args.out} is a directory; give a file path (.jsonl)")
    try:
        path = write_synthetic_redial(catalog, args.users, args.out, seed=args.seed)
    except OSError as exc:
        raise SystemExit(f"crs-fast data synth: cannot write {args.out}: {exc.strerror or exc}") from None
    print(f"wrote {args.users} synthetic dialogues ({catalog.source} catalog, {len(catalog)} items) to {path}")
    return 0


def run(args: argparse.Namespace) -> int:
    """Dispatch ``crs-fast data ...``; a malformed, unreadable or unknown file exits with its
    message (the loaders raise DataError, or ValueError for a format they do not read)."""
    try:
        return _stats(args) if args.data_command == "stats" else _synth(args)
    except (ValueError, OSError) as exc:
        raise SystemExit(f"crs-fast data {args.data_command}: {exc}") from None
