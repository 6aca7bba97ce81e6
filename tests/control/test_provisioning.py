"""Provisioning mailboxes: opened without an account, filled once by a signed-in device,
read once, gone at their deadline, bounded, and every bad request a 4xx error body."""

from __future__ import annotations

import base64
import os
import time
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from control_harness import DeviceKeys, Harness, b64
from control_live import LiveControl

from contract import signing as sig
from control.api.provisioning import MAX_MESSAGE, MAX_WAIT_S, Mailboxes
from control.app import create_app
from control.config import ControlConfig
from control.errors import Conflict, NotFound, RateLimited

BASE = "/api/v1/provisioning"


def new_id() -> str:
    return os.urandom(16).hex()


def assert_error(status: int, body: Any, expected: int, code: str) -> None:
    assert status == expected, (status, body)
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str)


async def open_box(h: Harness, mailbox_id: str, **extra: Any) -> None:
    status, body = await h.call(
        "POST",
        BASE,
        json={"mailbox_id": mailbox_id, **extra},
        headers=await h.proof("provisioning"),
    )
    assert status == 201, body
    assert body["mailbox_id"] == mailbox_id


# --- the mailbox table (no clock, no I/O) ---------------------------------------------


def test_a_mailbox_holds_one_message_and_is_deleted_when_read() -> None:
    boxes = Mailboxes()
    boxes.open("a" * 32, 600, now=0.0)
    assert boxes.take("a" * 32, now=1.0) is None  # empty: kept
    boxes.deposit("a" * 32, b"sealed", now=2.0)
    with pytest.raises(Conflict):
        boxes.deposit("a" * 32, b"again", now=3.0)
    assert boxes.held_bytes == 6
    assert boxes.take("a" * 32, now=4.0) == b"sealed"
    assert len(boxes) == 0 and boxes.held_bytes == 0
    with pytest.raises(NotFound):
        boxes.take("a" * 32, now=5.0)


def test_a_mailbox_past_its_deadline_is_gone_with_its_message() -> None:
    boxes = Mailboxes()
    boxes.open("b" * 32, 600, now=0.0)
    boxes.deposit("b" * 32, b"x" * 100, now=10.0)
    with pytest.raises(NotFound):
        boxes.take("b" * 32, now=600.0)
    assert len(boxes) == 0 and boxes.held_bytes == 0
    boxes.open("c" * 32, 5, now=0.0)
    assert boxes.expire(now=5.0) == 1


def test_the_table_is_bounded_in_count_and_bytes() -> None:
    boxes = Mailboxes(max_count=2, max_bytes=10)
    boxes.open("1" * 32, 600, now=0.0)
    boxes.open("2" * 32, 600, now=0.0)
    with pytest.raises(RateLimited):
        boxes.open("3" * 32, 600, now=0.0)
    boxes.deposit("1" * 32, b"x" * 8, now=1.0)
    with pytest.raises(RateLimited):
        boxes.deposit("2" * 32, b"x" * 3, now=1.0)
    # Space comes back as mailboxes are read or expire.
    assert boxes.take("1" * 32, now=2.0) == b"x" * 8
    boxes.deposit("2" * 32, b"x" * 3, now=2.0)
    boxes.open("3" * 32, 600, now=2.0)
    with pytest.raises(Conflict):
        boxes.open("3" * 32, 600, now=2.0)


# --- the routes ----------------------------------------------------------------------


