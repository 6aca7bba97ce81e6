"""Typed API errors, and the one place that maps them to HTTP statuses and wire codes.

Every error leaves the server as ``{"error": {"code": "...", "message": "..."}}`` (JSON or
msgpack as negotiated), optionally with extra members such as the current device list of a
stale fan-out. Unknown exceptions become a bare 500 ``internal`` without details.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from quart import Response
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from contract.errors import ErrorCode

__all__ = [
    "ApiError",
    "BadRequest",
    "Conflict",
    "Forbidden",
    "Gone",
    "InvalidBody",
    "NotAcceptable",
    "NotFound",
    "PayloadTooLarge",
    "ProofOfWorkRequired",
    "QueueFull",
    "RateLimited",
    "StaleDevices",
    "Unauthorized",
    "UnsupportedMediaType",
    "register_error_handlers",
]

log = logging.getLogger("control.errors")


class ApiError(Exception):
    """Base of every error the API reports; subclasses fix ``status`` and ``code``."""

    status: ClassVar[int] = 400
    code: ClassVar[ErrorCode] = ErrorCode.BAD_REQUEST

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, Any]:
        """The wire form of this error."""
        return {"error": {"code": self.code, "message": self.message, **self.extra}}


class BadRequest(ApiError):
    """The request is malformed in a way no more specific error names."""


class InvalidBody(ApiError):
    """The body does not match the endpoint's schema (missing, unknown or mistyped field)."""

    code = ErrorCode.INVALID_BODY


class Unauthorized(ApiError):
    """No valid session token, or a signature that does not prove key possession."""

    status = 401
    code = ErrorCode.UNAUTHORIZED


class Forbidden(ApiError):
    """Authenticated, but the permission function or hierarchy says no."""

    status = 403
    code = ErrorCode.FORBIDDEN


class NotFound(ApiError):
    """No such resource, or one the caller may not know exists."""

    status = 404
    code = ErrorCode.NOT_FOUND


class NotAcceptable(ApiError):
    """The Accept header asks for a representation the server does not produce."""

    status = 406
    code = ErrorCode.NOT_ACCEPTABLE


class Conflict(ApiError):
    """The request conflicts with the current state (taken handle, last device, ...)."""

    status = 409
    code = ErrorCode.CONFLICT


class StaleDevices(Conflict):
    """An envelope fan-out names a device list that is not the recipient's current one."""

    code = ErrorCode.STALE_DEVICES


class QueueFull(Conflict):
    """An envelope would take a device's queue, or one sender's share of it, over its quota
    (``device_id`` and ``limit`` say which); it clears as the device acknowledges."""

    code = ErrorCode.QUEUE_FULL


class Gone(ApiError):
    """The resource existed but no longer applies (expired challenge or invite)."""

    status = 410
    code = ErrorCode.GONE


class PayloadTooLarge(ApiError):
    """The body is larger than the endpoint accepts."""

    status = 413
    code = ErrorCode.PAYLOAD_TOO_LARGE


class UnsupportedMediaType(ApiError):
    """The body is neither JSON nor msgpack."""

    status = 415
    code = ErrorCode.UNSUPPORTED_MEDIA_TYPE


class RateLimited(ApiError):
    """Too many requests for this token or device; ``retry_after`` says when to retry."""

    status = 429
    code = ErrorCode.RATE_LIMITED


class ProofOfWorkRequired(ApiError):
    """An anonymous route needs a fresh proof of work (missing, wrong, spent or expired)."""

    status = 428
    code = ErrorCode.PROOF_OF_WORK_REQUIRED


#: Wire codes of the HTTP errors Quart and Werkzeug raise themselves.
_HTTP_CODES = {
    400: ErrorCode.BAD_REQUEST,
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.FORBIDDEN,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    408: ErrorCode.REQUEST_TIMEOUT,
    413: ErrorCode.PAYLOAD_TOO_LARGE,
    415: ErrorCode.UNSUPPORTED_MEDIA_TYPE,
}


def register_error_handlers(app: QuartTrio) -> None:
    """Map every exception a request can raise to the error body (the only such place)."""
    from .wire import encode_response

    @app.errorhandler(ApiError)
    async def api_error(exc: ApiError) -> Response:
        response = encode_response(exc.body(), exc.status)
        if isinstance(exc, RateLimited) and "retry_after" in exc.extra:
            response.headers["Retry-After"] = str(int(exc.extra["retry_after"]) + 1)
        return response

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        code = _HTTP_CODES.get(status, ErrorCode.HTTP_ERROR)
        message = exc.description or code
        return encode_response({"error": {"code": code, "message": message}}, status)

    @app.errorhandler(Exception)
    async def internal_error(exc: Exception) -> Response:
        # The traceback names code paths only; request data never reaches the log here.
        log.error("internal error: %s", type(exc).__name__, exc_info=exc)
        body = {"error": {"code": ErrorCode.INTERNAL, "message": "internal server error"}}
        return encode_response(body, 500)
