"""Progress bars of long work (training, embedding, ingest, imports): drawn on a terminal, silent in a
log file, a CI log or a service's stderr, where a redrawn bar would only fill the log."""


def bar_disabled(enabled: bool = True) -> bool | None:
    """tqdm's `disable`: None turns the bar off whenever its stream is not a terminal."""
    return None if enabled else True
