"""Session descriptions (RFC 8866) for WebRTC with the SFU as an ICE-lite, BUNDLE-only peer.

What the SFU reads in a client's offer and writes in its answer follows JSEP (RFC 8829):
Unified Plan m-sections with ``a=mid``, ``a=group:BUNDLE`` (RFC 8843), ``a=rtcp-mux``
(RFC 5761), ICE credentials (RFC 8839 §5.4), DTLS fingerprints and ``a=setup`` (RFC 8122
§5, RFC 5763 §5), header extensions (RFC 8285 §5), simulcast by ``a=rid`` (RFC 8851) and
``a=simulcast`` (RFC 8853). Audio is Opus (RFC 7587), video VP8 (RFC 7741) with RTX
(RFC 4588). Everything else is rejected with port 0, as RFC 8829 §5.3.1 prescribes.

The SFU also writes offers for the receiving side (:func:`build_consumer_offer`), so a new
producer appears in a subscriber's session without SDP munging on the client.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from sfu.errors import MalformedSdp, UnsupportedOffer
from sfu.rtp import ABS_SEND_TIME, AUDIO_LEVEL, MID, REPAIRED_RID, RID, TRANSPORT_CC

__all__ = [
    "AUDIO_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "Codec",
    "ConsumerOffer",
    "ConsumerOfferWriter",
    "IceDtlsParameters",
    "MediaSection",
    "PublishedTrack",
    "SessionDescription",
    "ValidatedSections",
    "answer_offer",
    "build_consumer_offer",
    "consumer_extensions",
    "remote_fingerprints",
]

MAX_SDP_BYTES = 64 * 1024
# A room of N needs N - 1 receive m-sections; MAX_SDP_BYTES bounds the work either way.
MAX_MEDIA_SECTIONS = 512
MAX_ATTRIBUTES_PER_SECTION = 512

AUDIO_EXTENSIONS = (AUDIO_LEVEL, ABS_SEND_TIME, TRANSPORT_CC, MID)
VIDEO_EXTENSIONS = (ABS_SEND_TIME, TRANSPORT_CC, MID, RID, REPAIRED_RID)
OPUS_FMTP = "minptime=10;useinbandfec=1;usedtx=1"
AUDIO_FEEDBACK = ("transport-cc",)
VIDEO_FEEDBACK = ("goog-remb", "transport-cc", "ccm fir", "nack", "nack pli")
_DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")


@dataclass
class Codec:
    """One ``a=rtpmap`` with its ``a=fmtp`` parameters and ``a=rtcp-fb`` values."""

    payload_type: int
    name: str
    clock_rate: int
    channels: int | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    feedback: list[str] = field(default_factory=list)


@dataclass
class MediaSection:
    """One m-section (RFC 8866 §5.14) and the attributes the SFU understands."""

    kind: str
    port: int
    protocol: str
    formats: list[str]
    mid: str | None = None
    direction: str = "sendrecv"
    codecs: list[Codec] = field(default_factory=list)
    extensions: dict[int, str] = field(default_factory=dict)
    ssrcs: dict[int, dict[str, str]] = field(default_factory=dict)
    ssrc_groups: list[tuple[str, list[int]]] = field(default_factory=list)
    rids: list[tuple[str, str]] = field(default_factory=list)
    simulcast: str | None = None
    msid: str | None = None
    ice_ufrag: str | None = None
    ice_pwd: str | None = None
    fingerprints: list[tuple[str, str]] = field(default_factory=list)
    setup: str | None = None
    rtcp_mux: bool = False
    rtcp_rsize: bool = False
    candidates: list[str] = field(default_factory=list)
    end_of_candidates: bool = False

    def codec(self, name: str) -> Codec | None:
        """The first codec of that name (case-insensitive), in the offerer's preference order."""
        for codec in self.codecs:
            if codec.name.lower() == name.lower():
                return codec
        return None


