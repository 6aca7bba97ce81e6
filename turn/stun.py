"""Sans-I/O STUN message codec (RFC 8489), shared by the TURN server and the SFU's ICE-lite.

What is here:

* the message header (RFC 8489 §5): 2-bit-zero prefix, method and class packed into the
  14-bit type, length (a multiple of 4, excluding the 20-byte header), magic cookie and
  96-bit transaction id — :func:`parse_message_untrusted` and :meth:`Message.serialize`;
* attributes in TLV form with 4-byte padding (§14), kept as raw ``(type, value)`` pairs on
  :class:`Message`, plus typed encoders and ``..._untrusted`` decoders for the attributes that
  carry structure: (XOR-)MAPPED-ADDRESS (§14.1, §14.2), ERROR-CODE (§14.8),
  UNKNOWN-ATTRIBUTES (§14.9), PASSWORD-ALGORITHM(S) (§14.11, §14.12), ALTERNATE-SERVER
  (§14.15) and the text attributes USERNAME, REALM, NONCE, SOFTWARE (§14.3, §14.9, §14.10,
  §14.14);
* MESSAGE-INTEGRITY (§14.5, HMAC-SHA1) and MESSAGE-INTEGRITY-SHA256 (§14.6) with short-term
  (§9.1) and long-term (§9.2, MD5 or SHA-256 key) credentials, USERHASH (§14.4) and
  FINGERPRINT (§14.7, CRC-32 XOR 0x5354554E);
* the nonce cookie that advertises the RFC 8489 security features (§9.2, §18.1).

Nothing here touches a socket or a clock. Every function that reads bytes from the network
says so with ``_untrusted`` in its name and raises :class:`StunDecodeError` (never anything
else) on malformed input.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import socket
import struct
import unicodedata
import zlib
from dataclasses import dataclass, field
from enum import IntEnum

__all__ = [
    "HEADER_LENGTH",
    "MAGIC_COOKIE",
    "MAX_ATTRIBUTES",
    "SECURITY_FEATURE_COOKIE",
    "Attr",
    "Message",
    "MessageClass",
    "Method",
    "PasswordAlgorithm",
    "StunDecodeError",
    "decode_address_untrusted",
    "decode_error_code_untrusted",
    "decode_nonce_features_untrusted",
    "decode_password_algorithm_untrusted",
    "decode_password_algorithms_untrusted",
    "decode_text_untrusted",
    "decode_uint32_untrusted",
    "decode_unknown_attributes_untrusted",
    "decode_xor_address_untrusted",
    "encode_address",
    "encode_error_code",
    "encode_nonce_features",
    "encode_password_algorithm",
    "encode_password_algorithms",
    "encode_uint32",
    "encode_unknown_attributes",
    "encode_xor_address",
    "is_comprehension_required",
    "long_term_key",
    "looks_like_stun",
    "new_transaction_id",
    "opaque_string",
    "parse_message_untrusted",
    "short_term_key",
    "userhash",
]

MAGIC_COOKIE = 0x2112A442
HEADER_LENGTH = 20
FINGERPRINT_XOR = 0x5354554E
#: RFC 8489 §9.2: a NONCE starting with this cookie carries 24 bits of security features.
SECURITY_FEATURE_COOKIE = "obMatJos2"
#: Bound on attributes decoded from one message, so a crafted message costs bounded work.
MAX_ATTRIBUTES = 64

_MAGIC_BYTES = MAGIC_COOKIE.to_bytes(4, "big")
_HEADER = struct.Struct("!HHI12s")
_TLV = struct.Struct("!HH")
_MI_TLV = _TLV.pack(0x0008, 20)
_MI256_TLV = _TLV.pack(0x001C, 32)
_FP_TLV = _TLV.pack(0x8028, 4)
_FAMILY_IPV4 = 0x01
_FAMILY_IPV6 = 0x02


class StunDecodeError(ValueError):
    """Bytes from the network are not a well-formed STUN message or attribute."""


class MessageClass(IntEnum):
    """The two class bits of the message type (RFC 8489 §5)."""

    REQUEST = 0b00
    INDICATION = 0b01
    SUCCESS = 0b10
    ERROR = 0b11


class Method(IntEnum):
    """STUN methods (RFC 8489 §18.2) and the TURN methods (RFC 8656 §17)."""

    BINDING = 0x001
    ALLOCATE = 0x003
    REFRESH = 0x004
    SEND = 0x006
    DATA = 0x007
    CREATE_PERMISSION = 0x008
    CHANNEL_BIND = 0x009


class Attr(IntEnum):
    """Attribute types (RFC 8489 §18.3, RFC 8656 §18, RFC 8445 §16.1)."""

    MAPPED_ADDRESS = 0x0001
    USERNAME = 0x0006
    MESSAGE_INTEGRITY = 0x0008
    ERROR_CODE = 0x0009
    UNKNOWN_ATTRIBUTES = 0x000A
    CHANNEL_NUMBER = 0x000C
    LIFETIME = 0x000D
    XOR_PEER_ADDRESS = 0x0012
    DATA = 0x0013
    REALM = 0x0014
    NONCE = 0x0015
    XOR_RELAYED_ADDRESS = 0x0016
    REQUESTED_ADDRESS_FAMILY = 0x0017
    EVEN_PORT = 0x0018
    REQUESTED_TRANSPORT = 0x0019
    DONT_FRAGMENT = 0x001A
    MESSAGE_INTEGRITY_SHA256 = 0x001C
    PASSWORD_ALGORITHM = 0x001D
    USERHASH = 0x001E
    XOR_MAPPED_ADDRESS = 0x0020
    RESERVATION_TOKEN = 0x0022
    PRIORITY = 0x0024
    USE_CANDIDATE = 0x0025
    ADDITIONAL_ADDRESS_FAMILY = 0x8000
    ADDRESS_ERROR_CODE = 0x8001
    PASSWORD_ALGORITHMS = 0x8002
    ALTERNATE_DOMAIN = 0x8003
    ICMP = 0x8004
    SOFTWARE = 0x8022
    ALTERNATE_SERVER = 0x8023
    FINGERPRINT = 0x8028
    ICE_CONTROLLED = 0x8029
    ICE_CONTROLLING = 0x802A


class PasswordAlgorithm(IntEnum):
    """PASSWORD-ALGORITHM values (RFC 8489 §18.5)."""

    MD5 = 0x0001
    SHA256 = 0x0002


def is_comprehension_required(attr_type: int) -> bool:
    """True for attribute types 0x0000-0x7FFF, which an agent must understand (§14)."""
    return attr_type < 0x8000


def looks_like_stun(data: bytes) -> bool:
    """Cheap RFC 7983 demultiplexing test: top two bits zero and the magic cookie in place."""
    return len(data) >= HEADER_LENGTH and data[0] < 0x40 and data[4:8] == _MAGIC_BYTES


def new_transaction_id() -> bytes:
    """A fresh, cryptographically random 96-bit transaction id (§5)."""
    return secrets.token_bytes(12)


def _pack_type(method: int, message_class: int) -> int:
    return (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((message_class & 0b01) << 4)
        | ((message_class & 0b10) << 7)
    )


def _unpack_type(message_type: int) -> tuple[int, int]:
    method = (
        (message_type & 0x000F) | ((message_type & 0x00E0) >> 1) | ((message_type & 0x3E00) >> 2)
    )
    message_class = ((message_type & 0x0010) >> 4) | ((message_type & 0x0100) >> 7)
    return method, message_class


@dataclass(slots=True)
class Message:
    """One STUN message: method, class, transaction id and attributes in wire order.

    Attribute values are raw bytes; use the ``encode_*``/``decode_*_untrusted`` helpers for
    the structured ones. A message produced by :func:`parse_message_untrusted` remembers its
    wire bytes and where MESSAGE-INTEGRITY(-SHA256) and FINGERPRINT sat, so
    :meth:`check_integrity` and :meth:`check_fingerprint` can verify them; those three
    attributes are not in :attr:`attributes` (they are added by :meth:`serialize`).
    """

    method: int
    message_class: int
    transaction_id: bytes
    attributes: list[tuple[int, bytes]] = field(default_factory=list)
    raw: bytes = b""
    integrity_offset: int = -1
    integrity_sha256_offset: int = -1
    integrity_sha256_length: int = 0
    fingerprint_offset: int = -1

    def get(self, attr_type: int) -> bytes | None:
        """The value of the first attribute of ``attr_type``, or ``None``."""
        for t, v in self.attributes:
            if t == attr_type:
                return v
        return None

    def get_all(self, attr_type: int) -> list[bytes]:
        """Every value of ``attr_type``, in wire order (e.g. several XOR-PEER-ADDRESS)."""
        return [v for t, v in self.attributes if t == attr_type]

    def add(self, attr_type: int, value: bytes) -> Message:
        """Append an attribute; returns ``self`` so calls chain."""
        self.attributes.append((attr_type, value))
        return self

    @property
    def has_integrity(self) -> bool:
        """True when the parsed message carried MESSAGE-INTEGRITY or its SHA-256 variant."""
        return self.integrity_offset >= 0 or self.integrity_sha256_offset >= 0

    def serialize(
        self,
        *,
        integrity_key: bytes | None = None,
        integrity_sha256_key: bytes | None = None,
        fingerprint: bool = False,
        padding_byte: int = 0,
    ) -> bytes:
        """Encode the message, appending MESSAGE-INTEGRITY, -SHA256 and FINGERPRINT as asked.

        The integrity attributes are computed in the order RFC 8489 §14.5-§14.7 requires
        (MESSAGE-INTEGRITY, then MESSAGE-INTEGRITY-SHA256, then FINGERPRINT), each over the
        message with the length field already counting it. ``padding_byte`` only exists to
        reproduce the RFC 5769 vectors, which pad with spaces.
        """
        if len(self.transaction_id) != 12:
            raise ValueError("transaction id must be 12 bytes")
        parts: list[bytes] = []
        pad_cache = bytes((padding_byte,)) * 3
        for t, v in self.attributes:
            n = len(v)
            if n > 0xFFFF:
                raise ValueError(f"attribute 0x{t:04x} value too long ({n} bytes)")
            parts.append(_TLV.pack(t, n))
            parts.append(v)
            if n & 3:
                parts.append(pad_cache[: -n & 3])
        body = b"".join(parts)
        message_type = _pack_type(self.method, self.message_class)
        tid = self.transaction_id
        if integrity_key is not None:
            head = _HEADER.pack(message_type, len(body) + 24, MAGIC_COOKIE, tid)
            mac = hmac.digest(integrity_key, head + body, "sha1")
            body += _MI_TLV + mac
        if integrity_sha256_key is not None:
            head = _HEADER.pack(message_type, len(body) + 36, MAGIC_COOKIE, tid)
            mac = hmac.digest(integrity_sha256_key, head + body, "sha256")
            body += _MI256_TLV + mac
        if fingerprint:
            head = _HEADER.pack(message_type, len(body) + 8, MAGIC_COOKIE, tid)
            crc = (zlib.crc32(head + body) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
            body += _FP_TLV + crc.to_bytes(4, "big")
        return _HEADER.pack(message_type, len(body), MAGIC_COOKIE, tid) + body

    def check_integrity(self, key: bytes) -> bool:
        """Verify the parsed message's MESSAGE-INTEGRITY-SHA256 (preferred) or MESSAGE-INTEGRITY.

        ``key`` is :func:`short_term_key` or :func:`long_term_key`. False when the message
        carries neither attribute or the HMAC does not match (compared in constant time).
        """
        if self.integrity_sha256_offset >= 0:
            off, mac_len, digest = (
                self.integrity_sha256_offset,
                self.integrity_sha256_length,
                "sha256",
            )
        elif self.integrity_offset >= 0:
            off, mac_len, digest = self.integrity_offset, 20, "sha1"
        else:
            return False
        raw = self.raw
        adjusted_length = off + 4 + mac_len - HEADER_LENGTH
        signed = raw[:2] + adjusted_length.to_bytes(2, "big") + raw[4:off]
        expected = hmac.digest(key, signed, digest)
        return hmac.compare_digest(expected[:mac_len], raw[off + 4 : off + 4 + mac_len])

    def check_fingerprint(self) -> bool:
        """True when the parsed message ends with a correct FINGERPRINT attribute."""
        off = self.fingerprint_offset
        if off < 0:
            return False
        raw = self.raw
        crc = (zlib.crc32(raw[:off]) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
        return raw[off + 4 : off + 8] == crc.to_bytes(4, "big")


def parse_message_untrusted(data: bytes) -> Message:
    """Decode one STUN message from network bytes (exactly one message, no trailing bytes).

    Checks the header (§5), attribute lengths and padding bounds (§14), and that FINGERPRINT
    is last. After MESSAGE-INTEGRITY only MESSAGE-INTEGRITY-SHA256 and FINGERPRINT count, and
    after MESSAGE-INTEGRITY-SHA256 only FINGERPRINT: anything else there is ignored, as
    §14.5 and §14.6 tell receivers to. Raises :class:`StunDecodeError`.
    """
    n = len(data)
    if n < HEADER_LENGTH:
        raise StunDecodeError("shorter than a STUN header")
    message_type, length, cookie, transaction_id = _HEADER.unpack_from(data)
    if message_type & 0xC000:
        raise StunDecodeError("first two bits of a STUN message must be zero")
    if cookie != MAGIC_COOKIE:
        raise StunDecodeError("wrong magic cookie")
    if length & 3:
        raise StunDecodeError("message length is not a multiple of 4")
    if HEADER_LENGTH + length != n:
        raise StunDecodeError("message length does not match the datagram")
    method, message_class = _unpack_type(message_type)
    data = bytes(data)
    msg = Message(method, message_class, transaction_id, [], data)
    attributes = msg.attributes
    pos = HEADER_LENGTH
    count = 0
    after_integrity = False
    while pos < n:
        if pos + 4 > n:
            raise StunDecodeError("truncated attribute header")
        attr_type, attr_len = _TLV.unpack_from(data, pos)
        end = pos + 4 + attr_len
        if end > n:
            raise StunDecodeError(f"attribute 0x{attr_type:04x} overruns the message")
        count += 1
        if count > MAX_ATTRIBUTES:
            raise StunDecodeError("too many attributes")
        if msg.fingerprint_offset >= 0:
            raise StunDecodeError("attribute after FINGERPRINT")
        if attr_type == Attr.FINGERPRINT:
            if attr_len != 4:
                raise StunDecodeError("FINGERPRINT must be 4 bytes")
            msg.fingerprint_offset = pos
        elif attr_type == Attr.MESSAGE_INTEGRITY:
            if attr_len != 20:
                raise StunDecodeError("MESSAGE-INTEGRITY must be 20 bytes")
            if not after_integrity:  # one after an integrity attribute is ignored (§14.5)
                msg.integrity_offset = pos
                after_integrity = True
        elif attr_type == Attr.MESSAGE_INTEGRITY_SHA256:
            if attr_len < 16 or attr_len > 32 or attr_len & 3:
                raise StunDecodeError("MESSAGE-INTEGRITY-SHA256 must be 16-32 bytes, 4-aligned")
            if msg.integrity_sha256_offset < 0:  # a second one is ignored (§14.6)
                msg.integrity_sha256_offset = pos
                msg.integrity_sha256_length = attr_len
                after_integrity = True
        elif not after_integrity:
            attributes.append((attr_type, data[pos + 4 : end]))
        pos = end + (-attr_len & 3)
    if pos != n:
        raise StunDecodeError("attribute padding overruns the message")
    return msg


# --- addresses ------------------------------------------------------------------------------


def encode_address(host: str, port: int) -> bytes:
    """MAPPED-ADDRESS / ALTERNATE-SERVER value for an IP literal and port (§14.1)."""
    if ":" in host:
        return struct.pack("!BBH", 0, _FAMILY_IPV6, port) + socket.inet_pton(socket.AF_INET6, host)
    return struct.pack("!BBH", 0, _FAMILY_IPV4, port) + socket.inet_aton(host)


def decode_address_untrusted(value: bytes) -> tuple[str, int]:
    """Decode a MAPPED-ADDRESS-style value into ``(ip, port)`` (§14.1)."""
    if len(value) == 8 and value[1] == _FAMILY_IPV4:
        return socket.inet_ntop(socket.AF_INET, value[4:8]), int.from_bytes(value[2:4], "big")
    if len(value) == 20 and value[1] == _FAMILY_IPV6:
        return socket.inet_ntop(socket.AF_INET6, value[4:20]), int.from_bytes(value[2:4], "big")
    raise StunDecodeError("bad address attribute")


def encode_xor_address(host: str, port: int, transaction_id: bytes) -> bytes:
    """XOR-MAPPED/-PEER/-RELAYED-ADDRESS value (§14.2): X-Port, X-Address with the cookie."""
    x_port = port ^ (MAGIC_COOKIE >> 16)
    if ":" in host:
        raw = int.from_bytes(socket.inet_pton(socket.AF_INET6, host), "big")
        mask = int.from_bytes(_MAGIC_BYTES + transaction_id, "big")
        return struct.pack("!BBH", 0, _FAMILY_IPV6, x_port) + (raw ^ mask).to_bytes(16, "big")
    raw4 = int.from_bytes(socket.inet_aton(host), "big") ^ MAGIC_COOKIE
    return struct.pack("!BBHI", 0, _FAMILY_IPV4, x_port, raw4)


def decode_xor_address_untrusted(value: bytes, transaction_id: bytes) -> tuple[str, int]:
    """Decode an XOR-...-ADDRESS value into ``(ip, port)``; IPv6 text is canonical (§14.2)."""
    n = len(value)
    if n == 8 and value[1] == _FAMILY_IPV4:
        port = int.from_bytes(value[2:4], "big") ^ (MAGIC_COOKIE >> 16)
        raw4 = int.from_bytes(value[4:8], "big") ^ MAGIC_COOKIE
        return socket.inet_ntop(socket.AF_INET, raw4.to_bytes(4, "big")), port
    if n == 20 and value[1] == _FAMILY_IPV6:
        port = int.from_bytes(value[2:4], "big") ^ (MAGIC_COOKIE >> 16)
        mask = int.from_bytes(_MAGIC_BYTES + transaction_id, "big")
        raw6 = int.from_bytes(value[4:20], "big") ^ mask
        return socket.inet_ntop(socket.AF_INET6, raw6.to_bytes(16, "big")), port
    raise StunDecodeError("bad XOR address attribute")


# --- small scalar and text attributes -----------------------------------------------------


def encode_uint32(value: int) -> bytes:
    """A 32-bit big-endian value (LIFETIME, PRIORITY, ...)."""
    return value.to_bytes(4, "big")


def decode_uint32_untrusted(value: bytes) -> int:
    """Decode a 4-byte big-endian attribute value (LIFETIME, PRIORITY, ...)."""
    if len(value) != 4:
        raise StunDecodeError("expected a 4-byte value")
    return int.from_bytes(value, "big")


def decode_text_untrusted(value: bytes, max_bytes: int) -> str:
    """Decode a UTF-8 text attribute (USERNAME, REALM, NONCE, SOFTWARE) bounded in length."""
    if len(value) > max_bytes:
        raise StunDecodeError(f"text attribute longer than {max_bytes} bytes")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise StunDecodeError("text attribute is not UTF-8") from None


def encode_error_code(code: int, reason: str) -> bytes:
    """ERROR-CODE value (§14.8): class (hundreds) and number, then a UTF-8 reason phrase."""
    if not 300 <= code <= 699:
        raise ValueError(f"error code {code} outside 300-699")
    return struct.pack("!HBB", 0, code // 100, code % 100) + reason.encode("utf-8")[:763]


def decode_error_code_untrusted(value: bytes) -> tuple[int, str]:
    """Decode ERROR-CODE into ``(code, reason)`` (§14.8)."""
    if len(value) < 4:
        raise StunDecodeError("ERROR-CODE shorter than 4 bytes")
    klass, number = value[2] & 0x07, value[3]
    if not 3 <= klass <= 6 or number > 99:
        raise StunDecodeError("ERROR-CODE class or number out of range")
    return klass * 100 + number, decode_text_untrusted(value[4:], 763)


def encode_unknown_attributes(types: list[int]) -> bytes:
    """UNKNOWN-ATTRIBUTES value (§14.9): a list of 16-bit attribute types."""
    return b"".join(t.to_bytes(2, "big") for t in types)


def decode_unknown_attributes_untrusted(value: bytes) -> list[int]:
    """Decode UNKNOWN-ATTRIBUTES into a list of attribute types (§14.9)."""
    if len(value) & 1:
        raise StunDecodeError("UNKNOWN-ATTRIBUTES length is odd")
    return [int.from_bytes(value[i : i + 2], "big") for i in range(0, len(value), 2)]


def encode_password_algorithm(algorithm: int, parameters: bytes = b"") -> bytes:
    """PASSWORD-ALGORITHM value (§14.11): algorithm, parameters length, padded parameters."""
    return (
        struct.pack("!HH", algorithm, len(parameters))
        + parameters
        + b"\x00" * (-len(parameters) & 3)
    )


def decode_password_algorithm_untrusted(value: bytes) -> tuple[int, bytes]:
    """Decode PASSWORD-ALGORITHM into ``(algorithm, parameters)`` (§14.11)."""
    algorithms = decode_password_algorithms_untrusted(value)
    if len(algorithms) != 1:
        raise StunDecodeError("PASSWORD-ALGORITHM must hold exactly one algorithm")
    return algorithms[0]


def encode_password_algorithms(algorithms: list[tuple[int, bytes]]) -> bytes:
    """PASSWORD-ALGORITHMS value (§14.12): a list of PASSWORD-ALGORITHM entries."""
    return b"".join(encode_password_algorithm(a, p) for a, p in algorithms)


def decode_password_algorithms_untrusted(value: bytes) -> list[tuple[int, bytes]]:
    """Decode PASSWORD-ALGORITHMS into a list of ``(algorithm, parameters)`` (§14.12)."""
    out: list[tuple[int, bytes]] = []
    pos, n = 0, len(value)
    while pos < n:
        if pos + 4 > n or len(out) >= 16:
            raise StunDecodeError("malformed PASSWORD-ALGORITHMS")
        algorithm, plen = struct.unpack_from("!HH", value, pos)
        end = pos + 4 + plen
        if end > n:
            raise StunDecodeError("PASSWORD-ALGORITHMS parameters overrun")
        out.append((algorithm, value[pos + 4 : end]))
        pos = end + (-plen & 3)
    if pos != n:
        raise StunDecodeError("PASSWORD-ALGORITHMS padding overruns")
    return out


def encode_nonce_features(features: int, opaque: str) -> str:
    """A NONCE advertising RFC 8489 security features: cookie, 24 bits base64, then ``opaque``.

    Bit 0 (the most significant of the 24) is "Password algorithms", bit 1 "Username
    anonymity" (§18.1).
    """
    return SECURITY_FEATURE_COOKIE + base64.b64encode(features.to_bytes(3, "big")).decode() + opaque


def decode_nonce_features_untrusted(nonce: str) -> int | None:
    """The 24-bit security feature set of a NONCE, or ``None`` when it has no cookie (§9.2)."""
    if not nonce.startswith(SECURITY_FEATURE_COOKIE) or len(nonce) < 13:
        return None
    try:
        raw = base64.b64decode(nonce[9:13], validate=True)
    except (binascii.Error, ValueError):
        raise StunDecodeError("bad security feature set in NONCE") from None
    return int.from_bytes(raw, "big")


# --- credentials ------------------------------------------------------------------------------


def opaque_string(text: str) -> str:
    """Prepare a username, realm or password (the RFC 8265 OpaqueString profile, §9.2.2).

    Non-ASCII spaces become U+0020 and the result is NFC-normalised; control characters are
    refused with ``ValueError``. ASCII strings (every REST credential) pass unchanged.
    """
    if text.isascii():
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
            raise ValueError("control character in credential")
        return text
    mapped = "".join(" " if unicodedata.category(c) == "Zs" else c for c in text)
    if any(unicodedata.category(c) == "Cc" for c in mapped):
        raise ValueError("control character in credential")
    return unicodedata.normalize("NFC", mapped)


def short_term_key(password: str) -> bytes:
    """Short-term credential key (§9.1.1): the OpaqueString-prepared password."""
    return opaque_string(password).encode("utf-8")


def long_term_key(
    username: str, realm: str, password: str, algorithm: int = PasswordAlgorithm.MD5
) -> bytes:
    """Long-term credential key (§9.2.2): MD5 or SHA-256 of ``username:realm:password``."""
    material = f"{opaque_string(username)}:{opaque_string(realm)}:{opaque_string(password)}"
    if algorithm == PasswordAlgorithm.MD5:
        return hashlib.md5(material.encode("utf-8"), usedforsecurity=False).digest()
    if algorithm == PasswordAlgorithm.SHA256:
        return hashlib.sha256(material.encode("utf-8")).digest()
    raise ValueError(f"unsupported password algorithm {algorithm}")


def userhash(username: str, realm: str) -> bytes:
    """USERHASH value (§14.4): SHA-256 of ``username:realm`` after OpaqueString."""
    return hashlib.sha256(f"{opaque_string(username)}:{opaque_string(realm)}".encode()).digest()
