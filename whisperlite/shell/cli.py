"""The `whisperlite` command: serve, up, ingest, recommend, health, model, catalog, data, train, evaluate, judgements."""

import argparse
import importlib
import os
import sys
from pathlib import Path

from whisperlite.core.topology import BY_NAME, CATALOG, MAX_PORT, RANKER, SERVICES, check_address
from whisperlite.shell import model_admin
from whisperlite.shell.terminal import terminal_json, terminal_safe
from whisperlite.shell.client_flags import (
    add_client_flags, add_client_security_flags, at_least, call_failed, client_security, seconds, utf8_text,
)

# Commands whose modules import pandas or torch are registered only when asked for (or for --help),
# so quick commands such as `health`, which containers run every few seconds, start fast.
PLUGINS = {
    "data": "whisperlite.data.cli",
    "train": "whisperlite.trainer.cli",
    "evaluate": "whisperlite.trainer.cli",
    "catalog": "whisperlite.shell.catalog_admin",
    "judgements": "whisperlite.shell.judgements",
}


def _serve(args: argparse.Namespace) -> None:
    from whisperlite.shell.parent import exit_with_parent

    exit_with_parent()
    importlib.import_module(BY_NAME[args.service].module).main(args.server_args)


def _up(args: argparse.Namespace) -> None:
    from whisperlite.shell.up import StackPorts, up

    up(args.data, args.state_dir, args.model_dir, secure=args.secure, ports=StackPorts(args.port_offset))


def _ingest(args: argparse.Namespace) -> None:
    from whisperlite.core.errors import ServiceError
    from whisperlite.shell.ingest import ingest

    try:
        written = ingest(
            args.data, args.catalog, batch_size=args.batch_size, retries=args.retries, security=client_security(args),
            missing_only=args.missing_only,
        )
    except ServiceError as error:
        raise SystemExit(f"{error.code.name}: {error}") from None
    print(f"upserted {written} items into the catalog at {args.catalog}")


def _recommend(args: argparse.Namespace) -> None:
    import dataclasses

    import grpc

    from whisperlite.core.clients.ranker import RankerClient
    from whisperlite.shell.client_flags import client_options

    with RankerClient(args.ranker, client_options(args)) as ranker:
        try:
            result = ranker.recommend(
                user_id=args.user,
                query=args.query,
                top_k=args.k,
                categories=args.category or (),
                min_price=args.min_price,
                max_price=args.max_price,
                recent_item_ids=args.recent or (),
                include_history_items=args.include_history,
                request_id=args.request_id,
            )
        except grpc.RpcError as error:
            hint = " (if the ranker speaks TLS, pass --tls-ca-file)" if error.code() == grpc.StatusCode.UNAVAILABLE and not args.tls_ca_file else ""
            raise SystemExit(f"{call_failed(error, args.ranker, 'ranker').code}{hint}") from None
        except ValueError as error:  # refused by the client before any call: a --request-id with spaces, -k past int32...
            raise SystemExit(f"error: {error}") from None
    if args.json:
        print(terminal_json(dataclasses.asdict(result), indent=2))
        return
    print(f"model {result.model_version or '(none: text only)'}  path {result.path}  request {result.request_id}")
    if result.missing_recent_item_ids:
        missing = ", ".join(terminal_safe(item_id) for item_id in result.missing_recent_item_ids)
        print(f"not in the catalog, left out of the taste: --recent {missing}", file=sys.stderr)
    for rank, scored in enumerate(result.items, 1):
        print(
            f"{rank:>3}. {scored.score:7.3f}  (query {scored.query_match:.3f}, taste {scored.personal_affinity:.3f})  "
            f"[{terminal_safe(scored.item.item_id)}] {_shown_name(scored.item.title, scored.item.text)}"
        )


def _shown_name(title: str, text: str, chars: int = 80) -> str:
    """An item's title, or the start of its text for an item that has none (it showed as nothing), safe to print."""
    if title.strip():
        return terminal_safe(title)
    start = " ".join(text.split())
    return terminal_safe(start if len(start) <= chars else start[: chars - 1] + "…")


def _health(args: argparse.Namespace) -> None:
    if not 0 < args.timeout <= 3600:  # NaN, 0, or so far off that the deadline overflows and fails at once
        raise SystemExit(f"--timeout: must be between 0 and 3600 seconds, got {args.timeout}")
    if args.address.startswith(("http://", "https://")):
        from whisperlite.shell.http_health import http_health_status

        serving, status = http_health_status(args.address, args.timeout)
    else:
        try:
            check_address(args.address)
        except ValueError as error:
            raise SystemExit(str(error)) from None
        from whisperlite.core.clients.health import health_status

        serving, status = health_status(args.address, args.service, args.timeout, security=client_security(args))
        if status == "NOT_SERVING" and not args.service:  # a ranker says which dependency it waits for; others have no such names
            from whisperlite.core.clients.health import RANKER_DEPENDENCY_HEALTH_NAMES, dependencies_waited_for

            statuses = [  # an error's "CODE: details" as the code alone
                health_status(args.address, name, args.timeout, security=client_security(args))[1].partition(":")[0]
                for name in RANKER_DEPENDENCY_HEALTH_NAMES
            ]
            down = [name for name, state in dependencies_waited_for(statuses).items() if state == "NOT_SERVING"]
            if down:
                status += f" (its dependencies down: {', '.join(down)})"
    if not serving:
        print(f"{args.address}: {status}", file=sys.stderr)  # why: a refused TLS handshake is not the server's state
    print("SERVING" if serving else "NOT_SERVING")
    sys.exit(0 if serving else 1)