async def test_link_through_a_mailbox_read_once(harness: Harness) -> None:
    owner = await harness.register("owner")
    mailbox = new_id()
    await open_box(harness, mailbox)
    status, body = await harness.call("GET", f"{BASE}/{mailbox}")
    assert status == 200 and body["message"] is None and 0 < body["expires_in"] <= 600

    status, _ = await harness.call(
        "PUT", f"{BASE}/{mailbox}", owner, json={"message": b64(b"sealed provisioning")}
    )
    assert status == 204
    status, body = await harness.call(
        "PUT", f"{BASE}/{mailbox}", owner, json={"message": b64(b"a second one")}
    )
    assert_error(status, body, 409, "conflict")

    status, body = await harness.call("GET", f"{BASE}/{mailbox}")
    assert status == 200 and base64.b64decode(body["message"]) == b"sealed provisioning"
    # Read once: the mailbox went with its message.
    status, body = await harness.call("GET", f"{BASE}/{mailbox}")
    assert_error(status, body, 404, "not_found")
    status, body = await harness.call(
        "PUT", f"{BASE}/{mailbox}", owner, json={"message": b64(b"late")}
    )
    assert_error(status, body, 404, "not_found")


async def test_a_long_poll_returns_as_soon_as_the_message_arrives(harness: Harness) -> None:
    owner = await harness.register("owner")
    mailbox = new_id()
    await open_box(harness, mailbox)
    got: list[tuple[int, Any]] = []

    async def poll() -> None:
        got.append(await harness.call("GET", f"{BASE}/{mailbox}", query={"wait": MAX_WAIT_S}))

    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(poll)
        await trio.testing.wait_all_tasks_blocked()
        status, _ = await harness.call(
            "PUT", f"{BASE}/{mailbox}", owner, json={"message": b64(b"here")}
        )
        assert status == 204
    ((status, body),) = got
    assert status == 200 and base64.b64decode(body["message"]) == b"here"
    assert time.monotonic() - started < MAX_WAIT_S / 2


async def test_an_expired_mailbox_answers_404_and_is_forgotten(harness: Harness) -> None:
    owner = await harness.register("owner")
    mailbox = new_id()
    await open_box(harness, mailbox, expires_in=1)
    # The long poll ends at the mailbox's deadline, not at its own wait.
    started = time.monotonic()
    status, body = await harness.call("GET", f"{BASE}/{mailbox}", query={"wait": 10})
    assert_error(status, body, 404, "not_found")
    assert time.monotonic() - started < 5
    status, body = await harness.call(
        "PUT", f"{BASE}/{mailbox}", owner, json={"message": b64(b"too late")}
    )
    assert_error(status, body, 404, "not_found")


async def test_deposits_need_a_session_and_respect_the_size_limit(harness: Harness) -> None:
    owner = await harness.register("owner")
    mailbox = new_id()
    await open_box(harness, mailbox)
    status, body = await harness.call("PUT", f"{BASE}/{mailbox}", json={"message": b64(b"x")})
    assert_error(status, body, 401, "unauthorized")
    status, body = await harness.call(
        "PUT", f"{BASE}/{mailbox}", owner, json={"message": b64(b"x" * (MAX_MESSAGE + 1))}
    )
    assert_error(status, body, 400, "invalid_body")
    status, body = await harness.call(
        "PUT", f"{BASE}/{mailbox}", owner, json={"message": b64(b"x" * (MAX_MESSAGE * 2))}
    )
    assert_error(status, body, 413, "payload_too_large")
    # The largest message fits, and the refused ones left the mailbox empty.
    status, body = await harness.call(
        "PUT", f"{BASE}/{mailbox}", owner, json={"message": b64(b"x" * MAX_MESSAGE)}
    )
    assert status == 204, body


