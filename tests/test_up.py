"""`whisperlite up` as a user runs it: the four processes on their ports, a service that dies
is started again, and Ctrl-C stops everything."""

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

from tests.servers import REPO
from whisperlite.core.clients.health import is_serving
from whisperlite.core.topology import CATALOG, RANKER, SERVICES
from whisperlite.core.dataset import data_hash
from whisperlite.shell import up as up_module
from whisperlite.shell.up import LOCK_FILE, StackPorts, _warn_unless_trained_on, lock_state_dir


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not within {timeout} s")
        time.sleep(0.2)


def service_process(up: subprocess.Popen, name: str) -> psutil.Process:
    (child,) = [child for child in psutil.Process(up.pid).children() if f"serve {name} " in " ".join(child.cmdline())]
    return child


def test_a_service_that_dies_is_started_again_and_the_stack_serves_on(tmp_path):
    """Run with --port-offset beside whatever holds the default ports (here a squatter on the catalog's, when free)."""
    offset = 1000
    stack = StackPorts(offset)
    ports = [port for port, _ in stack.all_ports()]
    if not all(port_free(port) for port in ports):
        pytest.skip(f"`whisperlite up --port-offset {offset}` needs the ports {ports}, and one is taken")
    log = (tmp_path / "up.log").open("w")
    with contextlib.ExitStack() as held:
        if port_free(CATALOG.port):
            squatter = held.enter_context(socket.socket())
            squatter.bind(("127.0.0.1", CATALOG.port))
            squatter.listen()
        up = subprocess.Popen(
            [sys.executable, "-m", "whisperlite", "up", "--state-dir", str(tmp_path / "state"), "--model-dir", str(tmp_path / "no-model"),
             "--port-offset", str(offset)],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            wait_for(lambda: "WhisperLite is up" in (tmp_path / "up.log").read_text(), 300, "the stack serving")
            assert f"grpc {stack.address(RANKER)}" in (tmp_path / "up.log").read_text()
            assert is_serving(stack.address(CATALOG), timeout_seconds=5)
            catalog = service_process(up, "catalog")
            catalog.kill()
            wait_for(lambda: "catalog exited with code -9; starting it again" in (tmp_path / "up.log").read_text(), 10, "the restart")
            assert service_process(up, "catalog").pid != catalog.pid
            wait_for(lambda: is_serving(stack.address(CATALOG), timeout_seconds=1), 120, "the new catalog serving")
            wait_for(lambda: is_serving(stack.address(RANKER), timeout_seconds=1), 30, "the ranker serving again")  # it follows its catalog
            assert up.poll() is None
        finally:
            up.send_signal(signal.SIGINT)
            code = up.wait(60)
            log.close()
    assert code == 0, (tmp_path / "up.log").read_text()[-3000:]
    assert all(port_free(port) for port in ports)  # every service stopped with it


def _alive(process: psutil.Process) -> bool:
    return process.is_running() and process.status() != psutil.STATUS_ZOMBIE


def _launch_up(tmp_path) -> tuple[subprocess.Popen, object]:
    log = (tmp_path / "up.log").open("w")
    up = subprocess.Popen(
        [sys.executable, "-m", "whisperlite", "up", "--state-dir", str(tmp_path / "state"), "--model-dir", str(tmp_path / "no-model")],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
    )
    return up, log


def test_a_taken_port_ctrl_c_while_starting_and_a_killed_up(tmp_path):
    """A foreign process on a port used to pass for the service (and the failure blamed the next one); Ctrl-C while
    starting waited for the whole stack and its ingest; a SIGKILLed `up` left every service running on its port."""
    ports = [port for spec in SERVICES for port in {spec.port, spec.metrics_port}]
    if not all(port_free(port) for port in ports):
        pytest.skip(f"`whisperlite up` needs its fixed ports {ports}, and one is taken (a stack already running?)")
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", CATALOG.port))
        squatter.listen()
        up, log = _launch_up(tmp_path)
        assert up.wait(60) == 1
    log.close()
    assert f"port {CATALOG.port} (catalog) is taken by another process" in (tmp_path / "up.log").read_text()
    assert "--port-offset" in (tmp_path / "up.log").read_text()

    up, log = _launch_up(tmp_path)
    wait_for(lambda: "starting catalog" in (tmp_path / "up.log").read_text(), 120, "the catalog starting")
    up.send_signal(signal.SIGINT)
    assert up.wait(60) == 130
    log.close()
    assert "WhisperLite is up" not in (tmp_path / "up.log").read_text()
    wait_for(lambda: all(port_free(port) for port in ports), 30, "every started service stopped")

    up, log = _launch_up(tmp_path)
    services: list[psutil.Process] = []
    try:
        wait_for(lambda: "starting ranker" in (tmp_path / "up.log").read_text(), 300, "the ranker starting")
        services = psutil.Process(up.pid).children()
        up.kill()
        up.wait(10)
        wait_for(lambda: not any(_alive(service) for service in services), 60, "the services ending with it")
    finally:
        log.close()
        for service in services:  # only what this `up` started: other tests' services are children of pytest too
            if _alive(service):
                service.kill()
    wait_for(lambda: all(port_free(port) for port in ports), 30, "the ports free again")


def test_a_catalog_that_dies_during_the_first_ingest_is_started_again_and_the_ingest_completes(tmp_path):
    """`up` started services again only once the ingest was over: a catalog killed mid-ingest stayed down, and each of
    the ingest's retries waited 300 s for a connection in silence."""
    offset = 1100
    _skip_unless_free(offset)
    items = 6000
    data = _dataset(tmp_path / "data", items)
    log_path = tmp_path / "up.log"
    log = log_path.open("w")
    up = subprocess.Popen(
        [sys.executable, "-m", "whisperlite", "up", "--data", str(data), "--state-dir", str(tmp_path / "state"),
         "--model-dir", str(tmp_path / "no-model"), "--port-offset", str(offset)],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for(lambda: "catalog is empty: ingesting" in log_path.read_text(), 300, "the ingest starting")
        time.sleep(1.0)
        assert "WhisperLite is up" not in log_path.read_text(), "the ingest ended before the catalog could be killed"
        service_process(up, "catalog").kill()
        wait_for(lambda: "catalog exited with code -9; starting it again" in log_path.read_text(), 10, "the catalog's restart")
        wait_for(lambda: "WhisperLite is up" in log_path.read_text(), 600, "the ingest completing")
        text = log_path.read_text()
        assert f"items in catalog: {items}" in text, text[-3000:]
        assert "ingest: resumed from item" in text, text[-3000:]
    finally:
        up.send_signal(signal.SIGINT)
        code = up.wait(60)
        log.close()
    assert code == 0, log_path.read_text()[-3000:]


def test_one_stack_per_state_dir_and_a_killed_stack_does_not_block_the_next(tmp_path):
    """A second `up` on a running stack's state dir started its services anyway: its catalog failed on the store the
    first one holds (milvus-lite lets one process open it) and it printed the tail of the log both stacks write to."""
    offset, other_offset = 1300, 1400
    _skip_unless_free(offset)
    _skip_unless_free(other_offset)
    state = tmp_path / "state"

    def command(state_dir, at: int) -> list[str]:
        return [sys.executable, "-m", "whisperlite", "up", "--state-dir", str(state_dir), "--model-dir", str(tmp_path / "no-model"),
                "--port-offset", str(at)]  # fmt: skip

    def run_up(state_dir, at: int) -> subprocess.CompletedProcess:
        return subprocess.run(command(state_dir, at), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)

    first_log, next_log = tmp_path / "first.log", tmp_path / "next.log"
    with first_log.open("w") as log:
        first = subprocess.Popen(command(state, offset), cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "WhisperLite is up" in first_log.read_text(), 300, "the first stack serving")
        for at in (other_offset, offset):  # the state dir is checked before the ports
            second = run_up(state, at)
            assert second.returncode == 1, second.stdout
            assert f"another `whisperlite up` (pid {first.pid}) runs on the state dir {state}: stop it" in second.stdout, second.stdout
            assert f"`kill {first.pid}`" in second.stdout and "starting" not in second.stdout, second.stdout
        assert all(port_free(port) for port, _ in StackPorts(other_offset).all_ports())
        beside = run_up(tmp_path / "other-state", offset)  # another state dir, the same ports: the port is named
        port, spec = StackPorts(offset).all_ports()[0]
        assert beside.returncode == 1 and f"port {port} ({spec.name}) is taken by another process" in beside.stdout, beside.stdout
        assert first.poll() is None and is_serving(StackPorts(offset).address(CATALOG), timeout_seconds=5)

        first.kill()  # its lock stays in the state dir, its services stop on their own
        first.wait(10)
        with next_log.open("w") as log:
            after = subprocess.Popen(command(state, offset), cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: "WhisperLite is up" in next_log.read_text() or after.poll() is not None, 300, "the next stack serving")
            assert "WhisperLite is up" in next_log.read_text(), next_log.read_text()[-3000:]
        finally:
            after.send_signal(signal.SIGINT)
            code = after.wait(60)
        assert code == 0, next_log.read_text()[-3000:]
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGINT)
            first.wait(60)


def test_a_start_waits_for_the_services_of_a_killed_stack(tmp_path, capsys, monkeypatch):
    """They hold the state dir's lock until they end (the catalog the store too), a moment after their `up` is gone:
    the next start waits for them, and names the lock's holders when they do not end."""
    state = tmp_path / "state"
    state.mkdir()
    killed_up = subprocess.Popen([sys.executable, "-c", ""])
    killed_up.wait()  # its pid names no process now

    def services_holding_the_lock(seconds: float) -> subprocess.Popen:
        (state / LOCK_FILE).write_text(f"{killed_up.pid}\n")
        held = os.open(state / LOCK_FILE, os.O_RDWR)
        fcntl.flock(held, fcntl.LOCK_EX)
        try:
            return subprocess.Popen(["sleep", str(seconds)], pass_fds=(held,))
        finally:
            os.close(held)

    service = services_holding_the_lock(1.5)
    started = time.monotonic()
    lock = lock_state_dir(state)
    try:
        assert time.monotonic() - started > 1.0
        assert f"(pid {killed_up.pid}) is gone: waiting for its services to stop" in capsys.readouterr().out
        assert (state / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    finally:
        os.close(lock)
        service.wait()

    monkeypatch.setattr(up_module, "STOPPING_STACK_WAIT_SECONDS", 1.0)
    service = services_holding_the_lock(60)
    try:
        with pytest.raises(SystemExit, match=rf"still held 1 s after its `whisperlite up` \(pid {killed_up.pid}\) ended: `fuser -v"):
            lock_state_dir(state)
    finally:
        service.kill()
        service.wait()


def _skip_unless_free(offset: int) -> None:
    if not all(port_free(port) for port, _ in StackPorts(offset).all_ports()):
        pytest.skip(f"`whisperlite up --port-offset {offset}` needs its ports, and one is taken")


def _dataset(data, items: int):
    data.mkdir()
    colours, garments = ["red", "blue", "green", "black"], ["scarf", "coat", "boot", "dress", "hat"]
    rows = [f"item-{i},a {colours[i % 4]} {garments[i % 5]} number {i},,{garments[i % 5]},\n" for i in range(items)]
    (data / "items.csv").write_text("item_id,title,text,category,image_path\n" + "".join(rows))
    return data


def test_a_stack_stopped_during_its_first_ingest_finishes_it_at_the_next_start(tmp_path):
    """Only an empty catalog was ingested: a stack stopped midway came back up with part of the dataset, silently."""
    offset = 1200
    _skip_unless_free(offset)
    items = 6000
    data = _dataset(tmp_path / "data", items)
    command = [sys.executable, "-m", "whisperlite", "up", "--data", str(data), "--state-dir", str(tmp_path / "state"),
               "--model-dir", str(tmp_path / "no-model"), "--port-offset", str(offset)]

    def run_until(line: str, stop_after: float):
        log_path = tmp_path / f"up-{len(list(tmp_path.glob('up-*.log')))}.log"
        with log_path.open("w") as log:
            up = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
            try:
                wait_for(lambda: line in log_path.read_text(), 600, repr(line))
                time.sleep(stop_after)
            finally:
                up.send_signal(signal.SIGTERM)
                up.wait(60)
        return log_path.read_text()

    first = run_until("catalog is empty: ingesting", 6.0)  # stopped some batches in
    assert "WhisperLite is up" not in first, "the ingest ended before the stack could be stopped"
    second = run_until("WhisperLite is up", 0.0)
    assert "no finished ingest of this" in second and "ingesting the items it lacks" in second, second[-3000:]
    added = int(second.split("ingest finished: ")[1].split(" items added")[0].replace(",", ""))
    assert 0 < added < items, second[-3000:]
    assert f"items in catalog: {items}\n" in second, second[-3000:]
    third = run_until("WhisperLite is up", 0.0)
    assert "ingest" not in third.split("WhisperLite is up")[0], third[-3000:]  # finished: nothing to do


def test_up_warns_when_the_newest_model_was_trained_on_another_dataset(tmp_path, capsys):
    """`train --out models` for each dataset puts their models side by side; `up` served the newest, trained on another
    dataset, and every shopper got text-only results without a word."""
    data = _dataset(tmp_path / "data", 3)
    (data / "interactions.csv").write_text("user_id,item_id,timestamp\nu1,item-0,1\n")
    version = tmp_path / "models" / "other-v1"
    version.mkdir(parents=True)
    manifest = {"version": "other-v1", "encoder": "e", "created": "2026-01-01", "dataset": "other_shop", "data_hash": "0123456789abcdef"}
    (version / "manifest.json").write_text(json.dumps(manifest))
    _warn_unless_trained_on(data, tmp_path / "models")
    out = capsys.readouterr().out
    assert "warning: the newest model under" in out and "(other-v1) was trained on other_shop" in out, out
    (version / "manifest.json").write_text(json.dumps({**manifest, "data_hash": data_hash(data)}))
    _warn_unless_trained_on(data, tmp_path / "models")
    assert capsys.readouterr().out == ""
