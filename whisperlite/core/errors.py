"""Domain errors that map onto gRPC status codes.

Domain modules raise these instead of touching a gRPC context, so they stay testable without gRPC;
`whisperlite.services.common.interceptors` turns them into statuses. Messages name the offending field so a caller can act.
"""

import grpc


class ServiceError(Exception):
    code = grpc.StatusCode.INTERNAL


class InvalidArgument(ServiceError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(ServiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Overloaded(ResourceExhausted):
    """A call refused for the load, to be retried after `retry_after_ms` (the RETRY_AFTER_KEY trailer): the service is
    busy, or a dependency it needs is."""

    def __init__(self, message: str, retry_after_ms: int):
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class ResponseTooLarge(ResourceExhausted):
    """A downstream service's answer would pass a message limit: what was asked is too large, and asking again
    gets the same refusal (a busy service's RESOURCE_EXHAUSTED carries a retry hint instead)."""


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


class DownstreamBusy(Unavailable):
    """A dependency gave no answer in time, or shed the call, while it may well be alive: busy rather than down. Still
    UNAVAILABLE for what only asks whether an answer came (health, outage tracking); told apart where a service reports
    overload to its own caller (the ranker: RESOURCE_EXHAUSTED with a retry hint, not an outage to retry into at once).
    `retry_after_ms`: the dependency's own hint, when it gave one."""

    def __init__(self, message: str, retry_after_ms: int | None = None):
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


# Trailing metadata of a load-shedding refusal (RESOURCE_EXHAUSTED): milliseconds after which a
# retry is likely to be admitted. Callers that honour it back off as long as the server needs.
RETRY_AFTER_KEY = "retry-after-ms"
