"""Helpers for control-plane tests: a client-side device, a user, the API harness."""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
from nacl.signing import SigningKey
from quart_trio import QuartTrio

from contract import proof_of_work as pow_
from contract import signing as sig
from control.config import ControlConfig
from hushroom.secrets_file import ensure_secret_file

API = "/api/v1"


def b64(data: bytes) -> str:
    """Standard base64, as the JSON API carries bytes."""
    return base64.b64encode(data).decode()


@dataclass
class DeviceKeys:
    """A device's key material as a client would hold it."""

    signing: SigningKey = field(default_factory=SigningKey.generate)
    next_otk: int = 1

    @property
    def identity_key(self) -> bytes:
        return bytes(self.signing.verify_key)

    def sign(self, message: bytes) -> bytes:
        return self.signing.sign(message).signature

    def bundle(self, otks: int = 5, pq_otks: int = 0) -> dict[str, Any]:
        """A prekey body with ``otks`` one-time prekeys and ``pq_otks`` signed one-time PQ
        prekeys (random bytes: the server checks signatures, not key material); key ids
        are unique over both kinds, as e2ee draws them."""
        spk, pq = os.urandom(32), os.urandom(sig.PQ_PUBLIC_KEY_LEN)
        one_time = []
        for _ in range(otks):
            one_time.append({"key_id": self.next_otk, "public_key": b64(os.urandom(32))})
            self.next_otk += 1
        pq_one_time = []
        for _ in range(pq_otks):
            key = os.urandom(sig.PQ_PUBLIC_KEY_LEN)
            signature = self.sign(sig.pq_one_time_prekey_message(self.next_otk, key))
            pq_one_time.append(
                {"key_id": self.next_otk, "public_key": b64(key), "signature": b64(signature)}
            )
            self.next_otk += 1
        return {
            "signed_prekey": {
                "key_id": 1,
                "public_key": b64(spk),
                "signature": b64(self.sign(sig.signed_prekey_message(1, spk))),
            },
            "pq_prekey": {
                "key_id": 1,
                "public_key": b64(pq),
                "signature": b64(self.sign(sig.pq_prekey_message(1, pq))),
            },
            "one_time_prekeys": one_time,
            "pq_one_time_prekeys": pq_one_time,
        }


@dataclass
class User:
    """A registered user with one signed-in device."""

    id: str
    handle: str
    device_id: str
    token: str
    keys: DeviceKeys

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def solved_proof(seed: bytes, difficulty: int) -> dict[str, str]:
    """The proof-of-work header solving ``seed`` (as the SDK does, without a thread)."""
    return {pow_.HEADER: pow_.encode_proof(seed, pow_.solve(seed, difficulty))}


class Harness:
    """The app under test plus helpers speaking its API."""

    def __init__(self, app: QuartTrio) -> None:
        self.app = app
        self.client = app.test_client()

    async def call(
        self,
        method: str,
        path: str,
        user: User | None = None,
        json: Any = None,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
        query: dict[str, Any] | None = None,
    ) -> tuple[int, Any]:
        """Send a request; return the status and the decoded body (None when empty)."""
        all_headers = dict(headers or {})
        if user is not None:
            all_headers.update(user.auth)
        kwargs: dict[str, Any] = {"headers": all_headers}
        if json is not None:
            kwargs["json"] = json
        if data is not None:
            kwargs["data"] = data
        if query is not None:
            kwargs["query_string"] = query
        response = await self.client.open(path, method=method, **kwargs)
        raw = await response.get_data()
        if not raw:
            return response.status_code, None
        if response.content_type == "application/msgpack":
            return response.status_code, msgpack.unpackb(raw)
        assert response.content_type == "application/json", response.content_type
        return response.status_code, __import__("json").loads(raw)

    async def proof(self, purpose: str) -> dict[str, str]:
        """The proof-of-work header for one anonymous request of ``purpose``."""
        status, body = await self.call(
            "POST", "/api/v1/auth/proof-of-work", json={"purpose": purpose}
        )
        assert status == 200, body
        return solved_proof(base64.b64decode(body["seed"]), body["difficulty"])

    async def challenge(self) -> bytes:
        status, body = await self.call(
            "POST", "/api/v1/auth/challenge", json={}, headers=await self.proof("challenge")
        )
        assert status == 200, body
        return base64.b64decode(body["challenge"])

    async def register(self, handle: str, otks: int = 5, pq_otks: int = 0) -> User:
        keys = DeviceKeys()
        challenge = await self.challenge()
        signature = keys.sign(sig.register_message(challenge, keys.identity_key, handle))
        status, body = await self.call(
            "POST",
            "/api/v1/users",
            headers=await self.proof("register"),
            json={
                "handle": handle,
                "identity_key": b64(keys.identity_key),
                "challenge": b64(challenge),
                "signature": b64(signature),
                **keys.bundle(otks, pq_otks),
            },
        )
        assert status == 201, body
        return User(body["user"]["id"], handle, body["device"]["id"], body["token"], keys)

    async def add_device(self, user: User, otks: int = 5, pq_otks: int = 0) -> User:
        """Add and sign in a second device of ``user``; return it as a User view."""
        keys = DeviceKeys()
        challenge = await self.challenge()
        signature = keys.sign(sig.add_device_message(challenge, keys.identity_key, user.id))
        status, body = await self.call(
            "POST",
            "/api/v1/users/@me/devices",
            user,
            json={
                "identity_key": b64(keys.identity_key),
                "challenge": b64(challenge),
                "signature": b64(signature),
                **keys.bundle(otks, pq_otks),
            },
        )
        assert status == 201, body
        return await self.login(keys, user.handle)

    async def login(self, keys: DeviceKeys, handle: str) -> User:
        challenge = await self.challenge()
        signature = keys.sign(sig.login_message(challenge, keys.identity_key))
        status, body = await self.call(
            "POST",
            "/api/v1/auth/login",
            json={
                "identity_key": b64(keys.identity_key),
                "challenge": b64(challenge),
                "signature": b64(signature),
            },
        )
        assert status == 200, body
        return User(body["user_id"], handle, body["device_id"], body["token"], keys)