@dataclass
class SessionDescription:
    """A whole session description: session-level attributes and the m-sections."""

    origin_session_id: int = 0
    origin_version: int = 0
    bundle: list[str] = field(default_factory=list)
    ice_lite: bool = False
    ice_ufrag: str | None = None
    ice_pwd: str | None = None
    fingerprints: list[tuple[str, str]] = field(default_factory=list)
    setup: str | None = None
    msid_semantic: str | None = None
    media: list[MediaSection] = field(default_factory=list)

    @classmethod
    def parse_untrusted(
        cls, text: str, validated: ValidatedSections | None = None
    ) -> SessionDescription:
        """Decode SDP from a client; sizes and counts are bounded, unknown lines ignored.

        With ``validated`` (one per peer), an m-section whose lines equal those of one that
        peer sent in its previous description is not parsed again: its earlier result is
        reused (see :class:`ValidatedSections` for why that is the same as parsing it). Such
        sections are shared with the cache: treat the result as read-only.
        """
        if len(text) > MAX_SDP_BYTES:
            raise MalformedSdp("session description is larger than 64 KiB")
        session = cls()
        if validated is None:
            state = _parse_lines(session, text.splitlines(), _ParseState())
        else:
            state = validated.parse(session, text)
        if not state.seen_version:
            raise MalformedSdp("missing v= line")
        return session

    def serialize(self) -> str:
        """Encode with CRLF line ends (RFC 8866 §5)."""
        lines = [
            "v=0",
            f"o=- {self.origin_session_id} {self.origin_version} IN IP4 0.0.0.0",
            "s=-",
            "t=0 0",
        ]
        if self.ice_lite:
            lines.append("a=ice-lite")
        if self.bundle:
            lines.append("a=group:BUNDLE " + " ".join(self.bundle))
        if self.msid_semantic:
            lines.append(f"a=msid-semantic:{self.msid_semantic}")
        if self.ice_ufrag:
            lines.append(f"a=ice-ufrag:{self.ice_ufrag}")
        if self.ice_pwd:
            lines.append(f"a=ice-pwd:{self.ice_pwd}")
        lines.extend(f"a=fingerprint:{alg} {value}" for alg, value in self.fingerprints)
        if self.setup:
            lines.append(f"a=setup:{self.setup}")
        for media in self.media:
            lines.extend(_serialize_media(media))
        return "\r\n".join(lines) + "\r\n"


class _ParseState:
    """Where :func:`_parse_lines` is: the m-section being read and what it has seen."""

    __slots__ = ("attributes", "current", "seen_version", "session_lines")

    def __init__(self) -> None:
        self.current: MediaSection | None = None
        self.attributes = 0
        self.seen_version = False
        # v= or o= lines met: they change the session, wherever they stand.
        self.session_lines = False


def _parse_lines(session: SessionDescription, lines: list[str], state: _ParseState) -> _ParseState:
    for raw_line in lines:
        line = raw_line.strip()
        if not line:
            continue
        if len(line) < 2 or line[1] != "=":
            raise MalformedSdp("line is not of the form <type>=<value>")
        kind, value = line[0], line[2:]
        if kind == "v":
            if value != "0":
                raise MalformedSdp("protocol version is not 0")
            state.seen_version = True
            state.session_lines = True
        elif kind == "o":
            parts = value.split()
            if len(parts) != 6 or not parts[1].isdigit() or not parts[2].isdigit():
                raise MalformedSdp("origin line is malformed")
            session.origin_session_id = int(parts[1][:20])
            session.origin_version = int(parts[2][:20])
            state.session_lines = True
        elif kind == "m":
            if len(session.media) >= MAX_MEDIA_SECTIONS:
                raise MalformedSdp("too many m-sections")
            parts = value.split()
            if len(parts) < 3 or not parts[1].split("/")[0].isdigit():
                raise MalformedSdp("m-line is malformed")
            port = int(parts[1].split("/")[0])
            if port > 65535:
                raise MalformedSdp("m-line port is out of range")
            state.current = MediaSection(
                kind=parts[0], port=port, protocol=parts[2], formats=parts[3:]
            )
            session.media.append(state.current)
            state.attributes = 0
        elif kind == "a":
            state.attributes += 1
            if state.attributes > MAX_ATTRIBUTES_PER_SECTION:
                raise MalformedSdp("too many attributes")
            if state.current is None:
                _session_attribute(session, value)
            else:
                _media_attribute(state.current, value)
    return state


