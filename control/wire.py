"""Request bodies in, responses out: JSON or msgpack, validated against declared schemas.

Bodies come from the network: :func:`decode_body_untrusted` bounds their size, parses them
with the negotiated codec and checks them against a :class:`Schema` (required fields, types,
lengths, ranges; unknown fields are refused) before any handler sees them. Binary fields are
msgpack ``bin`` values, or standard base64 strings (RFC 4648 §4) in JSON. The same schemas
produce the OpenAPI document, so the document cannot drift from what is enforced.

Text must be Unicode scalar values (RFC 8259 §8.2, RFC 3629): JSON's ``\ud800`` escape and
the bytes ``ED A0 80`` (a UTF-8-encoded surrogate, which Python's JSON decoder lets through)
both yield a lone surrogate that no store or encoder downstream can handle.
:func:`check_text_untrusted` refuses them for every string a schema admits (bodies and query
values) and :func:`guard_request_target` for the request path and query string, before
routing: the one place each is checked.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import msgpack
from hypercorn.typing import (
    ASGIReceiveCallable,
    ASGISendCallable,
    HTTPScope,
    Scope,
    WebsocketScope,
)
from quart import Response, has_request_context, request

from .errors import (
    BadRequest,
    InvalidBody,
    NotAcceptable,
    PayloadTooLarge,
    UnsupportedMediaType,
)

__all__ = [
    "JSON",
    "MSGPACK",
    "Field",
    "Schema",
    "check_text_untrusted",
    "decode_body_untrusted",
    "decode_value_untrusted",
    "encode_response",
    "guard_request_target",
    "is_text",
    "json_schema",
    "wants_msgpack",
]

JSON = "application/json"
MSGPACK = "application/msgpack"
_MSGPACK_TYPES = (MSGPACK, "application/x-msgpack", "application/vnd.msgpack")

#: Integers on the wire stay within what JSON clients represent exactly.
MAX_SAFE_INT = 2**53 - 1

Kind = Literal["str", "int", "bool", "bytes", "list", "object"]


@dataclass(frozen=True)
class Field:
    """One field of a body: its kind and bounds (lengths for str/bytes/list, values for int)."""

    kind: Kind
    doc: str = ""
    required: bool = True
    nullable: bool = False
    min: int | None = None
    max: int | None = None
    pattern: str | None = None
    enum: tuple[str, ...] | None = None
    items: Field | None = None
    schema: Schema | None = None


@dataclass(frozen=True)
class Schema:
    """A named object schema: the fields a body may carry and nothing else."""

    name: str
    fields: Mapping[str, Field] = field(default_factory=dict)


def wants_msgpack() -> bool:
    """True when the request's Accept header prefers msgpack over JSON."""
    if not has_request_context():
        return False
    accept = request.accept_mimetypes
    best = accept.best_match([JSON, *_MSGPACK_TYPES], default=JSON)
    return best in _MSGPACK_TYPES


def _json_default(value: object) -> object:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"cannot encode {type(value).__name__}")


def encode_body(data: Any, msgpack_body: bool) -> bytes:
    """Serialise ``data`` (bytes become base64 in JSON)."""
    if msgpack_body:
        return msgpack.packb(data, use_bin_type=True)
    return json.dumps(data, default=_json_default, separators=(",", ":")).encode()


def encode_response(data: Any, status: int = 200) -> Response:
    """A response in the representation the client asked for (JSON unless msgpack)."""
    if has_request_context():
        accept = request.accept_mimetypes
        refused = accept and not accept.best_match([JSON, *_MSGPACK_TYPES])
        # Only a successful answer is refused: the 406 error itself is sent as JSON.
        if refused and status < 400:
            raise NotAcceptable("this API answers application/json or application/msgpack")
    as_msgpack = wants_msgpack()
    body = b"" if status == 204 else encode_body(data, as_msgpack)
    return Response(body, status=status, content_type=MSGPACK if as_msgpack else JSON)


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


