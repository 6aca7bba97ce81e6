"""Typed errors of the client's media layer (:mod:`client.voice`)."""

from __future__ import annotations

from client.errors import ClientError


class MediaError(ClientError):
    """Base class of every error the media layer raises."""


class MediaHookUnavailable(MediaError):
    """Frame protection cannot be installed on this aiortc sender or receiver.

    Raised instead of letting media flow unprotected: either the aiortc release changed the
    internals the hook relies on (see :mod:`client.voice.media`), or the sender already
    encoded (the receiver already received) before protection was installed.
    """


class MediaFileError(MediaError):
    """A media file cannot be read or written (missing, not WAV, unsupported format)."""


class VoiceRefused(MediaError):
    """The server refused the call or ended it (a ``VOICE_ERROR``, or a moderator's
    disconnect): ``code`` is the wire code of docs/voice.md (``forbidden``,
    ``channel_full``, ``not_voice``, ``no_sfu``, ``sfu_error``, ...) or ``disconnected``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"voice refused ({code}): {message}")
        self.code = code
        self.message = message
