"""Declarative API routes: one decorator gives auth, rate limits, body and query decoding,
response encoding and the route's OpenAPI entry, so the document matches what runs."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from quart import Blueprint, Response, request

from ..errors import InvalidBody, NotFound, RateLimited, Unauthorized
from ..ids import hash_token
from ..state import ControlState, get_state
from ..wire import Field, Schema, decode_body_untrusted, decode_value_untrusted, encode_response

__all__ = ["Api", "Call", "Caller", "Reply"]

PREFIX = "/api/v1"
_PARAM = re.compile(r"\{(\w+)\}")
#: Path parameters are ids, handles and codes: longer ones cannot exist.
_MAX_PARAM = 64


@dataclass(frozen=True)
class Caller:
    """The authenticated session making a request."""

    user_id: str
    device_id: str
    token_hash: bytes


@dataclass(frozen=True)
class Call:
    """What a handler receives: state, caller (None on public routes), body and query."""

    state: ControlState
    caller: Caller | None
    body: dict[str, Any]
    query: dict[str, Any]

    @property
    def me(self) -> Caller:
        """The caller of an authenticated route."""
        assert self.caller is not None
        return self.caller


@dataclass(frozen=True)
class Reply:
    """A handler result with a status other than the route's default."""

    data: Any
    status: int


Handler = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Route:
    """One endpoint as the OpenAPI document describes it."""

    method: str
    path: str
    summary: str
    tag: str
    body: Schema | None
    query: Schema | None
    auth: bool
    status: int
    errors: tuple[int, ...]
    params: tuple[str, ...] = field(default=())


async def authenticate(state: ControlState) -> Caller:
    """Resolve the ``Authorization: Bearer`` token to a live session or raise 401."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token or len(token) > 128:
        raise Unauthorized("a valid session token is required (Authorization: Bearer ...)")
    digest = hash_token(token.strip())
    session = await state.sessions.lookup(digest)
    if session is None:
        raise Unauthorized("the session token is unknown, expired or revoked")
    return Caller(session.user_id, session.device_id, digest)


def decode_query_untrusted(spec: Schema | None) -> dict[str, Any]:
    """Validate query parameters; integers are parsed from their decimal text."""
    args = request.args
    fields = spec.fields if spec is not None else {}
    out: dict[str, Any] = {}
    for name in args:
        if name not in fields:
            raise InvalidBody(f"unknown query parameter {name[:64]!r}")
    for name, sub in fields.items():
        text = args.get(name)
        if text is None:
            if sub.required:
                raise InvalidBody(f"query parameter {name} is required")
            continue
        value: object = text
        if sub.kind == "int":
            if not re.fullmatch(r"-?\d{1,16}", text):
                raise InvalidBody(f"query parameter {name} must be an integer")
            value = int(text)
        out[name] = decode_value_untrusted(sub, value, name, False)
    return out


class Api:
    """A registry of routes under ``/api/v1`` on one blueprint."""

    def __init__(self) -> None:
        self.blueprint = Blueprint("api", __name__, url_prefix=PREFIX)
        self.routes: list[Route] = []

    def route(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        tag: str,
        body: Schema | None = None,
        query: Schema | None = None,
        auth: bool = True,
        status: int = 200,
        errors: tuple[int, ...] = (),
        limit: int | None = None,
        rate_cost: float = 1.0,
    ) -> Callable[[Handler], Handler]:
        """Register ``handler(call, **path_params)`` for ``method path``."""
        params = tuple(_PARAM.findall(path))
        quart_path = _PARAM.sub(r"<\1>", path)
        route = Route(method, path, summary, tag, body, query, auth, status, errors, params)
        self.routes.append(route)

        def decorator(handler: Handler) -> Handler:
            async def view(**path_params: str) -> Response:
                state = get_state()
                for value in path_params.values():
                    if len(value) > _MAX_PARAM:
                        raise NotFound("no such resource")
                caller = await authenticate(state) if auth else None
                # Limits key on the session token hash (or the endpoint for public routes):
                # never on an address, which hushroom does not record.
                if caller is not None:
                    wait = max(
                        state.limiter.acquire(caller.token_hash, rate_cost),
                        state.limiter.acquire(("device", caller.device_id), rate_cost),
                    )
                else:
                    wait = state.limiter.acquire(("public", method, path), rate_cost)
                if wait:
                    raise RateLimited("slow down", retry_after=round(wait, 3))
                payload: dict[str, Any] = {}
                if body is not None:
                    max_bytes = limit or state.config.max_body_bytes
                    payload = await decode_body_untrusted(body, max_bytes)
                query_args = decode_query_untrusted(query)
                result = await handler(Call(state, caller, payload, query_args), **path_params)
                if isinstance(result, Reply):
                    return encode_response(result.data, result.status)
                return encode_response(result, status)

            view.__name__ = handler.__name__
            self.blueprint.add_url_rule(
                quart_path, endpoint=handler.__name__, view_func=view, methods=[method]
            )
            return handler

        return decorator


def int_field(doc: str, lo: int, hi: int, required: bool = True) -> Field:
    """Shorthand for a bounded integer field."""
    return Field("int", doc, required=required, min=lo, max=hi)


def id_field(doc: str, required: bool = True, nullable: bool = False) -> Field:
    """Shorthand for an id field."""
    return Field("str", doc, required=required, nullable=nullable, min=1, max=32)