def parse_body_untrusted(raw: bytes, content_type: str | None) -> tuple[object, bool]:
    """Parse raw body bytes by media type; return the value and whether it was msgpack."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media == JSON or (media.startswith("application/") and media.endswith("+json")):
        try:
            return json.loads(raw, parse_constant=_reject_constant), False
        except (ValueError, RecursionError) as exc:
            raise InvalidBody(f"malformed JSON: {str(exc)[:120]}") from None
    if media in _MSGPACK_TYPES:
        try:
            value = msgpack.unpackb(
                raw,
                raw=False,
                strict_map_key=True,
                use_list=True,
                ext_hook=_reject_ext,
                timestamp=0,
            )
        except (ValueError, TypeError, RecursionError, msgpack.UnpackException) as exc:
            raise InvalidBody(f"malformed msgpack: {type(exc).__name__}") from None
        return value, True
    raise UnsupportedMediaType("send application/json or application/msgpack")


def _reject_ext(code: int, data: bytes) -> object:
    raise ValueError("msgpack extension types are not accepted")


async def decode_body_untrusted(schema: Schema, limit: int) -> dict[str, Any]:
    """Read, size-check, parse and validate the current request's body against ``schema``."""
    length = request.content_length
    if length is not None and length > limit:
        raise PayloadTooLarge(f"body exceeds {limit} bytes")
    request.body_timeout = 30
    raw = await request.get_data(cache=False, as_text=False)
    assert isinstance(raw, bytes)
    if len(raw) > limit:
        raise PayloadTooLarge(f"body exceeds {limit} bytes")
    if not raw:
        value: object = {}
        is_msgpack = False
    else:
        value, is_msgpack = parse_body_untrusted(raw, request.content_type)
    result = decode_value_untrusted(Field("object", schema=schema), value, "body", is_msgpack)
    assert isinstance(result, dict)
    return result


def decode_value_untrusted(spec: Field, value: object, where: str, is_msgpack: bool) -> Any:
    """Check ``value`` against ``spec``; return it with bytes decoded from base64 in JSON."""
    if value is None:
        if spec.nullable:
            return None
        raise InvalidBody(f"{where} must not be null")
    kind = spec.kind
    if kind == "object":
        assert spec.schema is not None
        if not isinstance(value, dict):
            raise InvalidBody(f"{where} must be an object")
        unknown = [k for k in value if k not in spec.schema.fields]
        if unknown:
            raise InvalidBody(f"{where} has unknown field {str(unknown[0])[:64]!r}")
        out: dict[str, Any] = {}
        for name, sub in spec.schema.fields.items():
            if name in value:
                out[name] = decode_value_untrusted(sub, value[name], f"{where}.{name}", is_msgpack)
            elif sub.required:
                raise InvalidBody(f"{where}.{name} is required")
        return out
    if kind == "list":
        assert spec.items is not None
        if not isinstance(value, list):
            raise InvalidBody(f"{where} must be a list")
        _check_length(spec, len(value), where, "items")
        return [
            decode_value_untrusted(spec.items, item, f"{where}[{i}]", is_msgpack)
            for i, item in enumerate(value)
        ]
    if kind == "str":
        if not isinstance(value, str):
            raise InvalidBody(f"{where} must be a string")
        check_text_untrusted(value, where)
        _check_length(spec, len(value), where, "characters")
        if spec.enum is not None and value not in spec.enum:
            raise InvalidBody(f"{where} must be one of {', '.join(spec.enum)}")
        if spec.pattern is not None and not re.fullmatch(spec.pattern, value):
            raise InvalidBody(f"{where} has characters or a shape that is not allowed")
        return value
    if kind == "int":
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidBody(f"{where} must be an integer")
        low = spec.min if spec.min is not None else -MAX_SAFE_INT
        high = spec.max if spec.max is not None else MAX_SAFE_INT
        if not low <= value <= high:
            raise InvalidBody(f"{where} must be between {low} and {high}")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise InvalidBody(f"{where} must be true or false")
        return value
    if kind == "bytes":
        data = _bytes_untrusted(value, where, is_msgpack)
        _check_length(spec, len(data), where, "bytes")
        return data
    raise AssertionError(f"unknown field kind {kind}")


