"""Every decoder of bytes from the server (or a key backup) fails only with the SDK's
typed errors."""

from __future__ import annotations

import contextlib
from typing import Any

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from client.api import decode_body_untrusted as decode_api_body_untrusted
from client.device_list import SignedDeviceList
from client.envelope import decode_body_untrusted, decode_envelope_untrusted
from client.errors import ClientError
from client.gateway import GatewayCore
from client.models import Bundle, Channel, ChannelMessage, Device, Envelope, Guild, Member
from e2ee import IdentityKeyPair

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.binary(max_size=40)
    | st.text(max_size=20)
)
values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(
            st.text(max_size=12)
            | st.sampled_from(
                [
                    "id",
                    "handle",
                    "identity_key",
                    "device_id",
                    "signed_prekey",
                    "pq_prekey",
                    "one_time_prekey",
                    "key_id",
                    "public_key",
                    "signature",
                    "channel_id",
                    "author_id",
                    "author_device_id",
                    "seq",
                    "ciphertext",
                    "created_at",
                    "edited_at",
                    "roles",
                    "channels",
                    "owner_id",
                    "name",
                    "permission_overwrites",
                    "guild_id",
                    "type",
                    "retention_days",
                    "user_id",
                    "sender_user_id",
                    "sender_device_id",
                    "op",
                    "d",
                    "s",
                    "t",
                ]
            ),
            inner,
            max_size=6,
        )
    ),
    max_leaves=20,
)

DECODERS = [
    Device.from_wire_untrusted,
    Device.list_untrusted,
    Bundle.from_wire_untrusted,
    Channel.from_wire_untrusted,
    Guild.from_wire_untrusted,
    Member.list_untrusted,
    Envelope.from_wire_untrusted,
    ChannelMessage.from_wire_untrusted,
]


@settings(max_examples=200, deadline=None)
@given(values)
def test_model_decoders_raise_only_typed_errors(value: Any) -> None:
    for decode in DECODERS:
        with contextlib.suppress(ClientError):
            decode(value)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200) | values.map(lambda v: msgpack.packb(v, use_bin_type=True)))
def test_byte_decoders_raise_only_typed_errors(raw: bytes) -> None:
    for decode in (
        decode_envelope_untrusted,
        decode_body_untrusted,
        decode_api_body_untrusted,
        GatewayCore("t").receive_untrusted,
        SignedDeviceList.decode_untrusted,
    ):
        with contextlib.suppress(ClientError):
            decode(raw)


_KEPT_LIST = SignedDeviceList.sign(
    IdentityKeyPair.generate(), "user", 7, [bytes([i]) * 32 for i in range(3)]
)


def test_a_kept_device_list_roundtrips() -> None:
    assert SignedDeviceList.decode_untrusted(_KEPT_LIST.encode()) == _KEPT_LIST


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)), min_size=1, max_size=4),
    st.integers(0, 200),
)
def test_a_mutated_kept_device_list_raises_only_typed_errors(
    flips: list[tuple[int, int]], cut: int
) -> None:
    """A backup's device list (client.backup), flipped and truncated."""
    data = bytearray(_KEPT_LIST.encode())
    for pos, value in flips:
        data[pos % len(data)] = value
    for raw in (bytes(data), bytes(data[:cut]), bytes(data) + bytes(9000)):
        with contextlib.suppress(ClientError):
            SignedDeviceList.decode_untrusted(raw)
