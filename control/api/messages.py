"""Channel messages: Sender-Key ciphertexts, opaque to the server, kept for the channel's
retention (0 days: relayed to live sessions and never stored), and typing notices.

Posting needs SEND_MESSAGES in a text channel, reading history READ_MESSAGE_HISTORY; only
the author edits a message, and the author or a holder of MANAGE_MESSAGES deletes it.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from contract.gateway import EventName
from contract.permissions import Permission

from ..bus import Event
from ..community import GuildSnapshot, load_channel, member_context
from ..errors import BadRequest, Forbidden, NotFound
from ..ids import new_id, now
from ..store import schema as t
from ..wire import Schema
from ._routing import Call, Caller, Router, int_field
from .relay import CIPHERTEXT

__all__ = ["message_view", "router"]

P = Permission
POST_MESSAGE = Schema("PostMessage", {"ciphertext": CIPHERTEXT})
HISTORY = Schema(
    "History",
    {
        "limit": int_field("at most this many (default 50)", 1, 100, False),
        "before": int_field("only messages with seq below this", 0, 2**53 - 1, False),
        "after": int_field("only messages with seq above this", 0, 2**53 - 1, False),
    },
)
EMPTY = Schema("Empty", {})

router = Router(tag="messages")


def message_view(row: Any) -> dict[str, Any]:
    """The wire form of a channel message."""
    return {
        "id": row["id"],
        "channel_id": row["channel_id"],
        "author_id": row["author_id"],
        "author_device_id": row["author_device_id"],
        "seq": row["seq"],
        "ciphertext": row["ciphertext"],
        "created_at": row["created_at"],
        "edited_at": row["edited_at"],
    }


@router.route(
    "POST",
    "/channels/{channel_id}/messages",
    summary="Post a Sender-Key ciphertext (SEND_MESSAGES); kept for the channel retention",
    body=POST_MESSAGE,
    status=201,
    errors=(403, 404),
)
async def post_message(call: Call, channel_id: str) -> dict[str, Any]:
    me, ciphertext = call.me, call.body["ciphertext"]
    message, audience = await call.state.db.write(
        lambda conn: post_message_tx(conn, me, channel_id, ciphertext)
    )
    await call.state.bus.publish(Event(EventName.MESSAGE_CREATE, message, audience))
    return message


def post_message_tx(
    conn: Connection, author: Caller, channel_id: str, ciphertext: bytes
) -> tuple[dict[str, Any], frozenset[str]]:
    """Number the message and store it (unless retention is 0); return it and who sees it."""
    channel = load_channel(conn, channel_id)
    ctx = member_context(conn, channel.guild_id, author.user_id)
    held = ctx.channel_permissions(conn, channel)
    if channel.type != "text":
        raise BadRequest("messages go to text channels")
    if not held & P.SEND_MESSAGES:
        raise Forbidden("missing permission SEND_MESSAGES")
    m = t.messages
    seq = (
        conn.execute(sa.select(sa.func.max(m.c.seq)).where(m.c.channel_id == channel_id)).scalar()
        or 0
    ) + 1
    message = {
        "id": new_id(),
        "channel_id": channel_id,
        "author_id": author.user_id,
        "author_device_id": author.device_id,
        "seq": seq,
        "ciphertext": ciphertext,
        "created_at": now(),
        "edited_at": None,
    }
    if channel.retention_days > 0:
        conn.execute(sa.insert(m).values(**message))
    audience = GuildSnapshot(conn, channel.guild_id).holders(channel_id)
    return message_view(message), audience


@router.route(
    "GET",
    "/channels/{channel_id}/messages",
    summary="Stored messages, newest first (READ_MESSAGE_HISTORY); page with before/after",
    query=HISTORY,
    errors=(403, 404),
)
async def history(call: Call, channel_id: str) -> list[dict[str, Any]]:
    user_id, query = call.me.user_id, call.query
    return await call.state.db.read(lambda conn: history_tx(conn, user_id, channel_id, query))


def history_tx(
    conn: Connection, caller_id: str, channel_id: str, query: dict[str, Any]
) -> list[dict[str, Any]]:
    """A page of stored messages, newest first, as a History query asks."""
    channel = load_channel(conn, channel_id)
    ctx = member_context(conn, channel.guild_id, caller_id)
    if not ctx.channel_permissions(conn, channel) & P.READ_MESSAGE_HISTORY:
        raise Forbidden("missing permission READ_MESSAGE_HISTORY")
    m = t.messages
    stmt = sa.select(m).where(m.c.channel_id == channel_id)
    if "before" in query:
        stmt = stmt.where(m.c.seq < query["before"])
    if "after" in query:
        stmt = stmt.where(m.c.seq > query["after"])
    stmt = stmt.order_by(m.c.seq.desc()).limit(query.get("limit", 50))
    return [message_view(r) for r in conn.execute(stmt).mappings()]


def _own_message(
    conn: Connection, channel_id: str, message_id: str, user_id: str
) -> tuple[Any, int, Any]:
    channel = load_channel(conn, channel_id)
    ctx = member_context(conn, channel.guild_id, user_id)
    held = ctx.channel_permissions(conn, channel)
    m = t.messages
    row = (
        conn.execute(sa.select(m).where(m.c.id == message_id, m.c.channel_id == channel_id))
        .mappings()
        .first()
    )
    if row is None:
        raise NotFound("no such message")
    return channel, held, row


@router.route(
    "PATCH",
    "/channels/{channel_id}/messages/{message_id}",
    summary="Replace a message's ciphertext (author only)",
    body=POST_MESSAGE,
    errors=(403, 404),
)
async def edit_message(call: Call, channel_id: str, message_id: str) -> dict[str, Any]:
    user_id, ciphertext = call.me.user_id, call.body["ciphertext"]
    message, audience = await call.state.db.write(
        lambda conn: edit_message_tx(conn, user_id, channel_id, message_id, ciphertext)
    )
    await call.state.bus.publish(Event(EventName.MESSAGE_UPDATE, message, audience))
    return message


def edit_message_tx(
    conn: Connection, caller_id: str, channel_id: str, message_id: str, ciphertext: bytes
) -> tuple[dict[str, Any], frozenset[str]]:
    """Replace the caller's own message; return it and who sees it."""
    channel, _held, row = _own_message(conn, channel_id, message_id, caller_id)
    if row["author_id"] != caller_id:
        raise Forbidden("only the author may edit a message")
    m = t.messages
    edited = now()
    conn.execute(
        sa.update(m).where(m.c.id == message_id).values(ciphertext=ciphertext, edited_at=edited)
    )
    message = message_view({**row, "ciphertext": ciphertext, "edited_at": edited})
    return message, GuildSnapshot(conn, channel.guild_id).holders(channel_id)