def is_text(value: str) -> bool:
    """True unless ``value`` holds a lone surrogate (then it is not Unicode text and has
    no UTF-8 form)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_text_untrusted(value: str, where: str) -> None:
    """Refuse a string that is not Unicode text with ``400 invalid_body``."""
    if not is_text(value):
        raise InvalidBody(f"{where} is not valid Unicode text (lone surrogate)")


AsgiApp = Callable[[Scope, ASGIReceiveCallable, ASGISendCallable], Coroutine[Any, Any, None]]


def request_target_problem(scope: HTTPScope | WebsocketScope) -> str | None:
    """Why a request's path or query string is not text, or None when both are."""
    if not is_text(scope["path"]):
        return "the request path is not valid Unicode text (lone surrogate)"
    try:
        scope["query_string"].decode("utf-8")
    except UnicodeDecodeError:
        return "the query string is not valid UTF-8"
    return None


def guard_request_target(app: AsgiApp) -> AsgiApp:
    """Wrap an ASGI app so a request whose path or query string is not text gets ``400
    bad_request`` before routing (Quart would fail on it with a 500, and a path parameter
    would reach the store); such a WebSocket handshake is refused (403)."""

    async def guarded(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        if scope["type"] == "lifespan":
            await app(scope, receive, send)
            return
        problem = request_target_problem(scope)
        if problem is None:
            await app(scope, receive, send)
        elif scope["type"] == "websocket":
            await receive()  # websocket.connect; a close before accept refuses the handshake
            await send({"type": "websocket.close", "code": 1008, "reason": None})
        else:
            body = encode_body(BadRequest(problem).body(), msgpack_body=False)
            headers = [(b"content-type", JSON.encode()), (b"content-length", b"%d" % len(body))]
            await send({"type": "http.response.start", "status": 400, "headers": headers})
            await send({"type": "http.response.body", "body": body, "more_body": False})

    return guarded


def _bytes_untrusted(value: object, where: str, is_msgpack: bool) -> bytes:
    if is_msgpack:
        if not isinstance(value, bytes):
            raise InvalidBody(f"{where} must be binary (msgpack bin)")
        return value
    if not isinstance(value, str):
        raise InvalidBody(f"{where} must be a base64 string")
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise InvalidBody(f"{where} must be standard base64") from None


def _check_length(spec: Field, length: int, where: str, unit: str) -> None:
    if spec.min is not None and length < spec.min:
        raise InvalidBody(f"{where} must have at least {spec.min} {unit}")
    if spec.max is not None and length > spec.max:
        raise InvalidBody(f"{where} must have at most {spec.max} {unit}")


def json_schema(spec: Field) -> dict[str, Any]:
    """The JSON Schema (OpenAPI 3.1 dialect) of ``spec`` as it travels in JSON."""
    out: dict[str, Any]
    if spec.kind == "object":
        assert spec.schema is not None
        fields = spec.schema.fields
        out = {
            "type": "object",
            "additionalProperties": False,
            "properties": {name: json_schema(sub) for name, sub in fields.items()},
        }
        required = [name for name, sub in fields.items() if sub.required]
        if required:
            out["required"] = required
    elif spec.kind == "list":
        assert spec.items is not None
        out = {"type": "array", "items": json_schema(spec.items)}
        if spec.min is not None:
            out["minItems"] = spec.min
        if spec.max is not None:
            out["maxItems"] = spec.max
    elif spec.kind == "bytes":
        out = {"type": "string", "contentEncoding": "base64"}
        if spec.min is not None:
            out["x-min-bytes"] = spec.min
        if spec.max is not None:
            out["x-max-bytes"] = spec.max
    elif spec.kind == "str":
        out = {"type": "string"}
        if spec.min is not None:
            out["minLength"] = spec.min
        if spec.max is not None:
            out["maxLength"] = spec.max
        if spec.pattern is not None:
            out["pattern"] = f"^{spec.pattern}$"
        if spec.enum is not None:
            out["enum"] = list(spec.enum)
    elif spec.kind == "int":
        out = {
            "type": "integer",
            "minimum": spec.min if spec.min is not None else -MAX_SAFE_INT,
            "maximum": spec.max if spec.max is not None else MAX_SAFE_INT,
        }
    else:
        out = {"type": "boolean"}
    if spec.nullable:
        out["type"] = [out["type"], "null"]
    if spec.doc:
        out["description"] = spec.doc
    return out
