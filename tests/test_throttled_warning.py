"""ThrottledWarning (services/common/logs.py): a burst of like events is one line per interval, with its counts."""

import logging

from whisperlite.services.common.logs import ThrottledWarning


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_first_event_logs_at_once_and_the_rest_of_the_interval_in_one_line_with_counts(caplog):
    clock = Clock()
    warning = ThrottledWarning(logging.getLogger("test.throttled"), "call refused", interval_seconds=10.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="test.throttled"):
        warning.record("UNAUTHENTICATED: unknown token", grpc_method="/a/B")
        for _ in range(500):
            clock.now += 0.01
            warning.record("UNAUTHENTICATED: unknown token", grpc_method="/a/B")
        clock.now += 0.01
        warning.record("PERMISSION_DENIED: missing scope", grpc_method="/a/C")
        assert len(caplog.records) == 1 and caplog.records[0].refused == {"UNAUTHENTICATED: unknown token": 1}
        clock.now += 10.0
        warning.record("PERMISSION_DENIED: missing scope", grpc_method="/a/C")
    assert len(caplog.records) == 2
    summary = caplog.records[1]
    assert summary.refused == {"UNAUTHENTICATED: unknown token": 500, "PERMISSION_DENIED: missing scope": 2}
    assert summary.grpc_method == "/a/C"  # the details are the latest event's