@router.route(
    "DELETE",
    "/channels/{channel_id}/messages/{message_id}",
    summary="Delete a message (author, or MANAGE_MESSAGES)",
    status=204,
    errors=(403, 404),
)
async def delete_message(call: Call, channel_id: str, message_id: str) -> None:
    user_id = call.me.user_id
    audience = await call.state.db.write(
        lambda conn: delete_message_tx(conn, user_id, channel_id, message_id)
    )
    data = {"id": message_id, "channel_id": channel_id}
    await call.state.bus.publish(Event(EventName.MESSAGE_DELETE, data, audience))


def delete_message_tx(
    conn: Connection, caller_id: str, channel_id: str, message_id: str
) -> frozenset[str]:
    """Delete the message (the author's own, or any with MANAGE_MESSAGES); who saw it."""
    channel, held, row = _own_message(conn, channel_id, message_id, caller_id)
    if row["author_id"] != caller_id and not held & P.MANAGE_MESSAGES:
        raise Forbidden("missing permission MANAGE_MESSAGES")
    conn.execute(sa.delete(t.messages).where(t.messages.c.id == message_id))
    return GuildSnapshot(conn, channel.guild_id).holders(channel_id)


@router.route(
    "POST",
    "/channels/{channel_id}/typing",
    summary="Tell the channel you are typing (SEND_MESSAGES; never stored)",
    body=EMPTY,
    status=204,
    errors=(403, 404),
)
async def typing(call: Call, channel_id: str) -> None:
    user_id = call.me.user_id
    audience = await call.state.db.read(lambda conn: typing_tx(conn, user_id, channel_id))
    data = {"channel_id": channel_id, "user_id": user_id}
    await call.state.bus.publish(Event(EventName.TYPING_START, data, audience - {user_id}))


def typing_tx(conn: Connection, caller_id: str, channel_id: str) -> frozenset[str]:
    """Who sees the channel, once the caller is shown to hold SEND_MESSAGES in it."""
    channel = load_channel(conn, channel_id)
    ctx = member_context(conn, channel.guild_id, caller_id)
    if not ctx.channel_permissions(conn, channel) & P.SEND_MESSAGES:
        raise Forbidden("missing permission SEND_MESSAGES")
    return GuildSnapshot(conn, channel.guild_id).holders(channel_id)
