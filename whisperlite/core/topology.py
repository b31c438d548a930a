"""The service topology: names, default ports, env prefixes and server modules, written once.

Everything that starts, dials or configures a service (its `server.py`, `whisperlite up`, the CLI,
the clients, tests of docker-compose and the deploy files) reads it from here.
"""

from __future__ import annotations

from dataclasses import dataclass

# Largest gRPC message a service accepts or sends and a client receives: 300 items with text, or
# 200 candidates with 512-d vectors, fit; grpc's own 4 MB default does not.
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# Request metadata a service takes (headers: the token, trace context, request id, gRPC's own), past it refused.
MAX_METADATA_BYTES = 16 * 1024
MAX_PORT = 65535
# gRPC target names other than host:port (https://github.com/grpc/grpc/blob/master/doc/naming.md): no port of ours to check
GRPC_TARGET_SCHEMES = ("unix:", "unix-abstract:", "vsock:", "dns:", "ipv4:", "ipv6:")


def check_address(address: str) -> str:
    """A service address as given, or ValueError when it is no host:port with a port from 1 to MAX_PORT. gRPC takes
    the port modulo 65536 and dials that: "localhost:116288" reached a catalog on 50752, "localhost:-14784" too.
    Target names of another scheme (unix:/run/catalog.sock, dns:///host:port) are gRPC's to read and pass as given."""
    if address.startswith(GRPC_TARGET_SCHEMES) or "/" in address:
        return address
    port = address.rpartition(":")[2] if ":" in address else ""
    if not (port.isascii() and port.isdigit() and 0 < int(port) <= MAX_PORT):
        raise ValueError(f"{address!r}: expected host:port with a port from 1 to {MAX_PORT}")
    return address


@dataclass(frozen=True)
class Service:
    name: str  # `whisperlite serve NAME`, the docker-compose service and the log's "service" field
    grpc_service: str  # full protobuf service name (health checks, reflection, metrics labels); "" for HTTP-only
    module: str  # the module whose main() serves it
    env_prefix: str  # its flags default from PREFIX_* environment variables
    port: int  # default gRPC port
    metrics_port: int  # default Prometheus /metrics port

    @property
    def speaks_grpc(self) -> bool:
        """False for the HTTP gateway: it has no gRPC health service and serves /metrics on its own port."""
        return bool(self.grpc_service)

    @property
    def address_env(self) -> str:
        """The env var other processes read this service's address from (e.g. CATALOG_ADDR)."""
        return f"{self.env_prefix}_ADDR"

    @property
    def local_address(self) -> str:
        return f"localhost:{self.port}"


QUERY_ENCODER = Service(
    "query-encoder", "whisperlite.v1.QueryEncoderService", "whisperlite.services.query_encoder.server", "QUERY_ENCODER", 50051, 9101
)
CATALOG = Service("catalog", "whisperlite.v1.CatalogService", "whisperlite.services.catalog.server", "CATALOG", 50052, 9102)
RANKER = Service("ranker", "whisperlite.v1.RankerService", "whisperlite.services.ranker.server", "RANKER", 50050, 9100)
# The HTTP/JSON front over the ranker and the catalog; /metrics is served on its HTTP port.
GATEWAY = Service("gateway", "", "whisperlite.services.gateway.server", "GATEWAY", 8080, 8080)

# In start-up order: each one's dependencies come before it.
SERVICES = (QUERY_ENCODER, CATALOG, RANKER, GATEWAY)
BY_NAME = {service.name: service for service in SERVICES}
# The gRPC services (health-checked, TLS-served, scaled in Kubernetes); the gateway fronts them over HTTP.
GRPC_SERVICES = tuple(service for service in SERVICES if service.speaks_grpc)
# The health name of the process itself: SERVING from the moment it listens until shutdown, whatever its
# model, store or dependencies do. Orchestrators' liveness probes ask for it, so a service that reports a
# dependency's outage ("" and its own names NOT_SERVING: take it out of rotation) is not restarted for it.
LIVENESS_SERVICE = "liveness"
# What the ranker calls; its health follows theirs.
RANKER_DEPENDENCIES = (QUERY_ENCODER, CATALOG)


def dependency_health_name(dependency: Service) -> str:
    """The health name under which a service reports a dependency as its own checks find it ("dependency/catalog" on
    the ranker): SERVING or NOT_SERVING, so whoever sees the ranker NOT_SERVING can tell which dependency is down."""
    return f"dependency/{dependency.name}"
