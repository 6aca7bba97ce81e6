"""RTP packets and header extensions, checked against aiortc's decoder as an independent one."""

from __future__ import annotations

import pytest
from aiortc import rtp as aiortc_rtp
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters
from hypothesis import given
from hypothesis import strategies as st

from sfu.demux import Kind, classify
from sfu.errors import MalformedRtp
from sfu.rtp import (
    ABS_SEND_TIME,
    AUDIO_LEVEL,
    MID,
    RID,
    TRANSPORT_CC,
    RtpPacket,
    decode_audio_level_untrusted,
    find_extension_untrusted,
    parse_extensions_untrusted,
)


def _aiortc_map() -> aiortc_rtp.HeaderExtensionsMap:
    extensions_map = aiortc_rtp.HeaderExtensionsMap()
    extensions_map.configure(
        RTCRtpParameters(
            headerExtensions=[
                RTCRtpHeaderExtensionParameters(id=1, uri=AUDIO_LEVEL),
                RTCRtpHeaderExtensionParameters(id=2, uri=ABS_SEND_TIME),
                RTCRtpHeaderExtensionParameters(id=3, uri=TRANSPORT_CC),
                RTCRtpHeaderExtensionParameters(id=4, uri=MID),
                RTCRtpHeaderExtensionParameters(id=10, uri=RID),
            ]
        )
    )
    return extensions_map


def test_packet_with_extensions_decodes_the_same_in_aiortc() -> None:
    packet = RtpPacket(
        payload_type=111,
        sequence_number=65535,
        timestamp=0xFFFFFFF0,
        ssrc=0xDEADBEEF,
        marker=True,
        csrc=(1, 2),
        extensions={1: bytes([0x80 | 42]), 2: b"\x01\x02\x03", 3: b"\x12\x34", 4: b"0", 10: b"h"},
        payload=b"\xfc\x01\x02",
        padding_size=3,
    )
    data = packet.serialize()
    theirs = aiortc_rtp.RtpPacket.parse(data, _aiortc_map())
    assert theirs.payload_type == 111
    assert theirs.marker == 1
    assert theirs.sequence_number == 65535
    assert theirs.timestamp == 0xFFFFFFF0
    assert theirs.ssrc == 0xDEADBEEF
    assert theirs.csrc == [1, 2]
    assert theirs.payload == b"\xfc\x01\x02"
    assert theirs.padding_size == 3
    assert theirs.extensions.audio_level == (True, 42)
    assert theirs.extensions.abs_send_time == 0x010203
    assert theirs.extensions.transport_sequence_number == 0x1234
    assert theirs.extensions.mid == "0"
    assert theirs.extensions.rtp_stream_id == "h"
    assert RtpPacket.parse_untrusted(data) == packet


def test_aiortc_packet_decodes_the_same_here() -> None:
    theirs = aiortc_rtp.RtpPacket(payload_type=96, sequence_number=7, timestamp=9, ssrc=5)
    theirs.extensions.audio_level = (False, 127)
    theirs.extensions.mid = "audio"
    theirs.payload = b"frame"
    data = theirs.serialize(_aiortc_map())
    ours = RtpPacket.parse_untrusted(data)
    assert (ours.payload_type, ours.sequence_number, ours.timestamp, ours.ssrc) == (96, 7, 9, 5)
    assert ours.payload == b"frame"
    assert decode_audio_level_untrusted(ours.extensions[1]).level == 127
    assert not decode_audio_level_untrusted(ours.extensions[1]).voice
    assert ours.extensions[4] == b"audio"
    assert find_extension_untrusted(data, 4) == b"audio"
    assert find_extension_untrusted(data, 9) is None


def test_two_byte_extensions_round_trip() -> None:
    packet = RtpPacket(
        payload_type=96, sequence_number=1, timestamp=2, ssrc=3, extensions={20: b"x" * 20}
    )
    assert RtpPacket.parse_untrusted(packet.serialize()) == packet


def test_one_byte_block_stops_at_reserved_id_15() -> None:
    assert parse_extensions_untrusted(0xBEDE, bytes([0x10, 0xAA, 0xF0, 0x00])) == {1: b"\xaa"}


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x80" * 11,
        b"\x40" + b"\x00" * 11,  # version 1
        b"\x83" + b"\x00" * 11,  # three CSRCs announced, none present
        b"\x90" + b"\x00" * 11 + b"\xbe\xde\x00\x05",  # extension longer than the packet
        b"\xa0" + b"\x00" * 11 + b"\x00",  # padding count 0
        b"\xa0" + b"\x00" * 11 + b"\x20",  # padding longer than the packet
    ],
)
def test_malformed_rtp_is_a_typed_error(data: bytes) -> None:
    with pytest.raises(MalformedRtp):
        RtpPacket.parse_untrusted(data)


@given(st.binary(max_size=300))
def test_rtp_parser_never_crashes(data: bytes) -> None:
    try:
        packet = RtpPacket.parse_untrusted(b"\x80" + data)
    except MalformedRtp:
        return
    assert RtpPacket.parse_untrusted(packet.serialize()).payload == packet.payload


@given(
    st.integers(0, 127),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.dictionaries(st.integers(1, 14), st.binary(min_size=1, max_size=16), max_size=5),
    st.binary(max_size=100),
)
def test_rtp_round_trip(
    pt: int, seq: int, ts: int, ssrc: int, ext: dict[int, bytes], payload: bytes
) -> None:
    packet = RtpPacket(pt, seq, ts, ssrc, extensions=ext, payload=payload)
    data = packet.serialize()
    assert RtpPacket.parse_untrusted(data) == packet
    theirs = aiortc_rtp.RtpPacket.parse(data)
    assert (theirs.sequence_number, theirs.timestamp, theirs.payload) == (seq, ts, payload)


@pytest.mark.parametrize(
    ("first", "second", "kind"),
    [
        (0, 1, Kind.STUN),
        (3, 0, Kind.STUN),
        (22, 254, Kind.DTLS),
        (63, 0, Kind.DTLS),
        (64, 0, Kind.CHANNEL_DATA),
        (0x80, 111, Kind.RTP),
        (0x90, 96 | 0x80, Kind.RTP),
        (0x80, 200, Kind.RTCP),
        (0x81, 205, Kind.RTCP),
        (0x80, 223, Kind.RTCP),
        (4, 0, Kind.UNKNOWN),
        (200, 0, Kind.UNKNOWN),
    ],
)
def test_rfc7983_demux_by_first_byte(first: int, second: int, kind: Kind) -> None:
    assert classify(bytes([first, second])) is kind


def test_demux_of_empty_datagram_is_unknown() -> None:
    assert classify(b"") is Kind.UNKNOWN
    assert classify(b"\x80") is Kind.UNKNOWN
