"""Progress of long work (training, embedding, ingest, imports): a bar drawn on a terminal; in a log file, a CI log
or a service's stderr, where a redrawn bar would only fill the log, a line now and then (`Progress`) or nothing."""

from __future__ import annotations

import sys
import time

from tqdm.auto import tqdm

# How often work that runs for minutes says how far it got where no bar is drawn: often enough to tell a slow job
# from a stuck one (embedding a large dataset's requests ran 14 minutes without a line), rarely enough to stay quiet.
LOG_EVERY_SECONDS = 60.0


def bar_disabled(enabled: bool = True) -> bool | None:
    """tqdm's `disable`: None turns the bar off whenever its stream is not a terminal."""
    return None if enabled else True


class Progress:
    """tqdm's bar on a terminal; elsewhere, when `enabled`, a line on stderr every LOG_EVERY_SECONDS
    ("embedding texts: 5,120 of 22,657 (84/s)")."""

    def __init__(self, total: int, desc: str, unit: str, enabled: bool = True, initial: int = 0):
        self.bar = tqdm(total=total, desc=desc, unit=unit, initial=initial, disable=bar_disabled(enabled))
        self._lines = enabled and self.bar.disable  # tqdm turned its bar off: not a terminal
        self._total, self._desc, self._unit = total, desc, unit
        self._done = self._initial = initial
        self._started = self._last_line = time.monotonic()

    def update(self, count: int) -> None:
        self.bar.update(count)
        self._done += count
        now = time.monotonic()
        if self._lines and now - self._last_line >= LOG_EVERY_SECONDS:
            self._last_line = now
            rate = (self._done - self._initial) / max(now - self._started, 1e-9)
            print(f"{self._desc}: {self._done:,} of {self._total:,} {self._unit}s ({rate:,.0f}/s)", file=sys.stderr, flush=True)

    def write(self, message: str) -> None:
        """A line that does not break the bar."""
        self.bar.write(message)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *_) -> None:
        self.close()
