"""HTTP health probing of the gateway (it has no gRPC health service): `whisperlite up` and `whisperlite health URL`."""

import http.client
import json
import urllib.error
import urllib.request

from whisperlite.core.clients.health import poll_until


def http_health_status(url: str, timeout_seconds: float = 2.0) -> tuple[bool, str]:
    """Whether GET url is the gateway's health answer saying SERVING, and why not. The body counts, not only the 200:
    any HTTP server answers 200 on some path (a /metrics port answers it on every path)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_seconds) as response:
            body = response.read(65_536)
    except urllib.error.HTTPError as error:  # 503 while the ranker or the catalog is not SERVING
        return False, f"HTTP {error.code}: {error.read(2_000).decode(errors='replace')}"
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as error:
        return False, f"{type(error).__name__}: {error}"
    try:
        status = json.loads(body).get("status")
    except (ValueError, AttributeError):
        status = None
    if status != "SERVING":
        return False, f"not the gateway's health answer (status {status!r}): is this the gateway's /health URL?"
    return True, "SERVING"


def is_http_serving(url: str, timeout_seconds: float = 2.0) -> bool:
    return http_health_status(url, timeout_seconds)[0]


def wait_until_http_serving(url: str, timeout_seconds: float, alive=lambda: True, interval_seconds: float = 0.5) -> bool:
    """Polls until 200 (see poll_until)."""
    return poll_until(lambda: is_http_serving(url), timeout_seconds, alive, interval_seconds)