# The line breaks of str.splitlines.
_LINE_BREAKS = frozenset("\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")


def _m_line_starts(text: str) -> list[int]:
    """Where lines that are ``m=`` after blanks start (the text's start, or just after a
    line break). An m-line led by other whitespace is not found: it is parsed as a line of
    the chunk before it, as without the cache."""
    starts = []
    pos = text.find("m=")
    while pos >= 0:
        start = pos
        # Blank runs before different "m=" are disjoint: linear in all.
        while start > 0 and text[start - 1] in " \t":
            start -= 1
        if start == 0 or text[start - 1] in _LINE_BREAKS:
            starts.append(start)
        pos = text.find("m=", pos + 2)
    return starts


class ValidatedSections:
    """What a peer's last description parsed into, by chunks of its text that start at an
    m-line, so that a renegotiation's answer, which repeats every earlier m-section, costs
    the parse of what changed (with 50 m-sections, a fiftieth of it).

    Reusing a chunk's result is the same as parsing it again:

    - the text is cut just after a line break (never between CR and LF), so its chunks'
      lines are, in order, the lines of the whole;
    - parsing is line by line, and a chunk starts with an m-line, which starts a fresh
      :class:`MediaSection` and resets the attribute count: what the chunk's lines do
      depends on them alone, except for ``v=`` and ``o=`` lines (they set session fields:
      a chunk holding one is never kept) and the m-section count (checked for a reused
      chunk as its m-lines would);
    - the same text parsed without error before, so it does not raise now: an error comes
      from the same line as without the cache.

    Only the latest description's chunks are kept (bounded by :data:`MAX_SDP_BYTES`).
    """

    __slots__ = ("_chunks",)

    def __init__(self) -> None:
        self._chunks: dict[str, list[MediaSection]] = {}

    def parse(self, session: SessionDescription, text: str) -> _ParseState:
        """:func:`_parse_lines` over the lines of ``text``, reusing chunks parsed last time."""
        cuts = _m_line_starts(text)
        cuts.append(len(text))
        state = _parse_lines(session, text[: cuts[0]].splitlines(), _ParseState())
        known, kept = self._chunks, {}
        self._chunks = {}  # a description that fails to parse leaves nothing behind
        for begin, end in itertools.pairwise(cuts):
            chunk = text[begin:end]
            media = known.get(chunk)
            if media is not None:
                if len(session.media) + len(media) > MAX_MEDIA_SECTIONS:
                    raise MalformedSdp("too many m-sections")
                session.media.extend(media)
                state.current, state.attributes = media[-1], 0
            else:
                count = len(session.media)
                state.session_lines = False
                _parse_lines(session, chunk.splitlines(), state)
                if state.session_lines:
                    continue
                media = session.media[count:]
            kept[chunk] = media
        self._chunks = kept
        return state


def _int_untrusted(text: str, what: str, limit: int = 0xFFFFFFFF) -> int:
    if not text.isdigit() or len(text) > 10 or int(text) > limit:
        raise MalformedSdp(f"{what} is not a number in range")
    return int(text)


def _session_attribute(session: SessionDescription, value: str) -> None:
    name, _, arg = value.partition(":")
    if name == "group" and arg.startswith("BUNDLE"):
        session.bundle = arg.split()[1:]
    elif name == "ice-lite":
        session.ice_lite = True
    elif name == "ice-ufrag":
        session.ice_ufrag = arg
    elif name == "ice-pwd":
        session.ice_pwd = arg
    elif name == "fingerprint":
        session.fingerprints.append(_fingerprint_untrusted(arg))
    elif name == "setup":
        session.setup = arg
    elif name == "msid-semantic":
        session.msid_semantic = arg.strip()


