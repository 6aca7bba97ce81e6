"""The gateway client: a sans-I/O session core and a thin trio-websocket shell.

Frames are msgpack maps ``{op, d, s, t}`` (Discord's shape; ops, close codes and dispatch
names in :mod:`contract.gateway`). :class:`GatewayCore` holds the protocol state — session
id, last sequence number, heartbeat interval, whether the last heartbeat was acknowledged —
and turns received frames into events and the frames to send; it never touches a socket or a
clock of its own. :class:`GatewayClient` connects, identifies (or resumes after a drop),
heartbeats at the announced interval (the first after interval × random(), as Discord asks),
reconnects on RECONNECT, on a missed heartbeat ACK and on a broken connection, and hands
every event to its caller through a memory channel.

How a connection ended decides what comes next (:meth:`GatewayCore.connection_closed`):
close 4020 (SESSION_REVOKED: signed out, device removed, account deleted) ends the session
with :class:`~client.errors.SessionRevoked`; close 4021 (SESSION_EXPIRED) signs in again
through the ``renew`` callable and RESUMEs with the new token at once; a token refused at
IDENTIFY or RESUME (4004, e.g. it expired while the connection was down) is renewed once
the same way, and refused again it ends the session with
:class:`~client.errors.TokenRefused`; anything else backs off and RESUMEs.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import msgpack
import trio
from trio_websocket import ConnectionClosed, HandshakeError, WebSocketConnection, open_websocket

from client.errors import ClientError, ProtocolError, SessionRevoked, TokenRefused, TransportError
from client.http import split_server_url
from contract.gateway import MAX_CLIENT_FRAME, MAX_SERVER_FRAME, Close, EventName, Op

__all__ = ["DISPATCH_BUFFER", "Dispatch", "GatewayClient", "GatewayCore", "Reconnect"]

_BACKOFF_MAX_S = 5.0
#: Dispatches a :class:`GatewayClient` holds for a caller busy elsewhere.
DISPATCH_BUFFER = 1024
_REFUSED = "the server refused this device's session token; run 'hushroom login'"


@dataclass(frozen=True)
class Dispatch:
    """A server event: its name (READY, RESUMED, ENVELOPE_CREATE, ...) and payload."""

    type: str
    data: Any
    #: The server's sequence number of it (None: unnumbered).
    seq: int | None = None


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
        #: The server expired or refused :attr:`token`: get a new one before connecting.
        self.token_stale = False
        #: :attr:`token` is a renewed one that has not established a session yet.
        self.token_fresh = False

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
            if t == EventName.READY:
                sid = d.get("session_id") if isinstance(d, dict) else None
                if not isinstance(sid, str):
                    raise ProtocolError("READY without a session id")
                self.session_id = sid
                self.established = True
                self.token_fresh = False
            elif t == EventName.RESUMED:
                self.established = True
                self.token_fresh = False
            return [Dispatch(t, d, s)]
        if op == Op.RECONNECT:
            return [Reconnect(True, "the server asked to reconnect")]
        if op == Op.INVALID_SESSION:
            if d is not True:
                # The session is gone: identify afresh next time (and catch up by REST).
                self.session_id = None
                self.seq = 0
            return [Reconnect(d is True, "the server invalidated the session")]
        return []

    def delivered(self, dispatch: Dispatch) -> None:
        """The caller has ``dispatch``: from now on RESUME and heartbeats count it as seen.

        Not on receipt: a dispatch parsed but never handed over (its connection was
        cancelled while the caller was not reading) must not count, or RESUME would tell
        the server to skip it and it would be lost for good."""
        if dispatch.seq is not None:
            self.seq = dispatch.seq

    def heartbeat(self) -> bytes:
        """The next HEARTBEAT frame (carries the last sequence number seen)."""
        self.acked = False
        return encode_frame(Op.HEARTBEAT, self.seq)

    def connection_closed(self, code: int | None) -> None:
        """The connection closed with ``code`` (None: no close frame). Raises when no new
        connection can help; marks the token stale when a new one can."""
        self.established = False
        if code == Close.SESSION_REVOKED:
            # The server forgot the session: nothing to resume, and the token is dead.
            self.session_id = None
            self.seq = 0
            raise SessionRevoked(
                "the server ended this device's session (signed out, the device removed "
                "or the account deleted)"
            )
        if code == Close.SESSION_EXPIRED:
            # Still resumable: sign in again and RESUME with the new token.
            self.token_stale = True
        elif code == Close.AUTHENTICATION_FAILED:
            if self.token_fresh:
                raise TokenRefused(_REFUSED)
            self.token_stale = True

    def token_renewed(self, token: str) -> None:
        """A new session token from signing in again, for the next IDENTIFY or RESUME."""
        self.token = token
        self.token_stale = False
        self.token_fresh = True


def _gateway_target(server_url: str) -> tuple[str, int, str]:
    host, port, prefix = split_server_url(server_url)
    return host, port, prefix + "/api/v1/gateway"


class GatewayClient:
    """Keeps one gateway session alive and yields its events in order.

    Use ``async with GatewayClient(url, token).events() as events: async for e in events``.
    Each (re)connection that had to IDENTIFY afresh is announced by a READY dispatch, after
    which the caller should catch up by REST when READY says ``envelopes_more``.

    ``renew(refused token)`` returns a valid session token (signing in again if need be);
    without it an expired or refused token ends the session with
    :class:`~client.errors.TokenRefused`. The session's end leaves ``events()`` as the
    error itself (:attr:`ended`), not inside an exception group.
    """

    def __init__(
        self,
        server_url: str,
        token: str,
        renew: Callable[[str], Awaitable[str]] | None = None,
        *,
        buffer: int = DISPATCH_BUFFER,
    ) -> None:
        """``buffer``: dispatches held for the caller before reading the connection waits
        (the server cuts a connection that stays unread for long, and it is resumed)."""
        self.host, self.port, self.path = _gateway_target(server_url)
        self._buffer = buffer
        self.core = GatewayCore(token)
        self.connections = 0
        #: Tokens obtained by signing in again.
        self.renewals = 0
        #: The close code that ended the last connection (None: no close frame yet).
        self.last_close_code: int | None = None
        #: Why the session ended, once it has.
        self.ended: ClientError | None = None
        self._renew = renew
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
        send, receive = trio.open_memory_channel[Dispatch](self._buffer)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._run, send)
                try:
                    yield receive
                finally:
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            if len(group.exceptions) == 1 and group.exceptions[0] is self.ended:
                raise self.ended from None
            raise

    async def _run(self, out: trio.MemorySendChannel[Dispatch]) -> None:
        try:
            await self._follow(out)
        except ClientError as exc:
            self.ended = exc
            raise

    async def _follow(self, out: trio.MemorySendChannel[Dispatch]) -> None:
        core = self.core
        delay = 0.1
        async with out:
            while True:
                closed, code = False, None
                try:
                    if core.token_stale:
                        await self._renew_token()
                    with trio.CancelScope() as self._connection_scope:
                        try:
                            await self._connect_once(out)
                        finally:
                            self._ws = None
                    delay = 0.1
                except* ConnectionClosed as group:
                    closed, code = True, _close_code(group)
                except* (OSError, HandshakeError, ProtocolError, TransportError):
                    # Dropped, refused or unreachable: back off, then RESUME (or IDENTIFY).
                    pass
                if closed:
                    self.last_close_code = code
                    core.connection_closed(code)
                    if core.token_stale:
                        continue  # sign in again and RESUME at once: the session waits
                await trio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, _BACKOFF_MAX_S)

    async def _renew_token(self) -> None:
        if self._renew is None:
            raise TokenRefused(_REFUSED)
        self.core.token_renewed(await self._renew(self.core.token))
        self.renewals += 1

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
                    raw = await ws.get_message()
                    for item in core.receive_untrusted(raw):
                        if isinstance(item, bytes):
                            await ws.send_message(item)
                            if core.interval_s is not None and not nursery.child_tasks:
                                nursery.start_soon(heartbeat)
                        elif isinstance(item, Dispatch):
                            await out.send(item)
                            core.delivered(item)
                        else:
                            nursery.cancel_scope.cancel()
                            return


def _close_code(group: BaseExceptionGroup[ConnectionClosed]) -> int | None:
    """The close code of a closed connection (None when it closed without a close frame)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _close_code(exc)
        if exc.reason is not None:
            return exc.reason.code
    return None
