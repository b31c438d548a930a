"""`whisperlite model list|load|rollback|traffic`: the ranker's model versions and traffic split, over ModelAdminService."""

import argparse
import json

import grpc
from google.protobuf import json_format

from whisperlite.core.clients.model_admin import ModelAdminClient
from whisperlite.shell.client_flags import add_client_security_flags, call_failed, client_security, seconds
from whisperlite.core.topology import RANKER
from whisperlite.v1 import model_admin_pb2


def register(commands) -> None:
    # allow_abbrev=False: `rollback --to` must not read as an abbreviation of the security flag --token.
    model = commands.add_parser("model", help="list, load, roll back and canary the ranker's model versions", allow_abbrev=False)
    _add_connection_flags(model, defaults=True)
    actions = model.add_subparsers(dest="action", required=True)

    def action(name: str, help: str) -> argparse.ArgumentParser:
        # The connection flags go before or after the action (`model --ranker R list`, `model list --ranker R`).
        parser = actions.add_parser(name, help=help, allow_abbrev=False)
        _add_connection_flags(parser, defaults=False)
        return parser

    listing = action("list", "the versions on the ranker's disk, newest first, and their state")
    listing.add_argument("--json", action="store_true", help="print the response as JSON")
    listing.set_defaults(func=_list)

    load = action("load", "load, validate and make live a version (the old one serves until it passes)")
    load.add_argument("version", help="a version as `whisperlite model list` names it")
    load.set_defaults(func=_load)

    rollback = action("rollback", "make live the newest version older than the live one (or --to VERSION)")
    rollback.add_argument("--to", help="the version to go back to (default: the one before the live version)")
    rollback.set_defaults(func=_rollback)

    traffic = action("traffic", "show the traffic split, or send a share of users to a candidate version")
    traffic.add_argument("--candidate", help="candidate version; omitted: show the split")
    traffic.add_argument("--percent", type=float, help="share of users (0-100, by user-id hash) for the candidate")
    traffic.add_argument("--shadow", action="store_true", help="score the candidate in the background instead of answering with it")
    traffic.add_argument("--clear", action="store_true", help="end the split: every user gets the live version")
    traffic.set_defaults(func=_traffic)


def _add_connection_flags(parser: argparse.ArgumentParser, defaults: bool) -> None:
    def default(value):
        return value if defaults else argparse.SUPPRESS

    parser.add_argument("--ranker", default=default(RANKER.local_address), help="ranker address (serves ModelAdminService)")
    parser.add_argument(
        "--timeout", type=seconds, default=default(120.0), help="deadline of each call in seconds (loading validates the version)"
    )
    add_client_security_flags(parser, defaults=defaults)  # the ranker asks for a token with the 'admin' scope when auth is on


def _call(args: argparse.Namespace, action):
    with ModelAdminClient(args.ranker, args.timeout, security=client_security(args)) as admin:
        try:
            return action(admin)
        except grpc.RpcError as error:
            raise call_failed(error, args.ranker, "ranker") from None


def _state(model: model_admin_pb2.ModelVersion) -> str:
    return model_admin_pb2.ModelState.Name(model.state).removeprefix("MODEL_STATE_").lower()


def _list(args: argparse.Namespace) -> None:
    response = _call(args, lambda admin: admin.list_models())
    if args.json:
        print(json.dumps(json_format.MessageToDict(response, preserving_proto_field_name=True), indent=2))
        return
    for model in response.models:
        print(f"{_state(model):<9}  {model.version:<40}  created {model.created or '?'}  {model.users} users  {model.encoder}")
        if model.error:
            print(f"           {model.error}")


def _print_loaded(response: model_admin_pb2.LoadModelResponse) -> None:
    print(f"live: {response.model.version} (was {response.previous_version or 'text-only'})")


def _load(args: argparse.Namespace) -> None:
    _print_loaded(_call(args, lambda admin: admin.load_model(args.version)))


def _rollback(args: argparse.Namespace) -> None:
    def roll_back(admin: ModelAdminClient) -> model_admin_pb2.LoadModelResponse:
        return admin.load_model(args.to or previous_version(admin.list_models().models))

    _print_loaded(_call(args, roll_back))


def previous_version(models) -> str:
    """The newest loadable version created before the live one (`models` newest first, as ListModels sends them)."""
    live = next((m for m in models if m.state == model_admin_pb2.MODEL_STATE_LIVE), None)
    if live is None:
        raise SystemExit("rollback: no version is live, so there is nothing to roll back from; use `whisperlite model load VERSION`")
    older = [m for m in models if m.created < live.created and m.state != model_admin_pb2.MODEL_STATE_REFUSED]
    if not older:
        raise SystemExit(f"rollback: no version older than the live {live.version} is on disk")
    return older[0].version


def _traffic(args: argparse.Namespace) -> None:
    # Flags that would be ignored are refused: "--percent 50" alone printed the unchanged split and exited 0.
    if args.clear and (args.candidate or args.percent is not None or args.shadow):
        raise SystemExit("traffic: --clear takes no other flag")
    if not args.candidate and (args.percent is not None or args.shadow):
        raise SystemExit("traffic: --percent and --shadow need --candidate VERSION")
    if args.clear:
        traffic = _call(args, lambda admin: admin.set_traffic("", 0.0))
    elif args.candidate:
        if args.percent is None:
            raise SystemExit("traffic: --percent is needed with --candidate")
        traffic = _call(args, lambda admin: admin.set_traffic(args.candidate, args.percent, args.shadow))
    else:
        traffic = _call(args, lambda admin: admin.get_traffic())
    print(f"live: {traffic.live_version or '(none: text only)'}")
    if traffic.candidate_version:
        mode = "shadow-scores" if traffic.shadow else "answers"
        print(f"candidate: {traffic.candidate_version} {mode} {traffic.candidate_percent:g}% of users")
    else:
        print("candidate: none")
