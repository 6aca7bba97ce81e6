"""The error model: one body shape, right statuses, JSON and msgpack, never a 5xx."""

from __future__ import annotations

import base64
import json
import re
import secrets
from pathlib import Path
from typing import Any

import msgpack
import trio
from control_harness import Harness, make_config
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from control.api import build_api
from control.api._routing import PREFIX
from control.api.openapi import openapi_document
from control.app import create_app


def assert_error(status: int, body: Any, expected: int, code: str | None = None) -> None:
    assert status == expected, (status, body)
    assert set(body) == {"error"}
    assert isinstance(body["error"]["code"], str) and isinstance(body["error"]["message"], str)
    if code is not None:
        assert body["error"]["code"] == code


async def test_unknown_route_is_a_json_404(harness: Harness) -> None:
    status, body = await harness.call("GET", "/api/v1/nothing-here")
    assert_error(status, body, 404, "not_found")


async def test_wrong_method_is_a_405_with_the_error_body(harness: Harness) -> None:
    status, body = await harness.call("DELETE", "/api/v1/auth/challenge")
    assert_error(status, body, 405, "method_not_allowed")


async def test_malformed_json_is_a_400(harness: Harness) -> None:
    status, body = await harness.call(
        "POST",
        "/api/v1/auth/challenge",
        data=b"{nope",
        headers={"Content-Type": "application/json", **await harness.proof("challenge")},
    )
    assert_error(status, body, 400, "invalid_body")


async def test_unknown_fields_are_refused(harness: Harness) -> None:
    status, body = await harness.call(
        "POST",
        "/api/v1/auth/challenge",
        json={"extra": 1},
        headers=await harness.proof("challenge"),
    )
    assert_error(status, body, 400, "invalid_body")
    assert "extra" in body["error"]["message"]


async def test_wrong_types_are_refused(harness: Harness) -> None:
    status, body = await harness.call(
        "POST", "/api/v1/auth/login", json={"identity_key": 5, "challenge": "", "signature": []}
    )
    assert_error(status, body, 400, "invalid_body")


async def test_other_media_types_are_a_415(harness: Harness) -> None:
    status, body = await harness.call(
        "POST",
        "/api/v1/auth/challenge",
        data=b"a=b",
        headers={"Content-Type": "text/plain", **await harness.proof("challenge")},
    )
    assert_error(status, body, 415, "unsupported_media_type")


async def test_huge_bodies_are_a_413(harness: Harness) -> None:
    big = b"[" + b"0," * 200_000 + b"0]"
    status, body = await harness.call(
        "POST",
        "/api/v1/auth/challenge",
        data=big,
        headers={"Content-Type": "application/json", **await harness.proof("challenge")},
    )
    assert_error(status, body, 413, "payload_too_large")


async def test_msgpack_in_and_out(harness: Harness) -> None:
    status, body = await harness.call(
        "POST",
        "/api/v1/auth/challenge",
        data=msgpack.packb({}),
        headers={
            "Content-Type": "application/msgpack",
            "Accept": "application/msgpack",
            **await harness.proof("challenge"),
        },
    )
    assert status == 200
    assert isinstance(body["challenge"], bytes) and len(body["challenge"]) == 32


async def test_msgpack_errors_are_msgpack_error_bodies(harness: Harness) -> None:
    status, body = await harness.call(
        "POST",
        "/api/v1/auth/challenge",
        data=b"\xc1",
        headers={
            "Content-Type": "application/msgpack",
            "Accept": "application/msgpack",
            **await harness.proof("challenge"),
        },
    )
    assert_error(status, body, 400, "invalid_body")


async def test_json_nan_is_refused(harness: Harness) -> None:
    status, body = await harness.call(
        "POST",
        "/api/v1/auth/login",
        data=b'{"identity_key": NaN}',
        headers={"Content-Type": "application/json"},
    )
    assert_error(status, body, 400, "invalid_body")


async def test_rate_limit_is_per_token(tmp_path: Any) -> None:
    app = create_app(make_config(tmp_path, rate_per_s=1.0, rate_burst=3))
    async with app.test_app():
        harness = Harness(app)
        # Registration itself spends the public buckets; give them time by using one user.
        ann = await harness.register("ann")
        statuses = [(await harness.call("GET", "/api/v1/users/@me", ann))[0] for _ in range(5)]
        assert 429 in statuses
        status, body = await harness.call("GET", "/api/v1/users/@me", ann)
        assert_error(status, body, 429, "rate_limited")


