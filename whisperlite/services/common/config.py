"""Configuration from flags whose defaults come from environment variables (12-factor style)."""

import argparse
import os

from whisperlite.core.topology import DEFAULT_MAX_MESSAGE_BYTES, Service
from whisperlite.services.common.admission import AdmissionLimits


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"environment variable {name} must be an integer, got {value!r}") from None


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return float(value)
    except ValueError:
        raise SystemExit(f"environment variable {name} must be a number, got {value!r}") from None


def add_server_flags(parser: argparse.ArgumentParser, service: Service) -> None:
    """Adds the flags every service shares; the service's env prefix namespaces the env vars (e.g. CATALOG_PORT)."""
    prefix, port, metrics_port = service.env_prefix, service.port, service.metrics_port
    group = parser.add_argument_group("server")
    group.add_argument("--host", default=env_str(f"{prefix}_HOST", "[::]"), help=f"bind address (env {prefix}_HOST)")
    group.add_argument("--port", type=int, default=env_int(f"{prefix}_PORT", port), help=f"gRPC port (env {prefix}_PORT)")
    group.add_argument(
        "--metrics-port",
        type=int,
        default=env_int(f"{prefix}_METRICS_PORT", metrics_port),
        help=f"Prometheus /metrics HTTP port, 0 disables it (env {prefix}_METRICS_PORT)",
    )
    group.add_argument(
        "--grace-seconds",
        type=float,
        default=env_float(f"{prefix}_GRACE_SECONDS", 10.0),
        help=f"how long in-flight calls may finish after SIGTERM (env {prefix}_GRACE_SECONDS)",
    )
    group.add_argument(
        "--max-message-bytes",
        type=int,
        default=env_int(f"{prefix}_MAX_MESSAGE_BYTES", DEFAULT_MAX_MESSAGE_BYTES),
        help=f"largest gRPC message accepted or sent (env {prefix}_MAX_MESSAGE_BYTES)",
    )
    admission = AdmissionLimits()
    group.add_argument(
        "--max-in-flight",
        type=int,
        default=env_int(f"{prefix}_MAX_IN_FLIGHT", admission.max_in_flight),
        help=f"most calls handled at once; more wait in the queue (env {prefix}_MAX_IN_FLIGHT)",
    )
    group.add_argument(
        "--max-queued",
        type=int,
        default=env_int(f"{prefix}_MAX_QUEUED", admission.max_queued),
        help=f"most calls waiting for an in-flight slot; more are refused at once with RESOURCE_EXHAUSTED (env {prefix}_MAX_QUEUED)",
    )
    group.add_argument(
        "--max-queue-wait-ms",
        type=float,
        default=env_float(f"{prefix}_MAX_QUEUE_WAIT_MS", admission.max_queue_wait_seconds * 1e3),
        help=f"longest a queued call waits for a slot before RESOURCE_EXHAUSTED (env {prefix}_MAX_QUEUE_WAIT_MS)",
    )
    group.add_argument("--log-level", default=env_str("LOG_LEVEL", "INFO"), help="log level (env LOG_LEVEL)")


def admission_limits(args: argparse.Namespace) -> AdmissionLimits:
    """The admission limits of add_server_flags' flags; a bad value stops start-up with the reason."""
    try:
        return AdmissionLimits(args.max_in_flight, args.max_queued, args.max_queue_wait_ms / 1e3)
    except ValueError as error:
        raise SystemExit(f"admission: {error}") from None
