"""A synthetic voice participant: the real account, gateway and WebRTC flow, cheaply.

Each participant is an account registered through the API (with a real identity key and
signed prekeys, and the proof of work the anonymous routes ask for), a gateway connection
(IDENTIFY, heartbeats), the voice join of docs/voice.md (op 4 → ``VOICE_SERVER_UPDATE`` →
op 12 with an Opus offer it writes → ``VOICE_PUBLISH_ANSWER``; every
``VOICE_SUBSCRIBE_OFFER`` → op 13), and two transports: ICE checks, DTLS client and SRTP
through :class:`sfu.synthetic_peer.SyntheticPeer`, each on one UDP socket of its own.
Frames are SFrame-protected with the participant's :class:`e2ee.media.MediaKeySender` and
decrypted with its :class:`e2ee.media.MediaKeyReceiver` (``e2ee.media.protect_frame`` and
``unprotect_frame``, as the SDK does).

Sockets are plain non-blocking sockets: a send is one ``sendto`` without an await, and a
reader waits for readability once and then drains every queued datagram, so one process
can carry hundreds of participants. A participant that is not *measured* (``--measure``)
does everything up to a connected receive transport and its consent checks, and then never
reads that socket: the kernel drops what overflows its minimal receive buffer, so the
harness spends no CPU on media nobody measures.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from client import _prekeys
from client.api import ControlApi
from client.device_list import SignedDeviceList
from contract.gateway import Op
from contract.signing import register_message
from e2ee import IdentityKeyPair, PreKeyStore
from e2ee.errors import DuplicateMessage, E2EEError, UnknownSender
from e2ee.media import (
    Codec,
    MediaKey,
    MediaKeyReceiver,
    MediaKeySender,
    frame_sender_index,
    protect_frame,
    unprotect_frame,
)
from loadtest.metrics import ReceiverStats, Window, bump, frame_bytes, read_stamp_untrusted
from sfu.dtls import Certificate
from sfu.errors import SfuError, SrtpError
from sfu.ice import new_credentials
from sfu.rtp import AUDIO_LEVEL
from sfu.sdp import SessionDescription
from sfu.synthetic_peer import SyntheticPeer
from turn.stun import MessageClass

__all__ = ["Account", "Gateway", "KeyDirectory", "Leg", "VoiceParticipant", "register_account"]

#: The SFU closes a transport without a consent check for 30 s (RFC 7675); browsers check
#: every 5 s or so.
CONSENT_INTERVAL_S = 5.0
#: ICE connectivity checks are paced at Ta = 50 ms (RFC 8445 §14.2).
CHECK_INTERVAL_S = 0.05
_RTP_HEADER = struct.Struct("!BBHII")
#: One-byte header extension (RFC 8285) holding the audio level (RFC 6464) under id 1.
_LEVEL_EXTENSION = struct.Struct("!HHBBH")
#: Receive buffer of a measured receiver's socket (the kernel doubles it, capped by
#: ``net.core.rmem_max``): bursts while the harness is busy with others wait here.
MEASURED_RCVBUF = 1 << 20
#: Characters of an error's detail a report keeps.
DETAIL_CHARS = 200


@dataclass
class Account:
    """A registered user with its one device and session token."""

    handle: str
    user_id: str
    device_id: str
    token: str


async def register_account(server_url: str, handle: str) -> Account:
    """Register ``handle`` as a client does (``client.account``), with a real identity and
    signed prekeys but no one-time prekeys (the participant reads no pairwise message), and
    the one-device list its account key signs, as ``client.trust`` uploads it (so an SDK
    client in the room, ``--aiortc``, trusts the device and sends it its media key)."""
    identity = IdentityKeyPair.generate()
    prekeys = PreKeyStore.generate(identity)
    api = ControlApi(server_url)
    try:
        challenge = await api.challenge()
        body = {
            "handle": handle,
            "identity_key": identity.public,
            "challenge": challenge,
            "signature": identity.sign(register_message(challenge, identity.public, handle)),
            **_prekeys.directory_prekeys(identity, prekeys, [], []),
        }
        answer = await api.register(body)
        user_id, token = answer["user"]["id"], answer["token"]
        api.token = token
        account_key = IdentityKeyPair.generate()
        signed = SignedDeviceList.sign(account_key, user_id, 1, [identity.public])
        await api.put_device_list(signed, account_key.public)
    finally:
        await api.aclose()
    return Account(handle, user_id, answer["device"]["id"], token)


def transport_from_sdp(text: str) -> dict[str, Any]:
    """What :class:`SyntheticPeer` needs, read from the SFU's SDP (answer or offer)."""
    sdp = SessionDescription.parse_untrusted(text)
    media = next(m for m in sdp.media if m.port != 0)
    fingerprints = media.fingerprints or sdp.fingerprints
    parts = media.candidates[0].split()
    return {
        "ice_parameters": {"username_fragment": media.ice_ufrag, "password": media.ice_pwd},
        "dtls_parameters": {
            "fingerprints": [{"algorithm": a, "value": v} for a, v in fingerprints]
        },
        "ice_candidates": [{"ip": parts[4], "port": int(parts[5])}],
    }