async def test_malformed_requests_are_4xx_error_bodies(harness: Harness) -> None:
    mailbox = new_id()
    bad_opens: list[Any] = [
        {},
        {"mailbox_id": "not hex at all, not 32 digits!!"},
        {"mailbox_id": mailbox.upper()},
        {"mailbox_id": mailbox, "expires_in": 0},
        {"mailbox_id": mailbox, "expires_in": 601},
        {"mailbox_id": mailbox, "surprise": 1},
        {"mailbox_id": 7},
    ]
    for body in bad_opens:
        proof = await harness.proof("provisioning")
        status, reply = await harness.call("POST", BASE, json=body, headers=proof)
        assert_error(status, reply, 400, "invalid_body")
    await open_box(harness, mailbox)
    proof = await harness.proof("provisioning")
    status, reply = await harness.call("POST", BASE, json={"mailbox_id": mailbox}, headers=proof)
    assert_error(status, reply, 409, "conflict")
    for path, code in (
        (f"{BASE}/nothex", 400),
        (f"{BASE}/{'z' * 32}", 400),
        (f"{BASE}/{new_id()}", 404),
        (f"{BASE}/{'a' * 65}", 404),
    ):
        status, reply = await harness.call("GET", path)
        assert 400 <= status < 500 and status == code, (path, status, reply)
        assert set(reply) == {"error"}
    for query in ({"wait": -1}, {"wait": MAX_WAIT_S + 1}, {"wait": "soon"}, {"other": 1}):
        status, reply = await harness.call("GET", f"{BASE}/{mailbox}", query=query)
        assert_error(status, reply, 400, "invalid_body")
    status, reply = await harness.call(
        "POST",
        BASE,
        data=b"\xc1 not msgpack",
        headers={"Content-Type": "application/msgpack", **await harness.proof("provisioning")},
    )
    assert_error(status, reply, 400, "invalid_body")


async def test_the_new_device_may_close_its_mailbox(harness: Harness) -> None:
    mailbox = new_id()
    await open_box(harness, mailbox)
    status, _ = await harness.call("DELETE", f"{BASE}/{mailbox}")
    assert status == 204
    status, reply = await harness.call("DELETE", f"{BASE}/{mailbox}")
    assert_error(status, reply, 404, "not_found")


@pytest.mark.slow
async def test_mailboxes_leave_no_trace_in_the_store_or_the_log(tmp_path: Path) -> None:
    """A real process: the ciphertext and the mailbox id never reach the database or log."""
    server = LiveControl(tmp_path / "data", tmp_path / "control.log")
    try:
        marker = b"provisioning-marker-" + os.urandom(8).hex().encode()
        mailbox = new_id()
        status, body = await server.call(
            "POST", BASE, body={"mailbox_id": mailbox}, proof="provisioning"
        )
        assert status == 201, body
        # Deposits need an account: register one the way a client does.
        token = await _register(server)
        status, _ = await server.call("PUT", f"{BASE}/{mailbox}", token, {"message": b64(marker)})
        assert status == 204
        status, body = await server.call("GET", f"{BASE}/{mailbox}?wait=1")
        assert status == 200 and base64.b64decode(body["message"]) == marker
        status, body = await server.call("GET", f"{BASE}/{mailbox}")
        assert status == 404 and set(body) == {"error"}
    finally:
        server.stop()
    stored = b"".join(p.read_bytes() for p in (tmp_path / "data").glob("control.sqlite3*"))
    log = (tmp_path / "control.log").read_bytes()
    for haystack in (stored, log):
        assert marker not in haystack and base64.b64encode(marker) not in haystack
        assert mailbox.encode() not in haystack


async def _register(server: LiveControl) -> str:
    keys = DeviceKeys()
    status, body = await server.call("POST", "/api/v1/auth/challenge", body={}, proof="challenge")
    assert status == 200, body
    challenge = base64.b64decode(body["challenge"])
    message = sig.register_message(challenge, keys.identity_key, "linker")
    status, body = await server.call(
        "POST",
        "/api/v1/users",
        proof="register",
        body={
            "handle": "linker",
            "identity_key": b64(keys.identity_key),
            "challenge": b64(challenge),
            "signature": b64(keys.sign(message)),
            **keys.bundle(),
        },
    )
    assert status == 201, body
    return str(body["token"])


async def test_an_open_mailbox_does_not_hold_the_shutdown(config: ControlConfig) -> None:
    # Its deadline task (owned by the app's nursery) used to sleep on through Quart's
    # 5 s grace for background tasks: every stop with a link code out took 5 s more.
    app = create_app(config)
    async with app.test_app():
        await open_box(Harness(app), new_id())
        stopping = trio.current_time()
    assert trio.current_time() - stopping < 2.0
