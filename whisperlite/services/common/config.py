"""Configuration from flags whose defaults come from environment variables (12-factor style)."""

import argparse
import os

from whisperlite.core.client_security import ENV_CA_FILE, ClientSecurity
from whisperlite.core.topology import DEFAULT_MAX_MESSAGE_BYTES, MAX_PORT, Service, check_address
from whisperlite.services.common.admission import AdmissionLimits
from whisperlite.services.common.probing import ProbeSettings
from whisperlite.services.common.tls import check_certificate_file


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


def env_port(name: str, default: int) -> int:
    """A port flag's default from the environment: 0 (any free port, or off) to MAX_PORT. gRPC binds a larger one
    modulo 65536 (CATALOG_PORT=99999 listened on 34463)."""
    value = env_int(name, default)
    if not 0 <= value <= MAX_PORT:
        raise SystemExit(f"environment variable {name} must be a port from 0 to {MAX_PORT}, got {value}")
    return value


def port_number(text: str) -> int:
    """An argparse type: a port to listen on, 0 to MAX_PORT (0: any free one, or off where the flag says so), refused
    by argparse naming the flag; `--port 99999` listened on 34463."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to {MAX_PORT}, got {text!r}") from None
    if not 0 <= value <= MAX_PORT:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to {MAX_PORT}, got {value}")
    return value


def service_address(text: str) -> str:
    """An argparse type: the address of a service this one calls (its default from the environment passes here too),
    refused naming the flag; gRPC dialled "localhost:99999" on 34463. Empty: the flag's "none"."""
    try:
        return check_address(text) if text else text
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return float(value)
    except ValueError:
        raise SystemExit(f"environment variable {name} must be a number, got {value!r}") from None


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    """A flag's default from the environment, checked as argparse checks the flag's own value (it checks no default)."""
    value = env_str(name, "") or default
    if value not in choices:
        raise SystemExit(f"environment variable {name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def env_bool(name: str, default: bool) -> bool:
    value = env_str(name, "").strip().lower()
    if not value:
        return default
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise SystemExit(f"environment variable {name} must be true or false, got {value!r}")


def add_server_flags(parser: argparse.ArgumentParser, service: Service) -> None:
    """Adds the flags every service shares; the service's env prefix namespaces the env vars (e.g. CATALOG_PORT)."""
    prefix, port, metrics_port = service.env_prefix, service.port, service.metrics_port
    group = parser.add_argument_group("server")
    group.add_argument(
        "--host", default=env_str(f"{prefix}_HOST", "127.0.0.1"),
        help=f"bind address; loopback by default, [::] or 0.0.0.0 to be reachable from other hosts (env {prefix}_HOST)",
    )
    group.add_argument("--port", type=port_number, default=env_port(f"{prefix}_PORT", port), help=f"gRPC port (env {prefix}_PORT)")
    group.add_argument(
        "--metrics-port",
        type=port_number,
        default=env_port(f"{prefix}_METRICS_PORT", metrics_port),
        help=f"Prometheus /metrics HTTP port, 0 disables it (env {prefix}_METRICS_PORT)",
    )
    group.add_argument(
        "--metrics-host", default=env_str(f"{prefix}_METRICS_HOST", ""),
        help=f"bind address of /metrics; empty: the same as --host (env {prefix}_METRICS_HOST)",
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
    add_security_flags(parser, service)


def add_security_flags(parser: argparse.ArgumentParser, service: Service) -> None:
    """Authentication, TLS and reflection (docs/security.md): every service takes the same flags."""
    prefix = service.env_prefix
    group = parser.add_argument_group("security")
    group.add_argument(
        "--auth-tokens-file", default=env_str("WHISPERLITE_AUTH_TOKENS_FILE", ""),
        help="bearer tokens, one 'token scope[,scope]' per line, re-read on SIGHUP; empty: no authentication "
        "(env WHISPERLITE_AUTH_TOKENS_FILE)",
    )
    group.add_argument(
        "--tls-cert-file", default=env_str(f"{prefix}_TLS_CERT_FILE", ""),
        help=f"PEM server certificate (chain); with --tls-key-file the port speaks TLS only (env {prefix}_TLS_CERT_FILE)",
    )
    group.add_argument(
        "--tls-key-file", default=env_str(f"{prefix}_TLS_KEY_FILE", ""), help=f"PEM private key of --tls-cert-file (env {prefix}_TLS_KEY_FILE)"
    )
    group.add_argument(
        "--tls-client-ca-file", default=env_str(f"{prefix}_TLS_CLIENT_CA_FILE", ""),
        help=f"PEM CA that must have signed every client's certificate (mTLS); empty: no client certificate asked (env {prefix}_TLS_CLIENT_CA_FILE)",
    )
    group.add_argument(
        "--reflection", action=argparse.BooleanOptionalAction, default=env_bool(f"{prefix}_REFLECTION", True),
        help=f"serve gRPC reflection (needs a token when authentication is on) (env {prefix}_REFLECTION)",
    )


def add_downstream_flags(parser: argparse.ArgumentParser, service: Service) -> None:
    """How a service calls the others: TLS roots and its own service token (never its caller's)."""
    prefix = service.env_prefix
    group = parser.add_argument_group("downstream calls")
    group.add_argument(
        "--tls-ca-file", default=env_str(ENV_CA_FILE, ""),
        help="PEM CA of the downstream services' certificates; set: calls to them use TLS, presenting --tls-cert-file "
        f"as client certificate (env {ENV_CA_FILE})",
    )
    group.add_argument(
        "--downstream-token-file", default=env_str(f"{prefix}_DOWNSTREAM_TOKEN_FILE", ""),
        help=f"file holding this service's own bearer token for downstream calls, re-read when it changes (env {prefix}_DOWNSTREAM_TOKEN_FILE)",
    )


def downstream_security(args: argparse.Namespace) -> ClientSecurity:
    try:
        security = ClientSecurity(
            ca_file=args.tls_ca_file,
            cert_file=args.tls_cert_file if args.tls_ca_file else "",
            key_file=args.tls_key_file if args.tls_ca_file else "",
            token_file=args.downstream_token_file,
        )
        security.channel_credentials()  # unreadable files stop start-up here, not at the first call
        if security.cert_file:
            check_certificate_file(security.cert_file)
        security.bearer_token()
    except (OSError, ValueError) as error:
        raise SystemExit(f"downstream calls: {error}") from None
    return security


def admission_limits(args: argparse.Namespace) -> AdmissionLimits:
    """The admission limits of add_server_flags' flags; a bad value stops start-up with the reason."""
    try:
        return AdmissionLimits(args.max_in_flight, args.max_queued, args.max_queue_wait_ms / 1e3)
    except ValueError as error:
        raise SystemExit(f"admission: {error}") from None


def add_probe_flags(parser, prefix: str, kind: str, checked: str, trip: str, whose: str) -> None:
    """`--{kind}-probe-interval-seconds` and `--{kind}-probe-timeout-seconds` (env {prefix}_{KIND}_PROBE_...): how a
    service checks the health of what it calls (services/common/probing.py). `checked` ends "are"/"is" (what is
    checked), `trip` says what the failed checks in a row do, `whose` names one of them for the timeout."""
    defaults = ProbeSettings()
    interval_env, timeout_env = (f"{prefix}_{kind.upper()}_PROBE_{part}_SECONDS" for part in ("INTERVAL", "TIMEOUT"))
    parser.add_argument(
        f"--{kind}-probe-interval-seconds", type=float, default=env_float(interval_env, defaults.probe_interval_seconds),
        help=f"how often {checked} checked while serving; {defaults.failures_to_trip} {trip} (env {interval_env})",
    )
    parser.add_argument(
        f"--{kind}-probe-timeout-seconds", type=float, default=env_float(timeout_env, defaults.probe_timeout_seconds),
        help=f"{whose} whose health check takes longer has failed it (env {timeout_env})",
    )


def probe_settings(args: argparse.Namespace, kind: str) -> ProbeSettings:
    """The settings `add_probe_flags` read (ValueError naming a bad one)."""
    return ProbeSettings(getattr(args, f"{kind}_probe_interval_seconds"), getattr(args, f"{kind}_probe_timeout_seconds"))