class Leg:
    """One transport (send or receive) on its own non-blocking UDP socket."""

    def __init__(
        self, certificate: Certificate, bind_ip: str, rcvbuf: int = MEASURED_RCVBUF
    ) -> None:
        self.certificate = certificate
        self.ufrag, self.pwd = new_credentials()
        self.peer: SyntheticPeer | None = None
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.bind((bind_ip, 0))
        self.target: tuple[str, int] = ("", 0)
        self.send_errors = 0

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def stop_reading(self) -> None:
        """Shrink the receive buffer to the kernel's minimum: from now on the socket is not
        read, and the kernel drops what does not fit (it costs this process nothing)."""
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)
        self.drain()

    def send(self, datagram: bytes) -> bool:
        """One datagram to the SFU, without waiting; ``False`` if the kernel refused it."""
        try:
            self.sock.sendto(datagram, self.target)
        except OSError:
            self.send_errors += 1
            return False
        return True

    def drain(self) -> list[bytes]:
        """Every datagram queued on the socket now."""
        out: list[bytes] = []
        while True:
            try:
                out.append(self.sock.recv(2048))
            except (BlockingIOError, InterruptedError):
                return out

    async def connect(
        self, sfu_sdp: str, within: float = 15.0, *, dtls_server: bool = False
    ) -> None:
        """ICE, then DTLS, against the transport the SFU's SDP describes, as a browser
        does: connectivity checks paced every :data:`CHECK_INTERVAL_S` until one succeeds
        (until the SFU has our answer, which travels through control, it ignores them),
        then the DTLS handshake with its retransmission timer (as the server when the
        SFU answered ``a=setup:active``)."""
        peer = self.peer = SyntheticPeer(
            transport_from_sdp(sfu_sdp), self.certificate, dtls_server=dtls_server
        )
        # The SDP carries our ICE credentials; SyntheticPeer draws its own for the checks'
        # USERNAME, which must be the ones the SFU was told.
        peer.ufrag, peer.pwd = self.ufrag, self.pwd
        self.target = peer.remote_address
        with trio.fail_after(within):
            while not any(m.message_class == MessageClass.SUCCESS for m in peer.stun):
                self.send(peer.binding_request())
                with trio.move_on_after(CHECK_INTERVAL_S):
                    await trio.lowlevel.wait_readable(self.sock)
                for data in self.drain():
                    # As the DTLS server, the remote's ClientHello may come with the check's
                    # answer.
                    for reply in peer.receive(data, trio.current_time()):
                        self.send(reply)
            for datagram in peer.start_dtls(trio.current_time()):
                self.send(datagram)
            while not peer.connected:
                with trio.move_on_after(CHECK_INTERVAL_S):
                    await trio.lowlevel.wait_readable(self.sock)
                for data in self.drain():
                    for reply in peer.receive(data, trio.current_time()):
                        self.send(reply)
                for datagram in peer.handle_timeout(trio.current_time()):
                    self.send(datagram)
        peer.stun.clear()

    def consent(self) -> None:
        """A consent check (RFC 7675) on the selected pair."""
        if self.peer is not None:
            self.send(self.peer.binding_request())