def _fingerprint_untrusted(arg: str) -> tuple[str, str]:
    parts = arg.split()
    if len(parts) != 2:
        raise MalformedSdp("fingerprint attribute is malformed")
    return parts[0].lower(), parts[1].upper()


def _codec_for(media: MediaSection, payload_type: int) -> Codec | None:
    for codec in media.codecs:
        if codec.payload_type == payload_type:
            return codec
    return None


def _media_attribute(media: MediaSection, value: str) -> None:
    name, _, arg = value.partition(":")
    if name == "mid":
        media.mid = arg
    elif name in _DIRECTIONS:
        media.direction = name
    elif name == "rtpmap":
        pt_text, _, encoding = arg.partition(" ")
        parts = encoding.split("/")
        if len(parts) < 2:
            raise MalformedSdp("rtpmap is malformed")
        media.codecs.append(
            Codec(
                payload_type=_int_untrusted(pt_text, "payload type", 127),
                name=parts[0],
                clock_rate=_int_untrusted(parts[1], "clock rate"),
                channels=_int_untrusted(parts[2], "channels", 255) if len(parts) > 2 else None,
            )
        )
    elif name == "fmtp":
        pt_text, _, params = arg.partition(" ")
        codec = _codec_for(media, _int_untrusted(pt_text, "payload type", 127))
        if codec is not None:
            for item in params.split(";"):
                key, _, val = item.strip().partition("=")
                if key:
                    codec.parameters[key] = val
    elif name == "rtcp-fb":
        pt_text, _, feedback = arg.partition(" ")
        if pt_text == "*":
            for codec in media.codecs:
                codec.feedback.append(feedback)
        else:
            codec = _codec_for(media, _int_untrusted(pt_text, "payload type", 127))
            if codec is not None:
                codec.feedback.append(feedback)
    elif name == "extmap":
        id_text, _, rest = arg.partition(" ")
        uri = rest.split()[0] if rest.split() else ""
        ext_id = _int_untrusted(id_text.split("/")[0], "extension id", 255)
        if not uri or ext_id == 0:
            raise MalformedSdp("extmap is malformed")
        media.extensions[ext_id] = uri
    elif name == "ssrc":
        ssrc_text, _, attr = arg.partition(" ")
        ssrc = _int_untrusted(ssrc_text, "SSRC")
        key, _, val = attr.partition(":")
        media.ssrcs.setdefault(ssrc, {})
        if key:
            media.ssrcs[ssrc][key] = val
    elif name == "ssrc-group":
        parts = arg.split()
        if not parts:
            raise MalformedSdp("ssrc-group is malformed")
        media.ssrc_groups.append((parts[0], [_int_untrusted(p, "SSRC") for p in parts[1:]]))
    elif name == "rid":
        parts = arg.split()
        if len(parts) < 2:
            raise MalformedSdp("rid is malformed")
        media.rids.append((parts[0], parts[1]))
    elif name == "simulcast":
        media.simulcast = arg
    elif name == "msid":
        media.msid = arg
    elif name == "ice-ufrag":
        media.ice_ufrag = arg
    elif name == "ice-pwd":
        media.ice_pwd = arg
    elif name == "fingerprint":
        media.fingerprints.append(_fingerprint_untrusted(arg))
    elif name == "setup":
        media.setup = arg
    elif name == "rtcp-mux":
        media.rtcp_mux = True
    elif name == "rtcp-rsize":
        media.rtcp_rsize = True
    elif name == "candidate":
        media.candidates.append(arg)
    elif name == "end-of-candidates":
        media.end_of_candidates = True


def _rtpmap(codec: Codec) -> str:
    channels = f"/{codec.channels}" if codec.channels else ""
    return f"a=rtpmap:{codec.payload_type} {codec.name}/{codec.clock_rate}{channels}"


