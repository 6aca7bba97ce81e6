"""Random identifiers, session tokens and coarse clocks."""

from __future__ import annotations

import hashlib
import secrets
import time

__all__ = ["day_now", "hash_token", "new_id", "new_invite_code", "new_token", "now"]

#: Prefix that lets secret scanners recognise a leaked session token.
TOKEN_PREFIX = "hrs_"


def new_id() -> str:
    """A random 96-bit id as 24 hex digits; ids carry no time and no order."""
    return secrets.token_hex(12)


def new_token() -> str:
    """A fresh 256-bit session token; only its hash is ever stored."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> bytes:
    """SHA-256 of a session token: what the store keeps and looks up."""
    return hashlib.sha256(token.encode()).digest()


def new_invite_code() -> str:
    """A random invite code (about 60 bits, URL-safe)."""
    return secrets.token_urlsafe(8)


def now() -> int:
    """Whole seconds since the Unix epoch."""
    return int(time.time())


def day_now() -> int:
    """Whole days since the Unix epoch: the grain of creation and last-seen dates."""
    return int(time.time()) // 86400
