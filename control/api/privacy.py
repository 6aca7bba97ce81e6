"""Privacy operations: export everything held about the caller, and erase the account."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from contract.gateway import EventName

from ..bus import Event
from ..errors import Conflict
from ..sessions import revoked
from ..store import schema as t
from ._routing import Call, Router

__all__ = ["export_user", "router"]


def _rows(conn: Connection, stmt: Any) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(stmt).mappings()]


def export_user(conn: Connection, user_id: str) -> dict[str, Any]:
    """Every row the store holds that names ``user_id`` or one of their devices."""
    device_ids = list(
        conn.execute(sa.select(t.devices.c.id).where(t.devices.c.user_id == user_id)).scalars()
    )
    otk, env, m = t.one_time_prekeys, t.envelopes, t.messages
    return {
        "user": _rows(conn, sa.select(t.users).where(t.users.c.id == user_id))[0],
        "devices": _rows(conn, sa.select(t.devices).where(t.devices.c.user_id == user_id)),
        "device_list": _rows(
            conn, sa.select(t.device_lists).where(t.device_lists.c.user_id == user_id)
        ),
        "sessions": _rows(
            conn,
            sa.select(t.sessions.c.device_id, t.sessions.c.expires_at).where(
                t.sessions.c.user_id == user_id
            ),
        ),
        "signed_prekeys": _rows(
            conn, sa.select(t.signed_prekeys).where(t.signed_prekeys.c.device_id.in_(device_ids))
        ),
        "pq_prekeys": _rows(
            conn, sa.select(t.pq_prekeys).where(t.pq_prekeys.c.device_id.in_(device_ids))
        ),
        "one_time_prekeys": _rows(conn, sa.select(otk).where(otk.c.device_id.in_(device_ids))),
        "pq_one_time_prekeys": _rows(
            conn,
            sa.select(t.pq_one_time_prekeys).where(
                t.pq_one_time_prekeys.c.device_id.in_(device_ids)
            ),
        ),
        "guilds_owned": _rows(conn, sa.select(t.guilds).where(t.guilds.c.owner_id == user_id)),
        "memberships": _rows(conn, sa.select(t.members).where(t.members.c.user_id == user_id)),
        "member_roles": _rows(
            conn, sa.select(t.member_roles).where(t.member_roles.c.user_id == user_id)
        ),
        "bans": _rows(conn, sa.select(t.bans).where(t.bans.c.user_id == user_id)),
        "invites_created": _rows(
            conn, sa.select(t.invites).where(t.invites.c.creator_id == user_id)
        ),
        "overwrites": _rows(
            conn,
            sa.select(t.overwrites).where(
                t.overwrites.c.target_id == user_id, t.overwrites.c.target_type == "member"
            ),
        ),
        "messages": _rows(conn, sa.select(m).where(m.c.author_id == user_id)),
        "envelopes_queued_for_you": _rows(
            conn, sa.select(env).where(env.c.recipient_device_id.in_(device_ids))
        ),
        "envelopes_sent_not_yet_delivered": _rows(
            conn,
            sa.select(env.c.id, env.c.recipient_device_id, env.c.created_at).where(
                env.c.sender_user_id == user_id
            ),
        ),
    }


def erase_user(conn: Connection, user_id: str) -> list[tuple[str, frozenset[str]]]:
    """Delete the account and everything hanging off it; return (guild, remaining members).

    Refuses while the user owns a guild that has other members: ownership must move first.
    """
    owned = list(
        conn.execute(sa.select(t.guilds.c.id).where(t.guilds.c.owner_id == user_id)).scalars()
    )
    for guild_id in owned:
        others = conn.execute(
            sa.select(sa.func.count())
            .select_from(t.members)
            .where(t.members.c.guild_id == guild_id, t.members.c.user_id != user_id)
        ).scalar_one()
        if others:
            raise Conflict(
                "you own a guild with other members: transfer ownership or delete it first",
                guild_id=guild_id,
            )
    guilds = list(
        conn.execute(
            sa.select(t.members.c.guild_id).where(t.members.c.user_id == user_id)
        ).scalars()
    )
    remaining: list[tuple[str, frozenset[str]]] = []
    for guild_id in guilds:
        if guild_id in owned:
            continue
        members = conn.execute(
            sa.select(t.members.c.user_id).where(
                t.members.c.guild_id == guild_id, t.members.c.user_id != user_id
            )
        ).scalars()
        remaining.append((guild_id, frozenset(members)))
    if owned:
        conn.execute(sa.delete(t.guilds).where(t.guilds.c.id.in_(owned)))
    # Envelopes the user sent name them as sender: erased with the account.
    conn.execute(sa.delete(t.envelopes).where(t.envelopes.c.sender_user_id == user_id))
    conn.execute(
        sa.delete(t.overwrites).where(
            t.overwrites.c.target_id == user_id, t.overwrites.c.target_type == "member"
        )
    )
    # Devices, sessions, prekeys, queued envelopes, memberships, roles held, messages,
    # invites and bans go by ON DELETE CASCADE.
    conn.execute(sa.delete(t.users).where(t.users.c.id == user_id))
    return remaining


router = Router(tag="privacy")


@router.route(
    "GET",
    "/users/@me/export",
    summary="Everything the server holds about the caller (GDPR access)",
)
async def export(call: Call) -> dict[str, Any]:
    user_id = call.me.user_id
    return await call.state.db.read(lambda conn: export_user(conn, user_id))


@router.route(
    "DELETE",
    "/users/@me",
    summary="Erase the account and everything it owns (GDPR erasure)",
    status=204,
    errors=(409,),
)
async def erase(call: Call) -> None:
    user_id = call.me.user_id
    remaining = await call.state.db.write(lambda conn: erase_user(conn, user_id), scrub=True)
    await call.state.bus.publish(revoked(user_id=user_id))
    for guild_id, members in remaining:
        data = {"guild_id": guild_id, "user_id": user_id}
        await call.state.bus.publish(Event(EventName.GUILD_MEMBER_REMOVE, data, members))
