"""Client channels to downstream services."""

import json

import grpc

from whisperlite.core.client_security import PLAINTEXT, BearerTokenInterceptor, ClientSecurity
from whisperlite.core.topology import DEFAULT_MAX_MESSAGE_BYTES, GRPC_SERVICES

# Every WhisperLite RPC is idempotent (reads, and upserts/deletes keyed by item id), so a call that
# found its server UNAVAILABLE (restarting, still loading, a replica going away) is sent again after
# a short backoff, as is one the server CANCELLED: a server stopping (SIGTERM) ends so the calls it
# has received but not yet started (this client's own cancellations are never retried).
# RESOURCE_EXHAUSTED is not retried: a shedding server must not get more load.
# Throttling stops retries once most calls fail, so a dead dependency is not hammered.
RETRY_POLICY = {
    "maxAttempts": 4,
    "initialBackoff": "0.05s",
    "maxBackoff": "0.4s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"],
}
# Reconnect quickly after a dependency restarts: grpc's defaults (1 s, growing to 120 s) left the
# ranker failing for seconds after its dependency was SERVING again. Servers bind their port before
# they load (and report NOT_SERVING until then), so the channel is connected by the time they serve.
INITIAL_RECONNECT_BACKOFF_MS, MAX_RECONNECT_BACKOFF_MS = 100, 400

# round_robin over every address DNS returns lets a scaled service (several replicas behind one
# name) share the load; with one address it behaves like pick_first.
_SERVICE_CONFIG = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [{"name": [{"service": service.grpc_service} for service in GRPC_SERVICES], "retryPolicy": RETRY_POLICY}],
        "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.5},
    }
)


def create_channel(
    address: str, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, security: ClientSecurity = PLAINTEXT
) -> grpc.aio.Channel:
    """A channel over TLS when `security` names a CA, sending its bearer token (if any) with every call."""
    target = address if "://" in address or address.startswith(("dns:", "unix:", "ipv4:", "ipv6:")) else f"dns:///{address}"
    return _open_channel(
        target,
        security,
        options=[
            ("grpc.service_config", _SERVICE_CONFIG),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            # DNS is re-resolved on reconnect, at most this often; servers cap connection age
            # (whisperlite.services.common.server) so clients reconnect and find replicas added by scaling up.
            ("grpc.dns_min_time_between_resolutions_ms", 10_000),
            ("grpc.enable_retries", 1),
            ("grpc.initial_reconnect_backoff_ms", INITIAL_RECONNECT_BACKOFF_MS),
            ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
        ],
    )


def _open_channel(target: str, security: ClientSecurity, options: list) -> grpc.aio.Channel:
    interceptors = [BearerTokenInterceptor(security)] if security.sends_token else None
    credentials = security.channel_credentials()
    if credentials is None:
        return grpc.aio.insecure_channel(target, options=options, interceptors=interceptors)
    return grpc.aio.secure_channel(target, credentials, options=options, interceptors=interceptors)


def create_sync_channel(address: str, security: ClientSecurity = PLAINTEXT, options: list | None = None) -> grpc.Channel:
    """A blocking channel (the CLI, `RankerClient`, health probes), over TLS when `security` names a CA;
    its token goes in each call's metadata (`security.metadata()`)."""
    credentials = security.channel_credentials()
    if credentials is None:
        return grpc.insecure_channel(address, options=options)
    return grpc.secure_channel(address, credentials, options=options)
