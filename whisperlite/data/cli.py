"""``whisperlite data ...`` subcommands. ``register(subparsers)`` adds them to the main CLI;
``python -m whisperlite.data.cli`` runs them alone."""

from __future__ import annotations

import argparse
import json
import sys

from whisperlite.core.dataset import load_dataset
from whisperlite.data.prepare import DATASETS_ROOT_ENV, prepare_dataset
from whisperlite.data.requests import ambiguity, fill_missing_requests, item_titles
from whisperlite.data.sources import CONVERTERS


def _prepare(args: argparse.Namespace) -> int:
    try:
        info = prepare_dataset(args.source, args.out, raw_dir=args.raw, name=args.name, progress=not args.quiet)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = {k: info[k] for k in ("name", "n_items", "n_users", "n_interactions", "n_interactions_with_request")}
    print(json.dumps(summary))
    print(f"wrote {args.out}/items.csv, interactions.csv, dataset.json")
    return 0


def _requests(args: argparse.Namespace) -> int:
    """Simulate requests for a sample of a prepared dataset's interactions; print examples and
    how many catalog items each request matches."""
    try:
        dataset = load_dataset(args.data)  # interactions naming unknown items dropped, with a warning
    except (FileNotFoundError, ValueError) as err:
        print(f"error: data: {err}", file=sys.stderr)
        return 2
    items, interactions = dataset.items, dataset.interactions.drop(columns="item")
    if interactions.empty:
        print(f"error: data: {args.data}: no interaction names an item of items.csv", file=sys.stderr)
        return 2
    sample = interactions.sample(min(args.sample, len(interactions)), random_state=args.seed).assign(request="")
    filled = fill_missing_requests(sample, items, seed=args.seed, progress=not args.quiet)
    titles = dict(zip(items["item_id"], item_titles(items)))
    for row in filled.head(args.examples).itertuples():
        print(f"{titles[row.item_id]!r} -> {row.request!r}")
    print(json.dumps(ambiguity(filled["request"].tolist(), items)))
    return 0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    data = subparsers.add_parser("data", help="prepare datasets in the canonical format")
    data_sub = data.add_subparsers(dest="data_command", required=True)

    prepare = data_sub.add_parser(
        "prepare",
        help="convert a dataset's raw files into items.csv, interactions.csv, dataset.json",
        description="Convert one dataset of ../shared/datasets into the canonical directory (see docs/data.md).",
    )
    prepare.add_argument("--source", required=True, choices=sorted(CONVERTERS), help="dataset name")
    prepare.add_argument(
        "--raw",
        default=None,
        help=f"folder with the raw files (default: ${DATASETS_ROOT_ENV} or ../shared/datasets, then SOURCE/raw)",
    )
    prepare.add_argument("--out", required=True, help="output folder (created if missing)")
    prepare.add_argument("--name", default=None, help="dataset name written to dataset.json (default: SOURCE)")
    prepare.add_argument("--quiet", action="store_true", help="no progress bars")
    prepare.set_defaults(func=_prepare)

    requests = data_sub.add_parser(
        "requests",
        help="show simulated requests for a prepared dataset and measure their ambiguity",
        description="Simulate requests for sampled interactions of a prepared dataset (whatever their own "
        "request), print examples and the number of catalog items whose title/category holds every request word.",
    )
    requests.add_argument("--data", required=True, help="prepared dataset folder")
    requests.add_argument("--seed", type=int, default=0, help="simulator and sampling seed (default 0)")
    requests.add_argument("--sample", type=int, default=5000, help="interactions to sample (default 5000)")
    requests.add_argument("--examples", type=int, default=10, help="examples to print (default 10)")
    requests.add_argument("--quiet", action="store_true", help="no progress bars")
    requests.set_defaults(func=_requests)
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="whisperlite")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
