"""Voice integration helpers: a real SFU node dialling a real control process, a gateway
client speaking raw frames, and SDP-speaking synthetic WebRTC endpoints (``sfu.synthetic_peer``
does ICE, DTLS and SRTP; this module writes and reads the SDP around it)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from loadtest.participant import transport_from_sdp
from sfu.dtls import Certificate
from sfu.ice import new_credentials
from sfu.rtp import AUDIO_LEVEL, RtpPacket
from sfu.sdp import SessionDescription
from sfu.synthetic_peer import SyntheticPeer

REPO = Path(__file__).resolve().parents[2]


class Gateway:
    """One identified gateway connection; every dispatch it receives is kept in order."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.dispatches: list[tuple[str, dict[str, Any]]] = []
        #: HEARTBEAT_ACKs received so far, and the server's close code once it closed.
        self.acks = 0
        self.close_code: int | None = None
        self.ready: dict[str, Any] = {}
        self._changed = trio.Condition()

    @classmethod
    async def open(cls, nursery: trio.Nursery, ws: WebSocketConnection, token: str) -> Gateway:
        """IDENTIFY on ``ws`` and keep reading in ``nursery``."""
        gateway = cls(ws)
        msgpack.unpackb(await ws.get_message())  # HELLO
        await ws.send_message(msgpack.packb({"op": 2, "d": {"token": token}}))
        nursery.start_soon(gateway._read)
        gateway.ready = await gateway.wait("READY")
        return gateway

    async def _read(self) -> None:
        try:
            await self._read_frames()
        except ConnectionClosed as closed:
            async with self._changed:
                self.close_code = closed.reason.code
                self._changed.notify_all()

    async def _read_frames(self) -> None:
        while True:
            frame = msgpack.unpackb(await self.ws.get_message())
            if frame.get("op") == 0:
                async with self._changed:
                    self.dispatches.append((frame["t"], frame["d"]))
                    self._changed.notify_all()
            elif frame.get("op") == 11:
                async with self._changed:
                    self.acks += 1
                    self._changed.notify_all()

    async def heartbeats(self, every: float) -> None:
        """Send HEARTBEAT every ``every`` seconds until the connection closes."""
        with contextlib.suppress(ConnectionClosed):
            while True:
                await self.ws.send_message(msgpack.packb({"op": 1, "d": None}))
                await trio.sleep(every)

    async def until(self, condition: Callable[[], bool], within: float = 15.0) -> None:
        """Until ``condition`` holds (checked at each frame received, and at the close)."""
        with trio.fail_after(within):
            async with self._changed:
                while not condition():
                    await self._changed.wait()

    async def send(self, op: int, d: dict[str, Any]) -> None:
        """Send one client frame."""
        await self.ws.send_message(msgpack.packb({"op": op, "d": d}))

    async def wait(
        self,
        t: str,
        match: Callable[[dict[str, Any]], bool] = lambda d: True,
        *,
        within: float = 15.0,
        after: int = 0,
    ) -> dict[str, Any]:
        """The first dispatch ``t`` (from index ``after`` on) that ``match`` accepts."""
        with trio.fail_after(within):
            async with self._changed:
                while True:
                    for name, d in self.dispatches[after:]:
                        if name == t and match(d):
                            return d
                    await self._changed.wait()

    def mark(self) -> int:
        """An index to wait for dispatches after (see :meth:`wait`)."""
        return len(self.dispatches)


