"""Typed errors of the client SDK.

Every failure the SDK reports is a :class:`ClientError` whose message is one plain sentence,
so the CLI can print it as it is. Errors from :mod:`e2ee` are caught at the trust boundary
and reported as :class:`UndecryptableMessage` (for received bytes) or wrapped here.
"""

from __future__ import annotations

from typing import Any


class ClientError(Exception):
    """Base class of every error the client SDK raises."""


class TransportError(ClientError):
    """The server could not be reached or broke the connection mid-request."""


class ApiError(ClientError):
    """The server answered with an error body ``{"error": {"code", "message"}}``."""

    def __init__(self, status: int, code: str, message: str, extra: dict[str, Any]) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra


class TokenRefused(ClientError):
    """The session token is unknown, expired or revoked; the device must sign in again."""


class SessionRevoked(TokenRefused):
    """The server ended this device's session while connected (gateway close 4020): it was
    signed out, the device removed or the account deleted. The gateway stops; signing in
    again is for the user to decide (it cannot work for a removed device)."""


class ProtocolError(ClientError):
    """The server sent something that does not decode as the API promises."""


class StoreError(ClientError):
    """The local store is missing, locked with another passphrase, or damaged."""


class NotRegistered(StoreError):
    """The profile has no account yet: run ``register`` or ``login`` first."""


class IdentityChanged(ClientError):
    """A contact's identity keys changed since they were verified; the user must decide.

    Raised before anything is encrypted for the new keys: a changed identity key is never
    silently accepted.
    """

    def __init__(self, user_id: str, handle: str | None, message: str) -> None:
        super().__init__(message)
        self.user_id = user_id
        self.handle = handle


class UntrustedDevice(ClientError):
    """The server lists a device its account's signed device list does not name (or
    serves no list that verifies), and would not take a message without it.

    Nothing is encrypted to such a device (cross-signing, docs/e2ee.md); the server
    refusing to deliver without it leaves nothing sent.
    """

    def __init__(self, user_id: str, message: str) -> None:
        super().__init__(message)
        self.user_id = user_id


class UndecryptableMessage(ClientError):
    """A received envelope or channel message failed authentication or decoding."""


class ForgedAuthor(UndecryptableMessage):
    """A channel message whose author labels (from the server) or stated author (inside
    it) are not the user and device whose sender key it was written with."""

    def __init__(self, message: str, author: tuple[str, str] | None = None) -> None:
        super().__init__(message)
        #: (user id, device id) whose key really opens the message, when known.
        self.author = author


class UsageError(ClientError):
    """A command was given arguments that cannot work (unknown handle, channel, ...)."""


class LinkError(ClientError):
    """Device linking failed: the link code is malformed, wrong, expired or already used."""
