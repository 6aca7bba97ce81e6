"""TURN REST-API credentials, stateless nonces and the 401 rate limit.

Credentials follow draft-uberti-behave-turn-rest as coturn's ``use-auth-secret`` implements
it, so the control plane can mint them and an operator can swap coturn in:
``username = "<unix expiry>[:<id>]"``, ``password = base64(HMAC-SHA1(secret, username))``,
used as a long-term credential (RFC 8489 §9.2). Several secrets are accepted at once so a
secret can be rotated without cutting anyone off. Unlike coturn, the expiry is binding: an
allocation never outlives it (see :mod:`turn.server`).

Nonces are stateless (RFC 8489 §9.2, RFC 8656 §21.1.1): a timestamp and an HMAC over the
timestamp, the client's transport address and the transport, under a per-process key. A
spoofed Allocate therefore costs the server no memory, and a nonce minted for one address
is refused from another. Each nonce starts with the RFC 8489 security-feature cookie and
advertises "password algorithms" (MD5 and SHA-256 long-term keys, §9.2.1).
"""

from __future__ import annotations

import base64
import hmac
import secrets as _secrets
from dataclasses import dataclass

from turn.errors import StaleNonce, Unauthenticated
from turn.stun import (
    PasswordAlgorithm,
    encode_nonce_features,
    encode_password_algorithms,
    long_term_key,
)

__all__ = [
    "NONCE_LIFETIME",
    "PASSWORD_ALGORITHMS_VALUE",
    "Credential",
    "NonceBook",
    "RestCredentials",
    "SourceRateLimiter",
    "rest_password",
    "rest_username",
]

#: A nonce is good for ten minutes; then the client gets 438 and a fresh one.
NONCE_LIFETIME = 600.0
#: Bit 0 of the RFC 8489 security feature set: the server offers PASSWORD-ALGORITHMS.
FEATURE_PASSWORD_ALGORITHMS = 0x800000
#: PASSWORD-ALGORITHMS as this server sends it (and expects it echoed, §9.2.4 bid-down check).
PASSWORD_ALGORITHMS_VALUE = encode_password_algorithms(
    [(PasswordAlgorithm.MD5, b""), (PasswordAlgorithm.SHA256, b"")]
)
_NONCE_PREFIX_LEN = 13  # cookie (9) + 4 base64 characters of features
_NONCE_MAC_BYTES = 12


def rest_username(expiry: int, session_id: str = "") -> str:
    """The REST username for an absolute unix ``expiry`` and an optional opaque id."""
    return f"{expiry}:{session_id}" if session_id else str(expiry)


def rest_password(secret: bytes, username: str) -> str:
    """``base64(HMAC-SHA1(secret, username))`` — coturn's ``use-auth-secret`` password."""
    return base64.b64encode(hmac.digest(secret, username.encode("utf-8"), "sha1")).decode()


@dataclass(frozen=True, slots=True)
class Credential:
    """A username the server accepted, with its expiry and the candidate integrity keys."""

    username: str
    expiry: int
    user_id: str
    keys: tuple[bytes, ...]


class RestCredentials:
    """Checks REST usernames and derives their long-term keys, one per configured secret."""

    def __init__(self, secrets: list[bytes], realm: str) -> None:
        if not secrets:
            raise ValueError("at least one shared secret is required")
        self._secrets = list(secrets)
        self.realm = realm

    def credential_untrusted(self, username: str, algorithm: int, now: float) -> Credential:
        """Parse ``username`` and return its keys; expired or malformed ones raise 401.

        ``algorithm`` is the PASSWORD-ALGORITHM the client chose (MD5 when absent).
        """
        expiry_text, _, user_id = username.partition(":")
        if not expiry_text.isdigit() or len(expiry_text) > 12:
            raise Unauthenticated("username is not a REST username")
        expiry = int(expiry_text)
        if expiry <= now:
            raise Unauthenticated("credential expired")
        keys = tuple(
            long_term_key(username, self.realm, rest_password(secret, username), algorithm)
            for secret in self._secrets
        )
        return Credential(username, expiry, user_id or username, keys)


class NonceBook:
    """Mints and checks stateless nonces bound to a client transport address (no storage)."""

    def __init__(self, key: bytes | None = None, lifetime: float = NONCE_LIFETIME) -> None:
        self._key = key if key is not None else _secrets.token_bytes(32)
        self.lifetime = lifetime

    def _mac(self, stamp: str, transport: str, client: tuple[str, int]) -> str:
        material = f"{stamp}|{transport}|{client[0]}|{client[1]}".encode()
        mac = hmac.digest(self._key, material, "sha256")[:_NONCE_MAC_BYTES]
        return base64.urlsafe_b64encode(mac).decode()

    def mint(self, transport: str, client: tuple[str, int], now: float) -> str:
        """A fresh nonce for ``client`` on ``transport``, valid for :attr:`lifetime` seconds."""
        stamp = f"{int(now):010x}"
        return encode_nonce_features(
            FEATURE_PASSWORD_ALGORITHMS, stamp + self._mac(stamp, transport, client)
        )

    def check_untrusted(
        self, nonce: str, transport: str, client: tuple[str, int], now: float
    ) -> None:
        """Raise :class:`StaleNonce` unless ``nonce`` was minted here, for ``client``, recently."""
        body = nonce[_NONCE_PREFIX_LEN:]
        stamp, mac = body[:10], body[10:]
        try:
            minted = int(stamp, 16)
        except ValueError:
            raise StaleNonce("nonce not minted here") from None
        expected = self._mac(stamp, transport, client)
        if not hmac.compare_digest(expected.encode(), mac.encode()):
            raise StaleNonce("nonce not minted here")
        if not minted - 5 <= now <= minted + self.lifetime:
            raise StaleNonce("nonce expired")


class SourceRateLimiter:
    """Token bucket per source IP with a bounded table (for unauthenticated 401 answers).

    A 401 is larger than the Allocate that triggers it, so an unthrottled server amplifies
    traffic towards spoofed sources. The table keeps at most ``max_sources`` entries and
    forgets the oldest first, so a flood of spoofed sources cannot grow memory.
    """

    def __init__(self, rate: float, burst: float, max_sources: int = 65536) -> None:
        self.rate = rate
        self.burst = burst
        self.max_sources = max_sources
        self._buckets: dict[str, list[float]] = {}

    def allow(self, source: str, now: float) -> bool:
        """Spend one token for ``source``; False when its bucket is empty."""
        bucket = self._buckets.get(source)
        if bucket is None:
            if len(self._buckets) >= self.max_sources:
                del self._buckets[next(iter(self._buckets))]
            self._buckets[source] = [self.burst - 1.0, now]
            return True
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True

    def __len__(self) -> int:
        return len(self._buckets)
