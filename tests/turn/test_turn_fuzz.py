"""Hypothesis fuzzing: every decoder and the server core take garbage without crashing.

Only the typed errors may escape a decoder, the core never raises, and feeding it garbage
does not grow its memory.
"""

from __future__ import annotations

import contextlib
import gc
import random
import tracemalloc
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from turn_support import NOW, CoreClient, error_code, make_server

from turn.framing import FramingError, StreamFramer
from turn.stun import (
    Attr,
    Message,
    MessageClass,
    Method,
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
    encode_xor_address,
    new_transaction_id,
    parse_message_untrusted,
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PEER = ("198.51.200.9", 5000)
TID = b"\x01" * 12

VALUE_DECODERS: list[Callable[[bytes], Any]] = [
    decode_address_untrusted,
    lambda v: decode_xor_address_untrusted(v, TID),
    decode_error_code_untrusted,
    decode_unknown_attributes_untrusted,
    decode_password_algorithm_untrusted,
    decode_password_algorithms_untrusted,
    decode_uint32_untrusted,
    lambda v: decode_text_untrusted(v, 763),
    lambda v: decode_nonce_features_untrusted(v.decode("utf-8", "replace")),
]


def stun_header(length: int, method: int = 0x0003) -> bytes:
    return method.to_bytes(2, "big") + length.to_bytes(2, "big") + b"\x21\x12\xa4\x42" + TID


def valid_session() -> tuple[Any, CoreClient, list[bytes]]:
    """A server with one allocation, plus a corpus of valid client messages for it."""
    server, _ = make_server()
    client = CoreClient(server)
    assert error_code(client.allocate()) is None
    client.channel_bind(0x4000, PEER)
    corpus: list[bytes] = []
    key = client.key()
    assert client.nonce is not None
    for method, attrs in (
        (Method.ALLOCATE, [(Attr.REQUESTED_TRANSPORT, b"\x11\x00\x00\x00")]),
        (Method.REFRESH, [(Attr.LIFETIME, b"\x00\x00\x02\x58")]),
        (Method.CREATE_PERMISSION, [(Attr.XOR_PEER_ADDRESS, encode_xor_address(*PEER, TID))]),
        (
            Method.CHANNEL_BIND,
            [
                (Attr.CHANNEL_NUMBER, b"\x40\x01\x00\x00"),
                (Attr.XOR_PEER_ADDRESS, encode_xor_address(*PEER, TID)),
            ],
        ),
    ):
        msg = Message(method, MessageClass.REQUEST, TID, list(attrs))
        msg.add(Attr.USERNAME, client.username.encode()).add(Attr.REALM, b"hushroom.test")
        msg.add(Attr.NONCE, client.nonce.encode())
        corpus.append(msg.serialize(integrity_key=key, fingerprint=True))
    send = Message(
        Method.SEND,
        MessageClass.INDICATION,
        TID,
        [(Attr.XOR_PEER_ADDRESS, encode_xor_address(*PEER, TID)), (Attr.DATA, b"data")],
    )
    corpus.append(send.serialize())
    corpus.append(b"\x40\x00\x00\x04data")
    corpus.append(Message(Method.BINDING, MessageClass.REQUEST, TID).serialize(fingerprint=True))
    return server, client, corpus


@FUZZ
@given(st.binary(max_size=600))
def test_parse_message_random_bytes_only_raise_stun_decode_error(data: bytes) -> None:
    with contextlib.suppress(StunDecodeError):
        parse_message_untrusted(data)


@FUZZ
@given(st.binary(max_size=300), st.binary(min_size=20, max_size=20))
def test_parse_message_with_valid_header_and_random_body(body: bytes, _: bytes) -> None:
    body = body[: len(body) & ~3]
    try:
        msg = parse_message_untrusted(stun_header(len(body)) + body)
    except StunDecodeError:
        return
    msg.check_integrity(b"key")
    msg.check_fingerprint()


@FUZZ
@given(st.sampled_from(range(len(VALUE_DECODERS))), st.binary(max_size=80))
def test_attribute_decoders_only_raise_stun_decode_error(index: int, value: bytes) -> None:
    with contextlib.suppress(StunDecodeError):
        VALUE_DECODERS[index](value)


@FUZZ
@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.binary(max_size=40))
def test_overlong_attribute_length_is_a_decode_error(
    attr_type: int, claimed: int, value: bytes
) -> None:
    pad = b"\x00" * (-len(value) & 3)
    body = attr_type.to_bytes(2, "big") + claimed.to_bytes(2, "big") + value + pad
    if claimed > len(value) + len(pad):
        with pytest.raises(StunDecodeError):
            parse_message_untrusted(stun_header(len(body)) + body)
    else:
        with contextlib.suppress(StunDecodeError):
            parse_message_untrusted(stun_header(len(body)) + body)


@FUZZ
@given(st.lists(st.binary(max_size=200), max_size=20))
def test_stream_framer_only_raises_framing_error_and_stays_bounded(chunks: list[bytes]) -> None:
    framer = StreamFramer()
    try:
        for chunk in chunks:
            for frame in framer.feed_untrusted(chunk):
                assert 4 <= len(frame) <= 20 + 0xFFFF
            assert framer.buffered <= 20 + 0xFFFF + 4
    except FramingError:
        pass