def _serialize_media(media: MediaSection) -> list[str]:
    lines = [
        f"m={media.kind} {media.port} {media.protocol} {' '.join(media.formats)}",
        "c=IN IP4 0.0.0.0",
    ]
    if media.ice_ufrag:
        lines.append(f"a=ice-ufrag:{media.ice_ufrag}")
    if media.ice_pwd:
        lines.append(f"a=ice-pwd:{media.ice_pwd}")
    lines.extend(f"a=fingerprint:{alg} {value}" for alg, value in media.fingerprints)
    if media.setup:
        lines.append(f"a=setup:{media.setup}")
    if media.mid is not None:
        lines.append(f"a=mid:{media.mid}")
    if media.port == 0:
        # Rejected or retired: credentials stay (some stacks insist on them everywhere),
        # nothing else does.
        lines.append("a=inactive")
        if media.rtcp_mux:
            lines.append("a=rtcp-mux")
        lines.extend(_rtpmap(codec) for codec in media.codecs)
        return lines
    lines.extend(f"a=extmap:{ext_id} {uri}" for ext_id, uri in media.extensions.items())
    lines.append(f"a={media.direction}")
    if media.msid:
        lines.append(f"a=msid:{media.msid}")
    if media.rtcp_mux:
        lines.append("a=rtcp-mux")
    if media.rtcp_rsize:
        lines.append("a=rtcp-rsize")
    for codec in media.codecs:
        lines.append(_rtpmap(codec))
        lines.extend(f"a=rtcp-fb:{codec.payload_type} {fb}" for fb in codec.feedback)
        if codec.parameters:
            params = ";".join(f"{k}={v}" if v else k for k, v in codec.parameters.items())
            lines.append(f"a=fmtp:{codec.payload_type} {params}")
    lines.extend(f"a=rid:{rid} {direction}" for rid, direction in media.rids)
    if media.simulcast:
        lines.append(f"a=simulcast:{media.simulcast}")
    for semantics, ssrcs in media.ssrc_groups:
        lines.append(f"a=ssrc-group:{semantics} {' '.join(map(str, ssrcs))}")
    for ssrc, attrs in media.ssrcs.items():
        lines.extend(
            f"a=ssrc:{ssrc} {k}:{v}" if v else f"a=ssrc:{ssrc} {k}" for k, v in attrs.items()
        )
    lines.extend(f"a=candidate:{c}" for c in media.candidates)
    if media.end_of_candidates:
        lines.append("a=end-of-candidates")
    return lines


@dataclass(frozen=True)
class IceDtlsParameters:
    """The SFU side of a transport as it appears in SDP: ICE-lite credentials, certificate
    fingerprint and the one host candidate (the worker's UDP port)."""

    ice_ufrag: str
    ice_pwd: str
    fingerprint: str
    ip: str
    port: int

    def candidate(self) -> str:
        """An RFC 8839 §5.1 host candidate with the highest type preference."""
        return f"1 1 udp 2130706431 {self.ip} {self.port} typ host"


@dataclass(frozen=True)
class PublishedTrack:
    """What an accepted sending m-section of an offer becomes: the parameters of a producer.

    ``layers`` lists rids from the lowest to the highest simulcast layer; ``ssrcs`` maps
    signalled media SSRCs to layers, ``rtx_ssrcs`` the matching RTX SSRCs (RFC 4588 FID).
    """

    mid: str
    kind: str
    payload_type: int
    clock_rate: int
    rtx_payload_type: int | None
    extensions: dict[int, str]
    ssrcs: dict[int, int]
    rtx_ssrcs: dict[int, int]
    layers: tuple[str, ...]


def _negotiated_extensions(offered: MediaSection, supported: tuple[str, ...]) -> dict[int, str]:
    return {ext_id: uri for ext_id, uri in offered.extensions.items() if uri in supported}


