"""The API's error codes: the ``code`` of every ``{"error": {"code", "message"}}`` body.

The server maps each typed error to one of these (control/errors.py, the only such place);
clients branch on them, never on message text. The OpenAPI document lists them as the enum
of the Error schema's ``code``.
"""

from __future__ import annotations

import enum

__all__ = ["ErrorCode"]


class ErrorCode(enum.StrEnum):
    """Every code an error body can carry."""

    BAD_REQUEST = "bad_request"
    INVALID_BODY = "invalid_body"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    NOT_ACCEPTABLE = "not_acceptable"
    REQUEST_TIMEOUT = "request_timeout"
    CONFLICT = "conflict"
    STALE_DEVICES = "stale_devices"
    QUEUE_FULL = "queue_full"
    GONE = "gone"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    RATE_LIMITED = "rate_limited"
    PROOF_OF_WORK_REQUIRED = "proof_of_work_required"
    HTTP_ERROR = "http_error"
    INTERNAL = "internal"
