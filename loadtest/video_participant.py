"""A synthetic video participant: :class:`loadtest.participant.VoiceParticipant`'s account,
gateway, join and transports, publishing a camera as a browser does with simulcast.

A publisher's offer is one sendonly VP8 m-section with RTX and three encodings
(``a=rid:q/h/f send``, ``a=simulcast:send q;h;f``, no ``a=ssrc``), the header extensions
Chromium offers for it (transport-wide sequence numbers, mid, rid, repaired-rid) and the
feedback it asks for (REMB, transport-cc, FIR, NACK, PLI). Its packets carry mid and rid
until the SFU's receiver reports show that the SSRC is known, as libwebrtc does. Each
frame time it sends one frame per layer (``loadtest.video_frames``), SFrame-protected with
the VP8 clear-header rules (``e2ee.media.protect_frame``); it reads the SFU's RTCP and
answers a PLI or FIR with a key frame on the layer it names.

A subscriber answers the SFU's offers (VP8 and RTX per m-section), reassembles frames per
SSRC, decrypts them and reads the stamp (layer, sender, frame number, send time). It
announces a bandwidth with REMB once a second, which is what makes the SFU pick a layer for
it: :data:`LAYER_BUDGETS` per video consumer for the layer it is meant to receive.
Participants that do not publish join listen-only (op 4, then only subscribe).
"""

from __future__ import annotations

import secrets
import struct
import time
from typing import Any

import trio

from e2ee.errors import DuplicateMessage, E2EEError, UnknownSender
from e2ee.media import Codec, protect_frame, unprotect_frame
from loadtest.metrics import Window, bump
from loadtest.participant import VoiceParticipant, _rtp_payload
from loadtest.video_frames import (
    FPS,
    LAYERS,
    FrameAssembler,
    Vp8Packetizer,
    read_video_stamp_untrusted,
    video_frame,
)
from sfu.errors import MalformedRtcp, SrtpError
from sfu.rtcp import (
    FullIntraRequest,
    PictureLossIndication,
    ReceiverEstimatedMaxBitrate,
    ReceiverReport,
    parse_compound_untrusted,
)
from sfu.rtp import HEADER, MID, REPAIRED_RID, RID, TRANSPORT_CC
from sfu.sdp import SessionDescription

__all__ = ["LAYER_BUDGETS", "REMB_INTERVAL_S", "VideoParticipant", "stream_key"]

#: REMB per video consumer a subscriber announces to be given each layer: between that
#: layer's bitrate and the next one's (the SFU picks the highest layer that fits).
LAYER_BUDGETS = (300_000, 1_000_000, 5_000_000)
#: Browsers send REMB about once a second.
REMB_INTERVAL_S = 1.0
VP8_PT, RTX_PT = 96, 97
_EXT_TWCC, _EXT_MID, _EXT_RID, _EXT_RRID = 3, 4, 10, 11
_TICKS_PER_FRAME = 90000 // FPS


def stream_key(sender: int, layer: int) -> int:
    """The key a receiver's statistics use for one sender's one layer."""
    return sender * len(LAYERS) + layer