def _remote_credentials(offer: SessionDescription) -> None:
    media = [m for m in offer.media if m.port != 0]
    if not media:
        raise UnsupportedOffer("offer has no active m-section")
    if not offer.bundle:
        raise UnsupportedOffer("offer does not use BUNDLE (RFC 8843)")
    for m in media:
        if not m.rtcp_mux:
            raise UnsupportedOffer("offer does not use rtcp-mux (RFC 5761)")
        if not (m.ice_ufrag or offer.ice_ufrag) or not (m.ice_pwd or offer.ice_pwd):
            raise UnsupportedOffer("offer lacks ICE credentials")
        if not (m.fingerprints or offer.fingerprints):
            raise UnsupportedOffer("offer lacks a DTLS fingerprint")


def remote_fingerprints(description: SessionDescription) -> list[tuple[str, str]]:
    """The peer's certificate fingerprints, from the first m-section or the session level."""
    for media in description.media:
        if media.fingerprints:
            return media.fingerprints
    return description.fingerprints


def _opus_parameters() -> dict[str, str]:
    return dict(item.split("=", 1) for item in OPUS_FMTP.split(";"))


def _accept_audio(offered: MediaSection, answer: MediaSection) -> Codec | None:
    opus = offered.codec("opus")
    if opus is None or opus.clock_rate != 48000:
        return None
    answer.codecs.append(
        Codec(
            payload_type=opus.payload_type,
            name="opus",
            clock_rate=48000,
            channels=2,
            parameters=_opus_parameters(),
            feedback=[fb for fb in opus.feedback if fb in AUDIO_FEEDBACK],
        )
    )
    answer.extensions = _negotiated_extensions(offered, AUDIO_EXTENSIONS)
    return opus


def _accept_video(offered: MediaSection, answer: MediaSection) -> tuple[Codec, Codec | None] | None:
    vp8 = offered.codec("VP8")
    if vp8 is None or vp8.clock_rate != 90000:
        return None
    answer.codecs.append(
        Codec(
            payload_type=vp8.payload_type,
            name="VP8",
            clock_rate=90000,
            feedback=[fb for fb in vp8.feedback if fb in VIDEO_FEEDBACK],
        )
    )
    rtx = next(
        (
            c
            for c in offered.codecs
            if c.name.lower() == "rtx" and c.parameters.get("apt") == str(vp8.payload_type)
        ),
        None,
    )
    if rtx is not None:
        answer.codecs.append(
            Codec(
                payload_type=rtx.payload_type,
                name="rtx",
                clock_rate=90000,
                parameters={"apt": str(vp8.payload_type)},
            )
        )
    answer.extensions = _negotiated_extensions(offered, VIDEO_EXTENSIONS)
    send_rids = [rid for rid, direction in offered.rids if direction == "send"]
    if send_rids and offered.simulcast and offered.simulcast.startswith("send"):
        answer.rids = [(rid, "recv") for rid in send_rids]
        answer.simulcast = "recv " + offered.simulcast.split(None, 1)[1]
    return vp8, rtx


def _signalled_ssrcs(offered: MediaSection) -> tuple[dict[int, int], dict[int, int]]:
    """Media SSRCs by layer and their RTX SSRCs, from ``a=ssrc-group`` SIM and FID."""
    rtx_of = {
        group[0]: group[1] for sem, group in offered.ssrc_groups if sem == "FID" and len(group) == 2
    }
    sim = next((group for sem, group in offered.ssrc_groups if sem == "SIM"), None)
    primaries = sim or [s for s in offered.ssrcs if s not in rtx_of.values()][:1]
    ssrcs = {ssrc: layer for layer, ssrc in enumerate(primaries)}
    rtx = {rtx_of[s]: layer for s, layer in ssrcs.items() if s in rtx_of}
    return ssrcs, rtx


