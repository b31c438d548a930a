"""What TLS + bearer tokens cost on an idle Recommend: two stacks side by side in one run.

    .venv/bin/python benchmarks/security_overhead.py [-n 300]

Starts two copies of encoder -> catalog -> ranker on loopback: one plaintext without tokens, one
with TLS on every hop, mTLS between the services, tokens checked by every service and the service
token sent downstream. Both get the same items; calls alternate between the stacks one at a time
(so drift on a shared machine hits both alike) and are reported as median / p99 in ms with the
ratio of the secure stack to the plaintext one. "warm channel" reuses one connection (the usual
client); "new channel" opens one per call, so it includes the TLS handshake.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from whisperlite.core.channels import create_sync_channel
from whisperlite.core.client_security import PLAINTEXT, ClientSecurity
from whisperlite.core.clients.health import wait_until_serving
from whisperlite.core.clients.ranker import RankerClient
from whisperlite.shell.dev_certs import write_dev_pki
from whisperlite.v1 import catalog_pb2, catalog_pb2_grpc, common_pb2

QUERIES = ["black leather boots", "a light dress for a summer wedding", "men's automatic watch", "warm winter coat", "running shoes"]
TITLES = [
    "Black leather ankle boots", "Brown suede chelsea boots", "Floral summer dress", "Linen maxi dress for a beach wedding",
    "Automatic dive watch", "Quartz watch with leather strap", "Down winter coat with hood", "Wool pea coat",
    "Mesh running shoes", "Trail running shoes", "Cotton t-shirt", "Slim fit jeans",
]  # fmt: skip


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class StackProcesses:
    def __init__(self, work: Path, pki: Path | None):
        self.work, self.pki, self.processes = work, pki, []
        self.probe = ClientSecurity(ca_file=str(pki / "ca.pem"), cert_file=str(pki / "client.pem"), key_file=str(pki / "client-key.pem")) if pki else PLAINTEXT

    def _flags(self, name: str, mtls: bool) -> list[str]:
        if self.pki is None:
            return []
        pki = self.pki
        flags = ["--tls-cert-file", str(pki / f"{name}.pem"), "--tls-key-file", str(pki / f"{name}-key.pem"), "--auth-tokens-file", str(pki / "tokens.txt")]
        if name != "query-encoder":
            flags += ["--tls-ca-file", str(pki / "ca.pem"), "--downstream-token-file", str(pki / "service.token")]
        return flags + (["--tls-client-ca-file", str(pki / "ca.pem")] if mtls else [])

    def start(self, name: str, *args: str, mtls: bool = True) -> str:
        port = _port()
        log = (self.work / f"{name}-{port}.log").open("wb")
        command = [sys.executable, "-m", "whisperlite", "serve", name, "--port", str(port), "--metrics-port", "0", *self._flags(name, mtls), *args]
        process = subprocess.Popen(command, env={**os.environ, "LOG_LEVEL": "WARNING"}, stdout=subprocess.DEVNULL, stderr=log)
        self.processes.append(process)
        address = f"localhost:{port}"
        security = self.probe if mtls else ClientSecurity(ca_file=self.probe.ca_file)
        if not wait_until_serving(address, 300, alive=lambda: process.poll() is None, security=security):
            raise SystemExit(f"{name} did not start; see {log.name}")
        return address

    def up(self) -> str:
        encoder = self.start("query-encoder")
        catalog = self.start("catalog", "--data-dir", str(self.work / "catalog"), "--query-encoder-addr", encoder)
        writer = ClientSecurity(token_file=str(self.pki / "ingest.token"), **_cert_fields(self.probe)) if self.pki else PLAINTEXT
        with create_sync_channel(catalog, writer) as channel:
            items = [common_pb2.Item(item_id=f"item-{i}", title=title) for i, title in enumerate(TITLES)]
            catalog_pb2_grpc.CatalogServiceStub(channel).UpsertItems(catalog_pb2.UpsertItemsRequest(items=items), metadata=writer.metadata(), timeout=120)
        model_dir = self.work / "no-model"
        model_dir.mkdir(exist_ok=True)
        return self.start("ranker", "--model-dir", str(model_dir), "--query-encoder-addr", encoder, "--catalog-addr", catalog, mtls=False)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.send_signal(signal.SIGTERM)
        for process in self.processes:
            process.wait(30)


def _cert_fields(security: ClientSecurity) -> dict[str, str]:
    return {"ca_file": security.ca_file, "cert_file": security.cert_file, "key_file": security.key_file}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=300, help="calls per row and stack")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="whisperlite-security-bench-") as tmp:
        work = Path(tmp)
        pki = write_dev_pki(work / "pki")
        (work / "plain").mkdir()
        (work / "secure").mkdir()
        stacks = {"plaintext": StackProcesses(work / "plain", None), "TLS + tokens": StackProcesses(work / "secure", pki)}
        try:
            rankers = {name: stack.up() for name, stack in stacks.items()}
            shopper = ClientSecurity(ca_file=str(pki / "ca.pem"), token_file=str(pki / "shopper.token"))
            clients = {"plaintext": PLAINTEXT, "TLS + tokens": shopper}
            samples: dict[tuple[str, str], list[float]] = {}
            warm = {name: RankerClient(rankers[name], timeout_seconds=30, security=clients[name]) for name in stacks}
            for i in range(20):  # warm-up: connections, the encoder cache, lazy imports
                for client in warm.values():
                    client.recommend(user_id="", query=QUERIES[i % len(QUERIES)], top_k=10)
            for i in range(args.n):
                for name, client in warm.items():
                    start = time.perf_counter()
                    client.recommend(user_id="", query=QUERIES[i % len(QUERIES)], top_k=10)
                    samples.setdefault(("warm channel", name), []).append((time.perf_counter() - start) * 1e3)
            for client in warm.values():
                client.close()
            for i in range(max(args.n // 3, 10)):
                for name in stacks:
                    start = time.perf_counter()
                    with RankerClient(rankers[name], timeout_seconds=30, security=clients[name]) as client:
                        client.recommend(user_id="", query=QUERIES[i % len(QUERIES)], top_k=10)
                    samples.setdefault(("new channel per call", name), []).append((time.perf_counter() - start) * 1e3)
        finally:
            for stack in stacks.values():
                stack.stop()
    print(f"idle Recommend (text-only path, top_k 10, {len(TITLES)} items), calls alternating between the two stacks\n")
    print("| client | plaintext median ms | plaintext p99 ms | TLS + tokens median ms | TLS + tokens p99 ms | median ratio | p99 ratio |")
    print("|---|---|---|---|---|---|---|")
    for row in ("warm channel", "new channel per call"):
        plain, secure = samples[(row, "plaintext")], samples[(row, "TLS + tokens")]
        pm, sm = statistics.median(plain), statistics.median(secure)
        pp, sp = np.percentile(plain, 99), np.percentile(secure, 99)
        print(f"| {row} (n={len(plain)}) | {pm:.2f} | {pp:.2f} | {sm:.2f} | {sp:.2f} | {sm / pm:.2f} | {sp / pp:.2f} |")


if __name__ == "__main__":
    main()
