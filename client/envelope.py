"""What travels inside the relay's opaque ``ciphertext`` fields, and what is inside that.

Envelope (per device, ``POST /envelopes``): msgpack ``[1, conversation id, pairwise
message]``. The conversation id is in clear because the receiver must name it to decrypt
(the Double Ratchet binds it into the AD): ``dm:<a>|<b>`` (the two user ids, sorted — the
server knows both parties already), ``self:<user id>`` for copies to one's own devices, or
a channel id for a sender-key distribution (the server knows the channel's members).

Message body (inside a pairwise TEXT / DEVICE_SYNC message or a sender-key message, padded
with :func:`e2ee.pad`): msgpack map ``{"id", "body", "ts", "exp", "from"}`` plus ``"to"``
on device-sync copies and ``"by"`` on channel messages. ``exp`` (seconds, or None) is the
disappearing-message timer: it travels encrypted and each client's store enforces it.
``from`` is the sender's handle as the sender states it. ``by`` is ``[user id, device id]``
of the channel message's author device, signed with the message: a chain passed on by
someone other than its author (who received it as a reader) opens the author's messages
but they name their real author, not the one who passed it on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from client.errors import UndecryptableMessage, UsageError
from e2ee import E2EEError, pad, unpad

__all__ = [
    "Body",
    "decode_body_untrusted",
    "decode_envelope_untrusted",
    "dm_conversation",
    "encode_body",
    "encode_envelope",
    "require_sendable",
    "self_conversation",
]

_VERSION = 1
MAX_TEXT = 16 * 1024
#: Longest disappearing timer accepted (a year).
MAX_EXPIRY_S = 365 * 86400


def require_sendable(text: str, expires_in: int | None) -> None:
    """Refuse, before anything is encrypted or sent, a message every receiver would drop
    as not well-formed (:func:`decode_body_untrusted`): a text longer than ``MAX_TEXT``
    characters, one that is not valid Unicode (a lone surrogate cannot be encoded as
    UTF-8), or a disappearing timer outside ``1 … MAX_EXPIRY_S`` seconds."""
    if len(text) > MAX_TEXT:
        raise UsageError(f"a message is at most {MAX_TEXT} characters; this one has {len(text)}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError("a message must be valid Unicode text") from None
    if expires_in is not None and (
        isinstance(expires_in, bool)
        or not isinstance(expires_in, int)
        or not 0 < expires_in <= MAX_EXPIRY_S
    ):
        raise UsageError(f"a disappearing timer is 1 to {MAX_EXPIRY_S} seconds")


def dm_conversation(a: str, b: str) -> bytes:
    """The conversation id of the direct messages between users ``a`` and ``b``."""
    first, second = sorted((a, b))
    return f"dm:{first}|{second}".encode()


def self_conversation(user_id: str) -> bytes:
    """The conversation id of copies a user sends to their own other devices."""
    return f"self:{user_id}".encode()


def encode_envelope(conversation_id: bytes, message: bytes) -> bytes:
    """The bytes posted as one device's envelope ciphertext."""
    return msgpack.packb([_VERSION, conversation_id, message], use_bin_type=True)


def decode_envelope_untrusted(data: bytes) -> tuple[bytes, bytes]:
    """(conversation id, pairwise message) of an envelope from the relay."""
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=False, max_bin_len=2**20)
    except (ValueError, TypeError, RecursionError, msgpack.UnpackException):
        raise UndecryptableMessage("an envelope is not well-formed") from None
    if (
        not isinstance(value, list)
        or len(value) != 3
        or value[0] != _VERSION
        or not isinstance(value[1], bytes)
        or not 0 < len(value[1]) <= 255
        or not isinstance(value[2], bytes)
    ):
        raise UndecryptableMessage("an envelope is not well-formed")
    return value[1], value[2]


@dataclass(frozen=True)
class Body:
    """A decrypted message body."""

    id: str
    body: str
    ts: float
    exp: int | None
    sender_handle: str
    to: str | None = None
    #: (user id, device id) of a channel message's author device.
    author: tuple[str, str] | None = None


def encode_body(b: Body) -> bytes:
    """Pack and pad a body for encryption."""
    value: dict[str, Any] = {
        "id": b.id,
        "body": b.body,
        "ts": b.ts,
        "exp": b.exp,
        "from": b.sender_handle,
    }
    if b.to is not None:
        value["to"] = b.to
    if b.author is not None:
        value["by"] = list(b.author)
    return pad(msgpack.packb(value, use_bin_type=True))


def decode_body_untrusted(padded: bytes) -> Body:
    """Unpad and decode an authenticated (but still peer-controlled) body."""
    try:
        value = msgpack.unpackb(unpad(padded), raw=False, strict_map_key=False)
    except (E2EEError, ValueError, TypeError, RecursionError, msgpack.UnpackException):
        raise UndecryptableMessage("a message body is not well-formed") from None
    if not isinstance(value, dict):
        raise UndecryptableMessage("a message body is not well-formed")
    fields: dict[str, Any] = value
    mid: Any = fields.get("id")
    body: Any = fields.get("body")
    ts: Any = fields.get("ts")
    exp: Any = fields.get("exp")
    sender: Any = fields.get("from")
    to: Any = fields.get("to")
    by: Any = fields.get("by")
    ok = (
        isinstance(mid, str)
        and 0 < len(mid) <= 64
        and isinstance(body, str)
        and len(body) <= MAX_TEXT
        and isinstance(ts, int | float)
        and not isinstance(ts, bool)
        and (exp is None or (isinstance(exp, int) and 0 < exp <= MAX_EXPIRY_S))
        and isinstance(sender, str)
        and len(sender) <= 64
        and (to is None or (isinstance(to, str) and len(to) <= 64))
        and (
            by is None
            or (
                isinstance(by, list)
                and len(by) == 2
                and all(isinstance(part, str) and 0 < len(part) <= 64 for part in by)
            )
        )
    )
    if not ok:
        raise UndecryptableMessage("a message body is not well-formed")
    return Body(mid, body, float(ts), exp, sender, to, None if by is None else (by[0], by[1]))
