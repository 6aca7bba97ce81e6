"""SDP: reading real clients' offers, answering them, and offering to subscribers."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from typing import Any

import pytest
from aiortc import RTCPeerConnection, RTCRtpCodecCapability, RTCSessionDescription
from aiortc import sdp as aiortc_sdp
from hypothesis import given, settings
from hypothesis import strategies as st

from sfu.errors import BadParams, MalformedSdp, UnsupportedOffer
from sfu.rtp import AUDIO_LEVEL, MID, RID, TRANSPORT_CC
from sfu.sdp import (
    MAX_MEDIA_SECTIONS,
    ConsumerOffer,
    ConsumerOfferWriter,
    IceDtlsParameters,
    SessionDescription,
    ValidatedSections,
    answer_offer,
    build_consumer_offer,
    remote_fingerprints,
)
from sfu.worker import Worker

LOCAL = IceDtlsParameters(
    ice_ufrag="sfuU",
    ice_pwd="sfupasswordsfupassword",
    fingerprint=":".join(["AB"] * 32),
    ip="127.0.0.1",
    port=40000,
)

# Trimmed from a Chromium 120 offer with an Opus track and a three-layer VP8 simulcast track.
CHROME_OFFER = """v=0
o=- 4611731400430051336 2 IN IP4 127.0.0.1
s=-
t=0 0
a=group:BUNDLE 0 1
a=extmap-allow-mixed
a=msid-semantic: WMS stream
m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126
c=IN IP4 0.0.0.0
a=rtcp:9 IN IP4 0.0.0.0
a=ice-ufrag:Rz3x
a=ice-pwd:u7QM2VwtgnqR5Ohd2h4dPlV4
a=ice-options:trickle
a=fingerprint:sha-256 FINGERPRINT
a=setup:actpass
a=mid:0
a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level
a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid
a=sendonly
a=msid:stream mic
a=rtcp-mux
a=rtcp-rsize
a=rtpmap:111 opus/48000/2
a=rtcp-fb:111 transport-cc
a=fmtp:111 minptime=10;useinbandfec=1
a=rtpmap:63 red/48000/2
a=fmtp:63 111/111
a=rtpmap:9 G722/8000
a=rtpmap:0 PCMU/8000
a=rtpmap:8 PCMA/8000
a=rtpmap:13 CN/8000
a=rtpmap:110 telephone-event/48000
a=rtpmap:126 telephone-event/8000
a=ssrc:1111 cname:Ck5D
a=ssrc:1111 msid:stream mic
m=video 9 UDP/TLS/RTP/SAVPF 96 97 98 99
c=IN IP4 0.0.0.0
a=rtcp:9 IN IP4 0.0.0.0
a=ice-ufrag:Rz3x
a=ice-pwd:u7QM2VwtgnqR5Ohd2h4dPlV4
a=ice-options:trickle
a=fingerprint:sha-256 FINGERPRINT
a=setup:actpass
a=mid:1
a=extmap:14 urn:ietf:params:rtp-hdrext:toffset
a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time
a=extmap:3 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01
a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid
a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id
a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id
a=sendonly
a=msid:stream cam
a=rtcp-mux
a=rtcp-rsize
a=rtpmap:96 VP8/90000
a=rtcp-fb:96 goog-remb
a=rtcp-fb:96 transport-cc
a=rtcp-fb:96 ccm fir
a=rtcp-fb:96 nack
a=rtcp-fb:96 nack pli
a=rtpmap:97 rtx/90000
a=fmtp:97 apt=96
a=rtpmap:98 VP9/90000
a=rtcp-fb:98 nack
a=fmtp:98 profile-id=0
a=rtpmap:99 rtx/90000
a=fmtp:99 apt=98
a=rid:q send
a=rid:h send
a=rid:f send
a=simulcast:send q;h;f
""".replace("FINGERPRINT", ":".join(["6B"] * 32))


def test_chrome_simulcast_offer_is_answered() -> None:
    offer = SessionDescription.parse_untrusted(CHROME_OFFER)
    assert offer.bundle == ["0", "1"]
    answer, tracks = answer_offer(offer, LOCAL, session_id=42)
    audio, video = tracks
    assert (audio.kind, audio.payload_type, audio.ssrcs) == ("audio", 111, {1111: 0})
    assert audio.extensions == {
        1: AUDIO_LEVEL,
        2: offer.media[0].extensions[2],
        3: TRANSPORT_CC,
        4: MID,
    }
    assert (video.payload_type, video.rtx_payload_type, video.layers) == (96, 97, ("q", "h", "f"))
    assert video.extensions[10] == RID
    assert 14 not in video.extensions  # toffset is not negotiated
    text = answer.serialize()
    assert "a=ice-lite\r\n" in text
    assert "a=simulcast:recv q;h;f\r\n" in text
    assert "a=rid:f recv\r\n" in text
    assert "a=fmtp:111 minptime=10;useinbandfec=1;usedtx=1\r\n" in text
    assert "a=setup:passive\r\n" in text
    assert "a=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host\r\n" in text
    assert "VP9" not in text
    # aiortc's parser, an independent reader, agrees on what the answer says.
    theirs = aiortc_sdp.SessionDescription.parse(text)
    assert [m.direction for m in theirs.media] == ["recvonly", "recvonly"]
    assert [c.mimeType for c in theirs.media[0].rtp.codecs] == ["audio/opus"]
    assert [c.mimeType for c in theirs.media[1].rtp.codecs] == ["video/VP8", "video/rtx"]
    assert theirs.media[0].ice.usernameFragment == "sfuU"
    assert theirs.media[0].dtls.fingerprints[0].value == LOCAL.fingerprint
    assert theirs.media[0].dtls.role == "server"


def test_answer_round_trips_through_our_parser() -> None:
    answer, _ = answer_offer(SessionDescription.parse_untrusted(CHROME_OFFER), LOCAL, 1)
    again = SessionDescription.parse_untrusted(answer.serialize())
    assert again.serialize() == answer.serialize()


def test_aiortc_offer_is_answered_and_aiortc_accepts_the_answer() -> None:
    async def negotiate() -> tuple[list, str]:
        pc = RTCPeerConnection()
        pc.addTransceiver("audio", direction="sendonly")
        video = pc.addTransceiver("video", direction="sendonly")
        video.setCodecPreferences(
            [
                RTCRtpCodecCapability(mimeType="video/VP8", clockRate=90000),
                RTCRtpCodecCapability(mimeType="video/rtx", clockRate=90000),
            ]
        )
        offer = await pc.createOffer()
        await pc.setLocalDescription(offer)
        parsed = SessionDescription.parse_untrusted(str(offer.sdp))
        answer, tracks = answer_offer(parsed, LOCAL, 7)
        assert remote_fingerprints(parsed)[0][0] == "sha-256"
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer.serialize(), type="answer"))
        state = str(pc.signalingState)
        await pc.close()
        return tracks, state

    tracks, state = asyncio.run(negotiate())
    assert state == "stable"
    assert [t.kind for t in tracks] == ["audio", "video"]
    assert all(len(t.ssrcs) == 1 for t in tracks)
    assert tracks[1].rtx_ssrcs
    assert tracks[1].rtx_payload_type is not None


def test_consumer_offer_is_accepted_by_aiortc() -> None:
    consumers = [
        ConsumerOffer("0", "audio", 100, 5555, "alice", "alice", "mic"),
        ConsumerOffer("1", "video", 101, 6666, "alice", "alice", "cam", 102, 6667),
        ConsumerOffer("2", "audio", 100, 7777, "bob", "bob", "mic", active=False),
    ]
    offer = build_consumer_offer(LOCAL, consumers, session_id=9, version=3)

    async def answer() -> tuple[str, list[str]]:
        pc = RTCPeerConnection()
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer.serialize(), type="offer"))
        reply = await pc.createAnswer()
        kinds = [t.kind for t in pc.getTransceivers()]
        await pc.close()
        return str(reply.sdp), kinds

    text, kinds = asyncio.run(answer())
    assert kinds[:2] == ["audio", "video"]
    parsed = SessionDescription.parse_untrusted(text)
    assert [m.direction for m in parsed.media[:2]] == ["recvonly", "recvonly"]
    assert parsed.media[0].setup == "active"  # the SFU stays the DTLS server
    assert parsed.media[2].direction == "inactive"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", MalformedSdp),
        ("v=1\r\n", MalformedSdp),
        ("v=0\r\nm=audio x RTP/AVP 0\r\n", MalformedSdp),
        ("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:999 opus/48000/2\r\n", MalformedSdp),
        ("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=extmap:0 urn:x\r\n", MalformedSdp),
        ("garbage", MalformedSdp),
        ("v=0\r\n" + "a=x\r\n" * 600, MalformedSdp),
        (CHROME_OFFER.replace("a=group:BUNDLE 0 1\n", ""), UnsupportedOffer),
        (CHROME_OFFER.replace("a=rtcp-mux\n", ""), UnsupportedOffer),
        (CHROME_OFFER.replace("a=sendonly", "a=recvonly"), UnsupportedOffer),
        (CHROME_OFFER.replace("opus/", "ilbc/").replace("VP8/", "H264/"), UnsupportedOffer),
    ],
)
def test_bad_offers_are_typed_errors(text: str, error: type[Exception]) -> None:
    with pytest.raises(error):
        answer_offer(SessionDescription.parse_untrusted(text), LOCAL, 1)


@given(st.text(max_size=500))
def test_sdp_parser_never_crashes(text: str) -> None:
    with contextlib.suppress(MalformedSdp):
        answer_offer(SessionDescription.parse_untrusted("v=0\n" + text), LOCAL, 1)


@given(st.lists(st.sampled_from(CHROME_OFFER.splitlines()), max_size=80))
def test_mutated_offers_give_typed_errors_only(lines: list[str]) -> None:
    with contextlib.suppress(MalformedSdp):
        answer_offer(SessionDescription.parse_untrusted("\n".join(["v=0", *lines])), LOCAL, 1)


def test_large_rooms_fit_and_the_m_section_count_is_still_bounded() -> None:
    section = "m=audio 0 UDP/TLS/RTP/SAVPF 100\r\na=mid:{}\r\n"
    big = "v=0\r\n" + "".join(section.format(i) for i in range(MAX_MEDIA_SECTIONS))
    assert MAX_MEDIA_SECTIONS > 100
    assert len(SessionDescription.parse_untrusted(big).media) == MAX_MEDIA_SECTIONS
    with pytest.raises(MalformedSdp, match="too many m-sections"):
        SessionDescription.parse_untrusted(big + section.format(MAX_MEDIA_SECTIONS))


# Renegotiation's shortcuts give what the full paths give: the offer written from kept
# m-section texts equals a fresh render after every kind of change, and an answer parsed
# with the previous answer's chunks equals (or fails as) a parse from scratch.


def _offer(mid: int, kind: str = "audio") -> ConsumerOffer:
    video = kind == "video"
    return ConsumerOffer(
        mid=str(mid),
        kind=kind,
        payload_type=101 if video else 100,
        ssrc=1000 + mid,
        cname=f"pub{mid}",
        stream_id=f"pub{mid}",
        track_id=f"track{mid}",
        rtx_payload_type=102 if video else None,
        rtx_ssrc=2000 + mid if video else None,
    )


def test_written_offers_equal_fresh_renders_after_every_kind_of_change() -> None:
    writer = ConsumerOfferWriter()
    slots = [_offer(0), _offer(1, "video"), _offer(2)]
    version = 0

    def check(local: IceDtlsParameters = LOCAL) -> None:
        nonlocal version
        version += 1
        fresh = build_consumer_offer(local, slots, 77, version).serialize()
        assert writer.write(local, slots, 77, version) == fresh

    check()
    check()  # version bump alone
    slots.append(_offer(3, "video"))  # new consumer
    check()
    slots[1] = dataclasses.replace(slots[1], active=False)  # closed: inactive m-section
    check()
    slots[1] = _offer(4, "video")  # recycled slot under a new mid
    check()
    slots[0] = dataclasses.replace(slots[0], active=False)
    slots[2] = dataclasses.replace(slots[2], active=False)
    check()
    # New transport credentials (or worker port) change every m-section.
    check(dataclasses.replace(LOCAL, ice_ufrag="next", port=40001))
    check()
    with pytest.raises(ValueError, match="at least one m-section"):
        writer.write(LOCAL, [], 77, version)


def _worker_with_producers(count: int) -> tuple[Worker, str, list[str]]:
    worker = Worker("127.0.0.1", 40000, lambda d, a: None, lambda e, d: None)
    router_id = worker.handle_request("router.create", {}, 0.0)["router_id"]
    producers = []
    for index in range(count):
        publisher = worker.handle_request("transport.create", {"router_id": router_id}, 0.0)
        producers.append(
            worker.handle_request(
                "producer.create",
                {
                    "transport_id": publisher["transport_id"],
                    "kind": "audio" if index % 2 else "video",
                    "payload_type": 111 if index % 2 else 96,
                    "ssrcs": {1000 + index: 0},
                    "extensions": {1: AUDIO_LEVEL, 3: MID},
                },
                0.0,
            )["producer_id"]
        )
    return worker, router_id, producers


def _answer_for(offer: str) -> str:
    """What a subscriber answers: each active m-section received, inactive ones rejected."""
    parsed = SessionDescription.parse_untrusted(offer)
    for media in parsed.media:
        media.setup = "active"
        media.fingerprints = [("sha-256", ":".join(["CD"] * 32))]
        media.ice_ufrag, media.ice_pwd = "peer", "peerpasswordpeerpassword"
        media.direction = "recvonly" if media.port else "inactive"
        media.msid, media.ssrcs, media.ssrc_groups = None, {}, []
    return parsed.serialize()


def test_worker_offers_equal_fresh_renders_through_consume_close_pause_and_recycle() -> None:
    worker, _, producers = _worker_with_producers(8)
    sub = worker.handle_request("transport.create", {"router_id": _}, 0.0)["transport_id"]
    transport = worker.transports[sub]

    def call(method: str, **params: Any) -> dict[str, Any]:
        return worker.handle_request(method, {"transport_id": sub, **params}, 0.0)

    def check(offer: str) -> None:
        fresh = build_consumer_offer(
            worker._local(transport),
            transport.consumer_offers,
            int(transport.id, 16) >> 2,
            transport.offer_version,
        ).serialize()
        assert offer == fresh

    created = call("transport.consume", consume=[{"producer_id": p} for p in producers[:4]])
    check(created["sdp_offer"])
    call("transport.answer", sdp_answer=_answer_for(created["sdp_offer"]))
    worker.handle_request(
        "consumer.pause", {"consumer_id": created["consumers"][0]["consumer_id"]}, 0.0
    )
    check(call("transport.offer")["sdp_offer"])  # paused: same m-sections, new version
    closed = call("transport.consume", close=[created["consumers"][1]["consumer_id"]])
    check(closed["sdp_offer"])
    call("transport.answer", sdp_answer=_answer_for(closed["sdp_offer"]))
    # Producer 5 is audio like the closed one: it recycles that slot under a new mid.
    recycled = call("transport.consume", consume=[{"producer_id": producers[5]}])
    check(recycled["sdp_offer"])
    assert len(SessionDescription.parse_untrusted(recycled["sdp_offer"]).media) == 4
    grown = call("transport.consume", consume=[{"producer_id": p} for p in producers[6:]])
    check(grown["sdp_offer"])


def test_a_renegotiation_answer_parses_only_what_changed_and_is_still_checked() -> None:
    worker, router_id, producers = _worker_with_producers(6)
    sub = worker.handle_request("transport.create", {"router_id": router_id}, 0.0)["transport_id"]
    transport = worker.transports[sub]
    first = worker.handle_request(
        "transport.consume",
        {"transport_id": sub, "consume": [{"producer_id": p} for p in producers[:5]]},
        0.0,
    )
    answer = _answer_for(first["sdp_offer"])
    worker.handle_request("transport.answer", {"transport_id": sub, "sdp_answer": answer}, 0.0)
    kept = transport.answer_sections._chunks
    assert len(kept) == 5
    again = worker.handle_request(
        "transport.consume",
        {"transport_id": sub, "consume": [{"producer_id": producers[5]}]},
        0.0,
    )
    answer2 = _answer_for(again["sdp_offer"])
    worker.handle_request("transport.answer", {"transport_id": sub, "sdp_answer": answer2}, 0.0)
    # Earlier m-sections were reused, not parsed again: the very same objects.
    reused = transport.answer_sections._chunks
    assert sum(1 for chunk, media in reused.items() if kept.get(chunk) is media) == 5
    # A bad line inside a section that was fine before is still caught.
    broken = answer2.replace("a=recvonly", "a=rtpmap:x opus/48000", 1)
    with pytest.raises(BadParams, match="payload type"):
        worker.handle_request("transport.answer", {"transport_id": sub, "sdp_answer": broken}, 0.0)


def _outcome(text: str, validated: ValidatedSections | None) -> object:
    try:
        return SessionDescription.parse_untrusted(text, validated)
    except MalformedSdp as exc:
        return ("error", str(exc))


BASE = _answer_for(
    build_consumer_offer(
        LOCAL, [_offer(i, "video" if i % 3 else "audio") for i in range(6)], 5, 1
    ).serialize()
)
BASE_LINES = BASE.splitlines()
# Lines a hostile or odd peer might put anywhere: session lines inside sections, m-lines
# behind blanks or other whitespace, bad values, stray breaks of str.splitlines.
ODD_LINES = [
    "v=0",
    "v=1",
    "o=- 9 9 IN IP4 0.0.0.0",
    "o=bad",
    " m=audio 9 UDP/TLS/RTP/SAVPF 100",
    "\tm=video 9 UDP/TLS/RTP/SAVPF 101",
    "\xa0m=audio 9 UDP/TLS/RTP/SAVPF 100",
    "m=audio 70000 UDP/TLS/RTP/SAVPF 100",
    "m=audio",
    "a=rtpmap:999 opus/48000",
    "a=mid:x\x85m=audio 9 RTP 1",
    "a=mid:y\u2028 m=video 0 RTP 1",
    "x",
    "",
    "a=inactive\rm=audio 9 UDP 100",
]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, len(BASE_LINES)),
            st.sampled_from(ODD_LINES + BASE_LINES),
            st.booleans(),
        ),
        max_size=6,
    ),
    st.sampled_from(["\r\n", "\n", "\r"]),
)
def test_parsing_with_validated_sections_equals_parsing_from_scratch(
    edits: list[tuple[int, str, bool]], newline: str
) -> None:
    lines = list(BASE_LINES)
    for index, line, replace in edits:
        if replace and index < len(lines):
            lines[index] = line
        else:
            lines.insert(index, line)
    text = newline.join(lines) + newline
    validated = ValidatedSections()
    SessionDescription.parse_untrusted(BASE, validated)  # the previous answer
    assert _outcome(text, validated) == _outcome(text, None)
    # And once more, now with this text's own chunks kept (if it parsed).
    assert _outcome(text, validated) == _outcome(text, None)


def test_the_m_section_count_is_bounded_for_reused_sections_too() -> None:
    section = "m=audio 0 UDP/TLS/RTP/SAVPF 100\r\na=mid:{}\r\n"
    big = "v=0\r\n" + "".join(section.format(i) for i in range(MAX_MEDIA_SECTIONS))
    validated = ValidatedSections()
    assert len(SessionDescription.parse_untrusted(big, validated).media) == MAX_MEDIA_SECTIONS
    with pytest.raises(MalformedSdp, match="too many m-sections"):
        SessionDescription.parse_untrusted(big + section.format(0), validated)
