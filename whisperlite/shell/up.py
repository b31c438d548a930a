"""`whisperlite up`: the three services and the HTTP gateway as separate processes on the embedded defaults."""

import asyncio
import collections
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from whisperlite.core.channels import create_channel
from whisperlite.core.client_security import PLAINTEXT, ClientSecurity
from whisperlite.core.clients.catalog import CatalogClient
from whisperlite.core.clients.health import wait_until_serving
from whisperlite.core.dataset import ITEMS_FILE, data_hash, file_sha256, most_active_user
from whisperlite.core.model_versions import read_manifest, resolve_version_dir
from whisperlite.core.errors import ServiceError
from whisperlite.core.topology import CATALOG, GATEWAY, GRPC_SERVICES, QUERY_ENCODER, RANKER, SERVICES, Service
from whisperlite.shell.http_health import wait_until_http_serving
from whisperlite.shell.ingest import ingest
from whisperlite.shell.parent import EXIT_WITH_PARENT_ENV


# A service that exits is started again, unless it exited this many times within the window: a crash
# loop (a port taken, a broken store) that restarting cannot mend stops the stack with the reason.
MAX_RESTARTS = 5
RESTART_WINDOW_SECONDS = 60.0
# Written beside the catalog's store once an ingest of a dataset's items.csv has finished (its sha256 inside).
INGESTED_MARKER = "ingested.json"
# In the state dir, flocked by the stack that uses it (its `up`'s pid inside). Never deleted: a start that had opened
# it just before it went would lock a file that no later start opens, and two stacks would run on one state dir.
LOCK_FILE = "up.lock"
# How long a start waits for the services of a stack whose `up` was killed: they hold its lock until they end, and end
# on their own once it is gone (their SIGTERM on its death, then their shutdown grace).
STOPPING_STACK_WAIT_SECONDS = 30.0


@dataclass(frozen=True)
class StackPorts:
    """Where the stack's services listen: their default ports (core.topology) plus `offset`, so that a second stack
    (another checkout, a test run) can serve beside the first on one host."""

    offset: int = 0

    def port(self, spec: Service) -> int:
        return spec.port + self.offset

    def metrics_port(self, spec: Service) -> int:
        return spec.metrics_port + self.offset

    def address(self, spec: Service) -> str:
        return f"localhost:{self.port(spec)}"

    def all_ports(self) -> list[tuple[int, Service]]:
        """Every port the stack binds, once each: the gateway serves /metrics on its HTTP port."""
        return [(port, spec) for spec in SERVICES for port in sorted({self.port(spec), self.metrics_port(spec)})]


