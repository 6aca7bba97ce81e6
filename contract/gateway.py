"""Gateway facts both ends agree on: opcodes, close codes, dispatch names, frame bounds.

Frames are msgpack maps ``{op, d, s, t}`` in Discord's shape (REFERENCES.md "Control
plane"); DISPATCH frames carry a sequence number ``s`` and an event name ``t`` from
:class:`EventName`. Close codes use Discord's numbering. docs/control.md describes each.
"""

from __future__ import annotations

import enum

__all__ = ["MAX_CLIENT_FRAME", "MAX_SERVER_FRAME", "Close", "EventName", "Op"]

#: Largest frame a client may send: an SDP of up to 64 KiB (the SFU's bound) in op 12/13,
#: with room for the rest. 16 KiB was too small: the answer to the SFU's re-offer grows by
#: an m-section per participant ever subscribed in the call (~1 KiB each), so a participant
#: who stayed while others came and went 14 times was cut off.
MAX_CLIENT_FRAME = 80 * 1024
#: Largest frame a client accepts from the server (READY of a large account included).
MAX_SERVER_FRAME = 16 * 1024 * 1024


class Op(enum.IntEnum):
    """Gateway opcodes."""

    DISPATCH = 0
    HEARTBEAT = 1
    IDENTIFY = 2
    PRESENCE = 3
    VOICE_STATE = 4
    RESUME = 6
    RECONNECT = 7
    INVALID_SESSION = 9
    HELLO = 10
    HEARTBEAT_ACK = 11
    #: The send transport's SDP offer (docs/voice.md).
    VOICE_PUBLISH = 12
    #: The answer to the receive transport's latest SDP offer (docs/voice.md).
    VOICE_SUBSCRIBE_ANSWER = 13


class Close(enum.IntEnum):
    """WebSocket close codes the gateway uses (Discord's numbering up to 4009; 4020 and 4021
    are hushroom's, for a token that stops being valid while its connection is open)."""

    UNKNOWN_ERROR = 4000
    UNKNOWN_OPCODE = 4001
    DECODE_ERROR = 4002
    NOT_AUTHENTICATED = 4003
    AUTHENTICATION_FAILED = 4004
    ALREADY_AUTHENTICATED = 4005
    INVALID_SEQ = 4007
    RATE_LIMITED = 4008
    SESSION_TIMED_OUT = 4009
    #: Sign-out, device removal or account deletion: the session ends, no RESUME.
    SESSION_REVOKED = 4020
    #: The token expired: sign in again, then RESUME (within the window) or IDENTIFY.
    SESSION_EXPIRED = 4021


class EventName(enum.StrEnum):
    """The event names (``t``) of DISPATCH frames."""

    READY = "READY"
    RESUMED = "RESUMED"
    PRESENCE_UPDATE = "PRESENCE_UPDATE"
    DEVICE_ADD = "DEVICE_ADD"
    DEVICE_REMOVE = "DEVICE_REMOVE"
    PREKEYS_LOW = "PREKEYS_LOW"
    ENVELOPE_CREATE = "ENVELOPE_CREATE"
    GUILD_CREATE = "GUILD_CREATE"
    GUILD_UPDATE = "GUILD_UPDATE"
    GUILD_DELETE = "GUILD_DELETE"
    GUILD_MEMBER_ADD = "GUILD_MEMBER_ADD"
    GUILD_MEMBER_UPDATE = "GUILD_MEMBER_UPDATE"
    GUILD_MEMBER_REMOVE = "GUILD_MEMBER_REMOVE"
    GUILD_ROLE_CREATE = "GUILD_ROLE_CREATE"
    GUILD_ROLE_UPDATE = "GUILD_ROLE_UPDATE"
    GUILD_ROLE_DELETE = "GUILD_ROLE_DELETE"
    GUILD_ROLES_UPDATE = "GUILD_ROLES_UPDATE"
    CHANNEL_CREATE = "CHANNEL_CREATE"
    CHANNEL_UPDATE = "CHANNEL_UPDATE"
    CHANNEL_DELETE = "CHANNEL_DELETE"
    MESSAGE_CREATE = "MESSAGE_CREATE"
    MESSAGE_UPDATE = "MESSAGE_UPDATE"
    MESSAGE_DELETE = "MESSAGE_DELETE"
    TYPING_START = "TYPING_START"
    VOICE_STATE_UPDATE = "VOICE_STATE_UPDATE"
    VOICE_SERVER_UPDATE = "VOICE_SERVER_UPDATE"
    VOICE_PUBLISH_ANSWER = "VOICE_PUBLISH_ANSWER"
    VOICE_SUBSCRIBE_OFFER = "VOICE_SUBSCRIBE_OFFER"
    VOICE_ERROR = "VOICE_ERROR"
    SPEAKING = "SPEAKING"