class VoicePeer:
    """One device's send or receive transport as a browser would run it, over loopback."""

    def __init__(self) -> None:
        self.certificate = Certificate.generate()
        self.ufrag, self.pwd = new_credentials()
        self.peer: SyntheticPeer | None = None
        self.sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._arrived = trio.Condition()

    def publish_offer(self, ssrc: int) -> str:
        """A sendonly Opus offer with the audio level extension (as Chromium sends)."""
        fingerprint = self.certificate.fingerprint()
        return "\r\n".join(
            [
                "v=0",
                "o=- 1 1 IN IP4 127.0.0.1",
                "s=-",
                "t=0 0",
                "a=group:BUNDLE 0",
                "a=msid-semantic: WMS stream",
                "m=audio 9 UDP/TLS/RTP/SAVPF 111",
                "c=IN IP4 0.0.0.0",
                f"a=ice-ufrag:{self.ufrag}",
                f"a=ice-pwd:{self.pwd}",
                f"a=fingerprint:sha-256 {fingerprint}",
                "a=setup:actpass",
                "a=mid:0",
                f"a=extmap:1 {AUDIO_LEVEL}",
                "a=sendonly",
                "a=msid:stream mic",
                "a=rtcp-mux",
                "a=rtpmap:111 opus/48000/2",
                "a=fmtp:111 minptime=10;useinbandfec=1",
                f"a=ssrc:{ssrc} cname:peer",
                "",
            ]
        )

    def subscribe_answer(self, offer: str) -> str:
        """Answer the SFU's offer, receiving every active m-section (DTLS client)."""
        sdp = SessionDescription.parse_untrusted(offer)
        fingerprint = self.certificate.fingerprint()
        mids = [m.mid for m in sdp.media if m.port != 0]
        lines = [
            "v=0",
            "o=- 2 1 IN IP4 127.0.0.1",
            "s=-",
            "t=0 0",
            f"a=group:BUNDLE {' '.join(str(m) for m in mids)}",
            f"a=fingerprint:sha-256 {fingerprint}",
        ]
        for media in sdp.media:
            lines += [
                f"m=audio {9 if media.port else 0} UDP/TLS/RTP/SAVPF {media.formats[0]}",
                "c=IN IP4 0.0.0.0",
                f"a=ice-ufrag:{self.ufrag}",
                f"a=ice-pwd:{self.pwd}",
                "a=setup:active",
                f"a=mid:{media.mid}",
                "a=recvonly" if media.port else "a=inactive",
                "a=rtcp-mux",
                f"a=rtpmap:{media.formats[0]} opus/48000/2",
            ]
        return "\r\n".join([*lines, ""])

    async def connect(self, sfu_sdp: str) -> None:
        """ICE and DTLS against the transport the SFU's SDP describes."""
        self.peer = SyntheticPeer(transport_from_sdp(sfu_sdp), self.certificate)
        await self.sock.bind(("127.0.0.1", 0))
        target = self.peer.remote_address
        await self.sock.sendto(self.peer.binding_request(), target)
        for datagram in self.peer.start_dtls(trio.current_time()):
            await self.sock.sendto(datagram, target)
        # The answer travels through the gateway and control to the SFU while these go
        # straight to it: until the SFU knows this peer it drops them, so keep checking and
        # let DTLS retransmit, as a browser's ICE agent and DTLS stack do.
        with trio.fail_after(10):
            while not self.peer.connected:
                with trio.move_on_after(0.2) as idle:
                    data, _ = await self.sock.recvfrom(2048)
                    for reply in self.peer.receive(data, trio.current_time()):
                        await self.sock.sendto(reply, target)
                if idle.cancelled_caught:
                    await self.sock.sendto(self.peer.binding_request(), target)
                    for datagram in self.peer.handle_timeout(trio.current_time()):
                        await self.sock.sendto(datagram, target)

    async def send_audio(self, ssrc: int, seq: int, level: int = 20) -> None:
        """One SRTP-protected Opus-sized packet with an audio level (−dBov)."""
        assert self.peer is not None
        packet = RtpPacket(
            111, seq & 0xFFFF, 960 * seq, ssrc, extensions={1: bytes([level])}, payload=b"x" * 80
        )
        await self.sock.sendto(self.peer.protect(packet.serialize()), self.peer.remote_address)

    async def keep_alive(self) -> None:
        """A consent check (RFC 7675): the SFU closes transports that stop sending them."""
        assert self.peer is not None
        await self.sock.sendto(self.peer.binding_request(), self.peer.remote_address)

    def received(self) -> int:
        """RTP packets received and decrypted so far."""
        return len(self.peer.rtp) if self.peer is not None else 0

    async def pump(self) -> None:
        """Read datagrams from the SFU forever (run in a nursery)."""
        assert self.peer is not None
        while True:
            data, _ = await self.sock.recvfrom(2048)
            self.peer.receive(data, trio.current_time())
            async with self._arrived:
                self._arrived.notify_all()

    async def wait_received(self, count: int, within: float = 5.0) -> None:
        """Until :meth:`pump` has received ``count`` RTP packets."""
        with trio.fail_after(within):
            async with self._arrived:
                while self.received() < count:
                    await self._arrived.wait()

    def rtp(self) -> list[RtpPacket]:
        """The received packets, parsed."""
        assert self.peer is not None
        return [RtpPacket.parse_untrusted(p) for p in self.peer.rtp]