def answer_offer(
    offer: SessionDescription, local: IceDtlsParameters, session_id: int
) -> tuple[SessionDescription, list[PublishedTrack]]:
    """Answer a publishing client's offer (RFC 8829 §5.3) as an ICE-lite DTLS server.

    Sending m-sections with Opus or VP8 are accepted as ``recvonly`` and returned as
    :class:`PublishedTrack`; everything else is rejected with port 0 (RFC 8829 §5.3.1),
    including sections the client offers to receive on: the SFU sends through its own offers.
    """
    _remote_credentials(offer)
    answer = SessionDescription(
        origin_session_id=session_id,
        origin_version=1,
        ice_lite=True,
        msid_semantic="WMS *",
        fingerprints=[("sha-256", local.fingerprint)],
    )
    tracks: list[PublishedTrack] = []
    accepted_mids: list[str] = []
    for offered in offer.media:
        mid = offered.mid if offered.mid is not None else str(len(answer.media))
        sending = offered.direction in ("sendrecv", "sendonly")
        media = MediaSection(
            kind=offered.kind,
            port=0,
            protocol=offered.protocol,
            formats=offered.formats[:1],
            mid=mid,
        )
        answer.media.append(media)
        media.ice_ufrag, media.ice_pwd = local.ice_ufrag, local.ice_pwd
        media.fingerprints = [("sha-256", local.fingerprint)]
        media.setup = "passive"
        media.rtcp_mux = True
        if offered.port == 0 or not sending or mid not in offer.bundle:
            continue
        if offered.kind == "audio":
            opus = _accept_audio(offered, media)
            if opus is None:
                continue
            payload_type, clock_rate, rtx_pt = opus.payload_type, 48000, None
        elif offered.kind == "video":
            accepted = _accept_video(offered, media)
            if accepted is None:
                continue
            payload_type, clock_rate = accepted[0].payload_type, 90000
            rtx_pt = accepted[1].payload_type if accepted[1] else None
        else:
            continue
        media.port = 9
        media.formats = [str(c.payload_type) for c in media.codecs]
        media.direction = "recvonly"
        media.rtcp_rsize = offered.rtcp_rsize
        media.candidates = [local.candidate()]
        media.end_of_candidates = True
        accepted_mids.append(mid)
        ssrcs, rtx_ssrcs = _signalled_ssrcs(offered)
        tracks.append(
            PublishedTrack(
                mid=mid,
                kind=offered.kind,
                payload_type=payload_type,
                clock_rate=clock_rate,
                rtx_payload_type=rtx_pt,
                extensions=dict(media.extensions),
                ssrcs=ssrcs,
                rtx_ssrcs=rtx_ssrcs,
                layers=tuple(rid for rid, _ in media.rids),
            )
        )
    if not tracks:
        raise UnsupportedOffer("offer has no sending Opus or VP8 m-section")
    answer.bundle = accepted_mids
    return answer, tracks


@dataclass(frozen=True)
class ConsumerOffer:
    """One m-section of an SFU-generated offer: a consumer as the subscriber will see it."""

    mid: str
    kind: str
    payload_type: int
    ssrc: int
    cname: str
    stream_id: str
    track_id: str
    rtx_payload_type: int | None = None
    rtx_ssrc: int | None = None
    active: bool = True


# What the SFU writes on streams it sends: the audio level (so subscribers can show who
# speaks) and nothing else; subscribers demultiplex by the SSRCs signalled in the offer.
_CONSUMER_EXTENSIONS: dict[str, dict[int, str]] = {"audio": {1: AUDIO_LEVEL}, "video": {}}
# Subscribers report bandwidth with REMB (transport-cc is only negotiated with publishers).
CONSUMER_VIDEO_FEEDBACK = ("goog-remb", "ccm fir", "nack", "nack pli")


def consumer_extensions(kind: str) -> dict[int, str]:
    """The fixed header extension ids the SFU uses on streams it sends."""
    return dict(_CONSUMER_EXTENSIONS[kind])


