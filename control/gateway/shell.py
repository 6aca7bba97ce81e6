"""The trio shell of the gateway: moves frames between a WebSocket and the sans-I/O cores.

One task reads client frames and feeds :class:`ConnectionCore`; one writes the connection's
outbox (filled by the hub, without blocking); one enforces the heartbeat deadline. Database
reads for IDENTIFY and READY go through the store like every request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
import sqlalchemy as sa
import trio
from quart import websocket
from sqlalchemy.engine import Connection

from contract.gateway import EventName

from ..api._routing import Caller
from ..api.accounts import current_devices
from ..api.guild_view import full_guild
from ..api.relay import envelope_view
from ..bus import Event
from ..ids import day_now, hash_token, new_id
from ..state import ControlState
from ..store import schema as t
from .hub import OUTBOX_FRAMES, LiveSession
from .protocol import Close
from .session import (
    CloseConnection,
    ConnectionCore,
    GatewaySession,
    Identify,
    PresenceUpdate,
    Resume,
    SendFrame,
)

__all__ = ["co_members", "serve_gateway"]

#: Queued envelopes dispatched right after READY (the rest are fetched by REST).
READY_ENVELOPES = 500


def _pack(data: Any) -> bytes:
    return msgpack.packb(data, use_bin_type=True)


async def _session_for_token(state: ControlState, token: str) -> Caller | None:
    digest = hash_token(token)
    session = await state.sessions.lookup(digest)
    return None if session is None else Caller(session.user_id, session.device_id, digest)


def co_members(conn: Connection, user_id: str, guild_limit: int) -> frozenset[str]:
    """The presence audience: users sharing a guild of at most ``guild_limit`` members.

    Presence in larger guilds is not pushed (Discord's "large guild" rule): one member
    coming online would otherwise cost a frame to every member of every large guild.
    """
    m = t.members
    small = (
        sa.select(m.c.guild_id)
        .where(m.c.guild_id.in_(sa.select(m.c.guild_id).where(m.c.user_id == user_id)))
        .group_by(m.c.guild_id)
        .having(sa.func.count() <= guild_limit)
    )
    stmt = sa.select(m.c.user_id).where(m.c.guild_id.in_(small)).distinct()
    return frozenset(conn.execute(stmt).scalars())


def _ready(conn: Connection, session_id: str, caller: Caller, guild_limit: int) -> dict[str, Any]:
    user = conn.execute(sa.select(t.users).where(t.users.c.id == caller.user_id)).first()
    guild_ids = conn.execute(
        sa.select(t.members.c.guild_id).where(t.members.c.user_id == caller.user_id)
    ).scalars()
    env = t.envelopes
    queued = conn.execute(
        sa.select(env)
        .where(env.c.recipient_device_id == caller.device_id)
        .order_by(env.c.seq)
        .limit(READY_ENVELOPES)
    ).all()
    return {
        "v": 1,
        "session_id": session_id,
        "user": {"id": caller.user_id, "handle": user.handle if user else None},
        "device_id": caller.device_id,
        "devices": current_devices(conn, caller.user_id),
        "guilds": [full_guild(conn, g, caller.user_id) for g in sorted(guild_ids)],
        "envelopes": [envelope_view(r) for r in queued],
        "co_members": sorted(co_members(conn, caller.user_id, guild_limit)),
    }


async def _touch_device(state: ControlState, device_id: str) -> None:
    """Record today as the device's last-seen day (a write only once per day)."""
    today = day_now()
    devices = t.devices
    seen = await state.db.read(
        lambda conn: conn.execute(
            sa.select(devices.c.last_seen_day).where(devices.c.id == device_id)
        ).scalar()
    )
    if seen != today:
        await state.db.write(
            lambda conn: conn.execute(
                sa.update(devices).where(devices.c.id == device_id).values(last_seen_day=today)
            )
        )


async def _publish_presence(state: ControlState, user_id: str, status: str) -> None:
    limit = state.config.presence_guild_limit
    audience = await state.db.read(lambda conn: co_members(conn, user_id, limit))
    await state.bus.publish(
        Event(
            EventName.PRESENCE_UPDATE, {"user_id": user_id, "status": status}, audience | {user_id}
        )
    )


async def serve_gateway(state: ControlState) -> None:
    """Run one gateway connection until it closes, times out or is cut."""
    await websocket.accept()
    interval = state.config.heartbeat_interval_ms / 1000
    core = ConnectionCore(interval, trio.current_time())
    await websocket.send(core.hello())
    outbox_send, outbox_recv = trio.open_memory_channel[bytes](OUTBOX_FRAMES)
    live: LiveSession | None = None
    hub = state.hub

    async with trio.open_nursery() as nursery:

        async def close(code: int, reason: str) -> None:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                await websocket.close(code, reason)
            nursery.cancel_scope.cancel()

        def kick() -> None:
            nursery.start_soon(close, Close.UNKNOWN_ERROR, "too slow, resume")

        async def writer() -> None:
            async for frame in outbox_recv:
                await websocket.send(frame)

        async def watchdog() -> None:
            while True:
                await trio.sleep_until(core.deadline)
                timeout = core.check_timeout(trio.current_time())
                if timeout is not None:
                    await close(timeout.code, timeout.reason)
                    return

        async def identify(action: Identify) -> None:
            nonlocal live
            caller = await _session_for_token(state, action.token)
            if caller is None:
                await close(Close.AUTHENTICATION_FAILED, "authentication failed")
                return
            hub.expire(trio.current_time())
            session_id = new_id()
            live = hub.create(GatewaySession(session_id, caller.user_id, caller.device_id))
            hub.attach(live, outbox_send, kick)
            limit = state.config.presence_guild_limit
            ready = await state.db.read(lambda conn: _ready(conn, session_id, caller, limit))
            await _touch_device(state, caller.device_id)
            ready["presences"] = [
                {"user_id": u, "status": hub.presence[u]}
                for u in ready.pop("co_members")
                if u in hub.presence
            ]
            core.established()
            live.release(EventName.READY, _pack(ready))
            hub.presence[caller.user_id] = action.status
            await _publish_presence(state, caller.user_id, action.status)

        async def resume(action: Resume) -> None:
            nonlocal live
            caller = await _session_for_token(state, action.token)
            found = hub.sessions.get(action.session_id)
            frames = found.core.replay_after(action.seq) if found is not None else None
            if (
                caller is None
                or found is None
                or found.core.device_id != caller.device_id
                or frames is None
            ):
                for refusal in core.refused():
                    assert isinstance(refusal, SendFrame)
                    await outbox_send.send(refusal.frame)
                return
            live = found
            live.held = []
            hub.attach(live, outbox_send, kick)
            for frame in frames:
                await outbox_send.send(frame)
            core.established()
            live.release(EventName.RESUMED, _pack(live.core.snapshot()))
            if caller.user_id not in hub.presence:
                hub.presence[caller.user_id] = "online"
                await _publish_presence(state, caller.user_id, "online")

        handlers: dict[type, Callable[[Any], Awaitable[None]]] = {
            Identify: identify,
            Resume: resume,
        }
        nursery.start_soon(writer)
        nursery.start_soon(watchdog)
        try:
            while True:
                raw = await websocket.receive()
                for action in core.receive_untrusted(raw, trio.current_time()):
                    if isinstance(action, SendFrame):
                        await outbox_send.send(action.frame)
                    elif isinstance(action, CloseConnection):
                        await close(action.code, action.reason)
                    elif isinstance(action, PresenceUpdate):
                        assert live is not None
                        user_id = live.core.user_id
                        if state.limiter.acquire(("presence", live.core.device_id)) == 0:
                            hub.presence[user_id] = action.status
                            await _publish_presence(state, user_id, action.status)
                    else:
                        await handlers[type(action)](action)
        finally:
            with trio.CancelScope(shield=True):
                if live is not None and live.outbox is outbox_send:
                    hub.detach(live, trio.current_time())
                    user_id = live.core.user_id
                    if not hub.online(user_id) and hub.presence.pop(user_id, None) is not None:
                        await _publish_presence(state, user_id, "offline")
