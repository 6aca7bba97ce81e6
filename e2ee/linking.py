"""Device linking: move identity material from an existing device to a new one.

The new device draws a one-time 160-bit secret and shows it as a short code (32 Crockford
base32 characters in groups of four) or as a QR string ``hushroom-link:1:<code>``. The
existing device reads it, seals a provisioning message under a key derived from the secret
(HKDF-SHA256, then XSalsa20-Poly1305 ``secretbox`` with a random nonce) and posts it to a
rendezvous mailbox whose id is also derived from the secret (the control plane's
provisioning mailbox, ``control/api/provisioning.py``, opened by the new device). The
server relays ciphertext under an id it cannot link to the key. The new device opens the
message once: its secret is wiped after the first success, so a replayed message is
refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nacl.exceptions import CryptoError
from nacl.secret import SecretBox

from e2ee import _wire
from e2ee._primitives import hkdf, random_bytes
from e2ee.errors import DecodeError, DecryptionFailed, StateError

__all__ = [
    "LinkingSecret",
    "ProvisioningPayload",
    "build_provisioning_message",
    "parse_link_code",
]

SECRET_LEN = 20
QR_PREFIX = "hushroom-link:1:"
MAX_EXTRA = 64 * 1024
_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32: no I, L, O, U
_DECODE = {c: i for i, c in enumerate(_ALPHABET)} | {"O": 0, "I": 1, "L": 1}
_KEY_INFO = b"hushroom link key v1"
_MAILBOX_INFO = b"hushroom link mailbox v1"


def _encode_code(secret: bytes) -> str:
    value = int.from_bytes(secret, "big")
    chars = [_ALPHABET[(value >> (5 * i)) & 31] for i in range(len(secret) * 8 // 5)]
    return "".join(reversed(chars))


def parse_link_code(text: str) -> bytes:
    """The one-time secret in a short code or QR string (case, spaces, dashes ignored)."""
    if not isinstance(text, str) or len(text) > 128:
        raise DecodeError("link code must be a short string")
    if text.startswith(QR_PREFIX):
        text = text[len(QR_PREFIX) :]
    cleaned = text.upper().replace("-", "").replace(" ", "")
    if len(cleaned) != SECRET_LEN * 8 // 5:
        raise DecodeError("link code has the wrong length")
    value = 0
    for c in cleaned:
        digit = _DECODE.get(c)
        if digit is None:
            raise DecodeError(f"invalid character {c!r} in link code")
        value = (value << 5) | digit
    return value.to_bytes(SECRET_LEN, "big")


def _mailbox(secret: bytes) -> bytes:
    return hkdf(b"", secret, _MAILBOX_INFO, 16)


def _box(secret: bytes) -> SecretBox:
    return SecretBox(hkdf(b"", secret, _KEY_INFO, SecretBox.KEY_SIZE))


@dataclass(frozen=True, slots=True)
class ProvisioningPayload:
    """What the existing device hands over: the user id, identity seed and opaque extras.

    ``extra`` carries application data (e.g. an encrypted backup) up to 64 KiB.
    """

    user_id: bytes
    identity_seed: bytes = field(repr=False)
    extra: bytes = field(default=b"", repr=False)

    def encode(self) -> bytes:
        """Encode as msgpack ``[13, 1, user_id, identity_seed, extra]``."""
        return _wire.pack(
            [
                _wire.TAG_PROVISIONING_PAYLOAD,
                _wire.VERSION,
                self.user_id,
                self.identity_seed,
                self.extra,
            ]
        )

    @classmethod
    def decode_untrusted(cls, data: bytes) -> ProvisioningPayload:
        """Decode a provisioning payload."""
        f = _wire.unpack_untrusted(
            data,
            _wire.TAG_PROVISIONING_PAYLOAD,
            max_bytes=MAX_EXTRA + 1024,
            min_fields=5,
            max_fields=5,
        )
        return cls(
            user_id=_wire.get_bytes(f[2], "user_id", max_len=255),
            identity_seed=_wire.get_bytes(f[3], "identity_seed", size=32),
            extra=_wire.get_bytes(f[4], "extra", max_len=MAX_EXTRA),
        )


class LinkingSecret:
    """The new device's one-time secret; opens exactly one provisioning message."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret: bytes | None = secret if secret is not None else random_bytes(SECRET_LEN)
        if len(self._secret) != SECRET_LEN:
            raise DecodeError("linking secret must be 20 bytes")
        self.code = "-".join(
            _encode_code(self._secret)[i : i + 4] for i in range(0, SECRET_LEN * 8 // 5, 4)
        )
        self.qr_string = QR_PREFIX + self.code.replace("-", "")
        self.mailbox_id = _mailbox(self._secret)

    @property
    def consumed(self) -> bool:
        """Whether a provisioning message has already been opened with this secret."""
        return self._secret is None

    def open(self, message: bytes) -> ProvisioningPayload:
        """Open the provisioning message; the secret is wiped after the first success."""
        if self._secret is None:
            raise StateError("linking secret already used")
        f = _wire.unpack_untrusted(
            message,
            _wire.TAG_PROVISIONING,
            max_bytes=MAX_EXTRA + 2048,
            min_fields=4,
            max_fields=4,
        )
        nonce = _wire.get_bytes(f[2], "nonce", size=SecretBox.NONCE_SIZE)
        ct = _wire.get_bytes(f[3], "ciphertext", max_len=MAX_EXTRA + 1024)
        try:
            plaintext = _box(self._secret).decrypt(ct, nonce)
        except (CryptoError, ValueError, TypeError):
            raise DecryptionFailed("provisioning message does not open") from None
        payload = ProvisioningPayload.decode_untrusted(plaintext)
        self._secret = None
        return payload


def build_provisioning_message(code: str, payload: ProvisioningPayload) -> tuple[bytes, bytes]:
    """Seal ``payload`` for the device showing ``code``: returns ``(mailbox_id, message)``."""
    secret = parse_link_code(code)
    nonce = random_bytes(SecretBox.NONCE_SIZE)
    ct = _box(secret).encrypt(payload.encode(), nonce).ciphertext
    message = _wire.pack([_wire.TAG_PROVISIONING, _wire.VERSION, nonce, ct])
    return _mailbox(secret), message
