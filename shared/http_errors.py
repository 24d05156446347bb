"""Domain errors over HTTP: the gRPC code of imgpipe.common.grpc_errors, turned into an HTTP
status by one table, with a JSON body that carries the same code, message and field violations:

    {"error": {"code": "INVALID_ARGUMENT", "message": "...",
               "field_violations": [{"field": "csv.row[3].serial_number", "description": "..."}]}}

Anything unmapped is 500 INTERNAL, logged with its traceback."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import grpc
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from imgpipe.common.errors import InvalidArgument, ResourceExhausted, ServiceError
from imgpipe.common.grpc_errors import grpc_code
from imgpipe.common.public_text import public_text

log = logging.getLogger(__name__)

HTTP_STATUSES: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
}
# RESOURCE_EXHAUSTED about the size of what was sent, not about load: retrying cannot help.
PAYLOAD_TOO_LARGE = 413
INTERNAL_ERROR = 500


def http_status(code: grpc.StatusCode, *, too_large: bool = False) -> int:
    if too_large and code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return PAYLOAD_TOO_LARGE
    return HTTP_STATUSES.get(code, INTERNAL_ERROR)


def _code_of_http_status(status: int) -> grpc.StatusCode:
    """The code shown for aiohttp's own errors (no route, wrong method, body too large)."""
    if status == PAYLOAD_TOO_LARGE:
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if status == 405:
        return grpc.StatusCode.UNIMPLEMENTED
    for code, mapped in HTTP_STATUSES.items():
        if mapped == status:
            return code
    return grpc.StatusCode.UNKNOWN


def json_error(
    code: grpc.StatusCode,
    message: str,
    violations: Sequence[tuple[str, str]] = (),
    *,
    status: int | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    error: dict[str, object] = {"code": code.name, "message": public_text(message)}
    if violations:
        error["field_violations"] = [
            {"field": f, "description": public_text(d)} for f, d in violations
        ]
    headers = dict(headers or {})
    if code == grpc.StatusCode.UNAUTHENTICATED:
        headers["WWW-Authenticate"] = "Bearer"
    return web.json_response({"error": error}, status=status or http_status(code), headers=headers)


def error_response(exc: ServiceError, *, too_large: bool = False) -> web.Response:
    code = grpc_code(exc)
    violations = exc.violations if isinstance(exc, InvalidArgument) else ()
    headers: dict[str, str] = {}
    if isinstance(exc, ResourceExhausted) and exc.retry_after is not None and not too_large:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))  # whole seconds
    return json_error(
        code,
        exc.message,
        violations,
        status=http_status(code, too_large=too_large),
        headers=headers,
    )


def json_errors_middleware(
    too_large: tuple[type[ServiceError], ...] = (),
) -> Middleware:
    """Answers ServiceError, aiohttp's HTTP errors and anything unexpected as JSON errors.

    Errors of the `too_large` types (RESOURCE_EXHAUSTED about a payload) answer 413."""

    @web.middleware
    async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ServiceError as exc:
            return error_response(exc, too_large=isinstance(exc, too_large))
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
            message = exc.text if exc.text and exc.text != f"{exc.status}: {exc.reason}" else ""
            return json_error(
                _code_of_http_status(exc.status),
                message or exc.reason,
                status=exc.status,
                headers=headers,
            )
        except ConnectionResetError:  # the client went away: nobody to answer
            raise
        except Exception:
            log.exception(
                "unhandled error in HTTP handler",
                extra={"method": request.method, "path": request.path},
            )
            return json_error(grpc.StatusCode.INTERNAL, "internal error")

    return json_errors
