"""Declarative API routes: one decorator on a module-level :class:`Router` gives auth, rate
limits, body and query decoding, response encoding and the route's OpenAPI entry, so the
document matches what runs. :class:`Api` serves the routers it includes."""

from __future__ import annotations

import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from quart import Blueprint, Response, request
from sqlalchemy.engine import Connection

from contract.proof_of_work import HEADER as POW_HEADER
from contract.proof_of_work import Purpose

from ..bus import Event
from ..errors import InvalidBody, NotFound, ProofOfWorkRequired, RateLimited, Unauthorized
from ..ids import hash_token
from ..proof_of_work import ProofOfWorkRefused
from ..state import ControlState, get_state
from ..wire import Field, Schema, decode_body_untrusted, decode_value_untrusted, encode_response

__all__ = ["Api", "Call", "Caller", "Reply", "Router", "commit"]

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
H = TypeVar("H", bound=Handler)
T = TypeVar("T")


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
    #: Anonymous routes paid for with a proof of work instead of a shared bucket.
    proof_of_work: Purpose | None = None


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


@dataclass(frozen=True)
class Endpoint:
    """A route with the handler that serves it and its request limits."""

    route: Route
    handler: Handler
    limit: int | None
    rate_cost: float
    #: Whether an anonymous request takes from the route's shared bucket.
    public_bucket: bool


class Router:
    """The routes of one resource, declared at module level with :meth:`route`.

    A router only records declarations; :meth:`Api.include` turns them into views, so the
    same router serves every app built from it and a handler stays a plain function that
    can be imported and called on its own.
    """

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.endpoints: list[Endpoint] = []

    def route(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        tag: str | None = None,
        body: Schema | None = None,
        query: Schema | None = None,
        auth: bool = True,
        status: int = 200,
        errors: tuple[int, ...] = (),
        limit: int | None = None,
        rate_cost: float = 1.0,
        proof_of_work: Purpose | None = None,
        public_bucket: bool = True,
    ) -> Callable[[H], H]:
        """Declare ``handler(call, **path_params)`` for ``method path`` (under the
        router's tag unless ``tag`` is given); the handler is returned unchanged.

        An anonymous route either shares one bucket with every anonymous caller of it (the
        default), or charges each request a proof of work for ``proof_of_work`` (then no
        bucket: a shared one would let a flooder starve everyone else), or neither
        (``public_bucket=False``: only for work as cheap as refusing it)."""
        params = tuple(_PARAM.findall(path))
        route = Route(
            method,
            path,
            summary,
            tag or self.tag,
            body,
            query,
            auth,
            status,
            errors,
            params,
            proof_of_work,
        )
        bucket = public_bucket and proof_of_work is None

        def decorator(handler: H) -> H:
            self.endpoints.append(Endpoint(route, handler, limit, rate_cost, bucket))
            return handler

        return decorator


class Api:
    """The routers' routes served under ``/api/v1`` on one blueprint."""

    def __init__(self) -> None:
        self.blueprint = Blueprint("api", __name__, url_prefix=PREFIX)
        self.routes: list[Route] = []

    def include(self, router: Router) -> None:
        """Serve every route of ``router``, in the order it declared them."""
        for endpoint in router.endpoints:
            self.routes.append(endpoint.route)
            handler = endpoint.handler
            self.blueprint.add_url_rule(
                _PARAM.sub(r"<\1>", endpoint.route.path),
                endpoint=handler.__name__,
                view_func=_view(endpoint),
                methods=[endpoint.route.method],
            )


def _view(endpoint: Endpoint) -> Callable[..., Awaitable[Response]]:
    """The Quart view for ``endpoint``: bounds, auth, rate limit, decoding, encoding."""
    route, handler = endpoint.route, endpoint.handler

    async def view(**path_params: str) -> Response:
        state = get_state()
        for value in path_params.values():
            if len(value) > _MAX_PARAM:
                raise NotFound("no such resource")
        caller = await authenticate(state) if route.auth else None
        # Limits key on the session token hash (or the endpoint for public routes):
        # never on an address, which hushroom does not record.
        if caller is not None:
            wait = max(
                state.limiter.acquire(caller.token_hash, endpoint.rate_cost),
                state.limiter.acquire(("device", caller.device_id), endpoint.rate_cost),
            )
        elif route.proof_of_work is not None:
            try:
                state.proof_of_work.redeem_untrusted(
                    request.headers.get(POW_HEADER), route.proof_of_work, time.time()
                )
            except ProofOfWorkRefused as exc:
                raise ProofOfWorkRequired(str(exc)) from None
            wait = 0.0
        elif endpoint.public_bucket:
            # One bucket per route and path parameters: a flood of made-up provisioning
            # mailbox ids cannot empty the bucket of the mailbox a real device waits on.
            bucket = ("public", route.method, route.path, *path_params.values())
            wait = state.limiter.acquire(bucket, endpoint.rate_cost)
        else:
            wait = 0.0
        if wait:
            raise RateLimited("slow down", retry_after=round(wait, 3))
        payload: dict[str, Any] = {}
        if route.body is not None:
            max_bytes = endpoint.limit or state.config.max_body_bytes
            payload = await decode_body_untrusted(route.body, max_bytes)
        query_args = decode_query_untrusted(route.query)
        result = await handler(Call(state, caller, payload, query_args), **path_params)
        if isinstance(result, Reply):
            return encode_response(result.data, result.status)
        return encode_response(result, route.status)

    view.__name__ = handler.__name__
    return view


async def commit(call: Call, tx: Callable[[Connection], tuple[T, list[Event]]]) -> T:
    """Run the write ``tx`` and, once it has committed, publish the events it returned."""
    result, events = await call.state.db.write(tx)
    for event in events:
        await call.state.bus.publish(event)
    return result


def int_field(doc: str, lo: int, hi: int, required: bool = True) -> Field:
    """Shorthand for a bounded integer field."""
    return Field("int", doc, required=required, min=lo, max=hi)


def id_field(doc: str, required: bool = True, nullable: bool = False) -> Field:
    """Shorthand for an id field."""
    return Field("str", doc, required=required, nullable=nullable, min=1, max=32)
