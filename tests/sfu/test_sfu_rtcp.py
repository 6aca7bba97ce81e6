"""RTCP packets, checked against aiortc's RTCP classes as an independent decoder."""

from __future__ import annotations

import contextlib

import pytest
from aiortc import rtp as aiortc_rtp
from hypothesis import given
from hypothesis import strategies as st

from sfu.errors import MalformedRtcp
from sfu.rtcp import (
    Bye,
    FullIntraRequest,
    GenericNack,
    PictureLossIndication,
    ReceiverEstimatedMaxBitrate,
    ReceiverReport,
    ReportBlock,
    SdesChunk,
    SenderReport,
    SourceDescription,
    TransportCc,
    UnknownRtcp,
    parse_compound_untrusted,
    serialize_compound,
)

BLOCK = ReportBlock(
    ssrc=7,
    fraction_lost=12,
    packets_lost=-3,
    highest_sequence=70000,
    jitter=33,
    last_sr=0x12345678,
    delay_since_last_sr=99,
)


def test_compound_sr_sdes_decodes_in_aiortc() -> None:
    sr = SenderReport(
        ssrc=1,
        ntp_timestamp=0x0102030405060708,
        rtp_timestamp=4000,
        packet_count=10,
        octet_count=1000,
        reports=(BLOCK,),
    )
    sdes = SourceDescription(chunks=(SdesChunk(ssrc=1, items=((1, b"cname"),)),))
    data = serialize_compound([sr, sdes])
    theirs = aiortc_rtp.RtcpPacket.parse(data)
    assert isinstance(theirs[0], aiortc_rtp.RtcpSrPacket)
    assert theirs[0].sender_info.ntp_timestamp == 0x0102030405060708
    assert theirs[0].sender_info.packet_count == 10
    assert theirs[0].reports[0].packets_lost == -3
    assert theirs[0].reports[0].highest_sequence == 70000
    assert isinstance(theirs[1], aiortc_rtp.RtcpSdesPacket)
    assert theirs[1].chunks[0].items == [(1, b"cname")]
    assert parse_compound_untrusted(data) == [sr, sdes]


def test_aiortc_rr_bye_decode_here() -> None:
    rr = aiortc_rtp.RtcpRrPacket(
        ssrc=5,
        reports=[
            aiortc_rtp.RtcpReceiverInfo(
                ssrc=7,
                fraction_lost=12,
                packets_lost=-3,
                highest_sequence=70000,
                jitter=33,
                lsr=0x12345678,
                dlsr=99,
            )
        ],
    )
    bye = aiortc_rtp.RtcpByePacket(sources=[5, 6])
    ours = parse_compound_untrusted(bytes(rr) + bytes(bye))
    assert ours == [ReceiverReport(ssrc=5, reports=(BLOCK,)), Bye(ssrcs=(5, 6))]


def test_nack_matches_aiortc() -> None:
    lost = (65530, 65531, 65535, 0, 3, 40)
    nack = GenericNack(sender_ssrc=1, media_ssrc=2, lost=lost)
    (theirs,) = aiortc_rtp.RtcpPacket.parse(nack.serialize())
    assert isinstance(theirs, aiortc_rtp.RtcpRtpfbPacket)
    assert [x & 0xFFFF for x in theirs.lost] == list(lost)
    mine = aiortc_rtp.RtcpRtpfbPacket(fmt=1, ssrc=1, media_ssrc=2, lost=[10, 11, 27, 28])
    assert parse_compound_untrusted(bytes(mine)) == [
        GenericNack(sender_ssrc=1, media_ssrc=2, lost=(10, 11, 27, 28))
    ]


