"""Stream framing of STUN messages and ChannelData on TCP/TLS (RFC 8656 §12.5)."""

from __future__ import annotations

import pytest

from turn.framing import FramingError, StreamFramer, pad_channel_data
from turn.stun import Message, MessageClass, Method, new_transaction_id


def test_frames_split_across_reads_are_reassembled() -> None:
    stun = Message(Method.BINDING, MessageClass.REQUEST, new_transaction_id()).serialize()
    channel = pad_channel_data(b"\x40\x00\x00\x05hello")
    stream = stun + channel + stun
    framer = StreamFramer()
    frames = []
    for i in range(0, len(stream), 3):
        frames += framer.feed_untrusted(stream[i : i + 3])
    assert frames == [stun, channel, stun]
    assert framer.buffered == 0


def test_channel_data_padding_is_consumed_on_streams() -> None:
    assert pad_channel_data(b"\x40\x00\x00\x05hello") == b"\x40\x00\x00\x05hello\x00\x00\x00"
    assert pad_channel_data(b"\x40\x00\x00\x04abcd") == b"\x40\x00\x00\x04abcd"
    framer = StreamFramer()
    assert framer.feed_untrusted(b"\x40\x01\x00\x01x\x00\x00\x00\x40\x01\x00\x00") == [
        b"\x40\x01\x00\x01x\x00\x00\x00",
        b"\x40\x01\x00\x00",
    ]


@pytest.mark.parametrize("number", [0x4000, 0x5000, 0x7FFF], ids=hex)
def test_every_rfc5766_channel_number_frames_as_channel_data(number: int) -> None:
    # First two bits 01 is ChannelData, the whole 0x4000-0x7FFF range the server binds.
    frame = pad_channel_data(number.to_bytes(2, "big") + b"\x00\x05hello")
    stun = Message(Method.BINDING, MessageClass.REQUEST, new_transaction_id()).serialize()
    assert StreamFramer().feed_untrusted(frame + stun) == [frame, stun]


@pytest.mark.parametrize("first", [0x80, 0xBF, 0xC0, 0xFF, 0x16], ids=hex)
def test_garbage_on_the_stream_is_a_framing_error(first: int) -> None:
    framer = StreamFramer()
    if first < 0x40:
        assert framer.feed_untrusted(bytes([first, 0, 0, 0])) == []  # a STUN-looking prefix
        return
    with pytest.raises(FramingError):
        framer.feed_untrusted(bytes([first, 0, 0, 0]))
