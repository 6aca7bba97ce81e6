"""The decrypted messages this device keeps: DMs and channel messages, in the local store.

A :class:`Message` is what the store keeps and the CLI shows; :class:`History` adds one
(once per id: a repeat is not stored twice) and reads a conversation back. Disappearing
messages carry ``expires_at``, the one clear column the store deletes them by.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from client.store import Store

__all__ = ["History", "Message"]


@dataclass(frozen=True)
class Message:
    """A decrypted message as the store keeps it and the CLI shows it."""

    id: str
    conversation: str
    sender_id: str
    sender_handle: str
    body: str
    ts: float
    direction: str
    expires_at: float | None = None
    #: A channel message's position on the server (None for DMs).
    seq: int | None = None

    def to_record(self) -> dict[str, Any]:
        """The stored form."""
        return {
            "id": self.id,
            "conversation": self.conversation,
            "sender_id": self.sender_id,
            "sender_handle": self.sender_handle,
            "body": self.body,
            "ts": self.ts,
            "direction": self.direction,
            "expires_at": self.expires_at,
            "seq": self.seq,
        }

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> Message:
        """Rebuild from the stored form."""
        return cls(
            r["id"],
            r["conversation"],
            r["sender_id"],
            r["sender_handle"],
            r["body"],
            r["ts"],
            r["direction"],
            r.get("expires_at"),
            r.get("seq"),
        )


class History:
    """The stored messages of every conversation (``dm:<user id>``, ``ch:<channel id>``)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def remember(self, message: Message) -> bool:
        """Store ``message``; False when a message with its id is already stored."""
        return self._store.add_message(
            message.conversation,
            message.id,
            message.to_record(),
            message.expires_at,
            message.seq,
        )

    def has(self, message_id: str) -> bool:
        """Whether a message with this id is stored."""
        return self._store.has_message(message_id)

    def conversation(self, conversation: str, limit: int = 50) -> list[Message]:
        """The stored messages of ``conversation``.

        Channel messages are in the server's order; DMs in the order their senders wrote
        them (the relay hands out envelopes of one second in no particular order).
        """
        messages = [Message.from_record(r) for r in self._store.messages(conversation, limit)]
        if conversation.startswith("dm:"):
            messages.sort(key=lambda m: m.ts)
        return messages
