"""A service address with a port outside 1-65535 is refused naming its flag, before anything is dialled: gRPC takes
the port modulo 65536, so `catalog count --catalog localhost:116288` counted the catalog on 50752 and exited 0."""

import importlib
import socket

import pytest

from tests.test_cli_arguments import whisperlite
from whisperlite.core.topology import CATALOG, GATEWAY, RANKER


@pytest.fixture
def listener():
    """A port that would answer a call dialled to it: each case below wraps to it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        sock.setblocking(False)
        yield sock


@pytest.mark.parametrize(
    ("command", "flag"),
    [
        (["catalog", "count", "--catalog"], "--catalog"),
        (["catalog", "get", "x", "--catalog"], "--catalog"),
        (["ingest", "--data", ".", "--catalog"], "--catalog"),
        (["recommend", "--query", "boots", "--ranker"], "--ranker"),
        (["model", "list", "--ranker"], "--ranker"),
    ],
)
@pytest.mark.parametrize("wrap", [65536, -65536], ids=["past-65535", "negative"])
def test_a_wrapped_port_is_refused_naming_the_flag_and_its_port_is_never_dialled(listener, command, flag, wrap):
    address = f"127.0.0.1:{listener.getsockname()[1] + wrap}"
    done = whisperlite(*command, address)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip() == f"{flag}: {address!r}: expected host:port with a port from 1 to 65535"
    with pytest.raises(BlockingIOError):  # nothing connected
        listener.accept()


@pytest.mark.parametrize("address", ["localhost", "localhost:", "localhost:0", "localhost:http", "localhost:٥٠٠٥٢", ""])
def test_an_address_without_a_port_from_1_to_65535_is_refused(address):
    done = whisperlite("catalog", "count", "--catalog", address)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip() == f"--catalog: {address!r}: expected host:port with a port from 1 to 65535"


@pytest.mark.parametrize(
    ("service", "args", "message"),
    [
        (CATALOG, ["--port", "99999"], "argument --port: expected a port from 0 to 65535, got 99999"),
        (CATALOG, ["--metrics-port", "-1"], "argument --metrics-port: expected a port from 0 to 65535, got -1"),
        (CATALOG, ["--query-encoder-addr", "localhost:99999"], "argument --query-encoder-addr: 'localhost:99999': expected host:port with a port from 1 to 65535"),
        (GATEWAY, ["--port", "65536"], "argument --port: expected a port from 0 to 65535, got 65536"),
        (GATEWAY, ["--ranker-addr", "localhost:-14784"], "argument --ranker-addr: 'localhost:-14784': expected host:port with a port from 1 to 65535"),
        (GATEWAY, ["--catalog-addr", "localhost"], "argument --catalog-addr: 'localhost': expected host:port with a port from 1 to 65535"),
        (RANKER, ["--catalog-addr", "localhost:116288"], "argument --catalog-addr: 'localhost:116288': expected host:port with a port from 1 to 65535"),
        (RANKER, ["--query-encoder-addr", "localhost:0"], "argument --query-encoder-addr: 'localhost:0': expected host:port with a port from 1 to 65535"),
    ],
)
def test_a_service_refuses_a_port_it_would_wrap_naming_the_flag(service, args, message, capsys):
    """grpc bound "127.0.0.1:99999" to 34463, and dialled it there."""
    with pytest.raises(SystemExit) as stopped:
        importlib.import_module(service.module).build_parser().parse_args(args)
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip().endswith(f"error: {message}")


def test_a_service_takes_port_0_and_an_empty_encoder_address():
    """0: any free port (the tests' own servers), or /metrics off; an empty --query-encoder-addr: vectors required."""
    args = importlib.import_module(CATALOG.module).build_parser().parse_args(["--port", "0", "--metrics-port", "0", "--query-encoder-addr", ""])
    assert (args.port, args.metrics_port, args.query_encoder_addr) == (0, 0, "")