def _consumer_media(local: IceDtlsParameters, consumer: ConsumerOffer) -> MediaSection:
    media = MediaSection(
        kind=consumer.kind,
        port=9 if consumer.active else 0,
        protocol="UDP/TLS/RTP/SAVPF",
        formats=[str(consumer.payload_type)],
        mid=consumer.mid,
    )
    media.ice_ufrag, media.ice_pwd = local.ice_ufrag, local.ice_pwd
    media.fingerprints = [("sha-256", local.fingerprint)]
    media.setup = "actpass"
    media.rtcp_mux = True
    if consumer.kind == "audio":
        media.codecs.append(Codec(consumer.payload_type, "opus", 48000, 2, _opus_parameters(), []))
    else:
        media.codecs.append(
            Codec(consumer.payload_type, "VP8", 90000, None, {}, list(CONSUMER_VIDEO_FEEDBACK))
        )
        if consumer.rtx_payload_type is not None:
            media.codecs.append(
                Codec(
                    consumer.rtx_payload_type,
                    "rtx",
                    90000,
                    None,
                    {"apt": str(consumer.payload_type)},
                )
            )
            media.formats.append(str(consumer.rtx_payload_type))
    if not consumer.active:
        return media
    media.extensions = consumer_extensions(consumer.kind)
    media.direction = "sendonly"
    media.msid = f"{consumer.stream_id} {consumer.track_id}"
    media.rtcp_rsize = True
    media.candidates = [local.candidate()]
    media.end_of_candidates = True
    media.ssrcs[consumer.ssrc] = {"cname": consumer.cname, "msid": media.msid}
    if consumer.rtx_ssrc is not None:
        media.ssrc_groups.append(("FID", [consumer.ssrc, consumer.rtx_ssrc]))
        media.ssrcs[consumer.rtx_ssrc] = {"cname": consumer.cname, "msid": media.msid}
    return media


def _consumer_offer_header(
    local: IceDtlsParameters, consumers: list[ConsumerOffer], session_id: int, version: int
) -> SessionDescription:
    if not consumers:
        raise ValueError("an offer needs at least one m-section")
    return SessionDescription(
        origin_session_id=session_id,
        origin_version=version,
        bundle=[c.mid for c in consumers if c.active],
        ice_lite=True,
        msid_semantic="WMS *",
        fingerprints=[("sha-256", local.fingerprint)],
    )


def build_consumer_offer(
    local: IceDtlsParameters, consumers: list[ConsumerOffer], session_id: int, version: int
) -> SessionDescription:
    """An offer for a subscriber's receiving transport (RFC 8829 §5.2).

    m-sections keep their position across renegotiations: a closed consumer stays as an
    inactive section with port 0 until a new consumer recycles its slot under a new mid
    (RFC 8829 §5.2.2), so ``consumers`` is every slot, live or closed.
    """
    offer = _consumer_offer_header(local, consumers, session_id, version)
    offer.media = [_consumer_media(local, consumer) for consumer in consumers]
    return offer


class ConsumerOfferWriter:
    """Writes a transport's offers as :func:`build_consumer_offer` and ``serialize`` would,
    keeping each m-section's text for the next offer: a renegotiation renders only the
    m-sections that changed (a new consumer, one turned inactive), not every one.

    An m-section's text is a function of the :class:`ConsumerOffer` (a frozen value: any
    change to a slot is a new value) and the transport's :class:`IceDtlsParameters` alone,
    so the text kept under an equal pair is the text a fresh render gives. Only the latest
    offer's m-sections are kept.
    """

    __slots__ = ("_local", "_sections")

    def __init__(self) -> None:
        self._local: IceDtlsParameters | None = None
        self._sections: dict[ConsumerOffer, str] = {}

    def write(
        self,
        local: IceDtlsParameters,
        consumers: list[ConsumerOffer],
        session_id: int,
        version: int,
    ) -> str:
        """The serialized offer (see :func:`build_consumer_offer`)."""
        header = _consumer_offer_header(local, consumers, session_id, version).serialize()
        known = self._sections if local == self._local else {}
        kept: dict[ConsumerOffer, str] = {}
        parts = [header]
        for consumer in consumers:
            text = known.get(consumer)
            if text is None:
                text = "\r\n".join(_serialize_media(_consumer_media(local, consumer))) + "\r\n"
            kept[consumer] = text
            parts.append(text)
        self._local, self._sections = local, kept
        return "".join(parts)