async def test_openapi_document_lists_every_route(harness: Harness) -> None:
    status, doc = await harness.call("GET", "/api/v1/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.1")
    api_rules = {
        (method, rule.rule)
        for rule in harness.app.url_map.iter_rules()
        if rule.rule.startswith("/api/v1/") and rule.rule != "/api/v1/openapi.json"
        for method in rule.methods or ()
        if method not in ("HEAD", "OPTIONS")
    }
    documented = {
        (method.upper(), path.replace("{", "<").replace("}", ">"))
        for path, ops in doc["paths"].items()
        for method in ops
    }
    assert api_rules - {("GET", "/api/v1/gateway")} == documented


# --- fuzzing every documented endpoint -------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def _routes(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    out = []
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            out.append((method.upper(), path, op))
    return out


_FUZZ_PARAMS = (
    "user_id",
    "device_id",
    "guild_id",
    "channel_id",
    "role_id",
    "message_id",
    "code",
    "handle",
    "envelope_id",
    "target_id",
)


async def _fuzz_case(
    data_dir: Path, user: dict[str, str], route: tuple[str, str], body: bytes, ctype: str
) -> tuple[int, Any]:
    """Start the app on ``data_dir`` and send one fuzzed request to ``route``."""
    app = create_app(make_config(data_dir, rate_per_s=1e9, rate_burst=10**9))
    async with app.test_app():
        harness = Harness(app)
        if not user:
            registered = await harness.register("fuzz")
            user.update(token=registered.token, id=registered.id, device=registered.device_id)
        method, path = route
        for name in _FUZZ_PARAMS:
            path = path.replace("{" + name + "}", user["id"] if name == "user_id" else "x0")
        return await harness.call(
            method,
            path,
            data=body,
            headers={"Content-Type": ctype, "Authorization": f"Bearer {user['token']}"},
        )


def _documented_routes() -> list[tuple[str, str]]:
    api = build_api()
    doc = openapi_document(api)
    return sorted((method.upper(), path) for path, ops in doc["paths"].items() for method in ops)


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    route=st.sampled_from(_documented_routes()),
    kind=st.sampled_from(["json", "msgpack", "garbage", "unknown", "huge"]),
    value=json_values,
    garbage=st.binary(min_size=1, max_size=64),
    garbage_type=st.sampled_from(["application/json", "application/msgpack"]),
)
def test_fuzzed_bodies_never_cause_a_server_error(
    tmp_path: Path,
    route: tuple[str, str],
    kind: str,
    value: Any,
    garbage: bytes,
    garbage_type: str,
) -> None:
    if kind == "json":
        body, ctype = json.dumps(value).encode(), "application/json"
    elif kind == "msgpack":
        try:
            body, ctype = msgpack.packb(value), "application/msgpack"
        except OverflowError:
            assume(False)  # integers beyond 64 bits have no msgpack form (JSON covers them)
    elif kind == "garbage":
        body, ctype = garbage, garbage_type
    elif kind == "unknown":
        body, ctype = json.dumps({"surprise": value}).encode(), "application/json"
    else:
        body, ctype = b'"' + b"a" * 300_000 + b'"', "application/json"
    user = _FUZZ_USERS.setdefault(str(tmp_path), {})
    status, reply = trio.run(_fuzz_case, tmp_path, user, route, body, ctype)
    assert status < 500, (route, status, reply)
    if status >= 400:
        assert set(reply) == {"error"}, reply


#: One registered user per test directory, shared by the examples of one run.
_FUZZ_USERS: dict[str, dict[str, str]] = {}


def _filled(schema: dict[str, Any], text: str) -> Any:
    """A value of the JSON ``schema`` whose every string (not base64) field is ``text``."""
    kind = schema["type"]
    if isinstance(kind, list):
        kind = kind[0]
    if kind == "object":
        return {name: _filled(sub, text) for name, sub in schema["properties"].items()}
    if kind == "array":
        return [_filled(schema["items"], text)] * max(1, schema.get("minItems", 1))
    if kind == "string" and schema.get("contentEncoding") == "base64":
        return base64.b64encode(b"x" * max(1, schema.get("x-min-bytes", 1))).decode()
    if kind == "string":
        return text
    if kind == "integer":
        return schema["minimum"]
    return True


