"""ICE-lite responder (RFC 8445 §2.5, §7.3) with consent freshness (RFC 7675).

The SFU has one host candidate per transport (the worker's UDP port, shared by all
transports and told apart by ICE username), never sends connectivity checks and is always
the controlled agent. It answers the client's Binding requests authenticated with
short-term credentials (RFC 8445 §7.2.2: USERNAME ``<our ufrag>:<their ufrag>``,
MESSAGE-INTEGRITY keyed with our password, FINGERPRINT), and selects the address of the
request that carries USE-CANDIDATE (§7.3.1.5, §8.2).

Consent (RFC 7675 §5.1): a full agent keeps sending Binding requests (every 5 s on average
once connected); each authenticated one from the selected address refreshes consent. A
transport whose consent is older than :data:`CONSENT_TIMEOUT` is closed by its owner.

The STUN codec is the TURN server's (:mod:`turn.stun`), as DESIGN.md asks.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from turn.stun import (
    Attr,
    Message,
    MessageClass,
    Method,
    StunDecodeError,
    encode_error_code,
    encode_xor_address,
    parse_message_untrusted,
    short_term_key,
)

__all__ = [
    "CONSENT_TIMEOUT",
    "IceLiteResponder",
    "IceReply",
    "decode_binding_untrusted",
    "local_ufrag_untrusted",
    "new_credentials",
]

# RFC 7675 §5.1: consent expires 30 s after the last successful check.
CONSENT_TIMEOUT = 30.0
# RFC 8445 §5.3: ufrag at least 24 bits, password at least 128 bits of randomness.
_UFRAG_BYTES = 6
_PWD_BYTES = 18

Address = tuple[str, int]


def new_credentials() -> tuple[str, str]:
    """A fresh random ``(ufrag, password)`` pair in the ice-char alphabet (RFC 8839 §5.4)."""
    return secrets.token_urlsafe(_UFRAG_BYTES).replace("-", "+").replace("_", "/"), (
        secrets.token_urlsafe(_PWD_BYTES).replace("-", "+").replace("_", "/")
    )


def decode_binding_untrusted(data: bytes) -> Message | None:
    """Parse a datagram as a STUN Binding request, or ``None`` if it is anything else."""
    try:
        message = parse_message_untrusted(data)
    except StunDecodeError:
        return None
    if message.method != Method.BINDING or message.message_class != MessageClass.REQUEST:
        return None
    return message


def local_ufrag_untrusted(message: Message) -> str | None:
    """Our ufrag from a request's USERNAME (the part before the colon), to find the transport."""
    username = message.get(Attr.USERNAME)
    if username is None or len(username) > 513:
        return None
    local, sep, _ = username.partition(b":")
    if not sep:
        return None
    try:
        return local.decode("ascii")
    except UnicodeDecodeError:
        return None


@dataclass(frozen=True, slots=True)
class IceReply:
    """What the responder wants done about one request: a datagram to send back, whether
    the request authenticated (its address is then a valid pair for DTLS and consent), and
    whether that address has just become the selected one."""

    response: bytes | None
    selected: bool = False
    accepted: bool = False


class IceLiteResponder:
    """The controlled, lite side of one transport's ICE session."""

    def __init__(self, local_ufrag: str, local_pwd: str, remote_ufrag: str | None = None) -> None:
        self.local_ufrag = local_ufrag
        self.local_pwd = local_pwd
        self.remote_ufrag = remote_ufrag
        self.selected: Address | None = None
        self.last_consent = 0.0
        self._key = short_term_key(local_pwd)

    def receive(self, message: Message, address: Address, now: float) -> IceReply:
        """Answer one Binding request already decoded by :func:`decode_binding_untrusted`."""
        username = message.get(Attr.USERNAME)
        if username is None or not message.has_integrity:
            return IceReply(self._error(message, 400, "Bad Request"))
        if message.fingerprint_offset >= 0 and not message.check_fingerprint():
            return IceReply(None)  # §7.3: not a STUN message for us; drop silently
        local, _, remote = username.partition(b":")
        expected_remote = self.remote_ufrag.encode() if self.remote_ufrag else remote
        if (
            local != self.local_ufrag.encode()
            or remote != expected_remote
            or not message.check_integrity(self._key)
        ):
            return IceReply(self._error(message, 401, "Unauthenticated"))
        if message.get(Attr.ICE_CONTROLLED) is not None:
            # A lite agent is always controlled (§6.1.1); two controlled agents conflict.
            return IceReply(self._error(message, 487, "Role Conflict", signed=True))
        selected = False
        if message.get(Attr.USE_CANDIDATE) is not None and self.selected != address:
            self.selected = address
            selected = True
        if address == self.selected:
            self.last_consent = now
        response = Message(Method.BINDING, MessageClass.SUCCESS, message.transaction_id)
        response.add(
            Attr.XOR_MAPPED_ADDRESS,
            encode_xor_address(address[0], address[1], message.transaction_id),
        )
        return IceReply(
            response.serialize(integrity_key=self._key, fingerprint=True), selected, accepted=True
        )

    def consent_expired(self, now: float, timeout: float = CONSENT_TIMEOUT) -> bool:
        """True once a selected pair has gone ``timeout`` seconds without a valid check."""
        return self.selected is not None and now - self.last_consent > timeout

    def _error(self, request: Message, code: int, reason: str, *, signed: bool = False) -> bytes:
        response = Message(Method.BINDING, MessageClass.ERROR, request.transaction_id)
        response.add(Attr.ERROR_CODE, encode_error_code(code, reason))
        # Errors to unauthenticated requests cannot be signed (RFC 8489 §9.1.3).
        return response.serialize(integrity_key=self._key if signed else None, fingerprint=True)
