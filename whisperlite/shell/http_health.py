"""HTTP health probing of the gateway (it has no gRPC health service): `whisperlite up` and `whisperlite health URL`."""

import time
import urllib.error
import urllib.request


def is_http_serving(url: str, timeout_seconds: float = 2.0) -> bool:
    """True when GET url answers 200; the gateway answers 503 while the ranker or the catalog is not SERVING."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_seconds) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_until_http_serving(url: str, timeout_seconds: float, alive=lambda: True, interval_seconds: float = 0.5) -> bool:
    """Polls until 200; gives up early when `alive()` turns false (the process died)."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if is_http_serving(url):
            return True
        if not alive():
            return False
        time.sleep(interval_seconds)
    return False