def _extension_block(elements: list[tuple[int, bytes]]) -> bytes:
    """A one-byte-header extension block (RFC 8285 §4.2), padded to 32-bit words."""
    body = b"".join(bytes([(ext_id << 4) | (len(v) - 1)]) + v for ext_id, v in elements)
    body += bytes(-len(body) % 4)
    return struct.pack("!HH", 0xBEDE, len(body) // 4) + body


class VideoParticipant(VoiceParticipant):
    """One synthetic participant of the ``video`` scenario (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Set by the scenario before the join.
        self.publishing = False
        self.wanted_layer = self.initial_layer = len(LAYERS) - 1
        self.layer_ssrcs = [secrets.randbits(32) or 1 for _ in LAYERS]
        self.ssrc_layer = {ssrc: layer for layer, ssrc in enumerate(self.layer_ssrcs)}
        self.layer_seqs = [secrets.randbits(16) for _ in LAYERS]
        self.packetizers = [
            Vp8Packetizer(secrets.randbits(15), secrets.randbits(8)) for _ in LAYERS
        ]
        self.keyframe_due = [True] * len(LAYERS)
        #: SSRCs the SFU has reported on: their packets no longer carry mid and rid.
        self.acknowledged: set[int] = set()
        self.twcc_seq = 0
        self.timestamp_base = secrets.randbits(32)
        self.frame_number = 0
        self.packets_in_window = 0
        self.keyframes_sent = 0
        self.keyframe_requests = 0
        #: Datagrams received while the window was open (arrival time).
        self.received_in_window = 0
        self.assemblers: dict[int, FrameAssembler] = {}
        #: Media SSRCs of the video m-sections of the latest answered subscribe offer.
        self.video_ssrcs: tuple[int, ...] = ()
        #: VP8 payload types the SFU's offers use (its RTX ones are told apart by these).
        self.vp8_payload_types: set[int] = set()
        self.rtcp_ssrc = secrets.randbits(32) or 1
        #: :func:`stream_key` of every (sender, layer) a frame arrived on.
        self.heard_layers: set[int] = set()
        #: Frames sent inside the window that arrived, by :func:`stream_key`.
        self.frames_by_layer: dict[int, int] = {}
        #: Frames of the window that arrived on another layer than the sender's previous.
        self.layer_switches = 0
        #: Switches whose first frame had already arrived on the old layer.
        self.switch_repeats = 0

    # --- signalling ------------------------------------------------------------------

    def publish_offer(self) -> str:
        """A sendonly VP8 offer with RTX and three simulcast encodings (as Chromium's)."""
        rids = [layer.rid for layer in LAYERS]
        return "\r\n".join(
            [
                *self.offer_head("video", f"{VP8_PT} {RTX_PT}"),
                f"a=extmap:{_EXT_TWCC} {TRANSPORT_CC}",
                f"a=extmap:{_EXT_MID} {MID}",
                f"a=extmap:{_EXT_RID} {RID}",
                f"a=extmap:{_EXT_RRID} {REPAIRED_RID}",
                "a=sendonly",
                "a=msid:stream camera",
                "a=rtcp-mux",
                "a=rtcp-rsize",
                f"a=rtpmap:{VP8_PT} VP8/90000",
                f"a=rtcp-fb:{VP8_PT} goog-remb",
                f"a=rtcp-fb:{VP8_PT} transport-cc",
                f"a=rtcp-fb:{VP8_PT} ccm fir",
                f"a=rtcp-fb:{VP8_PT} nack",
                f"a=rtcp-fb:{VP8_PT} nack pli",
                f"a=rtpmap:{RTX_PT} rtx/90000",
                f"a=fmtp:{RTX_PT} apt={VP8_PT}",
                *(f"a=rid:{rid} send" for rid in rids),
                f"a=simulcast:send {';'.join(rids)}",
                "",
            ]
        )

    def subscribe_answer(self, offer: str) -> tuple[str, int]:
        """:meth:`VoiceParticipant.subscribe_answer`, remembering the offer's video SSRCs
        (for REMB) and VP8 payload types (to tell RTX apart)."""
        ssrcs = []
        for media in SessionDescription.parse_untrusted(offer).media:
            if media.port and media.kind == "video":
                fid = {group[1] for sem, group in media.ssrc_groups if sem == "FID"}
                ssrcs += [s for s in media.ssrcs if s not in fid][:1]
                self.vp8_payload_types.update(
                    c.payload_type for c in media.codecs if c.name.lower() == "vp8"
                )
        self.video_ssrcs = tuple(ssrcs)
        return super().subscribe_answer(offer)

    async def join(self, within: float) -> None:
        """Publishers join as voice participants do; the others send op 4 only and then
        just subscribe (a listen-only member)."""
        if self.publishing:
            await super().join(within)
            return
        await self.enter(within, self_mute=True)

    # --- publishing ------------------------------------------------------------------

    def send_video_frame(self, window: Window) -> None:
        """One frame time: a frame on every layer, packetized, SRTP-protected and sent
        without waiting."""
        peer = self.send_leg.peer
        if peer is None or self.sender is None:
            return
        self.frame_number += 1
        number = self.frame_number
        sent_ns = time.monotonic_ns()
        timestamp = (self.timestamp_base + _TICKS_PER_FRAME * number) & 0xFFFFFFFF
        in_window = window.holds(sent_ns)
        sframe, send, protect = self.sender.sframe, self.send_leg.send, peer.protect
        for layer in range(len(LAYERS)):
            keyframe = self.keyframe_due[layer]
            if keyframe:
                self.keyframe_due[layer] = False
                self.keyframes_sent += 1
            frame = video_frame(layer, self.number, number, sent_ns, keyframe=keyframe)
            payloads = self.packetizers[layer].packetize(protect_frame(sframe, Codec.VP8, frame))
            ssrc = self.layer_ssrcs[layer]
            known = ssrc in self.acknowledged
            last = len(payloads) - 1
            seq = self.layer_seqs[layer]
            for n, payload in enumerate(payloads):
                seq = (seq + 1) & 0xFFFF
                self.twcc_seq = (self.twcc_seq + 1) & 0xFFFF
                elements = [(_EXT_TWCC, self.twcc_seq.to_bytes(2, "big"))]
                if not known:
                    elements += [(_EXT_MID, b"0"), (_EXT_RID, LAYERS[layer].rid.encode())]
                header = HEADER.pack(
                    0x90, (0x80 if n == last else 0) | VP8_PT, seq, timestamp, ssrc
                )
                if send(protect(header + _extension_block(elements) + payload)):
                    self.sent += 1
                    if in_window:
                        self.packets_in_window += 1
                else:
                    self.error("send")
            self.layer_seqs[layer] = seq
        if in_window:
            self.sent_in_window += 1
            bump(self.sent_per_second, window.second(sent_ns))

    async def read_feedback(self) -> None:
        """The SFU's RTCP on the send transport: PLI/FIR ask for a key frame on the layer
        they name; a receiver report block means the SFU knows that SSRC."""
        leg = self.send_leg
        peer = leg.peer
        assert peer is not None and peer.srtp is not None
        srtp, sock = peer.srtp, leg.sock
        while True:
            await trio.lowlevel.wait_readable(sock)
            for data in leg.drain():
                if len(data) < 2 or not 128 <= data[0] < 192 or not 192 <= data[1] <= 223:
                    continue  # STUN answers to consent checks
                try:
                    packets = parse_compound_untrusted(srtp.unprotect_rtcp_untrusted(data))
                except (SrtpError, MalformedRtcp):
                    self.error("srtcp")
                    continue
                for packet in packets:
                    if isinstance(packet, PictureLossIndication):
                        self._keyframe_request(packet.media_ssrc)
                    elif isinstance(packet, FullIntraRequest):
                        for ssrc, _ in packet.entries:
                            self._keyframe_request(ssrc)
                    elif isinstance(packet, ReceiverReport):
                        self.acknowledged.update(b.ssrc for b in packet.reports)

    def _keyframe_request(self, ssrc: int) -> None:
        layer = self.ssrc_layer.get(ssrc)
        if layer is not None:
            self.keyframe_requests += 1
            self.keyframe_due[layer] = True

    # --- subscribing -----------------------------------------------------------------

    async def read(self) -> None:
        """Reassemble, decrypt and record every frame on the receive transport, and send
        REMB once a second."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._announce_bandwidth)
            await self._read_frames()
            nursery.cancel_scope.cancel()

    async def _announce_bandwidth(self) -> None:
        while True:
            self.send_remb()
            await trio.sleep(REMB_INTERVAL_S)

    def send_remb(self) -> None:
        """A REMB asking for :attr:`wanted_layer` of every video consumer (once connected)."""
        peer = self.recv_leg.peer
        count = len(self.video_ssrcs)
        if peer is None or peer.srtp is None or not count:
            return
        remb = ReceiverEstimatedMaxBitrate(
            sender_ssrc=self.rtcp_ssrc,
            bitrate=LAYER_BUDGETS[self.wanted_layer] * count,
            ssrcs=self.video_ssrcs,
        )
        self.recv_leg.send(peer.protect_rtcp([remb]))

    async def _read_frames(self) -> None:
        leg = self.recv_leg
        peer = leg.peer
        assert peer is not None and peer.srtp is not None
        srtp, receiver, stats, window = peer.srtp, self.receiver, self.stats, self.stats.window
        assemblers, sock, vp8_types = self.assemblers, leg.sock, self.vp8_payload_types
        heard, frames_by_layer = self.heard_layers, self.frames_by_layer
        last_layer: dict[int, int] = {}
        while True:
            await trio.lowlevel.wait_readable(sock)
            datagrams = leg.drain()
            arrived = time.monotonic_ns()
            now = arrived / 1e9
            self.received_datagrams += len(datagrams)
            if window.holds(arrived):
                self.received_in_window += len(datagrams)
            for data in datagrams:
                second = data[1] if len(data) > 1 else 0
                if not 128 <= data[0] < 192 or 192 <= second <= 223:
                    continue  # STUN answers to consent checks, RTCP
                try:
                    packet = srtp.unprotect_untrusted(data)
                    _, marker_pt, seq, timestamp, ssrc = HEADER.unpack_from(packet)
                    if marker_pt & 0x7F not in vp8_types:
                        continue  # RTX: this harness never NACKs, so never expects any
                    assembler = assemblers.get(ssrc)
                    if assembler is None:
                        assembler = assemblers[ssrc] = FrameAssembler()
                    frame = assembler.push_untrusted(
                        seq, timestamp, bool(marker_pt & 0x80), _rtp_payload(packet)
                    )
                    if frame is None:
                        continue
                    clear = unprotect_frame(receiver, Codec.VP8, frame, now=now)
                    layer, sender, number, sent_ns = read_video_stamp_untrusted(clear)
                except SrtpError:
                    self.error("srtp")
                except DuplicateMessage:
                    stats.duplicate()
                except UnknownSender:
                    stats.before_key += 1
                except (E2EEError, ValueError, struct.error):
                    self.error("undecryptable")
                else:
                    # Frames are numbered alike on every layer: one counts once whichever
                    # layer brought it, so a layer switch that drops frames shows as loss
                    # and one that forwards two layers at once as duplicates.
                    key = stream_key(sender, layer)
                    heard.add(key)
                    switched = key != last_layer.get(sender, key)
                    last_layer[sender] = key
                    if window.holds(sent_ns):
                        frames_by_layer[key] = frames_by_layer.get(key, 0) + 1
                        if switched:
                            self.layer_switches += 1
                            stream = stats.streams.get(sender)
                            if stream is not None and number in stream.seqs:
                                # The new layer's key frame is the same picture the old
                                # layer brought just before: shown again, not duplicated.
                                self.switch_repeats += 1
                                continue
                    stats.record(sender, number, sent_ns, arrived)

    @property
    def broken_frames(self) -> int:
        """Frames dropped at reassembly (a packet missing)."""
        return sum(a.broken for a in self.assemblers.values())

    @property
    def sequence_gaps(self) -> int:
        """Frames whose first RTP sequence number did not follow the stream's last one."""
        return sum(a.sequence_gaps for a in self.assemblers.values())

    @property
    def picture_id_jumps(self) -> int:
        """Frames whose VP8 picture id or TL0PICIDX did not follow the previous frame's."""
        return sum(a.picture_id_jumps for a in self.assemblers.values())
