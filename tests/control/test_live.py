"""Integration: the real control process on loopback (durability, privacy, gateway)."""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
from control_harness import DeviceKeys, b64
from control_live import LiveControl
from nacl.secret import SecretBox
from trio_websocket import open_websocket_url

from contract import signing as sig
from hushroom.secrets_file import ensure_secret_file

pytestmark = pytest.mark.slow
API = "/api/v1"


async def register(live: LiveControl, handle: str) -> dict[str, Any]:
    keys = DeviceKeys()
    _, challenge = await live.call("POST", f"{API}/auth/challenge", body={}, proof="challenge")
    raw = base64.b64decode(challenge["challenge"])
    status, body = await live.call(
        "POST",
        f"{API}/users",
        proof="register",
        body={
            "handle": handle,
            "identity_key": b64(keys.identity_key),
            "challenge": challenge["challenge"],
            "signature": b64(keys.sign(sig.register_message(raw, keys.identity_key, handle))),
            **keys.bundle(),
        },
    )
    assert status == 201, body
    return {"id": body["user"]["id"], "device": body["device"]["id"], "token": body["token"]}


def envelope_to(user: dict[str, Any], ciphertext: bytes) -> dict[str, Any]:
    return {
        "recipients": [
            {
                "user_id": user["id"],
                "devices": [{"device_id": user["device"], "ciphertext": b64(ciphertext)}],
            }
        ]
    }


def _read_store_and_log(data_dir: Path, log_path: Path) -> tuple[bytes, bytes]:
    """The database file (with WAL and shared memory) and the whole log, as bytes."""
    stored = b"".join(p.read_bytes() for p in sorted(data_dir.glob("control.sqlite3*")))
    return stored, log_path.read_bytes()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    ensure_secret_file(path / "node-secret")
    return path


async def test_envelopes_survive_kill_9_between_2xx_and_delivery(
    data_dir: Path, tmp_path: Path
) -> None:
    live = LiveControl(data_dir, tmp_path / "control.log")
    try:
        ann, bob = await register(live, "ann"), await register(live, "bob")
        ids = []
        for i in range(20):
            status, body = await live.call(
                "POST", f"{API}/envelopes", ann["token"], envelope_to(bob, b"durable-%d" % i)
            )
            assert status == 201
            ids.append(body["envelopes"][0]["id"])
    finally:
        live.kill()
    again = LiveControl(data_dir, tmp_path / "control.log")
    try:
        status, queued = await again.call("GET", f"{API}/envelopes", bob["token"])
        assert status == 200
        assert [q["id"] for q in queued] == ids, "all of them, in the order they were sent"
    finally:
        assert again.stop() == 0


async def test_store_and_logs_hold_no_plaintext_and_no_address(
    data_dir: Path, tmp_path: Path
) -> None:
    log_path = tmp_path / "control.log"
    live = LiveControl(data_dir, log_path)
    markers = [f"PLAINTEXT-MARKER-{os.urandom(6).hex()}" for _ in range(3)]
    # A key only the clients hold: the server sees nothing but SecretBox ciphertext.
    box = SecretBox(os.urandom(32))
    try:
        ann, bob = await register(live, "ann"), await register(live, "bob")
        status, guild = await live.call("POST", f"{API}/guilds", ann["token"], {"name": "club"})
        general = guild["channels"][0]["id"]
        _, invite = await live.call("POST", f"{API}/channels/{general}/invites", ann["token"], {})
        await live.call("POST", f"{API}/invites/{invite['code']}", bob["token"], {})
        async with open_websocket_url(live.ws_url) as ws:
            msgpack.unpackb(await ws.get_message())
            await ws.send_message(msgpack.packb({"op": 2, "d": {"token": bob["token"]}}))
            await live.call(
                "POST",
                f"{API}/channels/{general}/messages",
                ann["token"],
                {"ciphertext": b64(box.encrypt(markers[0].encode()))},
            )
            await live.call(
                "POST",
                f"{API}/envelopes",
                ann["token"],
                envelope_to(bob, box.encrypt(markers[1].encode())),
            )
            seen = set()
            with trio.fail_after(10):
                while not {"MESSAGE_CREATE", "ENVELOPE_CREATE"} <= seen:
                    frame = msgpack.unpackb(await ws.get_message())
                    seen.add(frame.get("t"))
        status, _ = await live.call(
            "POST",
            f"{API}/envelopes",
            bob["token"],
            envelope_to(ann, box.encrypt(markers[2].encode())),
        )
        assert status == 201
        await live.call("GET", f"{API}/users/@me/export", bob["token"])
    finally:
        assert live.stop() == 0
    stored, log = _read_store_and_log(data_dir, log_path)
    assert b"ann" in stored, "the scan reads the real database"
    for marker in markers:
        assert marker.encode() not in stored
        assert marker.encode() not in log
    for text in (b"127.0.0.1", b"localhost", b"User-Agent", b"python-urllib"):
        assert text not in stored
        assert text.lower() not in log.lower(), text