class Stack:
    """Starts the services in dependency order, each after the previous one reports SERVING, and starts
    again any that exits while the stack runs (as a container runtime's restart policy would)."""

    def __init__(
        self, state_dir: Path, model_dir: Path, state_lock: int, extra_env: dict[str, str] | None = None, secure: bool = False,
        ports: StackPorts = StackPorts(),
    ):
        self.ports = ports
        self.state_lock = state_lock
        self.state_dir = state_dir
        self.model_dir = model_dir
        self.log_dir = state_dir / "logs"
        self.processes: dict[str, subprocess.Popen] = {}
        self._restarts: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)
        self.env = {
            **os.environ,
            QUERY_ENCODER.address_env: ports.address(QUERY_ENCODER),
            CATALOG.address_env: ports.address(CATALOG),
            f"{CATALOG.env_prefix}_DATA_DIR": str(state_dir / "catalog"),
            f"{RANKER.env_prefix}_MODEL_DIR": str(model_dir),
            **(_secure_env(state_dir / "security") if secure else {}),
            RANKER.address_env: ports.address(RANKER),
            f"{GATEWAY.env_prefix}_STATE_DIR": str(state_dir),
            **(extra_env or {}),
        }
        # How this process (health waits, ingest, the item count) calls the services.
        self.health_security = self.security = PLAINTEXT
        if secure:
            pki = state_dir / "security"
            self.health_security = ClientSecurity(ca_file=str(pki / "ca.pem"))
            self.security = ClientSecurity(ca_file=str(pki / "ca.pem"), token_file=str(pki / "ingest.token"))

    def start(self, startup_timeout_seconds: float = 300.0) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for port, spec in self.ports.all_ports():  # all checked first: a service on a taken port would meet another program's health answer
            if not _port_free(port):
                raise SystemExit(
                    f"port {port} ({spec.name}) is taken by another process: stop it (another `whisperlite up`?), "
                    "or run this stack beside it with --port-offset"
                )
        for spec in SERVICES:
            log_path = self.log_dir / f"{spec.name}.log"
            print(f"starting {spec.name} on :{self.ports.port(spec)} (logs: {log_path})", flush=True)
            process = self._launch(spec.name)

            def alive(p: subprocess.Popen = process) -> bool:
                return p.poll() is None

            if spec.speaks_grpc:
                serving = wait_until_serving(self.ports.address(spec), startup_timeout_seconds, alive=alive, security=self.health_security)
            else:
                serving = wait_until_http_serving(f"http://{self.ports.address(spec)}/health", startup_timeout_seconds, alive=alive)
            if not serving:
                tail = log_path.read_text(errors="replace").splitlines()[-15:]
                self.stop()
                raise SystemExit(f"{spec.name} did not become healthy; last log lines:\n" + "\n".join(tail))

    def _launch(self, name: str) -> subprocess.Popen:
        spec = next(spec for spec in SERVICES if spec.name == name)
        command = [sys.executable, "-m", "whisperlite", "serve", spec.name, "--port", str(self.ports.port(spec))]
        if spec.speaks_grpc:  # the gateway serves /metrics on its HTTP port
            command += ["--metrics-port", str(self.ports.metrics_port(spec))]
        with (self.log_dir / f"{spec.name}.log").open("ab") as log:
            # The service ends with this process, even one killed without a chance to stop it (SIGKILL, the OOM killer).
            env = {**self.env, EXIT_WITH_PARENT_ENV: str(os.getpid())}
            # The service holds the state dir's lock too, until it ends: the next stack waits for the catalog of one
            # whose `up` was killed to let go of the store, not only for the `up`.
            process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log, pass_fds=(self.state_lock,))
        self.processes[spec.name] = process
        return process

    def restart_exited(self) -> None:
        """Starts again each service that exited; raises SystemExit for one that keeps exiting."""
        for name, process in list(self.processes.items()):
            code = process.poll()
            if code is None:
                continue
            now = time.monotonic()
            recent = self._restarts[name]
            while recent and now - recent[0] > RESTART_WINDOW_SECONDS:
                recent.popleft()
            if len(recent) >= MAX_RESTARTS:
                raise SystemExit(
                    f"{name} exited {len(recent) + 1} times within {RESTART_WINDOW_SECONDS:.0f} s (last exit code {code}); "
                    f"not restarting it: see {self.log_dir / (name + '.log')}"
                )
            recent.append(now)
            print(f"{name} exited with code {code}; starting it again (logs: {self.log_dir / (name + '.log')})", file=sys.stderr, flush=True)
            self._launch(name)

    def stop(self, grace_seconds: float = 15.0) -> None:
        for process in reversed(list(self.processes.values())):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(grace_seconds)
            except subprocess.TimeoutExpired:
                process.kill()


def lock_state_dir(state_dir: Path) -> int:
    """Locks STATE_DIR for one stack (milvus-lite lets one process open a store, and two stacks' logs would mix) and
    returns the lock's file descriptor; raises SystemExit naming the `up` that runs there.

    An flock, not a pid file alone: the kernel lets go of it when the last process holding it ends, `up` and the
    services it passes it to, so a stack killed with SIGKILL leaves nothing behind that blocks the next start."""
    state_dir.mkdir(parents=True, exist_ok=True)
    path = state_dir / LOCK_FILE
    lock = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    waiting_since = None
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            pass
        holder = os.pread(lock, 32, 0).decode(errors="replace").strip()
        if holder.isdigit() and _running(int(holder)):
            raise SystemExit(
                f"another `whisperlite up` (pid {holder}) runs on the state dir {state_dir.resolve()}: stop it (Ctrl-C "
                f"where it runs, or `kill {holder}`), or give this one its own --state-dir (and --port-offset to serve beside it)"
            )
        # Held, but not by a running `up`: the services of one that was killed, stopping (or a start that has just
        # taken the lock and not yet written its pid).
        if waiting_since is None:
            waiting_since = time.monotonic()
            if holder:
                print(f"the `whisperlite up` that ran on {state_dir} (pid {holder}) is gone: waiting for its services to stop", flush=True)
        elif time.monotonic() - waiting_since > STOPPING_STACK_WAIT_SECONDS:
            raise SystemExit(
                f"{path} is still held {STOPPING_STACK_WAIT_SECONDS:.0f} s after its `whisperlite up` (pid {holder or 'unknown'}) "
                f"ended: `fuser -v {path}` lists the processes holding it; stop them"
            )
        time.sleep(0.2)
    os.ftruncate(lock, 0)
    os.pwrite(lock, f"{os.getpid()}\n".encode(), 0)
    return lock


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: sends nothing, says whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's
        pass
    return True


