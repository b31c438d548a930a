"""Progress of long work where no bar is drawn (a log file, CI): a line now and then, never a redrawn bar."""

from whisperlite.core import progress
from whisperlite.core.progress import Progress


def test_work_in_a_log_file_says_how_far_it_got(monkeypatch, capsys):
    """Embedding 22,657 requests ran 14 minutes without a line in a redirected log."""
    monkeypatch.setattr(progress, "LOG_EVERY_SECONDS", 0.0)
    with Progress(3_000, "embedding texts", "text") as bar:  # pytest's stderr is not a terminal
        bar.update(2_000)
        bar.update(1_000)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" (")[0] for line in lines] == ["embedding texts: 2,000 of 3,000 texts", "embedding texts: 3,000 of 3,000 texts"], lines
    assert "\r" not in "".join(lines)


def test_nothing_is_said_sooner_than_the_interval_or_when_progress_is_off(capsys):
    with Progress(10, "ingest", "item") as bar:
        bar.update(10)  # well within LOG_EVERY_SECONDS
    with Progress(10, "ingest", "item", enabled=False) as bar:
        bar.update(10)
    assert capsys.readouterr().err == ""
