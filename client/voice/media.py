"""End-to-end protection of media frames inside aiortc: SFrame on every encoded frame.

Every outgoing encoded frame is sealed with :func:`e2ee.media.protect_frame` before RTP
packetization, and every incoming one is opened after depacketization and reassembly
(issue 14). An SFU therefore forwards ``clear codec bytes || SFrame(...)`` and reads only
what :mod:`e2ee.media` leaves in clear — the Opus TOC byte (RFC 6716 §3.1), the VP8 frame
tag and, on key frames, its start code and dimensions (RFC 6386 §9.1). The RTP layer itself
is untouched: the VP8 payload descriptor (RFC 7741 §4.2) and header extensions such as the
RFC 6464 audio level stay readable to the SFU, as forwarding and active-speaker detection
need.

**The seam in aiortc.** aiortc has no insertable-streams API, so the hook replaces two
objects aiortc creates per sender and per receiver, never a module global:

* *Sender.* ``RTCRtpSender._next_encoded_frame`` creates its encoder only when the private
  attribute ``__encoder`` (``_RTCRtpSender__encoder``) is still ``None``, so an encoder
  set there before the first frame is the one used. :class:`ProtectedOpusEncoder`
  subclasses aiortc's ``OpusEncoder``: each payload ``encode``/``pack`` return is one whole
  Opus packet (RFC 7587 §4.2) and is sealed as one frame. :class:`ProtectedVp8Encoder`
  subclasses ``Vp8Encoder`` and overrides ``_packetize(buffer, picture_id)``, which both
  ``encode`` and ``pack`` call with one whole encoded frame: the frame is sealed first and
  then split by aiortc's own packetizer behind clear payload descriptors. Being subclasses,
  they keep what the sender does to its encoder (``target_bitrate`` from REMB, key frames
  on PLI/FIR), and the audio level is still computed from the raw frame.
* *Receiver.* ``RTCRtpReceiver._handle_rtp_packet`` depayloads each packet (for VP8,
  ``vp8_depayload`` strips the descriptor), adds it to the private ``__jitter_buffer``
  (``_RTCRtpReceiver__jitter_buffer``) and queues each frame ``JitterBuffer.add`` returns
  for its decoder thread. :class:`OpeningJitterBuffer` subclasses ``JitterBuffer``; its
  ``add`` opens the assembled frame and returns no frame when it does not open, so the
  decoder only ever sees authenticated frames.

aiortc internals this depends on — the same from 1.9.0 (the oldest release pyproject
allows) to 1.16.0 (tested), so the version range is not pinned: the two private attribute
names above; ``Encoder.encode``/``pack`` returning ``(payloads, timestamp)``;
``Vp8Encoder`` calling ``self._packetize`` once per frame; ``JitterBuffer(capacity,
prefetch, is_video)`` with ``add(packet) -> (pli_flag, JitterFrame | None)`` and the
depayloaded bytes in ``JitterFrame.data``. The failure mode of a future release is kept
closed: :func:`protect_transceiver` raises :class:`MediaHookUnavailable` when an attribute
is missing or an encoder already exists, and :class:`ProtectedVp8Encoder` refuses to
return payloads its ``_packetize`` did not seal. The receiver hook knows its codec from the
media kind (audio: Opus, video: VP8), so the hook also restricts each transceiver's codec
preferences to those; a frame of any other codec fails to open and is dropped.

aiortc sends no simulcast, so an aiortc publisher sends one VP8 encoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiortc
from aiortc import RTCRtpReceiver, RTCRtpSender, RTCRtpTransceiver
from aiortc.codecs.opus import OpusEncoder
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket
from av.frame import Frame
from av.packet import Packet

from client.voice.errors import MediaHookUnavailable
from client.voice.keys import FrameKeys
from e2ee.errors import E2EEError, UnknownSender
from e2ee.media import (
    Codec,
)

__all__ = [
    "FrameKeys",
    "OpeningJitterBuffer",
    "ProtectedOpusEncoder",
    "ProtectedTransceiver",
    "ProtectedVp8Encoder",
    "codec_for_kind",
    "protect_transceiver",
]

# The private attributes the hook replaces (Python name mangling of ``__encoder`` and
# ``__jitter_buffer``); see the module docstring.
_SENDER_ENCODER = "_RTCRtpSender__encoder"
_RECEIVER_JITTER_BUFFER = "_RTCRtpReceiver__jitter_buffer"

_MIME_TYPES = {Codec.OPUS: "audio/opus", Codec.VP8: "video/vp8"}


def codec_for_kind(kind: str) -> Codec:
    """The codec a protected transceiver of this media kind carries."""
    if kind == "audio":
        return Codec.OPUS
    if kind == "video":
        return Codec.VP8
    raise MediaHookUnavailable(f"no protected codec for media of kind {kind!r}")


class ProtectedOpusEncoder(OpusEncoder):
    """aiortc's Opus encoder, sealing each Opus packet before it becomes an RTP payload."""

    def __init__(self, keys: FrameKeys) -> None:
        super().__init__()
        self._keys = keys
        self.frames_protected = 0

    def _seal(self, payloads: list[bytes]) -> list[bytes]:
        sealed = [self._keys.protect(Codec.OPUS, payload) for payload in payloads]
        self.frames_protected += len(sealed)
        return sealed

    def encode(self, frame: Frame, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        """Encode raw audio into sealed Opus packets."""
        payloads, timestamp = super().encode(frame, force_keyframe)
        return self._seal(payloads), timestamp

    def pack(self, packet: Packet[Any]) -> tuple[list[bytes], int]:
        """Seal an already encoded Opus packet."""
        payloads, timestamp = super().pack(packet)
        return self._seal(payloads), timestamp


class ProtectedVp8Encoder(Vp8Encoder):
    """aiortc's VP8 encoder, sealing each whole frame before the VP8 packetizer splits it."""

    def __init__(self, keys: FrameKeys) -> None:
        super().__init__()
        self._keys = keys
        self.frames_protected = 0

    def _packetize(self, buffer: bytes, picture_id: int) -> list[bytes]:  # type: ignore[override]
        # aiortc declares this a classmethod; sealing needs this encoder's keys, and
        # aiortc calls it through the instance, so an instance method overrides it.
        if not buffer:
            return []
        sealed = self._keys.protect(Codec.VP8, buffer)
        self.frames_protected += 1
        return super()._packetize(sealed, picture_id)

    def _checked(self, before: int, result: tuple[list[bytes], int]) -> tuple[list[bytes], int]:
        payloads, _ = result
        if payloads and self.frames_protected == before:
            # aiortc no longer packetizes through _packetize: refuse to send in clear.
            raise MediaHookUnavailable(
                f"aiortc {aiortc.__version__} packetized a VP8 frame without the hook"
            )
        return result

    def encode(self, frame: Frame, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        """Encode a raw picture into RTP payloads carrying one sealed VP8 frame."""
        before = self.frames_protected
        return self._checked(before, super().encode(frame, force_keyframe))

    def pack(self, packet: Packet[Any]) -> tuple[list[bytes], int]:
        """Seal and packetize an already encoded VP8 frame."""
        before = self.frames_protected
        return self._checked(before, super().pack(packet))


class OpeningJitterBuffer(JitterBuffer):
    """aiortc's jitter buffer, opening each reassembled frame before it reaches the decoder.

    A frame that does not open is dropped and counted: in ``frames_before_key`` when its
    sender's key has not arrived yet (media outran its key; expected at joins), in
    ``frames_dropped`` otherwise (a wrong or expired key, a replay, anything but a sealed
    frame of the expected codec).
    """

    def __init__(
        self, keys: FrameKeys, codec: Codec, *, capacity: int, prefetch: int, is_video: bool
    ) -> None:
        super().__init__(capacity, prefetch=prefetch, is_video=is_video)
        self._keys = keys
        self.codec = codec
        self.frames_opened = 0
        self.frames_dropped = 0
        self.frames_before_key = 0
        # Sender index of the last frame opened: who is speaking on this stream.
        self.sender_index: int | None = None

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        """Add a depayloaded packet; return a PLI flag and the next opened frame, if any."""
        pli_flag, frame = super().add(packet)
        if frame is None:
            return pli_flag, None
        try:
            sender_index, frame.data = self._keys.open_untrusted(self.codec, frame.data)
        except UnknownSender:
            self.frames_before_key += 1
            return pli_flag, None
        except E2EEError:
            self.frames_dropped += 1
            return pli_flag, None
        self.frames_opened += 1
        self.sender_index = sender_index
        return pli_flag, frame


@dataclass(frozen=True, slots=True)
class ProtectedTransceiver:
    """The hooks installed on one transceiver, with their counters."""

    transceiver: RTCRtpTransceiver
    codec: Codec
    encoder: ProtectedOpusEncoder | ProtectedVp8Encoder
    jitter_buffer: OpeningJitterBuffer


def _restrict_codecs(transceiver: RTCRtpTransceiver, codec: Codec) -> None:
    wanted = {_MIME_TYPES[codec], f"{transceiver.kind}/rtx"}
    capabilities = RTCRtpSender.getCapabilities(transceiver.kind).codecs
    transceiver.setCodecPreferences([c for c in capabilities if c.mimeType.lower() in wanted])


def _check_encoder_slot(sender: RTCRtpSender) -> None:
    state = vars(sender)
    if _SENDER_ENCODER not in state:
        raise MediaHookUnavailable(
            f"aiortc {aiortc.__version__}'s RTCRtpSender has no encoder slot to protect"
        )
    if state[_SENDER_ENCODER] is not None:
        raise MediaHookUnavailable("this sender already has an encoder: install protection first")


def _install_jitter_buffer(
    receiver: RTCRtpReceiver, keys: FrameKeys, codec: Codec
) -> OpeningJitterBuffer:
    current = vars(receiver).get(_RECEIVER_JITTER_BUFFER)
    prefetch = getattr(current, "_prefetch", None)
    is_video = getattr(current, "_is_video", None)
    if (
        not isinstance(current, JitterBuffer)
        or not isinstance(prefetch, int)
        or not isinstance(is_video, bool)
    ):
        raise MediaHookUnavailable(
            f"aiortc {aiortc.__version__}'s RTCRtpReceiver has no jitter buffer to protect"
        )
    if isinstance(current, OpeningJitterBuffer) or receiver.getSynchronizationSources():
        raise MediaHookUnavailable("this receiver already received media: install protection first")
    # Same sizing as aiortc chose for this kind of media.
    buffer = OpeningJitterBuffer(
        keys, codec, capacity=current.capacity, prefetch=prefetch, is_video=is_video
    )
    setattr(receiver, _RECEIVER_JITTER_BUFFER, buffer)
    return buffer


def protect_transceiver(transceiver: RTCRtpTransceiver, keys: FrameKeys) -> ProtectedTransceiver:
    """Seal what ``transceiver`` sends and open what it receives, with ``keys``.

    Call it before media flows: as an offerer right after ``addTransceiver``, as an
    answerer after ``setRemoteDescription`` and before ``setLocalDescription``. It limits
    the transceiver's codecs to Opus (audio) or VP8 (video); an offerer's restriction
    shapes the offer, an answerer's applies from the next negotiation, so an answerer
    should add its transceivers (and protect them) before applying the remote offer when
    the offer may list other codecs first.
    """
    codec = codec_for_kind(transceiver.kind)
    encoder: ProtectedOpusEncoder | ProtectedVp8Encoder = (
        ProtectedOpusEncoder(keys) if codec is Codec.OPUS else ProtectedVp8Encoder(keys)
    )
    # The sender is checked before the receiver is changed, so a failure changes nothing.
    _check_encoder_slot(transceiver.sender)
    jitter_buffer = _install_jitter_buffer(transceiver.receiver, keys, codec)
    setattr(transceiver.sender, _SENDER_ENCODER, encoder)
    _restrict_codecs(transceiver, codec)
    return ProtectedTransceiver(transceiver, codec, encoder, jitter_buffer)