def make_config(tmp_path: Path, **overrides: Any) -> ControlConfig:
    """A configuration rooted in ``tmp_path`` with its node secret created."""
    data_dir = tmp_path / "data"
    ensure_secret_file(data_dir / "node-secret")
    return ControlConfig(listen="127.0.0.1:0", data_dir=data_dir, **overrides)


class GatewayClient:
    """A test-client gateway connection speaking msgpack frames."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.seq = 0
        self.session_id: str | None = None

    async def send(self, op: int, d: Any = None) -> None:
        await self.ws.send(msgpack.packb({"op": op, "d": d}))

    async def receive(self, wait: float = 5.0) -> dict[str, Any]:
        import trio

        with trio.fail_after(wait):
            frame = msgpack.unpackb(await self.ws.receive())
        if frame.get("s") is not None:
            self.seq = frame["s"]
        return frame  # type: ignore[no-any-return]

    async def dispatch(self, event_type: str, wait: float = 5.0) -> dict[str, Any]:
        """The next dispatch of ``event_type`` (skipping others)."""
        while True:
            frame = await self.receive(wait)
            if frame["op"] == 0 and frame["t"] == event_type:
                return frame["d"]  # type: ignore[no-any-return]

    async def nothing(self, wait: float = 0.2) -> list[dict[str, Any]]:
        """Frames that arrive within ``wait`` (expected to be none of interest)."""
        import trio

        frames = []
        with trio.move_on_after(wait):
            while True:
                frames.append(msgpack.unpackb(await self.ws.receive()))
        return frames

    async def identify(self, user: User) -> dict[str, Any]:
        hello = await self.receive()
        assert hello["op"] == 10 and hello["d"]["heartbeat_interval"] > 0
        await self.send(2, {"token": user.token})
        ready = await self.dispatch("READY")
        self.session_id = ready["session_id"]
        return ready


async def make_guild(h: Harness, owner: User, *members: User) -> dict[str, Any]:
    status, guild = await h.call("POST", f"{API}/guilds", owner, json={"name": "club"})
    assert status == 201, guild
    general = guild["channels"][0]["id"]
    status, invite = await h.call("POST", f"{API}/channels/{general}/invites", owner, json={})
    assert status == 201, invite
    for member in members:
        status, body = await h.call("POST", f"{API}/invites/{invite['code']}", member, json={})
        assert status == 200, body
    return guild


async def new_role(h: Harness, actor: User, guild_id: str, name: str, perms: int) -> str:
    status, role = await h.call(
        "POST", f"{API}/guilds/{guild_id}/roles", actor, json={"name": name, "permissions": perms}
    )
    assert status == 201, role
    return str(role["id"])


async def give(h: Harness, actor: User, guild_id: str, user: User, role_id: str) -> int:
    status, _ = await h.call(
        "PUT", f"{API}/guilds/{guild_id}/members/{user.id}/roles/{role_id}", actor
    )
    return status
