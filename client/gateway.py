"""The gateway client: a sans-I/O session core and a thin trio-websocket shell.

Frames are msgpack maps ``{op, d, s, t}`` (Discord's shape; ops, close codes and dispatch
names in :mod:`contract.gateway`). :class:`GatewayCore` holds the protocol state — session
id, last sequence number, heartbeat interval, whether the last heartbeat was acknowledged —
and turns received frames into events and the frames to send; it never touches a socket or a
clock of its own. :class:`GatewayClient` connects, identifies (or resumes after a drop),
heartbeats at the announced interval (the first after interval × random(), as Discord asks),
reconnects on RECONNECT, on a missed heartbeat ACK and on a broken connection, and hands
every event to its caller through a memory channel.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import msgpack
import trio
from trio_websocket import ConnectionClosed, HandshakeError, WebSocketConnection, open_websocket

from client.errors import ProtocolError, TokenRefused, TransportError
from client.http import split_server_url
from contract.gateway import MAX_CLIENT_FRAME, MAX_SERVER_FRAME, Close, EventName, Op

__all__ = ["Dispatch", "GatewayClient", "GatewayCore", "Reconnect"]

_BACKOFF_MAX_S = 5.0


@dataclass(frozen=True)
class Dispatch:
    """A server event: its name (READY, RESUMED, ENVELOPE_CREATE, ...) and payload."""

    type: str
    data: Any


@dataclass(frozen=True)
class Reconnect:
    """The connection must be replaced (resumable: try RESUME first)."""

    resumable: bool
    reason: str


def encode_frame(op: Op, d: Any = None) -> bytes:
    """A client frame."""
    return msgpack.packb({"op": int(op), "d": d}, use_bin_type=True)


def decode_frame_untrusted(raw: bytes | str) -> tuple[int, Any, int | None, str | None]:
    """Parse a server frame into (op, d, s, t); raise :class:`ProtocolError` if malformed."""
    if isinstance(raw, str) or len(raw) > MAX_SERVER_FRAME:
        raise ProtocolError("the gateway sent a frame that is not bounded msgpack")
    try:
        value = msgpack.unpackb(raw, raw=False, strict_map_key=False, timestamp=0)
    except (ValueError, TypeError, RecursionError, msgpack.UnpackException):
        raise ProtocolError("the gateway sent malformed msgpack") from None
    if not isinstance(value, dict):
        raise ProtocolError("a gateway frame must be a map")
    op, s, t = value.get("op"), value.get("s"), value.get("t")
    if not isinstance(op, int) or isinstance(op, bool):
        raise ProtocolError("a gateway frame needs an integer op")
    if s is not None and (not isinstance(s, int) or isinstance(s, bool)):
        raise ProtocolError("a gateway frame's s must be an integer")
    if t is not None and not isinstance(t, str):
        raise ProtocolError("a gateway frame's t must be a string")
    return op, value.get("d"), s, t


class GatewayCore:
    """Protocol state of one gateway session across connections (sans-I/O)."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.session_id: str | None = None
        self.seq = 0
        self.interval_s: float | None = None
        self.acked = True
        self.established = False

    def connection_opened(self) -> None:
        """A new WebSocket is open: wait for HELLO."""
        self.interval_s = None
        self.acked = True
        self.established = False

    def receive_untrusted(self, raw: bytes | str) -> list[bytes | Dispatch | Reconnect]:
        """Feed one server frame; returns frames to send, events, or a reconnect order."""
        op, d, s, t = decode_frame_untrusted(raw)
        if op == Op.HELLO:
            interval = d.get("heartbeat_interval") if isinstance(d, dict) else None
            if not isinstance(interval, int) or not 0 < interval <= 3_600_000:
                raise ProtocolError("HELLO without a sane heartbeat interval")
            self.interval_s = interval / 1000
            if self.session_id is not None:
                payload = {"token": self.token, "session_id": self.session_id, "seq": self.seq}
                return [encode_frame(Op.RESUME, payload)]
            return [encode_frame(Op.IDENTIFY, {"token": self.token, "status": "online"})]
        if op == Op.HEARTBEAT_ACK:
            self.acked = True
            return []
        if op == Op.HEARTBEAT:
            return [self.heartbeat()]
        if op == Op.DISPATCH:
            if t is None:
                raise ProtocolError("a dispatch without an event name")
            if s is not None:
                self.seq = s
            if t == EventName.READY:
                sid = d.get("session_id") if isinstance(d, dict) else None
                if not isinstance(sid, str):
                    raise ProtocolError("READY without a session id")
                self.session_id = sid
                self.established = True
            elif t == EventName.RESUMED:
                self.established = True
            return [Dispatch(t, d)]
        if op == Op.RECONNECT:
            return [Reconnect(True, "the server asked to reconnect")]
        if op == Op.INVALID_SESSION:
            if d is not True:
                # The session is gone: identify afresh next time (and catch up by REST).
                self.session_id = None
                self.seq = 0
            return [Reconnect(d is True, "the server invalidated the session")]
        return []

    def heartbeat(self) -> bytes:
        """The next HEARTBEAT frame (carries the last sequence number seen)."""
        self.acked = False
        return encode_frame(Op.HEARTBEAT, self.seq)


