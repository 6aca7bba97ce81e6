"""The STUN codec against RFC 5769 and RFC 8489 Appendix B.1 (errata 6268), byte for byte."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from turn.stun import (
    Attr,
    Message,
    MessageClass,
    Method,
    PasswordAlgorithm,
    StunDecodeError,
    decode_address_untrusted,
    decode_error_code_untrusted,
    decode_nonce_features_untrusted,
    decode_password_algorithm_untrusted,
    decode_password_algorithms_untrusted,
    decode_text_untrusted,
    decode_uint32_untrusted,
    decode_unknown_attributes_untrusted,
    decode_xor_address_untrusted,
    encode_address,
    encode_error_code,
    encode_nonce_features,
    encode_password_algorithm,
    encode_password_algorithms,
    encode_unknown_attributes,
    encode_xor_address,
    long_term_key,
    looks_like_stun,
    new_transaction_id,
    opaque_string,
    parse_message_untrusted,
    short_term_key,
    userhash,
)

VECTORS_PATH = Path(__file__).resolve().parents[1] / "vectors" / "stun-rfc5769-rfc8489.json"
VECTORS: list[dict[str, Any]] = json.loads(VECTORS_PATH.read_text())["vectors"]


def vector(prefix: str) -> dict[str, Any]:
    return next(v for v in VECTORS if v["name"].startswith(prefix))


def key_for(v: dict[str, Any]) -> bytes:
    if v["credential"] == "short-term":
        return short_term_key(v["password"])
    algorithm = PasswordAlgorithm.SHA256 if "SHA-256" in v["credential"] else PasswordAlgorithm.MD5
    return long_term_key(v["username"], v["realm"], v["password"], algorithm)


@pytest.mark.parametrize("name", [v["name"] for v in VECTORS])
def test_vector_verifies_and_reserializes_byte_exact(name: str) -> None:
    v = next(v for v in VECTORS if v["name"] == name)
    raw = bytes.fromhex(v["hex"])
    msg = parse_message_untrusted(raw)
    key = key_for(v)
    assert msg.check_integrity(key)
    assert msg.check_integrity(key + b"x") is False
    if msg.fingerprint_offset >= 0:
        assert msg.check_fingerprint()
    # RFC 5769 pads text with spaces; the long-term vectors pad with zeros.
    padding = 0x20 if name.startswith("rfc5769-2.1") or "response" in name else 0
    rebuilt = Message(msg.method, msg.message_class, msg.transaction_id, list(msg.attributes))
    out = rebuilt.serialize(
        integrity_key=key if msg.integrity_offset >= 0 else None,
        integrity_sha256_key=key if msg.integrity_sha256_offset >= 0 else None,
        fingerprint=msg.fingerprint_offset >= 0,
        padding_byte=padding,
    )
    assert out == raw


def test_rfc5769_request_attributes() -> None:
    v = vector("rfc5769-2.1")
    msg = parse_message_untrusted(bytes.fromhex(v["hex"]))
    assert (msg.method, msg.message_class) == (Method.BINDING, MessageClass.REQUEST)
    assert decode_text_untrusted(msg.get(Attr.SOFTWARE) or b"", 763) == v["software"]
    assert decode_text_untrusted(msg.get(Attr.USERNAME) or b"", 513) == v["username"]
    assert decode_uint32_untrusted(msg.get(Attr.PRIORITY) or b"") == 0x6E0001FF
    assert msg.get(Attr.ICE_CONTROLLED) == bytes.fromhex("932ff9b151263b36")


@pytest.mark.parametrize("prefix", ["rfc5769-2.2", "rfc5769-2.3"])
def test_rfc5769_responses_decode_xor_mapped_address(prefix: str) -> None:
    v = vector(prefix)
    msg = parse_message_untrusted(bytes.fromhex(v["hex"]))
    value = msg.get(Attr.XOR_MAPPED_ADDRESS) or b""
    assert decode_xor_address_untrusted(value, msg.transaction_id) == tuple(v["xor_mapped_address"])
    host, port = v["xor_mapped_address"]
    assert encode_xor_address(host, port, msg.transaction_id) == value
    # The JSON's "software" includes the 0x20 padding byte that follows the 11-byte value.
    assert decode_text_untrusted(msg.get(Attr.SOFTWARE) or b"", 763) == v["software"].rstrip()


def test_rfc8489_b1_userhash_nonce_cookie_and_password_algorithm() -> None:
    v = vector("rfc8489-B.1")
    msg = parse_message_untrusted(bytes.fromhex(v["hex"]))
    assert msg.get(Attr.USERHASH) == userhash(v["username"], v["realm"])
    nonce = decode_text_untrusted(msg.get(Attr.NONCE) or b"", 763)
    assert nonce == v["nonce"]
    assert decode_nonce_features_untrusted(nonce) is not None
    algorithm, params = decode_password_algorithm_untrusted(msg.get(Attr.PASSWORD_ALGORITHM) or b"")
    assert (algorithm, params) == (PasswordAlgorithm.SHA256, b"")
    assert msg.integrity_sha256_offset >= 0


def test_rfc5769_long_term_request_has_realm_and_nonce() -> None:
    v = vector("rfc5769-2.4")
    msg = parse_message_untrusted(bytes.fromhex(v["hex"]))
    assert decode_text_untrusted(msg.get(Attr.REALM) or b"", 763) == v["realm"]
    assert decode_text_untrusted(msg.get(Attr.NONCE) or b"", 763) == v["nonce"]
    assert decode_nonce_features_untrusted(v["nonce"]) is None


def test_corrupted_vector_fails_integrity_and_fingerprint() -> None:
    raw = bytearray.fromhex(vector("rfc5769-2.1")["hex"])
    raw[30] ^= 0x01  # inside SOFTWARE
    msg = parse_message_untrusted(bytes(raw))
    assert not msg.check_integrity(short_term_key(vector("rfc5769-2.1")["password"]))
    assert not msg.check_fingerprint()


def test_method_and_class_pack_into_the_type_field() -> None:
    tid = new_transaction_id()
    for method in Method:
        for klass in MessageClass:
            raw = Message(method, klass, tid).serialize()
            msg = parse_message_untrusted(raw)
            assert (msg.method, msg.message_class) == (method, klass)
    assert Message(Method.ALLOCATE, MessageClass.ERROR, tid).serialize()[:2] == b"\x01\x13"
    assert Message(Method.DATA, MessageClass.INDICATION, tid).serialize()[:2] == b"\x00\x17"


def test_message_integrity_then_sha256_then_fingerprint_all_verify() -> None:
    tid = new_transaction_id()
    msg = Message(Method.BINDING, MessageClass.REQUEST, tid, [(Attr.USERNAME, b"abc")])
    raw = msg.serialize(integrity_key=b"k1", integrity_sha256_key=b"k1", fingerprint=True)
    parsed = parse_message_untrusted(raw)
    assert parsed.integrity_offset >= 0 and parsed.integrity_sha256_offset >= 0
    assert parsed.check_integrity(b"k1")  # the SHA-256 variant is preferred
    assert parsed.check_fingerprint()
    assert parsed.attributes == [(Attr.USERNAME, b"abc")]


def test_attributes_after_message_integrity_are_ignored() -> None:
    tid = new_transaction_id()
    raw = Message(Method.BINDING, MessageClass.REQUEST, tid).serialize(integrity_key=b"k")
    tail = b"\x80\x22\x00\x04evil"
    length = len(raw) - 20 + len(tail)
    forged = raw[:2] + length.to_bytes(2, "big") + raw[4:] + tail
    parsed = parse_message_untrusted(forged)
    assert parsed.get(Attr.SOFTWARE) is None
    assert parsed.check_integrity(b"k")


def test_no_integrity_means_check_fails() -> None:
    raw = Message(Method.BINDING, MessageClass.REQUEST, new_transaction_id()).serialize()
    msg = parse_message_untrusted(raw)
    assert not msg.has_integrity and not msg.check_integrity(b"k") and not msg.check_fingerprint()


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x00\x01\x00\x00\x21\x12\xa4\x42" + b"\x00" * 11,  # short header
        b"\xc0\x01\x00\x00\x21\x12\xa4\x42" + b"\x00" * 12,  # top bits set
        b"\x00\x01\x00\x00\x21\x12\xa4\x43" + b"\x00" * 12,  # wrong cookie
        b"\x00\x01\x00\x03\x21\x12\xa4\x42" + b"\x00" * 15,  # length not multiple of 4
        b"\x00\x01\x00\x08\x21\x12\xa4\x42" + b"\x00" * 12 + b"\x00\x06\x00\x09abcd",  # overrun
        b"\x00\x01\x00\x04\x21\x12\xa4\x42" + b"\x00" * 12 + b"\x00\x06",  # trailing junk
        b"\x00\x01\x00\x08\x21\x12\xa4\x42" + b"\x00" * 12 + b"\x00\x08\x00\x04abcd",  # short MI
        b"\x00\x01\x00\x10\x21\x12\xa4\x42"
        + b"\x00" * 12
        + b"\x80\x28\x00\x04abcd"
        + b"\x80\x22\x00\x04abcd",  # attribute after FINGERPRINT
    ],
)
def test_malformed_messages_raise_stun_decode_error(raw: bytes) -> None:
    with pytest.raises(StunDecodeError):
        parse_message_untrusted(raw)


def test_too_many_attributes_are_refused() -> None:
    msg = Message(Method.BINDING, MessageClass.REQUEST, new_transaction_id())
    for _ in range(65):
        msg.add(0x8022, b"")
    with pytest.raises(StunDecodeError):
        parse_message_untrusted(msg.serialize())


def test_address_codecs_roundtrip_and_reject_garbage() -> None:
    tid = new_transaction_id()
    for host in ("192.0.2.1", "2001:db8::1"):
        assert decode_address_untrusted(encode_address(host, 3478)) == (host, 3478)
        assert decode_xor_address_untrusted(encode_xor_address(host, 3478, tid), tid) == (
            host,
            3478,
        )
    for bad in (b"", b"\x00\x01\x00\x00", b"\x00\x03" + b"\x00" * 6, b"\x00\x02" + b"\x00" * 6):
        with pytest.raises(StunDecodeError):
            decode_address_untrusted(bad)
        with pytest.raises(StunDecodeError):
            decode_xor_address_untrusted(bad, tid)


def test_error_code_roundtrip_and_bounds() -> None:
    assert decode_error_code_untrusted(encode_error_code(438, "Stale Nonce")) == (
        438,
        "Stale Nonce",
    )
    with pytest.raises(ValueError):
        encode_error_code(200, "no")
    for bad in (b"\x00\x00", b"\x00\x00\x02\x00", b"\x00\x00\x04\x64", b"\x00\x00\x04\x00\xff"):
        with pytest.raises(StunDecodeError):
            decode_error_code_untrusted(bad)


def test_unknown_attributes_and_password_algorithms_roundtrip() -> None:
    assert decode_unknown_attributes_untrusted(encode_unknown_attributes([1, 0x7F01])) == [
        1,
        0x7F01,
    ]
    with pytest.raises(StunDecodeError):
        decode_unknown_attributes_untrusted(b"\x00")
    value = encode_password_algorithms([(1, b""), (2, b"ab")])
    assert decode_password_algorithms_untrusted(value) == [(1, b""), (2, b"ab")]
    assert decode_password_algorithm_untrusted(encode_password_algorithm(2)) == (2, b"")
    for bad in (b"\x00\x01", b"\x00\x01\x00\x08ab", b"\x00\x01\x00\x01a"):
        with pytest.raises(StunDecodeError):
            decode_password_algorithms_untrusted(bad)


def test_nonce_feature_cookie_roundtrip() -> None:
    nonce = encode_nonce_features(0x800000, "opaque")
    assert nonce.startswith("obMatJos2") and decode_nonce_features_untrusted(nonce) == 0x800000
    assert decode_nonce_features_untrusted("plain-nonce") is None
    with pytest.raises(StunDecodeError):
        decode_nonce_features_untrusted("obMatJos2!!!!rest")


def test_text_decoder_bounds_and_utf8() -> None:
    assert decode_text_untrusted("マトリックス".encode(), 513) == "マトリックス"
    with pytest.raises(StunDecodeError):
        decode_text_untrusted(b"x" * 514, 513)
    with pytest.raises(StunDecodeError):
        decode_text_untrusted(b"\xff\xfe", 513)
    with pytest.raises(StunDecodeError):
        decode_uint32_untrusted(b"\x00")


def test_opaque_string_maps_spaces_normalises_and_refuses_controls() -> None:
    assert opaque_string("a\u00a0b") == "a b"
    assert opaque_string("e\u0301") == "\u00e9"
    with pytest.raises(ValueError):
        opaque_string("a\x00b")
    with pytest.raises(ValueError):
        long_term_key("u", "r", "p", algorithm=7)


def test_looks_like_stun_demultiplexes() -> None:
    raw = Message(Method.BINDING, MessageClass.REQUEST, new_transaction_id()).serialize()
    assert looks_like_stun(raw)
    assert not looks_like_stun(b"\x40\x00\x00\x00" + raw[4:])
    assert not looks_like_stun(raw[:19])


def test_alternate_server_and_software_in_an_error_response() -> None:
    tid = new_transaction_id()
    msg = Message(Method.ALLOCATE, MessageClass.ERROR, tid)
    msg.add(Attr.ERROR_CODE, encode_error_code(300, "Try Alternate"))
    msg.add(Attr.ALTERNATE_SERVER, encode_address("2001:db8::7", 3478))
    msg.add(Attr.SOFTWARE, b"hushroom")
    parsed = parse_message_untrusted(msg.serialize(fingerprint=True))
    assert decode_error_code_untrusted(parsed.get(Attr.ERROR_CODE) or b"") == (300, "Try Alternate")
    assert decode_address_untrusted(parsed.get(Attr.ALTERNATE_SERVER) or b"") == (
        "2001:db8::7",
        3478,
    )
    assert parsed.get(Attr.SOFTWARE) == b"hushroom"
    assert parsed.check_fingerprint()


def test_integrity_attributes_in_the_wrong_order_are_ignored_not_trusted() -> None:
    tid = new_transaction_id()
    raw = Message(Method.BINDING, MessageClass.REQUEST, tid).serialize(integrity_sha256_key=b"k")
    tail = b"\x00\x08\x00\x14" + b"\x00" * 20  # a MESSAGE-INTEGRITY after the SHA-256 one
    length = len(raw) - 20 + len(tail)
    parsed = parse_message_untrusted(raw[:2] + length.to_bytes(2, "big") + raw[4:] + tail)
    assert parsed.integrity_offset < 0
    # The MAC covers the message up to MESSAGE-INTEGRITY-SHA256 with the length adjusted to
    # end there (§14.6), so what follows neither breaks nor extends what is authenticated.
    assert parsed.check_integrity(b"k")
    assert not parsed.check_integrity(b"other")