def _port_free(port: int) -> bool:
    """Whether a service can bind `port` on every address, as the services do."""
    try:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        family, address = socket.AF_INET6, "::"
    except OSError:  # IPv6 off in this kernel
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        family, address = socket.AF_INET, "0.0.0.0"
    with probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the services bind: a closed connection's TIME_WAIT is no owner
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        try:
            probe.bind((address, port))
        except OSError:
            return False
    return True


def _secure_env(pki: Path) -> dict[str, str]:
    """TLS on every service with the development CA, tokens checked everywhere, and each service
    calling the others with the service token (docs/security.md)."""
    from whisperlite.shell.dev_certs import write_dev_pki

    write_dev_pki(pki)
    env = {"WHISPERLITE_AUTH_TOKENS_FILE": str(pki / "tokens.txt"), "WHISPERLITE_TLS_CA_FILE": str(pki / "ca.pem")}
    for spec in GRPC_SERVICES:
        env[f"{spec.env_prefix}_TLS_CERT_FILE"] = str(pki / f"{spec.name}.pem")
        env[f"{spec.env_prefix}_TLS_KEY_FILE"] = str(pki / f"{spec.name}-key.pem")
        env[f"{spec.env_prefix}_DOWNSTREAM_TOKEN_FILE"] = str(pki / "service.token")
    return env


def _cli() -> str:
    """How to run this install's CLI from anywhere: the script beside this Python (a virtualenv's bin), else by name."""
    script = Path(sys.executable).parent / "whisperlite"
    return str(script) if script.is_file() else "whisperlite"


def _examples(user: str, ports: StackPorts, pki: Path | None) -> str:
    ranker, gateway = ports.address(RANKER), ports.address(GATEWAY)
    ranker_flag = "" if ranker == RANKER.local_address else f" --ranker {ranker}"
    request = f"'{{\"user_id\": \"{user}\", \"query\": \"black leather boots\", \"top_k\": 5}}'"
    if pki is None:
        return (
            f"  {_cli()} recommend{ranker_flag} --user {user} --query 'black leather boots' -k 5\n"
            f"  grpcurl -plaintext -d {request} {ranker} whisperlite.v1.RankerService/Recommend\n"
            f"  curl -s {gateway}/v1/recommend -H 'content-type: application/json' -d {request}\n\n"
        )
    return (
        f"  {_cli()} recommend{ranker_flag} --tls-ca-file {pki}/ca.pem --token-file {pki}/shopper.token "
        f"--user {user} --query 'black leather boots' -k 5\n"
        f"  grpcurl -cacert {pki}/ca.pem -H \"authorization: Bearer $(cat {pki}/shopper.token)\" -d {request} "
        f"{ranker} whisperlite.v1.RankerService/Recommend\n"
        f"  curl -s {gateway}/v1/recommend -H \"authorization: Bearer $(cat {pki}/shopper.token)\" "
        f"-H 'content-type: application/json' -d {request}\n"
        f"  the judgement page http://{gateway}/ asks for a token: paste the one in {pki}/shopper.token\n\n"
    )


def catalog_item_count(address: str, security: ClientSecurity = PLAINTEXT) -> int:
    async def count() -> int:
        channel = create_channel(address, security=security)
        try:
            return (await CatalogClient(channel, 10.0, address).stats()).item_count
        finally:
            await channel.close()

    return asyncio.run(count())


def _in_thread(work: Callable[[], object]) -> Future:
    """`work()` in a daemon thread (a stop while it runs must not wait for it), its outcome in the future."""
    outcome: Future = Future()

    def run() -> None:
        try:
            outcome.set_result(work())
        except BaseException as error:  # SystemExit too (a dataset ingest refuses): raised where the result is read
            outcome.set_exception(error)

    threading.Thread(target=run, name="ingest", daemon=True).start()
    return outcome


