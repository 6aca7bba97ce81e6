"""The trio shell of the gateway: moves frames between a WebSocket and the sans-I/O cores.

One task reads client frames and feeds :class:`ConnectionCore`; one writes the connection's
outbox (filled by the hub, without blocking); one wakes the core at its deadline (identify
timeout, heartbeat, token expiry); one runs the voice ops (4, 12, 13), one at a time in the
order they came — each waits for SFU round trips (seconds when a node is loaded), and the
reader must meanwhile go on answering heartbeats. The core bounds how many wait. Database
reads for IDENTIFY and READY go through the store like every request.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack
import sqlalchemy as sa
import trio
from quart import websocket
from sqlalchemy.engine import Connection

from contract.gateway import Close, EventName

from ..api._routing import Caller
from ..api.accounts import current_devices
from ..api.guild_view import full_guild
from ..api.relay import envelope_view
from ..bus import Event
from ..errors import RateLimited
from ..ids import day_now, hash_token, new_id
from ..state import ControlState
from ..store import schema as t
from .hub import OUTBOX_FRAMES, LiveSession
from .session import (
    CloseConnection,
    ConnectionCore,
    GatewaySession,
    Identify,
    PresenceUpdate,
    Resume,
    SendFrame,
    VoiceAction,
    VoicePublish,
    VoiceStateRequest,
    VoiceSubscribeAnswer,
)

__all__ = ["co_members", "ready_envelopes", "serve_gateway"]

#: At most this many queued envelopes are listed in READY ...
READY_ENVELOPES = 500
#: ... and at most this many bytes of them (each counted as its ciphertext plus
#: ENVELOPE_WIRE_OVERHEAD), so READY stays far below a client's frame limit (the SDK's is
#: 16 MiB) however full the queue is. The rest are fetched with ``GET /envelopes``.
READY_ENVELOPE_BYTES = 1024 * 1024
#: An upper bound on what an envelope's wire form adds to its ciphertext (field names,
#: three 24-digit ids, two integers, headers: ~170 bytes packed).
ENVELOPE_WIRE_OVERHEAD = 256


def _pack(data: Any) -> bytes:
    return msgpack.packb(data, use_bin_type=True)


async def _authenticate(state: ControlState, token: str) -> tuple[Caller, int] | None:
    """The caller a token belongs to and the token's expiry (epoch seconds), or None."""
    digest = hash_token(token)
    session = await state.sessions.lookup(digest)
    if session is None:
        return None
    return Caller(session.user_id, session.device_id, digest), session.expires_at


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


def ready_envelopes(conn: Connection, device_id: str) -> tuple[list[dict[str, Any]], bool]:
    """The oldest queued envelopes of ``device_id`` that fit READY's bounds (count and
    bytes), in ``seq`` order, and whether more are queued beyond them."""
    env = t.envelopes
    of_device = env.c.recipient_device_id == device_id
    # Sizes first, so a stuffed queue is never loaded whole to pick what fits.
    sizes = conn.execute(
        sa.select(env.c.seq, sa.func.length(env.c.ciphertext))
        .where(of_device)
        .order_by(env.c.seq)
        .limit(READY_ENVELOPES + 1)
    ).all()
    budget, last_seq, count = READY_ENVELOPE_BYTES, None, 0
    for seq, size in sizes[:READY_ENVELOPES]:
        budget -= size + ENVELOPE_WIRE_OVERHEAD
        if budget < 0:
            break
        last_seq, count = seq, count + 1
    more = count < len(sizes)
    if last_seq is None:
        return [], more
    rows = conn.execute(
        sa.select(env).where(of_device, env.c.seq <= last_seq).order_by(env.c.seq).limit(count)
    ).all()
    # Checked again on the rows themselves: without one snapshot for both reads (PostgreSQL
    # READ COMMITTED), the queue may have changed in between.
    envelopes: list[dict[str, Any]] = []
    budget = READY_ENVELOPE_BYTES
    for row in rows:
        budget -= len(row.ciphertext) + ENVELOPE_WIRE_OVERHEAD
        if budget < 0:
            return envelopes, True
        envelopes.append(envelope_view(row))
    return envelopes, more


