"""gRPC health probing: `whisperlite health ADDR` (Docker HEALTHCHECK) and `whisperlite up` use it."""

import time
from collections.abc import Callable, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from whisperlite.core.channels import create_sync_channel
from whisperlite.core.client_security import PLAINTEXT, ClientSecurity
from whisperlite.core.topology import LIVENESS_SERVICE, RANKER_DEPENDENCIES, dependency_health_name

# What to ask a ranker to learn which dependency it waits for, liveness first (read by `dependencies_waited_for`).
RANKER_DEPENDENCY_HEALTH_NAMES = (LIVENESS_SERVICE, *(dependency_health_name(service) for service in RANKER_DEPENDENCIES))


def health_status(address: str, service: str = "", timeout_seconds: float = 2.0, security: ClientSecurity = PLAINTEXT) -> tuple[bool, str]:
    """Whether the service is SERVING, and why not: its status, or the call's failure (a refused TLS handshake, no
    answer). Health needs no token; a TLS server needs `security`'s CA (and a client certificate for mTLS)."""
    try:
        with create_sync_channel(address, security) as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_seconds
            )
    except grpc.RpcError as error:
        return False, f"{error.code().name}: {error.details()}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return response.status == health_pb2.HealthCheckResponse.SERVING, status


def is_serving(address: str, service: str = "", timeout_seconds: float = 2.0, security: ClientSecurity = PLAINTEXT) -> bool:
    return health_status(address, service, timeout_seconds, security)[0]


def poll_until(check: Callable[[], bool], timeout_seconds: float, alive=lambda: True, interval_seconds: float = 0.5) -> bool:
    """Calls `check` until it returns True or `timeout_seconds` pass; gives up early when `alive()`
    turns false (the process being waited for died)."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if check():
            return True
        if not alive():
            return False
        time.sleep(interval_seconds)
    return False


def wait_until_serving(
    address: str, timeout_seconds: float, alive=lambda: True, interval_seconds: float = 0.5, security: ClientSecurity = PLAINTEXT
) -> bool:
    """Polls the gRPC health service until SERVING (see poll_until)."""
    return poll_until(lambda: is_serving(address, security=security), timeout_seconds, alive, interval_seconds)


def dependencies_waited_for(statuses: Sequence[str]) -> dict[str, str]:
    """The ranker's dependencies by service name and their state as its own checks find them, from the statuses
    (SERVING, NOT_SERVING or an error code's name) of RANKER_DEPENDENCY_HEALTH_NAMES, in order. None while the ranker
    itself stops (draining turns every health name NOT_SERVING, its liveness too, which a dependency's outage never
    does); left out where the ranker reports none: while it starts (before its first check) or when it predates
    these names (NOT_FOUND)."""
    liveness, *states = statuses
    if liveness != "SERVING":
        return {}
    return {service.name: state for service, state in zip(RANKER_DEPENDENCIES, states) if state != grpc.StatusCode.NOT_FOUND.name}
