"""gRPC status -> HTTP status, the one table the gateway answers failures with.

The issue fixes INVALID_ARGUMENT 400, UNAUTHENTICATED 401, PERMISSION_DENIED 403, RESOURCE_EXHAUSTED 429
and UNAVAILABLE 503; the other codes follow google.rpc.Code's documented HTTP mapping.
"""

import grpc

HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


def http_status(code: grpc.StatusCode) -> int:
    """HTTP status for a gRPC code; INTERNAL, UNKNOWN, DATA_LOSS and anything unlisted are 500."""
    return HTTP_STATUS.get(code, 500)


def error_body(code: grpc.StatusCode, message: str) -> dict:
    """The JSON error every failing route returns: the gRPC code's name and the upstream message unchanged."""
    return {"error": {"code": code.name, "message": message}}
