"""TURN credentials for voice sessions in the TURN REST scheme (coturn's ``use-auth-secret``,
draft-uberti-behave-turn-rest §2.2).

``username = "<expiry unix seconds>:<id>"`` and ``credential = base64(HMAC-SHA1(secret,
username))``; the relay (``turn/auth.py``, or coturn) recomputes the HMAC with the secret
it shares with control, so nothing is stored. The id is random per voice session and never
the user id: TURN's counters and logs cannot be tied to a person.
"""

from __future__ import annotations

import base64
import hmac
import secrets
from collections.abc import Sequence
from typing import Any

__all__ = ["ice_servers", "new_turn_id", "rest_credential", "rest_username"]


def new_turn_id() -> str:
    """A fresh random id for one voice session's TURN usernames."""
    return secrets.token_urlsafe(12)


def rest_username(expiry: int, turn_id: str) -> str:
    """The username for an absolute unix ``expiry`` and a voice session's ``turn_id``."""
    return f"{expiry}:{turn_id}"


def rest_credential(secret: bytes, username: str) -> str:
    """``base64(HMAC-SHA1(secret, username))``."""
    return base64.b64encode(hmac.digest(secret, username.encode(), "sha1")).decode()


def ice_servers(
    urls: Sequence[str], secret: bytes | None, turn_id: str, now: float, ttl_s: int
) -> list[dict[str, Any]]:
    """The ``ice_servers`` of a VOICE_SERVER_UPDATE: the deployment's TURN URLs with a
    credential valid ``ttl_s`` seconds from ``now`` (none at all without a secret)."""
    if not urls or secret is None:
        return []
    username = rest_username(int(now) + ttl_s, turn_id)
    return [
        {"urls": list(urls), "username": username, "credential": rest_credential(secret, username)}
    ]