def _ready(conn: Connection, session_id: str, caller: Caller, guild_limit: int) -> dict[str, Any]:
    user = conn.execute(sa.select(t.users).where(t.users.c.id == caller.user_id)).first()
    guild_ids = conn.execute(
        sa.select(t.members.c.guild_id).where(t.members.c.user_id == caller.user_id)
    ).scalars()
    envelopes, more = ready_envelopes(conn, caller.device_id)
    return {
        "v": 1,
        "session_id": session_id,
        "user": {"id": caller.user_id, "handle": user.handle if user else None},
        "device_id": caller.device_id,
        "devices": current_devices(conn, caller.user_id),
        "guilds": [full_guild(conn, g, caller.user_id) for g in sorted(guild_ids)],
        "envelopes": envelopes,
        "envelopes_more": more,
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
    """Run one gateway connection until it closes, times out or is cut.

    Refused before the WebSocket is accepted (429 ``rate_limited``) while the process
    already holds its limit of connections that have not identified.
    """
    pending = state.hub.pending
    if not pending.admit():
        raise RateLimited("too many gateway connections waiting to identify", retry_after=1)
    counted = True

    def identified() -> None:
        nonlocal counted
        if counted:
            counted = False
            pending.release()

    try:
        await _serve(state, identified)
    finally:
        identified()


async def _still_valid(state: ControlState, token: str, revocations: int) -> bool:
    """Whether ``token`` survived the revocations since the cache's count was
    ``revocations``: a session registered after a revocation event went by must check
    the store itself, or it would outlive its revoked token."""
    if state.sessions.generation == revocations:
        return True
    return await _authenticate(state, token) is not None


async def _serve(state: ControlState, identified: Callable[[], None]) -> None:
    await websocket.accept()
    config = state.config
    core = ConnectionCore(
        config.heartbeat_interval_ms / 1000,
        trio.current_time(),
        identify_timeout_s=config.gateway_identify_timeout_s,
    )
    await websocket.send(core.hello())
    outbox_send, outbox_recv = trio.open_memory_channel[bytes](OUTBOX_FRAMES)
    live: LiveSession | None = None
    hub = state.hub
    # Bounded by the core (past ``voice_limit`` ops in flight it closes the connection),
    # so handing an op over never blocks the reader.
    voice_send, voice_recv = trio.open_memory_channel[VoiceAction](core.voice_limit)
    timer = trio.CancelScope()

    try:
        async with trio.open_nursery() as nursery:

            async def close(code: int, reason: str) -> None:
                with trio.CancelScope(shield=True), trio.move_on_after(2):
                    await websocket.close(code, reason)
                nursery.cancel_scope.cancel()

            # The hub closes a connection from whatever task publishes the event (another
            # request's): it only posts the close here, and this connection's task performs it.
            close_send, close_recv = trio.open_memory_channel[tuple[int, str]](1)

            def on_close(code: int, reason: str) -> None:
                with contextlib.suppress(trio.WouldBlock):
                    close_send.send_nowait((code, reason))

            async def closer() -> None:
                await close(*await close_recv.receive())

            def established(expires_at: int) -> None:
                core.established(trio.current_time(), expires_at - time.time())
                timer.deadline = core.wake_at
                identified()

            async def writer() -> None:
                async for frame in outbox_recv:
                    await websocket.send(frame)

            async def watchdog() -> None:
                nonlocal timer
                while True:
                    timer = trio.CancelScope(deadline=core.wake_at)
                    with timer:
                        await trio.sleep_forever()
                    timeout = core.check_timeout(trio.current_time())
                    if timeout is not None:
                        await close(timeout.code, timeout.reason)
                        return

            async def refuse() -> None:
                for refusal in core.refused(trio.current_time()):
                    assert isinstance(refusal, SendFrame)
                    await outbox_send.send(refusal.frame)
                timer.deadline = core.wake_at

            async def identify(action: Identify) -> None:
                nonlocal live
                revocations = state.sessions.generation
                found = await _authenticate(state, action.token)
                if found is None:
                    await close(Close.AUTHENTICATION_FAILED, "authentication failed")
                    return
                caller, expires_at = found
                hub.expire(trio.current_time())
                session_id = new_id()
                live = hub.create(
                    GatewaySession(session_id, caller.user_id, caller.device_id), caller.token_hash
                )
                hub.attach(live, outbox_send, on_close, caller.token_hash)
                if not await _still_valid(state, action.token, revocations):
                    hub.end(live, Close.SESSION_REVOKED, "session revoked")
                    return
                limit = state.config.presence_guild_limit
                ready = await state.db.read(lambda conn: _ready(conn, session_id, caller, limit))
                await _touch_device(state, caller.device_id)
                ready["presences"] = [
                    {"user_id": u, "status": hub.presence[u]}
                    for u in ready.pop("co_members")
                    if u in hub.presence
                ]
                visible = {c["id"] for g in ready["guilds"] for c in g["channels"]}
                ready["voice_states"] = state.voice.states(visible)
                state.voice.gateway_attached(caller.device_id)
                established(expires_at)
                live.release(EventName.READY, _pack(ready))
                hub.presence[caller.user_id] = action.status
                await _publish_presence(state, caller.user_id, action.status)

            async def resume(action: Resume) -> None:
                nonlocal live
                revocations = state.sessions.generation
                found = await _authenticate(state, action.token)
                session = hub.sessions.get(action.session_id)
                frames = session.core.replay_after(action.seq) if session is not None else None
                if (
                    found is None
                    or session is None
                    or session.core.device_id != found[0].device_id
                    or frames is None
                ):
                    await refuse()
                    return
                caller, expires_at = found
                live = session
                live.held = []
                hub.attach(live, outbox_send, on_close, caller.token_hash)
                if not await _still_valid(state, action.token, revocations):
                    hub.end(live, Close.SESSION_REVOKED, "session revoked")
                    return
                for frame in frames:
                    await outbox_send.send(frame)
                state.voice.gateway_attached(caller.device_id)
                established(expires_at)
                live.release(EventName.RESUMED, _pack(live.core.snapshot()))
                if caller.user_id not in hub.presence:
                    hub.presence[caller.user_id] = "online"
                    await _publish_presence(state, caller.user_id, "online")

            async def voice_state(action: VoiceStateRequest) -> None:
                assert live is not None
                await state.voice.voice_state_update(
                    live.core.user_id,
                    live.core.device_id,
                    action.guild_id,
                    action.channel_id,
                    action.self_mute,
                    action.self_deaf,
                )

            async def voice_publish(action: VoicePublish) -> None:
                assert live is not None
                await state.voice.publish(
                    live.core.device_id, action.voice_session_id, action.sdp_offer
                )

            async def voice_answer(action: VoiceSubscribeAnswer) -> None:
                assert live is not None
                await state.voice.subscribe_answer(
                    live.core.device_id, action.voice_session_id, action.sdp_answer
                )

            handlers: dict[type, Callable[[Any], Awaitable[None]]] = {
                Identify: identify,
                Resume: resume,
            }
            voice_handlers: dict[type, Callable[[Any], Awaitable[None]]] = {
                VoiceStateRequest: voice_state,
                VoicePublish: voice_publish,
                VoiceSubscribeAnswer: voice_answer,
            }

            async def voice_ops() -> None:
                # One at a time, in the order they came: the voice contract needs a device's
                # ops in order (its op 4 before its op 12, its answers in turn). An op that
                # started runs to its end even when the connection closes (the voice service
                # shields it, bounded by the SFU request timeout); ops still queued are
                # dropped with the connection, as unread frames are.
                async for action in voice_recv:
                    await voice_handlers[type(action)](action)
                    core.voice_done()

            nursery.start_soon(writer)
            nursery.start_soon(watchdog)
            nursery.start_soon(closer)
            nursery.start_soon(voice_ops)
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
                    elif isinstance(action, VoiceAction):
                        voice_send.send_nowait(action)
                    else:
                        await handlers[type(action)](action)
    finally:
        # After the nursery, so after a voice op that was running when the connection
        # closed: a join finishing later would otherwise leave a voice session that the
        # detach below never marked for the grace sweep.
        with trio.CancelScope(shield=True):
            if live is not None:
                hub.detach(live, outbox_send, trio.current_time())
                if not hub.device_online(live.core.device_id):
                    state.voice.gateway_detached(live.core.device_id, trio.current_time())
                user_id = live.core.user_id
                if not hub.online(user_id) and hub.presence.pop(user_id, None) is not None:
                    await _publish_presence(state, user_id, "offline")
