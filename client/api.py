"""The control plane's REST API (``/api/v1``), typed, over msgpack bodies.

Each method is one endpoint; answers go through the ``*_untrusted`` decoders of
:mod:`client.models`. Errors arrive as :class:`~client.errors.ApiError` carrying the
server's code and message (a 409 ``stale_devices`` carries the current device lists).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from math import isfinite
from typing import Any

import msgpack
import trio

from client.device_list import DeviceDirectory, SignedDeviceList
from client.errors import ApiError, ProtocolError
from client.http import HttpClient
from client.models import (
    Bundle,
    Channel,
    ChannelMessage,
    Device,
    Envelope,
    Guild,
    Member,
    PrekeyCounts,
    User,
)
from contract import proof_of_work as pow_
from contract.errors import ErrorCode
from contract.proof_of_work import Purpose

__all__ = [
    "PROOF_OF_WORK_TRIES",
    "RATE_LIMIT_BUDGET_S",
    "RATE_LIMIT_DEFAULT_S",
    "RATE_LIMIT_FLOOR_S",
    "ControlApi",
    "decode_body_untrusted",
    "retry_after_untrusted",
]

_MSGPACK = "application/msgpack"
API = "/api/v1"


def decode_body_untrusted(body: bytes) -> Any:
    """Parse a msgpack answer with bounded nesting and no extension types."""
    if not body:
        return None
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=False, timestamp=0)
    except (ValueError, TypeError, RecursionError, msgpack.UnpackException):
        raise ProtocolError("the server sent a body that is not msgpack") from None


#: A 429 that names no usable retry-after is retried after this long, and none sooner than
#: the floor.
RATE_LIMIT_DEFAULT_S = 1.0
RATE_LIMIT_FLOOR_S = 0.05
#: How long one call waits out 429s in all before the 429 reaches the caller.
RATE_LIMIT_BUDGET_S = 10.0
#: How many puzzles an anonymous call solves before a 428 reaches the caller.
PROOF_OF_WORK_TRIES = 3


def retry_after_untrusted(exc: ApiError) -> float | None:
    """How long a 429 asks to wait (the control API's ``retry_after`` error member), or
    None for any other error.

    The number is the server's word: a missing or odd one counts as
    :data:`RATE_LIMIT_DEFAULT_S`, and none is shorter than :data:`RATE_LIMIT_FLOOR_S`, so a
    server answering "0" cannot make the client spin.
    """
    if exc.status != 429:
        return None
    value = exc.extra.get("retry_after")
    if isinstance(value, bool) or not isinstance(value, int | float) or not isfinite(value):
        return RATE_LIMIT_DEFAULT_S
    return max(RATE_LIMIT_FLOOR_S, float(value))


class ControlApi:
    """Typed calls to one control plane, authenticated with a session token once set."""

    def __init__(self, server_url: str, token: str | None = None) -> None:
        self.server_url = server_url
        self.http = HttpClient(server_url)
        self.token = token
        #: Called once when an authenticated request gets 401 (an expired token): it signs
        #: in again and sets :attr:`token`, then the request is retried.
        self.relogin: Callable[[], Awaitable[None]] | None = None

    async def aclose(self) -> None:
        """Close the HTTP connection."""
        await self.http.aclose()

    async def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        headers: Sequence[tuple[str, str]] = (),
    ) -> Any:
        """One request; returns the decoded answer or raises :class:`ApiError`.

        A 429 is waited out for the server's retry-after and the request made again, for at
        most :data:`RATE_LIMIT_BUDGET_S` in all (the server refuses a rate-limited request
        before acting on it, so making it again is safe); a 401 signs in again once.
        """
        waited = 0.0
        while True:
            try:
                return await self._call_signed_in(method, path, body, headers)
            except ApiError as exc:
                wait = retry_after_untrusted(exc)
                if wait is None or waited + wait > RATE_LIMIT_BUDGET_S:
                    raise
            await trio.sleep(wait)
            waited += wait

    async def _call_signed_in(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        headers: Sequence[tuple[str, str]],
    ) -> Any:
        try:
            return await self._call_once(method, path, body, headers)
        except ApiError as exc:
            relogin = self.relogin
            if exc.status != 401 or self.token is None or relogin is None:
                raise
            self.relogin = None  # at most once per request chain: no loop
            try:
                await relogin()
            finally:
                self.relogin = relogin
            return await self._call_once(method, path, body, headers)

    async def call_with_work(
        self, method: str, path: str, purpose: Purpose, body: dict[str, Any]
    ) -> Any:
        """An anonymous request paid with a proof of work for ``purpose``.

        The puzzle is solved in a worker thread (the user notices a few milliseconds at
        rest, up to a few seconds while the server is flooded). A 428 means the solution was
        refused (a puzzle that expired, or the price rose while solving): solve a new one,
        at most :data:`PROOF_OF_WORK_TRIES` times in all.
        """
        for attempt in range(1, PROOF_OF_WORK_TRIES + 1):
            proof = await self._solve(purpose)
            try:
                return await self.call(method, path, body, [(pow_.HEADER, proof)])
            except ApiError as exc:
                if exc.code != ErrorCode.PROOF_OF_WORK_REQUIRED or attempt == PROOF_OF_WORK_TRIES:
                    raise
        raise AssertionError("unreachable")

    async def _solve(self, purpose: Purpose) -> str:
        data = await self.call("POST", "/auth/proof-of-work", {"purpose": purpose.value})
        seed = data.get("seed") if isinstance(data, dict) else None
        difficulty = data.get("difficulty") if isinstance(data, dict) else None
        if (
            not isinstance(seed, bytes)
            or not 0 < len(seed) <= pow_.MAX_SEED_LEN
            or isinstance(difficulty, bool)
            or not isinstance(difficulty, int)
            or not 0 <= difficulty <= pow_.MAX_DIFFICULTY
        ):
            raise ProtocolError("the server sent a malformed proof-of-work puzzle")
        nonce = await trio.to_thread.run_sync(pow_.solve, seed, difficulty, abandon_on_cancel=True)
        return pow_.encode_proof(seed, nonce)

    async def _call_once(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        extra_headers: Sequence[tuple[str, str]],
    ) -> Any:
        headers = [("Accept", _MSGPACK), *extra_headers]
        raw = b""
        if body is not None:
            headers.append(("Content-Type", _MSGPACK))
            raw = msgpack.packb(body, use_bin_type=True)
        if self.token is not None:
            headers.append(("Authorization", f"Bearer {self.token}"))
        response = await self.http.request(method, API + path, headers, raw)
        if response.status >= 400:
            data = decode_body_untrusted(response.body) if response.body else None
            err = data.get("error") if isinstance(data, dict) else None
            if isinstance(err, dict) and isinstance(err.get("message"), str):
                code = err.get("code")
                extra = {k: v for k, v in err.items() if k not in ("code", "message")}
                raise ApiError(
                    response.status,
                    code if isinstance(code, str) else "error",
                    err["message"],
                    extra,
                )
            raise ApiError(response.status, "http_error", f"HTTP {response.status}", {})
        return decode_body_untrusted(response.body)

    # --- accounts and devices --------------------------------------------------------

    async def challenge(self) -> bytes:
        """A fresh single-use challenge to sign."""
        data = await self.call_with_work("POST", "/auth/challenge", Purpose.CHALLENGE, {})
        value = data.get("challenge") if isinstance(data, dict) else None
        if not isinstance(value, bytes) or len(value) != 32:
            raise ProtocolError("the server sent a malformed challenge")
        return value

    async def register(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create the account with its first device; returns user, device and token."""
        data = await self.call_with_work("POST", "/users", Purpose.REGISTER, body)
        if not isinstance(data, dict):
            raise ProtocolError("the server sent a malformed registration answer")
        return data

    async def login(self, body: dict[str, Any]) -> dict[str, Any]:
        """Sign a device in; returns user id, device id and token."""
        data = await self.call("POST", "/auth/login", body)
        if not isinstance(data, dict):
            raise ProtocolError("the server sent a malformed login answer")
        return data

    async def me(self) -> User:
        """The caller's account."""
        return User.from_wire_untrusted(await self.call("GET", "/users/@me"))

    async def user_by_handle(self, handle: str) -> User:
        """Look a user up by handle."""
        return User.from_wire_untrusted(await self.call("GET", f"/users/by-handle/{handle}"))

    async def devices(self, user_id: str) -> list[Device]:
        """A user's current devices, as the server lists them (unverified)."""
        return (await self.device_directory(user_id)).devices

    async def device_directory(self, user_id: str) -> DeviceDirectory:
        """A user's devices with the account key and the signed device list the server
        serves (checked by :class:`client.trust.Trust`, not here)."""
        return DeviceDirectory.from_wire_untrusted(
            await self.call("GET", f"/users/{user_id}/devices")
        )

    async def put_device_list(
        self, device_list: SignedDeviceList, account_key: bytes | None = None
    ) -> None:
        """Replace this account's signed device list; ``account_key`` sets the account key
        (once: a new account, or an older one's first cross-signing device)."""
        body: dict[str, Any] = {"device_list": device_list.to_wire()}
        if account_key is not None:
            body["account_key"] = account_key
        await self.call("PUT", "/users/@me/device-list", body)

    async def add_device(self, body: dict[str, Any]) -> Device:
        """Add a device to the caller's account."""
        return Device.from_wire_untrusted(await self.call("POST", "/users/@me/devices", body))

    async def remove_device(
        self, device_id: str, device_list: SignedDeviceList | None = None
    ) -> None:
        """Remove one of the caller's devices (with the account's new signed list, once
        the account has an account key)."""
        body = {} if device_list is None else {"device_list": device_list.to_wire()}
        await self.call("DELETE", f"/users/@me/devices/{device_id}", body)

    async def upload_keys(self, body: dict[str, Any]) -> PrekeyCounts:
        """Upload prekeys; returns how many one-time prekeys of each kind the server now
        holds."""
        data = await self.call("PUT", "/users/@me/devices/@current/keys", body)
        return PrekeyCounts.from_wire_untrusted(data)

    async def key_count(self) -> PrekeyCounts:
        """How many one-time prekeys of each kind the server still holds for this device."""
        data = await self.call("GET", "/users/@me/devices/@current/keys")
        return PrekeyCounts.from_wire_untrusted(data)

    async def claim_bundles(self, user_id: str) -> list[Bundle]:
        """Claim a bundle for every device of ``user_id`` (one OTK each)."""
        data = await self.call("POST", f"/users/{user_id}/keys/claim", {})
        devices = data.get("devices") if isinstance(data, dict) else None
        if not isinstance(devices, list) or len(devices) > 64:
            raise ProtocolError("the server sent a malformed bundle list")
        return [Bundle.from_wire_untrusted(d) for d in devices]

    async def export(self) -> Any:
        """Everything the server holds about the caller."""
        return await self.call("GET", "/users/@me/export")

    async def delete_account(self) -> None:
        """Erase the account on the server."""
        await self.call("DELETE", "/users/@me")

    async def logout(self) -> None:
        """Revoke this session token."""
        await self.call("POST", "/auth/logout", {})

    # --- provisioning mailboxes (device linking) -------------------------------------

    async def open_mailbox(self, mailbox_id: bytes, expires_in: int) -> int:
        """Open the provisioning mailbox ``mailbox_id``; returns its lifetime in seconds."""
        data = await self.call_with_work(
            "POST",
            "/provisioning",
            Purpose.PROVISIONING,
            {"mailbox_id": mailbox_id.hex(), "expires_in": expires_in},
        )
        granted = data.get("expires_in") if isinstance(data, dict) else None
        if not isinstance(granted, int):
            raise ProtocolError("the server sent a malformed mailbox answer")
        return granted

    async def deposit_provisioning(self, mailbox_id: bytes, message: bytes) -> None:
        """Leave the sealed provisioning message in the new device's mailbox."""
        await self.call("PUT", f"/provisioning/{mailbox_id.hex()}", {"message": message})

    async def fetch_provisioning(self, mailbox_id: bytes, wait: int) -> bytes | None:
        """The mailbox's message (the server deletes it as it answers), or None after
        waiting up to ``wait`` seconds."""
        data = await self.call("GET", f"/provisioning/{mailbox_id.hex()}?wait={wait}")
        if not isinstance(data, dict) or "message" not in data:
            raise ProtocolError("the server sent a malformed mailbox answer")
        message = data["message"]
        if message is not None and not isinstance(message, bytes):
            raise ProtocolError("the server sent a malformed provisioning message")
        return message

    async def close_mailbox(self, mailbox_id: bytes) -> None:
        """Close a mailbox nobody will use."""
        await self.call("DELETE", f"/provisioning/{mailbox_id.hex()}")

    # --- guilds, channels, members, invites ------------------------------------------

    async def create_guild(self, name: str) -> Guild:
        """Create a guild (with @everyone and #general)."""
        return Guild.from_wire_untrusted(await self.call("POST", "/guilds", {"name": name}))

    async def my_guilds(self) -> list[dict[str, Any]]:
        """``[{"id", "name", "owner_id"}]`` of the caller's guilds."""
        data = await self.call("GET", "/users/@me/guilds")
        if not isinstance(data, list):
            raise ProtocolError("the server sent a malformed guild list")
        return [g for g in data if isinstance(g, dict)]

    async def guild(self, guild_id: str) -> Guild:
        """A guild with its roles and the channels the caller can see."""
        return Guild.from_wire_untrusted(await self.call("GET", f"/guilds/{guild_id}"))

    async def members(self, guild_id: str) -> list[Member]:
        """The guild's members."""
        return Member.list_untrusted(await self.call("GET", f"/guilds/{guild_id}/members"))

    async def create_channel(self, guild_id: str, name: str, **fields: Any) -> Channel:
        """Create a channel."""
        data = await self.call("POST", f"/guilds/{guild_id}/channels", {"name": name, **fields})
        return Channel.from_wire_untrusted(data)

    async def channel(self, channel_id: str) -> Channel:
        """One channel (with its overwrites)."""
        return Channel.from_wire_untrusted(await self.call("GET", f"/channels/{channel_id}"))

    async def channels(self, guild_id: str) -> list[Channel]:
        """The channels the caller can see."""
        data = await self.call("GET", f"/guilds/{guild_id}/channels")
        if not isinstance(data, list):
            raise ProtocolError("the server sent a malformed channel list")
        return [Channel.from_wire_untrusted(c) for c in data]

    async def moderate_voice(self, guild_id: str, user_id: str, body: dict[str, Any]) -> None:
        """Server mute/deafen, move or disconnect a member in voice (docs/voice.md)."""
        await self.call("PATCH", f"/guilds/{guild_id}/members/{user_id}/voice", body)

    async def create_invite(self, channel_id: str, max_uses: int = 0, max_age: int = 86400) -> str:
        """Create an invite; returns its code."""
        body = {"max_uses": max_uses, "max_age": max_age}
        data = await self.call("POST", f"/channels/{channel_id}/invites", body)
        code = data.get("code") if isinstance(data, dict) else None
        if not isinstance(code, str):
            raise ProtocolError("the server sent a malformed invite")
        return code

    async def accept_invite(self, code: str) -> Guild:
        """Join the invite's guild."""
        return Guild.from_wire_untrusted(await self.call("POST", f"/invites/{code}", {}))

    async def kick(self, guild_id: str, user_id: str) -> None:
        """Remove a member from a guild."""
        await self.call("DELETE", f"/guilds/{guild_id}/members/{user_id}")

    async def leave(self, guild_id: str) -> None:
        """Leave a guild."""
        await self.call("DELETE", f"/users/@me/guilds/{guild_id}")

    # --- relay -------------------------------------------------------------------------

    async def send_envelopes(self, recipients: list[dict[str, Any]]) -> Any:
        """Queue one ciphertext per device (raises ApiError 409 ``stale_devices``)."""
        return await self.call("POST", "/envelopes", {"recipients": recipients})

    async def fetch_envelopes(self, limit: int = 100) -> list[Envelope]:
        """Envelopes queued for this device, oldest first: at most ``limit`` (1 to 500)
        and at most 1 MiB of ciphertext (but at least one), so a shorter page does not
        mean no more are queued; an empty one does (:mod:`contract.relay`)."""
        data = await self.call("GET", f"/envelopes?limit={limit}")
        if not isinstance(data, list) or len(data) > limit:
            raise ProtocolError("the server sent a malformed envelope list")
        return [Envelope.from_wire_untrusted(e) for e in data]

    async def ack_envelopes(self, ids: list[str]) -> None:
        """Delete delivered envelopes."""
        for start in range(0, len(ids), 500):
            await self.call("POST", "/envelopes/ack", {"ids": ids[start : start + 500]})

    async def post_message(self, channel_id: str, ciphertext: bytes) -> ChannelMessage:
        """Post a Sender-Key ciphertext to a channel."""
        data = await self.call(
            "POST", f"/channels/{channel_id}/messages", {"ciphertext": ciphertext}
        )
        return ChannelMessage.from_wire_untrusted(data)

    async def delete_message(self, channel_id: str, message_id: str) -> None:
        """Delete a channel message (its author, or MANAGE_MESSAGES)."""
        await self.call("DELETE", f"/channels/{channel_id}/messages/{message_id}")

    async def history(
        self,
        channel_id: str,
        after: int | None = None,
        limit: int = 100,
        before: int | None = None,
    ) -> list[ChannelMessage]:
        """Stored channel messages, newest first, with seq in (``after``, ``before``)."""
        query = f"?limit={limit}" + (f"&after={after}" if after is not None else "")
        query += f"&before={before}" if before is not None else ""
        data = await self.call("GET", f"/channels/{channel_id}/messages{query}")
        if not isinstance(data, list):
            raise ProtocolError("the server sent a malformed message list")
        return [ChannelMessage.from_wire_untrusted(m) for m in data]