@FUZZ
@given(st.binary(max_size=600), st.booleans())
def test_server_core_survives_random_bytes(data: bytes, stream: bool) -> None:
    server, client, _ = valid_session()
    client.stream = stream
    client.send_raw(data)
    server.receive_from_peer_untrusted(server.allocations()[0].relay, PEER, data, NOW)


@FUZZ
@given(st.data())
def test_server_core_survives_bit_flips_of_valid_messages(data: st.DataObject) -> None:
    _server, client, corpus = valid_session()
    original = data.draw(st.sampled_from(corpus))
    mutated = bytearray(original)
    for _ in range(data.draw(st.integers(1, 8))):
        position = data.draw(st.integers(0, len(mutated) - 1))
        mutated[position] ^= 1 << data.draw(st.integers(0, 7))
    out = client.send_raw(bytes(mutated))
    if isinstance(out, bytes):
        parse_message_untrusted(out)  # whatever we answer is well-formed


@FUZZ
@given(st.data())
def test_server_core_survives_truncated_and_overlong_lengths(data: st.DataObject) -> None:
    _server, client, corpus = valid_session()
    original = bytearray(data.draw(st.sampled_from(corpus)))
    if data.draw(st.booleans()) and len(original) > 24:
        # Claim a longer attribute than the message holds.
        original[22:24] = data.draw(st.integers(0, 0xFFFF)).to_bytes(2, "big")
    cut = data.draw(st.integers(0, len(original)))
    client.send_raw(bytes(original[:cut]))


def test_server_memory_does_not_grow_under_garbage() -> None:
    server, client, corpus = valid_session()
    rng = random.Random(1234)

    def barrage(n: int) -> None:
        for i in range(n):
            packet = bytearray(rng.choice(corpus))
            for _ in range(rng.randint(1, 4)):
                packet[rng.randrange(len(packet))] ^= 1 << rng.randrange(8)
            client.addr = (f"192.0.2.{i % 200}", 1000 + i % 500)
            client.send_raw(bytes(packet))
            client.send_raw(rng.randbytes(rng.randint(0, 300)))

    barrage(20000)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    barrage(20000)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    growth = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert growth < 256 * 1024, f"memory grew by {growth} bytes"
    assert server.allocation_count <= 201  # bounded by what valid credentials could create


@pytest.mark.parametrize("length", [0, 1, 3, 4, 19, 20, 21])
def test_short_inputs_are_ignored(length: int) -> None:
    _server, client, _ = valid_session()
    assert client.send_raw(bytes(length)) is None or length >= 20


def test_fresh_transaction_ids_differ() -> None:
    assert new_transaction_id() != new_transaction_id()


class CoreMachine(RuleBasedStateMachine):
    """Random sequences of client operations and clock jumps keep the core's books straight."""

    def __init__(self) -> None:
        super().__init__()
        self.server, self.ports = make_server(
            max_allocations_per_user=3, max_allocations=6, unauthenticated_burst=1e9
        )
        self.now = NOW
        self.clients = [
            CoreClient(self.server, addr=("192.0.2.7", 1000 + i), session=f"user{i % 3}")
            for i in range(5)
        ]
        self.peers = [PEER, ("198.51.200.10", 7), ("10.0.0.1", 9), ("127.0.0.1", 1)]

    def client(self, index: int) -> CoreClient:
        client = self.clients[index]
        client.now = self.now
        return client

    @rule(index=st.integers(0, 4), lifetime=st.sampled_from([None, 0, 30, 600, 5000]))
    def allocate_or_refresh(self, index: int, lifetime: int | None) -> None:
        client = self.client(index)
        attrs = [] if lifetime is None else [(int(Attr.LIFETIME), lifetime.to_bytes(4, "big"))]
        code = error_code(client.allocate(*attrs))
        assert code in (None, 437, 486, 508)
        if code == 437:
            assert error_code(client.refresh(lifetime)) in (None, 437)

    @rule(index=st.integers(0, 4), peer=st.integers(0, 3))
    def permit(self, index: int, peer: int) -> None:
        code = error_code(self.client(index).create_permission(self.peers[peer]))
        assert code in (None, 403, 437)
        assert (code == 403) == (peer >= 2) or code == 437

    @rule(index=st.integers(0, 4), peer=st.integers(0, 3), number=st.integers(0x3FFF, 0x4003))
    def bind(self, index: int, peer: int, number: int) -> None:
        code = error_code(self.client(index).channel_bind(number, self.peers[peer]))
        assert code in (None, 400, 403, 437)

    @rule(index=st.integers(0, 4), size=st.integers(0, 100))
    def send(self, index: int, size: int) -> None:
        client = self.client(index)
        client.send_indication(PEER, b"x" * size)
        client.channel_data(0x4000, b"y" * size)

    @rule(seconds=st.sampled_from([1, 299, 301, 601, 3601]))
    def wait(self, seconds: int) -> None:
        self.now += seconds
        self.server.expire(self.now)

    @invariant()
    def books_balance(self) -> None:
        live = self.server.allocations()
        assert len(live) == len(self.ports.opened) - len(self.ports.closed)
        assert sum(self.server._per_user.values()) == len(live)
        assert len(live) <= 6
        for alloc in live:
            assert all(self.server.policy.peer_filter.allows(ip) for ip in alloc.permissions)
            assert len(alloc.channels) == len(alloc.channel_by_peer)


CoreMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
test_core_state_machine = CoreMachine.TestCase
