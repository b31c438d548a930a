"""`whisperlite judgements report`: precision@k and nDCG@k of the study's judgements, printed and plotted."""

import argparse
from pathlib import Path

from whisperlite.core.topology import GATEWAY


def _report(args: argparse.Namespace) -> None:
    from whisperlite.services.gateway.judgements import FILENAME, JudgementStore
    from whisperlite.services.gateway.report import build_report, format_report, plot_report

    path = args.state_dir / FILENAME
    if not path.is_file():
        raise SystemExit(f"no judgement store at {path}: run the gateway (`whisperlite up` or `whisperlite serve gateway --state-dir`) first")
    store = JudgementStore(path)
    try:
        judgements = store.all_judgements()
    finally:
        store.close()
    try:
        report = build_report(judgements, args.k)
    except ValueError as error:  # a k below 1
        raise SystemExit(str(error)) from None
    print(format_report(report))
    plot = plot_report(report, args.plot or args.state_dir / "judgements-report.png")
    print(f"plot: {plot}")


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
