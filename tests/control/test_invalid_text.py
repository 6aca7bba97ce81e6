"""Strings that are not Unicode text (lone surrogates, invalid UTF-8) get 400, never 500."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest
from control_harness import API, Harness, User, make_guild

#: A JSON body whose string holds the escape of a lone surrogate.
ESCAPED = b'"\\ud800"'
#: The same surrogate as raw (CESU-style) UTF-8 bytes, which Python's JSON decoder admits.
RAW = b'"\xed\xa0\x80"'


async def _send(h: Harness, user: User, method: str, path: str, body: bytes) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    return await h.call(method, path, user, data=body, headers=headers)


def _body(template: dict[str, Any], bad: bytes) -> bytes:
    """``template`` as JSON with the string ``"BAD"`` (wherever it is) replaced by ``bad``."""
    return json.dumps(template).encode().replace(b'"BAD"', bad)


async def _cases(h: Harness) -> list[tuple[str, str, dict[str, Any], User]]:
    ann, bob = await h.register("ann"), await h.register("bob")
    guild = await make_guild(h, ann, bob)
    gid, general = guild["id"], guild["channels"][0]["id"]
    envelope = {"recipients": [{"user_id": "BAD", "devices": []}]}
    return [
        ("POST", f"{API}/guilds", {"name": "BAD"}, ann),
        ("PATCH", f"{API}/guilds/{gid}", {"name": "BAD"}, ann),
        ("PATCH", f"{API}/channels/{general}", {"topic": "BAD"}, ann),
        ("POST", f"{API}/guilds/{gid}/channels", {"name": "BAD"}, ann),
        ("POST", f"{API}/guilds/{gid}/roles", {"name": "BAD", "permissions": 0}, ann),
        ("POST", f"{API}/envelopes", envelope, ann),
        ("POST", f"{API}/envelopes/batch", {"sends": [envelope]}, ann),
        ("POST", f"{API}/envelopes/ack", {"ids": ["BAD"]}, bob),
        ("POST", f"{API}/guilds/{gid}/transfer", {"owner_id": "BAD"}, ann),
    ]


@pytest.mark.parametrize("bad", [ESCAPED, RAW], ids=["escape", "raw-bytes"])
async def test_lone_surrogates_in_json_bodies_are_a_400(harness: Harness, bad: bytes) -> None:
    for method, path, template, user in await _cases(harness):
        status, body = await _send(harness, user, method, path, _body(template, bad))
        assert status == 400, (method, path, status, body)
        assert body["error"]["code"] == "invalid_body", body
        assert "Unicode" in body["error"]["message"], body


async def test_invalid_utf8_in_msgpack_bodies_is_a_400(harness: Harness) -> None:
    ann = await harness.register("ann")
    marker = "\x7f" * 3
    body = msgpack.packb({"name": marker}).replace(marker.encode(), b"\xed\xa0\x80")
    for raw in (body, body.replace(b"\xed\xa0\x80", b"\xff\xfe\x80")):
        status, reply = await harness.call(
            "POST",
            f"{API}/guilds",
            ann,
            data=raw,
            headers={"Content-Type": "application/msgpack"},
        )
        assert status == 400 and reply["error"]["code"] == "invalid_body", reply


async def test_paths_and_query_strings_that_are_not_text_are_a_400(harness: Harness) -> None:
    ann = await harness.register("ann")
    targets = [
        {"path": f"{API}/guilds/\ud800"},
        {"path": f"{API}/users/\udfff/keys/claim"},
        {"path": f"{API}/envelopes", "query_string": b"limit=\xed\xa0\x80"},
        {"path": f"{API}/envelopes", "query_string": b"\xff=1"},
    ]
    for scope in targets:
        method = "POST" if scope["path"].endswith("claim") else "GET"
        response = await harness.client.open(
            f"{API}/envelopes", method=method, headers=ann.auth, json={}, scope_base=scope
        )
        reply = json.loads(await response.get_data())
        assert response.status_code == 400, (scope, reply)
        assert reply["error"]["code"] == "bad_request", reply


async def test_valid_text_outside_the_bmp_still_passes(harness: Harness) -> None:
    ann = await harness.register("ann")
    pair = b'{"name": "\\ud83d\\ude00"}'
    status, guild = await _send(harness, ann, "POST", f"{API}/guilds", pair)
    assert status == 201 and guild["name"] == "\U0001f600", guild
    encoded = json.dumps({"name": "caf\u00e9 \U0001f600"}, ensure_ascii=False).encode()
    status, guild = await _send(harness, ann, "POST", f"{API}/guilds", encoded)
    assert status == 201 and guild["name"] == "caf\u00e9 \U0001f600", guild
