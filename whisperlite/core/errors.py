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


class ResponseTooLarge(ResourceExhausted):
    """A downstream service's answer would pass a message limit: what was asked is too large, and asking again
    gets the same refusal (a busy service's RESOURCE_EXHAUSTED carries a retry hint instead)."""


class Unavailable(ServiceError):
    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


# Trailing metadata of a load-shedding refusal (RESOURCE_EXHAUSTED): milliseconds after which a
# retry is likely to be admitted. Callers that honour it back off as long as the server needs.
RETRY_AFTER_KEY = "retry-after-ms"