def _has_text(schema: dict[str, Any]) -> bool:
    kind = schema["type"]
    if isinstance(kind, list):
        kind = kind[0]
    if kind == "object":
        return any(_has_text(sub) for sub in schema["properties"].values())
    if kind == "array":
        return _has_text(schema["items"])
    return kind == "string" and "contentEncoding" not in schema


def _body_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    doc = openapi_document(build_api())
    return {
        (method.upper(), path): op["requestBody"]["content"]["application/json"]["schema"]
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
        if "requestBody" in op
    }


_BODY_SCHEMAS = _body_schemas()
#: Anonymous routes that charge a proof of work, by (method, path), with its purpose: the
#: fuzz pays it so the body is what gets judged.
_PROOF_OF_WORK = {
    (route.method, PREFIX + route.path): route.proof_of_work.value
    for route in build_api().routes
    if route.proof_of_work is not None
}
#: Text holding one lone surrogate (hypothesis' text() never yields surrogates itself, so
#: JSON cannot pair it with a neighbour into a valid character).
lone_surrogate_text = st.builds(
    lambda before, surrogate, after: before + surrogate + after,
    st.text(max_size=4),
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
    st.text(max_size=4),
)
#: Byte strings that are not UTF-8, led by the encoded surrogate ED A0 80.
invalid_utf8 = st.just(b"\xed\xa0\x80") | st.binary(min_size=1, max_size=8).filter(
    lambda data: not _decodes(data)
)


def _decodes(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


async def _invalid_text_case(
    data_dir: Path, route: tuple[str, str], body: bytes, ctype: str, path: str
) -> tuple[int, Any]:
    """Send ``body`` to ``route`` (at ``path`` when given: an ASGI path with no UTF-8 form)
    as a newly registered user (an earlier example may have signed out or erased one)."""
    app = create_app(make_config(data_dir, rate_per_s=1e9, rate_burst=10**9))
    async with app.test_app():
        harness = Harness(app)
        user = await harness.register(f"fuzz{secrets.token_hex(4)}")
        method, template = route
        for name in _FUZZ_PARAMS:
            template = template.replace("{" + name + "}", "x0")
        proof = (route in _PROOF_OF_WORK and await harness.proof(_PROOF_OF_WORK[route])) or {}
        response = await harness.client.open(
            template,
            method=method,
            data=body,
            headers={"Content-Type": ctype, **user.auth, **proof},
            scope_base={"path": path} if path else None,
        )
        raw = await response.get_data()
        return response.status_code, json.loads(raw) if raw else None


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    route=st.sampled_from(_documented_routes()),
    kind=st.sampled_from(["json-escape", "json-raw", "msgpack-raw", "path"]),
    text=lone_surrogate_text,
    raw=invalid_utf8,
)
def test_text_that_is_not_unicode_is_a_400_on_every_route(
    tmp_path: Path, route: tuple[str, str], kind: str, text: str, raw: bytes
) -> None:
    schema = _BODY_SCHEMAS.get(route, {"type": "object", "properties": {}})
    path = ""
    expected: tuple[int, str] | None = None
    if kind == "path":
        assume("{" in route[1])
        path = re.sub(r"\{\w+\}", lambda _: text, route[1])
        body, ctype, expected = b"{}", "application/json", (400, "bad_request")
    elif kind == "msgpack-raw":
        # msgpack cannot pack invalid UTF-8: pack a same-length stand-in, then swap the bytes.
        stand_in = "\x7f" * len(raw)
        body = msgpack.packb(_filled(schema, stand_in) or {"name": stand_in})
        # Routes without a body never read one, and a body without text fields (say, only
        # integers) carries no stand-in to swap: only where the bytes land is 400 owed.
        if route in _BODY_SCHEMAS and stand_in.encode() in body:
            expected = (400, "invalid_body")
        body, ctype = body.replace(stand_in.encode(), raw), "application/msgpack"
    else:
        value = _filled(schema, text)
        # ensure_ascii writes the surrogate as a \\udXXX escape; surrogatepass as raw bytes.
        if kind == "json-escape":
            body = json.dumps(value).encode()
        else:
            body = json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")
        ctype = "application/json"
        if _has_text(schema):
            expected = (400, "invalid_body")
    status, reply = trio.run(_invalid_text_case, tmp_path, route, body, ctype, path)
    assert status < 500, (route, kind, status, reply)
    if expected is not None:
        assert (status, reply["error"]["code"]) == expected, (route, kind, reply)
