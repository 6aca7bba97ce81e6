"""Relay facts both ends agree on: how large a ciphertext, and a page of them, can be, and
how many users one send may name.

``GET /envelopes`` returns the oldest envelopes queued for the calling device, at most
``limit`` (:data:`ENVELOPE_PAGE_LIMIT` at most) and no more than
:data:`ENVELOPE_PAGE_BYTES` of ciphertext — except that a page always holds the first
envelope, which is never above :data:`MAX_CIPHERTEXT`. A client pages until a page comes
back empty (a page shorter than ``limit`` may have stopped at the byte bound), and must
accept an answer of :data:`MAX_ENVELOPE_PAGE_ANSWER` bytes. ``POST /envelopes`` names at
most :data:`MAX_ENVELOPE_RECIPIENTS` users: a client fans out to more in several posts.
docs/control.md, "Ciphertext relay".
"""

from __future__ import annotations

__all__ = [
    "ENVELOPE_PAGE_BYTES",
    "ENVELOPE_PAGE_LIMIT",
    "MAX_CIPHERTEXT",
    "MAX_ENVELOPE_PAGE_ANSWER",
    "MAX_ENVELOPE_RECIPIENTS",
]

#: Largest single ciphertext (an envelope or a channel message).
MAX_CIPHERTEXT = 64 * 1024
#: Most recipient users one ``POST /envelopes`` (or one send of a batch) may name.
MAX_ENVELOPE_RECIPIENTS = 100
#: Most envelopes one ``GET /envelopes`` may ask for.
ENVELOPE_PAGE_LIMIT = 500
#: Most ciphertext bytes in one page of ``GET /envelopes`` (a page of one envelope aside,
#: and that one is at most MAX_CIPHERTEXT).
ENVELOPE_PAGE_BYTES = 1024 * 1024
#: An upper bound on the encoded answer of a page, in JSON (base64 adds a third) or
#: msgpack, counting 512 bytes for each envelope's other fields (ids, integers, names).
MAX_ENVELOPE_PAGE_ANSWER = ENVELOPE_PAGE_BYTES * 4 // 3 + ENVELOPE_PAGE_LIMIT * 512
