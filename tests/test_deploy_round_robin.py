"""The ranker's channel spreads calls over every encoder replica (client-side round_robin).

In docker-compose the ranker dials `query-encoder:50051` and Docker's DNS answers with one address
per replica; here three real query encoder processes listen on the same port of 127.0.0.1,
127.0.0.2 and 127.0.0.3, and `whisperlite.core.channels.create_channel` gets the same address list
as an `ipv4:` target, which feeds the same round_robin policy that a DNS answer does. Each
replica's own grpc_server_handled_total tells how many calls it served.
"""

import os
import signal
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from whisperlite.core.channels import create_channel
from tests.servers import REPO, free_port
from whisperlite.core.clients.health import wait_until_serving
from whisperlite.v1 import query_encoder_pb2, query_encoder_pb2_grpc

REPLICA_HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
SERVICE = "whisperlite.v1.QueryEncoderService"


@dataclass
class Replica:
    host: str
    port: int
    metrics_port: int
    log_path: Path
    process: subprocess.Popen

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def embed_calls(self) -> float:
        """Embed calls this process completed, from its own /metrics (bound to the replica's host, like its gRPC port)."""
        with urllib.request.urlopen(f"http://{self.host}:{self.metrics_port}/metrics", timeout=10) as response:
            text = response.read().decode()
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "grpc_server_handled_total"
            and sample.labels.get("grpc_service") == SERVICE
            and sample.labels.get("grpc_method") == "Embed"
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    """Three encoder processes on one port, as three containers behind one DNS name would be."""
    port = free_port()
    log_dir = tmp_path_factory.mktemp("encoder-replicas")
    started: list[Replica] = []
    try:
        for host in REPLICA_HOSTS:
            metrics_port = free_port()
            log_path = log_dir / f"query-encoder-{host}.log"
            process = subprocess.Popen(
                [sys.executable, "-m", "whisperlite", "serve", "query-encoder", "--host", host, "--port", str(port),
                 "--metrics-port", str(metrics_port), "--device", "cpu"],
                cwd=REPO, env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=log_path.open("wb"),
            )
            started.append(Replica(host, port, metrics_port, log_path, process))
        with ThreadPoolExecutor(len(started)) as pool:
            healthy = list(pool.map(lambda r: wait_until_serving(r.address, 180, alive=lambda: r.process.poll() is None), started))
        for replica, ok in zip(started, healthy):
            if not ok:
                pytest.fail(f"encoder on {replica.address} did not become healthy:\n{replica.log_path.read_text()[-3000:]}")
        yield started
    finally:
        for replica in started:
            replica.stop()


def multi_address_target(replicas) -> str:
    return "ipv4:" + ",".join(r.address for r in replicas)


async def embed_many(channel: grpc.aio.Channel, calls: int, tag: str) -> None:
    stub = query_encoder_pb2_grpc.QueryEncoderServiceStub(channel)
    await channel.channel_ready()
    for i in range(calls):
        response = await stub.Embed(query_encoder_pb2.EmbedRequest(texts=[f"{tag} request {i}"]), timeout=30)
        assert len(response.text_vectors) == 1


async def test_create_channel_spreads_calls_over_every_replica(replicas):
    before = [r.embed_calls() for r in replicas]
    channel = create_channel(multi_address_target(replicas))
    try:
        await embed_many(channel, 60, "round robin")
    finally:
        await channel.close()

    served = [r.embed_calls() - b for r, b in zip(replicas, before)]
    assert sum(served) == 60
    # round_robin deals calls in turn over the READY connections: 20 each once all three are up;
    # the first calls may land before every connection is ready.
    assert all(n >= 15 for n in served), f"calls per replica {dict(zip(REPLICA_HOSTS, served))}"


async def test_without_round_robin_one_replica_takes_every_call(replicas):
    """gRPC's default pick_first policy on the same target: what round_robin in create_channel prevents."""
    before = [r.embed_calls() for r in replicas]
    channel = grpc.aio.insecure_channel(multi_address_target(replicas))
    try:
        await embed_many(channel, 30, "pick first")
    finally:
        await channel.close()

    served = sorted(r.embed_calls() - b for r, b in zip(replicas, before))
    assert served == [0, 0, 30]