def test_pli_fir_remb_match_aiortc() -> None:
    pli = PictureLossIndication(sender_ssrc=1, media_ssrc=2)
    fir = FullIntraRequest(sender_ssrc=1, entries=((2, 9),))
    remb = ReceiverEstimatedMaxBitrate(sender_ssrc=1, bitrate=2_500_000, ssrcs=(2, 3))
    theirs = aiortc_rtp.RtcpPacket.parse(serialize_compound([pli, fir, remb]))
    assert [(p.fmt, p.media_ssrc) for p in theirs] == [(1, 2), (4, 0), (15, 0)]
    assert theirs[1].fci == b"\x00\x00\x00\x02\x09\x00\x00\x00"
    bitrate, ssrcs = aiortc_rtp.unpack_remb_fci(theirs[2].fci)
    # The mantissa keeps 18 significant bits: the value is exact to within 2^-18.
    assert abs(bitrate - 2_500_000) / 2_500_000 < 1e-5
    assert ssrcs == [2, 3]
    fci = aiortc_rtp.pack_remb_fci(300_000, [4])
    packet = aiortc_rtp.RtcpPsfbPacket(fmt=15, ssrc=1, media_ssrc=0, fci=fci)
    assert parse_compound_untrusted(bytes(packet)) == [
        ReceiverEstimatedMaxBitrate(sender_ssrc=1, bitrate=300_000, ssrcs=(4,))
    ]


def test_transport_cc_known_vector() -> None:
    # Base 10, four packets: received +1 tick, lost, received +300 ticks (large), received 0.
    feedback = TransportCc(
        sender_ssrc=1,
        media_ssrc=2,
        base_sequence=10,
        reference_time=5,
        feedback_count=3,
        deltas=(1, None, 300, 0),
    )
    data = feedback.serialize()
    # Header, SSRCs, base/count/ref/fbcount, one 2-bit status vector chunk, deltas, padding.
    assert data[:4] == bytes([0xAF, 205, 0, 6])
    assert data[12:20] == bytes([0, 10, 0, 4, 0, 0, 5, 3])
    assert data[20:22] == bytes([0b11_01_00_10, 0b01_00_00_00])
    assert data[22:26] == bytes([1, 0x01, 0x2C, 0])
    assert parse_compound_untrusted(data) == [feedback]


def test_transport_cc_uses_run_length_for_long_runs() -> None:
    feedback = TransportCc(1, 2, 65530, -1, 0, (4,) * 20 + (None,) * 9 + (1,))
    data = feedback.serialize()
    assert data[20:22] == (0x2000 | 20).to_bytes(2, "big")
    assert parse_compound_untrusted(data) == [feedback]


@given(
    st.integers(0, 0xFFFF),
    st.lists(st.one_of(st.none(), st.integers(-32768, 32767)), max_size=200),
)
def test_transport_cc_round_trip(base: int, deltas: list[int | None]) -> None:
    feedback = TransportCc(1, 2, base, 1000, 7, tuple(deltas))
    assert parse_compound_untrusted(feedback.serialize()) == [feedback]


def test_unknown_types_survive_for_relaying() -> None:
    app = UnknownRtcp(packet_type=204, count=3, payload=b"\x00\x00\x00\x01name")
    assert parse_compound_untrusted(app.serialize()) == [app]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x80\xc8",
        b"\x40\xc9\x00\x01\x00\x00\x00\x00",  # version 1
        b"\x80\xc9\x00\x05\x00\x00\x00\x00",  # length beyond the datagram
        b"\x81\xc9\x00\x01\x00\x00\x00\x00",  # one report block announced, none present
        b"\xa0\xc9\x00\x01\x00\x00\x00\x00",  # padding count 0
        b"\x81\xca\x00\x02\x00\x00\x00\x01\x01\x05ab",  # SDES item runs off the end
        b"\x8f\xcd\x00\x04\x00\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00\x09\x00\x00\x00\x00",
    ],
)
def test_malformed_rtcp_is_a_typed_error(data: bytes) -> None:
    with pytest.raises(MalformedRtcp):
        parse_compound_untrusted(data)


@given(st.integers(192, 223), st.integers(0, 31), st.binary(max_size=200))
def test_rtcp_parser_never_crashes(packet_type: int, count: int, body: bytes) -> None:
    body = body[: len(body) // 4 * 4]
    data = bytes([0x80 | count, packet_type]) + (len(body) // 4).to_bytes(2, "big") + body
    try:
        packets = parse_compound_untrusted(data)
    except MalformedRtcp:
        return
    for packet in packets:
        # A transport-cc delta list a sender could not have produced may refuse to encode.
        with contextlib.suppress(ValueError):
            packet.serialize()


@given(st.binary(max_size=400))
def test_rtcp_parser_never_crashes_on_raw_bytes(data: bytes) -> None:
    with contextlib.suppress(MalformedRtcp):
        parse_compound_untrusted(data)
