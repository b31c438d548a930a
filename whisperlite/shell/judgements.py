"""`whisperlite judgements report`: precision@k and nDCG@k of the study's judgements, printed and plotted."""

import argparse
import sqlite3
from pathlib import Path

from whisperlite.core.topology import GATEWAY


def _report(args: argparse.Namespace) -> None:
    from whisperlite.services.gateway.judgements import FILENAME, JudgementStore
    from whisperlite.services.gateway.report import build_report, format_report, plot_report

    path = args.state_dir / FILENAME
    if not path.is_file():
        raise SystemExit(f"no judgement store at {path}: run the gateway (`whisperlite up` or `whisperlite serve gateway --state-dir`) first")
    try:
        store = JudgementStore(path)
        try:
            judgements = store.all_judgements()
        finally:
            store.close()
    except sqlite3.DatabaseError as error:  # not SQLite, or a damaged file
        raise SystemExit(f"{path}: cannot be read as the gateway's judgement store: {error}") from None
    try:
        report = build_report(judgements, args.k)
    except ValueError as error:  # a k below 1
        raise SystemExit(str(error)) from None
    print(format_report(report))
    plot = _plot_path(args.plot, args.state_dir)
    try:
        plot_report(report, plot)
    except OSError as error:
        raise SystemExit(f"plot: cannot write {plot}: {error.strerror or error}") from None
    print(f"plot: {plot}")


def _plot_path(asked: Path | None, state_dir: Path) -> Path:
    """A folder gets the default file name in it; a name without a suffix gets .png, as matplotlib would add it (the
    path printed was then not the one written)."""
    if asked is None or asked.is_dir():
        return (asked or state_dir) / "judgements-report.png"
    return asked if asked.suffix else asked.with_name(asked.name + ".png")


def register(commands: argparse._SubParsersAction) -> None:
    judgements = commands.add_parser("judgements", help="relevance judgements collected by the gateway's study page")
    actions = judgements.add_subparsers(dest="action", required=True)
    report = actions.add_parser("report", help="precision@k and nDCG@k, personalized vs non-personal, with counts and intervals")
    report.add_argument(
        "--state-dir", type=Path, default=Path("var"), help=f"the gateway's state folder (its --state-dir, env {GATEWAY.env_prefix}_STATE_DIR; default ./var)"
    )
    report.add_argument("-k", type=int, default=5, help="cut-off rank (default 5)")
    report.add_argument("--plot", type=Path, help="where to write the plot (default STATE_DIR/judgements-report.png)")
    report.set_defaults(func=_report)