def _gateway_target(server_url: str) -> tuple[str, int, str]:
    host, port, prefix = split_server_url(server_url)
    return host, port, prefix + "/api/v1/gateway"


class GatewayClient:
    """Keeps one gateway session alive and yields its events in order.

    Use ``async with GatewayClient(url, token).events() as events: async for e in events``.
    Each (re)connection that had to IDENTIFY afresh is announced by a READY dispatch, after
    which the caller should catch up by REST (envelopes queued beyond READY's first page).
    """

    def __init__(self, server_url: str, token: str) -> None:
        self.host, self.port, self.path = _gateway_target(server_url)
        self.core = GatewayCore(token)
        self.connections = 0
        self._connection_scope: trio.CancelScope | None = None
        self._ws: WebSocketConnection | None = None

    async def send(self, op: Op, d: Any) -> None:
        """Send one client frame (voice ops 4, 12, 13) on the current connection.

        Raises :class:`TransportError` when no session is established (the frame would be
        lost in a reconnect; the caller acts again on the READY or RESUMED that follows).
        """
        frame = encode_frame(op, d)
        if len(frame) > MAX_CLIENT_FRAME:
            raise ProtocolError(f"a gateway frame of {len(frame)} bytes is over the limit")
        ws = self._ws
        if ws is None or not self.core.established:
            raise TransportError("the gateway is not connected; try again once it is")
        try:
            await ws.send_message(frame)
        except ConnectionClosed:
            raise TransportError("the gateway connection closed while sending") from None

    def reconnect(self) -> None:
        """Drop the current connection now and RESUME on a new one (e.g. after the network
        changed); dispatches sent meanwhile are replayed by the server."""
        if self._connection_scope is not None:
            self._connection_scope.cancel()

    @asynccontextmanager
    async def events(self) -> AsyncIterator[trio.MemoryReceiveChannel[Dispatch]]:
        """Run the session in the background of the ``async with`` block."""
        send, receive = trio.open_memory_channel[Dispatch](1024)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._run, send)
            try:
                yield receive
            finally:
                nursery.cancel_scope.cancel()

    async def _run(self, out: trio.MemorySendChannel[Dispatch]) -> None:
        delay = 0.1
        async with out:
            while True:
                try:
                    with trio.CancelScope() as self._connection_scope:
                        try:
                            await self._connect_once(out)
                        finally:
                            self._ws = None
                    delay = 0.1
                except* (OSError, HandshakeError, ConnectionClosed, ProtocolError):
                    # Dropped or refused: back off, then RESUME (or IDENTIFY) again.
                    pass
                await trio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, _BACKOFF_MAX_S)

    async def _connect_once(self, out: trio.MemorySendChannel[Dispatch]) -> None:
        core = self.core
        async with open_websocket(
            self.host, self.port, self.path, use_ssl=False, max_message_size=MAX_SERVER_FRAME
        ) as ws:
            self.connections += 1
            core.connection_opened()
            self._ws = ws
            async with trio.open_nursery() as nursery:

                async def heartbeat() -> None:
                    assert core.interval_s is not None
                    await trio.sleep(core.interval_s * random.random())
                    while True:
                        if not core.acked:
                            # A zombie connection: replace it and resume.
                            nursery.cancel_scope.cancel()
                            return
                        await ws.send_message(core.heartbeat())
                        await trio.sleep(core.interval_s)

                while True:
                    try:
                        raw = await ws.get_message()
                    except ConnectionClosed as exc:
                        code = exc.reason.code if exc.reason is not None else None
                        if code == Close.AUTHENTICATION_FAILED:
                            # Retrying with the same token cannot help.
                            raise TokenRefused(
                                "the server refused this device's session token; "
                                "run 'hushroom login'"
                            ) from None
                        raise
                    for item in core.receive_untrusted(raw):
                        if isinstance(item, bytes):
                            await ws.send_message(item)
                            if core.interval_s is not None and not nursery.child_tasks:
                                nursery.start_soon(heartbeat)
                        elif isinstance(item, Dispatch):
                            await out.send(item)
                        else:
                            nursery.cancel_scope.cancel()
                            return