def _ingest_unless_done(data_dir: Path, catalog_addr: str, stack: Stack) -> None:
    """Ingests the dataset into an empty catalog; finishes an ingest that did not (the items the catalog lacks); leaves
    a catalog alone once an ingest of these items has finished (a marker beside the store, gone with it).

    Before, only an empty catalog was ingested: a stack stopped mid-ingest came back up with part of the dataset
    and said nothing."""
    marker = stack.state_dir / "catalog" / INGESTED_MARKER
    items_sha256 = file_sha256(data_dir / ITEMS_FILE)
    count = catalog_item_count(catalog_addr, stack.security)
    if count and _recorded_sha256(marker) == items_sha256:
        return
    if count:
        print(f"catalog holds {count:,} items but no finished ingest of this {data_dir / ITEMS_FILE} is recorded (stopped "
              "midway, or the file changed): ingesting the items it lacks", flush=True)
    else:
        print(f"catalog is empty: ingesting {data_dir}", flush=True)
    # In a thread, while services that exit are started again: a catalog that died mid-ingest used to stay down, and
    # the ingest with it.
    ingesting = _in_thread(lambda: ingest(data_dir, catalog_addr, security=stack.security, missing_only=count > 0))
    while not ingesting.done():
        stack.restart_exited()
        time.sleep(0.5)
    try:
        written = ingesting.result()
    except ServiceError as error:  # the catalog refused the dataset: say why and stop the stack, no traceback
        raise SystemExit(f"ingest of {data_dir} failed: {error.code.name}: {error}") from None
    if count:
        print(f"ingest finished: {written:,} items added", flush=True)
    marker.write_text(json.dumps({"data_dir": str(data_dir.resolve()), "items_sha256": items_sha256}) + "\n")


def _warn_unless_trained_on(data_dir: Path, model_dir: Path) -> None:
    """The newest model under --model-dir, the one the ranker serves, may come from another dataset (`train --out
    models` for each dataset puts them side by side): its users are then not the catalog's, and every shopper got
    text-only results without a word."""
    try:
        manifest = read_manifest(resolve_version_dir(model_dir))
        trained_on = manifest.get("data_hash")
        served_hash = data_hash(data_dir)
    except (OSError, ValueError):  # no model (text-only, said by the ranker), or no interactions.csv to compare
        return
    if trained_on and trained_on != served_hash:
        print(
            f"warning: the newest model under {model_dir} ({manifest.get('version')}) was trained on "
            f"{manifest.get('dataset') or 'another dataset'} (data hash {trained_on}), not on {data_dir} ({served_hash}): "
            f"its users are not this catalog's. Train one on it (`{_cli()} train --data {data_dir} --out DIR`) and pass "
            "--model-dir DIR",
            flush=True,
        )


def _recorded_sha256(marker: Path) -> str | None:
    try:
        return json.loads(marker.read_text()).get("items_sha256")
    except (OSError, ValueError, AttributeError):
        return None


def up(data_dir: Path | None, state_dir: Path, model_dir: Path, secure: bool = False, ports: StackPorts = StackPorts()) -> None:
    state_lock = lock_state_dir(state_dir)  # first, before anything is read or started: held until this process ends
    real_user = most_active_user(data_dir) if data_dir else None
    user = real_user or "some-user"
    suggested = {f"{GATEWAY.env_prefix}_SUGGESTED_USERS": real_user} if real_user else None
    stack = Stack(state_dir, model_dir, state_lock, suggested, secure=secure, ports=ports)
    stop_requested = serving = False

    def request_stop(*_):
        nonlocal stop_requested
        stop_requested = True
        if not serving:  # starting or ingesting: stop now (the finally below stops what was started), not once all is up
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        stack.start()
        catalog_addr = stack.env[CATALOG.address_env]
        if data_dir is not None:
            _ingest_unless_done(data_dir, catalog_addr, stack)
            _warn_unless_trained_on(data_dir, model_dir)
        print(
            "\nWhisperLite is up:\n"
            + "".join(
                f"  {s.name:<14} grpc {ports.address(s)}   metrics http://localhost:{ports.metrics_port(s)}/metrics\n"
                for s in SERVICES if s.speaks_grpc
            )
            + f"  {GATEWAY.name:<14} http://{ports.address(GATEWAY)}/ (judgement page, API docs at /docs, metrics at /metrics)\n"
            + f"  items in catalog: {catalog_item_count(catalog_addr, stack.security)}\n\n"
            "Try:\n"
            + _examples(user, ports, state_dir / "security" if secure else None)
            + "Ctrl-C stops the stack.",
            flush=True,
        )
        serving = True
        while not stop_requested:
            stack.restart_exited()
            time.sleep(0.5)
    finally:
        print("stopping the stack", flush=True)
        stack.stop()
