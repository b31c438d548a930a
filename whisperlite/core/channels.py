"""Client channels to downstream services."""

import json

import grpc

from whisperlite.core.topology import DEFAULT_MAX_MESSAGE_BYTES

# round_robin over every address DNS returns lets a scaled service (several replicas behind one
# name) share the load; with one address it behaves like pick_first.
_SERVICE_CONFIG = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})


def create_channel(address: str, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> grpc.aio.Channel:
    target = address if "://" in address or address.startswith(("dns:", "unix:", "ipv4:", "ipv6:")) else f"dns:///{address}"
    return grpc.aio.insecure_channel(
        target,
        options=[
            ("grpc.service_config", _SERVICE_CONFIG),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            # DNS is re-resolved on reconnect, at most this often; servers cap connection age
            # (whisperlite.services.common.server) so clients reconnect and find replicas added by scaling up.
            ("grpc.dns_min_time_between_resolutions_ms", 10_000),
        ],
    )