class Gateway:
    """One identified gateway connection, handing each dispatch to ``on_dispatch``."""

    def __init__(
        self, ws: WebSocketConnection, on_dispatch: Callable[[str, dict[str, Any]], None]
    ) -> None:
        self.ws = ws
        self.on_dispatch = on_dispatch
        self.interval = 41.25
        self.ready: dict[str, Any] = {}
        self.closed: str | None = None

    async def identify(self, token: str) -> None:
        """HELLO, IDENTIFY, and READY."""
        hello = _decode(await self.ws.get_message())
        self.interval = hello["d"]["heartbeat_interval"] / 1000
        await self.send(Op.IDENTIFY, {"token": token})
        while True:
            frame = _decode(await self.ws.get_message())
            if frame.get("op") == Op.DISPATCH and frame.get("t") == "READY":
                self.ready = frame["d"]
                return

    async def run(self) -> None:
        """Read frames and heartbeat until the connection closes."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._heartbeat)
            try:
                while True:
                    frame = _decode(await self.ws.get_message())
                    if frame.get("op") == Op.DISPATCH:
                        self.on_dispatch(frame["t"], frame["d"])
            except ConnectionClosed as exc:
                code = exc.reason.code if exc.reason is not None else "unknown"
                self.closed = f"gateway_closed:{code}"
            nursery.cancel_scope.cancel()

    async def _heartbeat(self) -> None:
        while True:
            await trio.sleep(self.interval * 0.8)
            with contextlib.suppress(ConnectionClosed):
                await self.send(Op.HEARTBEAT, {})

    async def send(self, op: int, d: dict[str, Any]) -> None:
        """One client frame."""
        await self.ws.send_message(msgpack.packb({"op": op, "d": d}))


@dataclass
class KeyDirectory:
    """Media keys of the room's participants, by device id.

    Stands in for the pairwise MEDIA_KEY messages (docs/loadtest.md says exactly what it
    replaces): a participant installs another's key only once a ``VOICE_STATE_UPDATE`` from
    the gateway names that device with the same sender index, as the SDK does.
    """

    keys: dict[str, MediaKey] = field(default_factory=dict)
    listeners: list[VoiceParticipant] = field(default_factory=list)

    def publish(self, device_id: str, key: MediaKey) -> None:
        """A participant's new key: delivered to everyone who has seen its voice state."""
        self.keys[device_id] = key
        for participant in self.listeners:
            participant.try_install(device_id)


