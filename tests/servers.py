"""Real service processes on loopback for tests: `whisperlite serve NAME` with free ports."""

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from whisperlite.core.client_security import PLAINTEXT, ClientSecurity
from whisperlite.core.clients.health import wait_until_serving
from whisperlite.shell.http_health import wait_until_http_serving
from whisperlite.v1 import catalog_pb2_grpc

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServiceProcess:
    name: str
    port: int
    metrics_port: int
    log_path: Path
    process: subprocess.Popen = field(repr=False)

    @property
    def address(self) -> str:
        return f"localhost:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://localhost:{self.metrics_port}/metrics"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def launch_service(
    name: str, log_dir: Path, *args: str, env: dict[str, str] | None = None, port: int | None = None
) -> ServiceProcess:
    """Starts `whisperlite serve name` without waiting for it (to test what happens while it starts)."""
    port, metrics_port = port or free_port(), free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}-{port}.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "whisperlite", "serve", name, "--port", str(port), "--metrics-port", str(metrics_port), *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=log_path.open("wb"),
    )
    return ServiceProcess(name, port, metrics_port, log_path, process)


def start_service(
    name: str,
    log_dir: Path,
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 180.0,
    port: int | None = None,
    security: ClientSecurity = PLAINTEXT,
) -> ServiceProcess:
    """Starts `whisperlite serve name` and waits until its health check (over TLS with `security`'s CA) says SERVING."""
    service = launch_service(name, log_dir, *args, env=env, port=port)
    if not wait_until_serving(service.address, timeout, alive=lambda: service.process.poll() is None, security=security):
        service.stop()
        raise RuntimeError(f"{name} did not become healthy:\n{service.log()[-3000:]}")
    return service


def start_catalog(
    log_dir: Path, data_dir: Path, encoder_address: str, *args: str, security: ClientSecurity = PLAINTEXT
) -> ServiceProcess:
    """A catalog with its own milvus-lite store in data_dir, validating vectors against that encoder."""
    return start_service(
        "catalog", log_dir, "--data-dir", str(data_dir), "--query-encoder-addr", encoder_address, *args, security=security
    )


def launch_gateway(log_dir: Path, ranker_address: str, catalog_address: str, state_dir: Path, *args: str) -> ServiceProcess:
    """Starts `whisperlite serve gateway` on a free loopback port without waiting (it serves /metrics on that port)."""
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"gateway-{port}.log"
    command = [
        sys.executable, "-m", "whisperlite", "serve", "gateway", "--host", "127.0.0.1", "--port", str(port),
        "--ranker-addr", ranker_address, "--catalog-addr", catalog_address, "--state-dir", str(state_dir), *args,
    ]
    process = subprocess.Popen(command, cwd=REPO, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=log_path.open("wb"))
    return ServiceProcess("gateway", port, port, log_path, process)


def start_gateway(log_dir: Path, ranker_address: str, catalog_address: str, state_dir: Path, *args: str, timeout: float = 120.0) -> ServiceProcess:
    """A gateway over those services, once its /health answers 200 (both upstreams SERVING)."""
    gateway = launch_gateway(log_dir, ranker_address, catalog_address, state_dir, *args)
    url = f"http://127.0.0.1:{gateway.port}/health"
    if not wait_until_http_serving(url, timeout, alive=lambda: gateway.process.poll() is None):
        gateway.stop()
        raise RuntimeError(f"gateway did not become healthy:\n{gateway.log()[-3000:]}")
    return gateway


@contextmanager
def serving_catalog(servicer: catalog_pb2_grpc.CatalogServiceServicer) -> Iterator[str]:
    """A stand-in catalog (a servicer that plays an older or failing catalog) on a loopback port; yields its address."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    catalog_pb2_grpc.add_CatalogServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.stop(None)
