"""HTTP health probing of the gateway (it has no gRPC health service): `whisperlite up` and `whisperlite health URL`."""

import urllib.error
import urllib.request

from whisperlite.core.clients.health import poll_until


def is_http_serving(url: str, timeout_seconds: float = 2.0) -> bool:
    """True when GET url answers 200; the gateway answers 503 while the ranker or the catalog is not SERVING."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_seconds) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_until_http_serving(url: str, timeout_seconds: float, alive=lambda: True, interval_seconds: float = 0.5) -> bool:
    """Polls until 200 (see poll_until)."""
    return poll_until(lambda: is_http_serving(url), timeout_seconds, alive, interval_seconds)