def _plugins_for(argv: list[str]) -> list[str]:
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    if command in PLUGINS:
        return [PLUGINS[command]]
    if command in BUILTINS:
        return []
    return list(dict.fromkeys(PLUGINS.values()))  # help, or an unknown command: list them all


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="whisperlite", description="Personalized recommendation from free-text requests.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run one service (flags after the name go to the service; see --help)")
    serve.add_argument("service", choices=sorted(BY_NAME))
    serve.add_argument("server_args", nargs=argparse.REMAINDER, help="service flags, e.g. --port 50051")
    serve.set_defaults(func=_serve)

    up = commands.add_parser("up", help="run the services and the gateway locally, ingest the demo catalog when empty")
    up.add_argument(
        "--data", type=Path,
        help="canonical dataset to ingest when the catalog is empty, or to finish ingesting when an ingest stopped midway",
    )
    up.add_argument("--state-dir", type=Path, default=Path("var"), help="milvus-lite store, judgements and service logs (default ./var)")
    up.add_argument("--model-dir", type=Path, default=Path("models"), help="trained models (default ./models)")
    up.add_argument(
        "--secure", action="store_true",
        help="TLS and bearer tokens on every service, with a development CA and tokens made in STATE_DIR/security",
    )
    up.add_argument(
        "--port-offset", type=at_least(0, at_most=MAX_PORT - max(spec.port for spec in SERVICES)), default=0,
        help="add this to every service's port (gRPC, metrics, the gateway's HTTP), so a second stack can run beside "
        "the first, e.g. 1000: ranker 51050, gateway 9080 (default 0)",
    )
    up.set_defaults(func=_up)

    ingest = commands.add_parser("ingest", help="upsert a dataset's items.csv into the catalog")
    ingest.add_argument("--data", type=Path, required=True, help="canonical dataset directory")
    ingest.add_argument("--catalog", default=CATALOG.local_address, help="catalog address")
    ingest.add_argument("--batch-size", type=at_least(1), default=256, help="items per upsert call")
    ingest.add_argument(
        "--retries", type=at_least(0), default=8, help="times a batch that failed for a passing reason (a catalog restarting or busy) is sent again, with backoff; a refused token is not"
    )
    ingest.add_argument(
        "--missing-only", action="store_true",
        help="upsert only the items whose id the catalog lacks (finishes an ingest that was stopped midway without "
        "embedding again what it holds)",
    )
    add_client_security_flags(ingest)
    ingest.set_defaults(func=_ingest)

    recommend = commands.add_parser("recommend", help="ask the ranker for recommendations")
    recommend.add_argument("--user", type=utf8_text, default="", help="user id (unknown users get text-only results)")
    recommend.add_argument("--query", type=utf8_text, required=True, help="what the user typed")
    recommend.add_argument("-k", type=at_least(1, INT32_MAX), default=10, help="number of items")
    recommend.add_argument("--category", type=utf8_text, action="append", help="keep only this category (repeatable)")
    recommend.add_argument("--min-price", type=float)
    recommend.add_argument("--max-price", type=float)
    recommend.add_argument("--recent", type=utf8_text, action="append", help="recently viewed item id (repeatable)")
    recommend.add_argument(
        "--include-history", action="store_true",
        help="let the user's own history items (their purchases the model knows) come back; left out by default",
    )
    recommend.add_argument("--ranker", default=RANKER.local_address, help="ranker address")
    recommend.add_argument("--json", action="store_true", help="print the response as JSON")
    recommend.add_argument("--request-id", help="x-request-id to send (default: a new one); every service logs it")
    add_client_flags(recommend, timeout_seconds=10.0)
    recommend.set_defaults(func=_recommend)

    health = commands.add_parser("health", help="gRPC health check; exit 0 when SERVING (for container health checks)")
    health.add_argument("address", help="host:port, or the gateway's http://host:port/health URL")
    health.add_argument("--service", default="", help="service name ('' = the whole server)")
    health.add_argument("--timeout", type=seconds, default=2.0, help="deadline of the check in seconds")
    add_client_security_flags(health, token=False)  # health checks need no token
    health.set_defaults(func=_health)

    model_admin.register(commands)

    for module in _plugins_for(sys.argv[1:] if argv is None else argv):
        importlib.import_module(module).register(commands)
    return parser


INT32_MAX = 2**31 - 1  # top_k is a proto int32: past it the call failed in protobuf ("Value out of range"), the flag unnamed
BUILTINS = {"serve", "up", "ingest", "recommend", "health", "model"}


def main(argv: list[str] | None = None) -> None:
    command = "whisperlite"
    try:
        args = build_parser(argv).parse_args(argv)
        command = f"whisperlite {args.command}"
        try:
            code = args.func(args) or 0
        finally:  # here, where a reader gone is caught below, not in the interpreter's exit (a traceback)
            sys.stdout.flush()
        sys.exit(code)
    except KeyboardInterrupt:
        # What is written stays written (upserts are idempotent, an import resumes from its checkpoint, a model
        # version appears only once complete): one line, not a traceback.
        print(f"{command}: interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        # The reader of the output left (`whisperlite model list | head -3`): nothing more to say, and no traceback.
        # Python's own recipe: point stdout at devnull, or its flush at exit raises again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)  # as a shell reports a process killed by SIGPIPE

