"""Voice moderation: server mute, server deafen, move and disconnect (docs/voice.md).

The decisions are the permission function's (MUTE_MEMBERS, DEAFEN_MEMBERS, MOVE_MEMBERS in
the member's current channel; CONNECT for the moderator in the target channel) and the
hierarchy's (only members below the moderator); the voice service then makes the SFU
enforce them (``producer.mute``, consumer pause) — the client is never trusted to.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Connection

from contract.permissions import Permission, can_manage_member

from ..community import load_channel, member_context
from ..errors import BadRequest, Forbidden, NotFound
from ..voice import ChannelFacts, VoiceRefused, channel_facts
from ..wire import Field, Schema
from ._routing import Call, Router, id_field
from .guild_view import member_role_ids

__all__ = ["router"]

P = Permission
VOICE_MODERATION = Schema(
    "VoiceModeration",
    {
        "mute": Field("bool", "server mute (MUTE_MEMBERS)", required=False),
        "deaf": Field("bool", "server deafen (DEAFEN_MEMBERS)", required=False),
        "channel_id": id_field(
            "move to this voice channel (MOVE_MEMBERS); null disconnects",
            required=False,
            nullable=True,
        ),
    },
)

router = Router(tag="voice")


@router.route(
    "PATCH",
    "/guilds/{guild_id}/members/{user_id}/voice",
    summary="Server mute, deafen, move or disconnect a member in voice",
    body=VOICE_MODERATION,
    status=204,
    errors=(400, 403, 404),
)
async def moderate_voice(call: Call, guild_id: str, user_id: str) -> None:
    voice = call.state.voice
    caller_id, body = call.me.user_id, call.body
    sessions = voice.registry.of_user(guild_id, user_id)
    if not sessions:
        raise NotFound("the member is not in a voice channel")
    current = sessions[0].channel_id
    facts = await call.state.db.read(
        lambda conn: moderation_tx(conn, caller_id, guild_id, user_id, current, body)
    )
    if "mute" in body or "deaf" in body:
        await voice.set_server_mute(guild_id, user_id, body.get("mute"), body.get("deaf"))
    if "channel_id" not in body:
        return
    target = body["channel_id"]
    for session in voice.registry.of_user(guild_id, user_id):
        if target is None:
            await voice.leave(session)
        elif facts is not None and session.channel_id != target:
            await voice.move(session, target, facts)


def moderation_tx(
    conn: Connection,
    caller_id: str,
    guild_id: str,
    user_id: str,
    current_channel_id: str,
    body: dict[str, Any],
) -> ChannelFacts | None:
    """Check that the caller may do what ``body`` asks to ``user_id`` in voice; returns the
    member's facts in the target channel of a move."""
    ctx = member_context(conn, guild_id, caller_id)
    target_roles = member_role_ids(conn, guild_id, user_id)
    if target_roles is None:
        raise NotFound("no such member")
    if not can_manage_member(ctx.guild, caller_id, ctx.role_ids, user_id, target_roles):
        raise Forbidden("the member is not below your highest role")
    held = ctx.channel_permissions(conn, load_channel(conn, current_channel_id))
    if "mute" in body and not held & P.MUTE_MEMBERS:
        raise Forbidden("missing permission MUTE_MEMBERS")
    if "deaf" in body and not held & P.DEAFEN_MEMBERS:
        raise Forbidden("missing permission DEAFEN_MEMBERS")
    if "channel_id" not in body:
        return None
    if not held & P.MOVE_MEMBERS:
        raise Forbidden("missing permission MOVE_MEMBERS")
    target_id = body["channel_id"]
    if target_id is None:
        return None
    target = load_channel(conn, target_id)
    if target.guild_id != guild_id:
        raise NotFound("no such channel")
    if not ctx.channel_permissions(conn, target) & P.CONNECT:
        raise Forbidden("missing permission CONNECT in the target channel")
    if target.type != "voice":
        raise BadRequest("the target is not a voice channel")
    try:
        facts = channel_facts(conn, guild_id, target_id, user_id)
    except VoiceRefused:
        facts = None
    if facts is None or not facts.permissions & P.CONNECT:
        raise Forbidden("the member cannot connect to the target channel")
    return facts