class VoiceParticipant:
    """One synthetic participant in the room (see the module docstring)."""

    def __init__(
        self,
        number: int,
        account: Account,
        *,
        keys: KeyDirectory,
        stats: ReceiverStats,
        bind_ip: str,
        measured: bool = True,
    ) -> None:
        self.number = number
        #: Whether this participant decrypts and measures what it receives (``--measure``).
        self.measured = measured
        #: Which room of the run (``many-rooms``) and the participant's place in it.
        self.room = 0
        self.rank = number
        self.account = account
        self.keys = keys
        self.stats = stats
        self.certificate = Certificate.generate()
        self.send_leg = Leg(self.certificate, bind_ip)
        self.recv_leg = Leg(self.certificate, bind_ip)
        self.ssrc = secrets.randbits(32) or 1
        self.gateway: Gateway | None = None
        self.guild_id = ""
        self.channel_id = ""
        self.voice_session_id = ""
        self.sender: MediaKeySender | None = None
        self.receiver = MediaKeyReceiver()
        #: Voice states seen: device id → (user id, sender index).
        self.states: dict[str, tuple[str, int]] = {}
        self.installed: set[str] = set()
        self.server_update = trio.Event()
        self.publish_answer: dict[str, Any] | None = None
        self.answered = trio.Event()
        self.subscribe_offer: dict[str, Any] | None = None
        self.offer_arrived = trio.Event()
        #: Active m-sections of the latest answered subscribe offer, and the devices its
        #: ``consumers`` list says they carry.
        self.consuming = 0
        self.consumed_devices: frozenset[str] = frozenset()
        #: When the latest subscribe offer arrived (monotonic ns; 0: none yet).
        self.last_offer_ns = 0
        self.recv_connected = trio.Event()
        self.join_started_ns = 0
        #: When each step of the join happened (monotonic ns), for the report's breakdown.
        self.marks: dict[str, int] = {}
        self.seq = 0
        self.sent = 0
        self.sent_in_window = 0
        #: Frames sent, by window second.
        self.sent_per_second: list[int] = []
        self.received_datagrams = 0
        self.errors: dict[str, int] = {}
        #: The first detail seen of each error kind (a server's message, an exception's
        #: text), so a report says why, not only how often.
        self.error_details: dict[str, str] = {}
        #: Frames from full aiortc participants (``--aiortc``; real Opus, no stamp), by
        #: their sender index: the harness adds an index before its key is published.
        self.foreign: dict[int, int] = {}

    # --- gateway ------------------------------------------------------------------

    def error(self, kind: str, detail: str | None = None) -> None:
        """Count one error of ``kind``; keep the first ``detail`` of each kind."""
        self.errors[kind] = self.errors.get(kind, 0) + 1
        if detail and kind not in self.error_details:
            self.error_details[kind] = detail[:DETAIL_CHARS]

    def on_dispatch(self, t: str, d: dict[str, Any]) -> None:
        """Dispatches this participant acts on; the rest are read and dropped."""
        if t == "VOICE_STATE_UPDATE":
            self._voice_state(d)
        elif t == "VOICE_SERVER_UPDATE":
            if self.voice_session_id and d["voice_session_id"] != self.voice_session_id:
                self.error("server_update_again")
            self.voice_session_id = d["voice_session_id"]
            self.marks.setdefault("server_update", time.monotonic_ns())
            if self.sender is None:
                self.sender = MediaKeySender(int(d["sender_index"]))
                self.keys.publish(self.account.device_id, self.sender.current_key())
            self.server_update.set()
        elif t == "VOICE_PUBLISH_ANSWER":
            self.publish_answer = d
            self.marks.setdefault("publish_answer", time.monotonic_ns())
            self.answered.set()
        elif t == "VOICE_SUBSCRIBE_OFFER":
            self.subscribe_offer = d
            self.last_offer_ns = time.monotonic_ns()
            self.marks.setdefault("subscribe_offer", self.last_offer_ns)
            self.offer_arrived.set()
        elif t == "VOICE_ERROR":
            self.error(f"voice_error:{d.get('code')}", str(d.get("message", "")))

    def _voice_state(self, d: dict[str, Any]) -> None:
        device_id = d.get("device_id")
        if not isinstance(device_id, str) or device_id == self.account.device_id:
            return
        if d.get("channel_id") != self.channel_id or d.get("sender_index") is None:
            self.states.pop(device_id, None)
            return
        self.states[device_id] = (str(d["user_id"]), int(d["sender_index"]))
        self.try_install(device_id)

    def try_install(self, device_id: str) -> None:
        """Install ``device_id``'s key if both its voice state and its key are known."""
        if not self.measured:
            return  # it decrypts nothing
        state = self.states.get(device_id)
        key = self.keys.keys.get(device_id)
        if state is None or key is None or device_id in self.installed:
            return
        user_id, sender_index = state
        if key.sender_index != sender_index:
            self.error("key_index_mismatch")
            return
        self.receiver.install(key, user_id=user_id, device_id=device_id, now=time.monotonic())
        self.installed.add(device_id)

    # --- the join flow --------------------------------------------------------------

    def offer_head(self, kind: str, formats: str) -> list[str]:
        """The start of a publish offer with one m-section (mid 0) of ``kind``: session
        lines, the m-line and the send transport's ICE and DTLS parameters."""
        return [
            "v=0",
            f"o=- {self.number + 1} 1 IN IP4 127.0.0.1",
            "s=-",
            "t=0 0",
            "a=group:BUNDLE 0",
            "a=msid-semantic: WMS stream",
            f"m={kind} 9 UDP/TLS/RTP/SAVPF {formats}",
            "c=IN IP4 0.0.0.0",
            f"a=ice-ufrag:{self.send_leg.ufrag}",
            f"a=ice-pwd:{self.send_leg.pwd}",
            f"a=fingerprint:sha-256 {self.certificate.fingerprint()}",
            "a=setup:actpass",
            "a=mid:0",
        ]

    def publish_offer(self) -> str:
        """A sendonly Opus offer with the audio level extension (as Chromium sends)."""
        return "\r\n".join(
            [
                *self.offer_head("audio", "111"),
                f"a=extmap:1 {AUDIO_LEVEL}",
                "a=sendonly",
                "a=msid:stream mic",
                "a=rtcp-mux",
                "a=rtpmap:111 opus/48000/2",
                "a=fmtp:111 minptime=10;useinbandfec=1;usedtx=1",
                f"a=ssrc:{self.ssrc} cname:loadtest",
                "",
            ]
        )

    def subscribe_answer(self, offer: str) -> tuple[str, int]:
        """The answer to the SFU's offer, receiving every active m-section with the codecs
        it offers (DTLS client), and how many m-sections are active."""
        sdp = SessionDescription.parse_untrusted(offer)
        active = [m for m in sdp.media if m.port != 0]
        lines = [
            "v=0",
            f"o=- {self.number + 1} 2 IN IP4 127.0.0.1",
            "s=-",
            "t=0 0",
            f"a=group:BUNDLE {' '.join(str(m.mid) for m in active)}",
            f"a=fingerprint:sha-256 {self.certificate.fingerprint()}",
        ]
        for media in sdp.media:
            lines += [
                f"m={media.kind} {9 if media.port else 0} UDP/TLS/RTP/SAVPF "
                + " ".join(media.formats),
                "c=IN IP4 0.0.0.0",
                f"a=ice-ufrag:{self.recv_leg.ufrag}",
                f"a=ice-pwd:{self.recv_leg.pwd}",
                "a=setup:active",
                f"a=mid:{media.mid}",
                "a=recvonly" if media.port else "a=inactive",
                "a=rtcp-mux",
            ]
            for codec in media.codecs:
                channels = f"/{codec.channels}" if codec.channels else ""
                lines.append(
                    f"a=rtpmap:{codec.payload_type} {codec.name}/{codec.clock_rate}{channels}"
                )
                if "apt" in codec.parameters:
                    lines.append(f"a=fmtp:{codec.payload_type} apt={codec.parameters['apt']}")
        return "\r\n".join([*lines, ""]), len(active)

    async def enter(self, within: float, *, self_mute: bool = False) -> None:
        """op 4 into the channel; returns at its ``VOICE_SERVER_UPDATE``."""
        assert self.gateway is not None
        self.join_started_ns = time.monotonic_ns()
        await self.gateway.send(
            Op.VOICE_STATE,
            {
                "guild_id": self.guild_id,
                "channel_id": self.channel_id,
                "self_mute": self_mute,
                "self_deaf": False,
            },
        )
        with trio.fail_after(within):
            await self.server_update.wait()

    async def join(self, within: float) -> None:
        """op 4, then publish: returns once the send transport is connected."""
        assert self.gateway is not None
        await self.enter(within)
        with trio.fail_after(within):
            await self.gateway.send(
                Op.VOICE_PUBLISH,
                {"voice_session_id": self.voice_session_id, "sdp_offer": self.publish_offer()},
            )
            await self.answered.wait()
        assert self.publish_answer is not None
        await self.send_leg.connect(self.publish_answer["sdp_answer"], within)
        self.marks["send_connected"] = time.monotonic_ns()

    async def subscribe(
        self, within: float, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Answer every ``VOICE_SUBSCRIBE_OFFER`` (the latest when several queued up); the
        first answer with something to consume starts connecting the receive transport
        (bounded by ``within``) and then reading it, while later offers are answered."""
        assert self.gateway is not None
        task_status.started()
        async with trio.open_nursery() as nursery:
            try:
                while True:
                    await self.offer_arrived.wait()
                    self.offer_arrived = trio.Event()
                    offer = self.subscribe_offer
                    assert offer is not None
                    answer, active = self.subscribe_answer(offer["sdp_offer"])
                    await self.gateway.send(
                        Op.VOICE_SUBSCRIBE_ANSWER,
                        {"voice_session_id": offer["voice_session_id"], "sdp_answer": answer},
                    )
                    self.consuming = active
                    self.consumed_devices = _consumed_devices_untrusted(offer.get("consumers"))
                    if "subscribe_answered" not in self.marks and active:
                        self.marks["subscribe_answered"] = time.monotonic_ns()
                        nursery.start_soon(self._receive, offer["sdp_offer"], within)
            except (ConnectionClosed, SfuError, ValueError, KeyError) as exc:
                self.error(f"subscribe_failed:{type(exc).__name__}", str(exc))

    async def _receive(self, sfu_sdp: str, within: float) -> None:
        try:
            await self.recv_leg.connect(sfu_sdp, within)
        except (trio.TooSlowError, OSError, SfuError, ValueError, KeyError) as exc:
            self.error(f"recv_connect_failed:{type(exc).__name__}", str(exc))
            return
        self.marks["recv_connected"] = time.monotonic_ns()
        self.recv_connected.set()
        if self.measured:
            await self.read()
        else:
            self.recv_leg.stop_reading()

    async def read(self) -> None:
        """Decrypt every datagram on the receive transport and record its stamp."""
        leg = self.recv_leg
        peer = leg.peer
        assert peer is not None and peer.srtp is not None
        srtp, receiver, stats, foreign = peer.srtp, self.receiver, self.stats, self.foreign
        sock = leg.sock
        while True:
            await trio.lowlevel.wait_readable(sock)
            datagrams = leg.drain()
            arrived = time.monotonic_ns()
            now = arrived / 1e9
            self.received_datagrams += len(datagrams)
            for data in datagrams:
                second = data[1] if len(data) > 1 else 0
                if not 128 <= data[0] < 192 or 192 <= second <= 223:
                    continue  # STUN answers to consent checks, RTCP
                try:
                    payload = _rtp_payload(srtp.unprotect_untrusted(data))
                    frame = unprotect_frame(receiver, Codec.OPUS, payload, now=now)
                    if foreign:
                        index = frame_sender_index(Codec.OPUS, payload)
                        if index in foreign:
                            foreign[index] += 1
                            continue
                    sender, seq, sent_ns = read_stamp_untrusted(frame)
                except SrtpError:
                    self.error("srtp")
                except DuplicateMessage:
                    stats.duplicate()
                except UnknownSender:
                    stats.before_key += 1
                except (E2EEError, ValueError):
                    self.error("undecryptable")
                else:
                    stats.record(sender, seq, sent_ns, arrived)

    async def keep_consent(self) -> None:
        """Consent checks on both transports for as long as the participant lives."""
        while True:
            await trio.sleep(CONSENT_INTERVAL_S)
            self.send_leg.consent()
            self.recv_leg.consent()

    def send_frame(self, *, comfort: bool, window: Window) -> None:
        """One SFrame-protected, SRTP-protected frame; no await."""
        peer = self.send_leg.peer
        if peer is None or self.sender is None:
            return
        self.seq += 1
        sent_ns = time.monotonic_ns()
        frame = frame_bytes(self.number, self.seq, sent_ns, comfort=comfort)
        payload = protect_frame(self.sender.sframe, Codec.OPUS, frame)
        level = 127 if comfort else 30
        header = _RTP_HEADER.pack(
            0x90, 111, self.seq & 0xFFFF, (960 * self.seq) & 0xFFFFFFFF, self.ssrc
        ) + _LEVEL_EXTENSION.pack(0xBEDE, 1, 0x10, level, 0)
        if self.send_leg.send(peer.protect(header + payload)):
            self.sent += 1
            if window.holds(sent_ns):
                self.sent_in_window += 1
                bump(self.sent_per_second, window.second(sent_ns))
        else:
            self.error("send")

    def close(self) -> None:
        """Close both sockets."""
        self.send_leg.close()
        self.recv_leg.close()


def _consumed_devices_untrusted(consumers: Any) -> frozenset[str]:
    """The device ids a ``VOICE_SUBSCRIBE_OFFER``'s ``consumers`` list names (absent: none,
    as docs/voice.md allows)."""
    if consumers is None:
        return frozenset()
    if not isinstance(consumers, list):
        raise ValueError("consumers must be a list")
    devices = set()
    for entry in consumers:
        device_id = entry.get("device_id") if isinstance(entry, dict) else None
        if not isinstance(device_id, str):
            raise ValueError("a consumer without a device id")
        devices.add(device_id)
    return frozenset(devices)


def _decode(message: str | bytes) -> Any:
    """A gateway frame (msgpack, always binary)."""
    if isinstance(message, str):
        raise ValueError("the gateway sent a text frame")
    return msgpack.unpackb(message)


def _rtp_payload(packet: bytes) -> bytes:
    """The payload of a clear RTP packet (CSRCs, header extension and padding skipped)."""
    first = packet[0]
    pos = 12 + 4 * (first & 0x0F)
    if first & 0x10:
        if len(packet) < pos + 4:
            raise ValueError("RTP extension header truncated")
        pos += 4 + 4 * int.from_bytes(packet[pos + 2 : pos + 4], "big")
    end = len(packet) - (packet[-1] if first & 0x20 else 0)
    if end <= pos:
        raise ValueError("RTP packet without payload")
    return packet[pos:end]
