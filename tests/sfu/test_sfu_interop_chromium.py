"""Interop with headless Chromium, all through the SFU on loopback: Chromium publishes its
(fake) microphone to an aiortc subscriber, plays an aiortc publisher's tone and decodes its
VP8, sends VP8 simulcast that an aiortc subscriber decodes, and plays a new speaker in a
recycled m-section."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from functools import partial
from typing import Any

import pytest
import trio
from interop_peers import Peer, publish, subscribe

from sfu.sdp import SessionDescription

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

PAGE = b"""<!doctype html><meta charset="utf-8"><title>hushroom sfu interop</title>
<script>
async function post(path, body) {
  const response = await fetch(path, {method: "POST", body});
  return response.text();
}
(async () => {
  try {
    const stream = await navigator.mediaDevices.getUserMedia({audio: true});
    const pub = new RTCPeerConnection();
    pub.addTransceiver(stream.getAudioTracks()[0], {direction: "sendonly"});
    await pub.setLocalDescription(await pub.createOffer());
    const answer = await post("/publish", pub.localDescription.sdp);
    await pub.setRemoteDescription({type: "answer", sdp: answer});
    const sub = new RTCPeerConnection();
    sub.ontrack = (event) => {
      const audio = new Audio();
      audio.srcObject = new MediaStream([event.track]);
      audio.play().catch(() => {});
    };
    const offer = await post("/subscribe", "");
    await sub.setRemoteDescription({type: "offer", sdp: offer});
    await sub.setLocalDescription(await sub.createAnswer());
    await post("/answer", sub.localDescription.sdp);
    let result = {};
    for (let i = 0; i < 150; i++) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      (await sub.getStats()).forEach((s) => {
        if (s.type === "inbound-rtp" && s.kind === "audio") {
          result.packetsReceived = s.packetsReceived;
          result.totalAudioEnergy = s.totalAudioEnergy;
        }
        if (s.type === "inbound-rtp" && s.kind === "video") {
          result.framesDecoded = s.framesDecoded;
          result.frameWidth = s.frameWidth;
        }
      });
      result.publisher = pub.connectionState;
      result.subscriber = sub.connectionState;
      if (result.packetsReceived > 50 && result.totalAudioEnergy > 0
          && result.framesDecoded > 10) break;
    }
    await post("/result", JSON.stringify(result));
  } catch (error) {
    await post("/result", JSON.stringify({error: String(error)}));
  }
})();
</script>
"""


SIMULCAST_PAGE = b"""<!doctype html><meta charset="utf-8"><title>hushroom sfu simulcast</title>
<script>
async function post(path, body) {
  const response = await fetch(path, {method: "POST", body});
  return response.text();
}
(async () => {
  try {
    const stream = await navigator.mediaDevices.getUserMedia(
      {video: {width: 640, height: 360, frameRate: 30}});
    const pub = new RTCPeerConnection();
    pub.addTransceiver(stream.getVideoTracks()[0], {
      direction: "sendonly",
      sendEncodings: [{rid: "l", scaleResolutionDownBy: 2}, {rid: "h"}],
    });
    await pub.setLocalDescription(await pub.createOffer());
    const answer = await post("/publish", pub.localDescription.sdp);
    await pub.setRemoteDescription({type: "answer", sdp: answer});
    await new Promise((resolve) => setTimeout(resolve, 8000));
    const layers = {};
    let bwe = null;
    (await pub.getStats()).forEach((s) => {
      if (s.type === "outbound-rtp") {
        layers[s.rid] = {frames: s.framesEncoded, width: s.frameWidth,
                         limitation: s.qualityLimitationReason};
      }
      if (s.type === "candidate-pair" && s.nominated) bwe = s.availableOutgoingBitrate;
    });
    await post("/result", JSON.stringify({layers, bwe, state: pub.connectionState}));
  } catch (error) {
    await post("/result", JSON.stringify({error: String(error)}));
  }
})();
</script>
"""


RECYCLE_PAGE = b"""<!doctype html><meta charset="utf-8"><title>hushroom sfu recycling</title>
<script>
async function post(path, body) {
  const response = await fetch(path, {method: "POST", body});
  return response.text();
}
(async () => {
  const rounds = [];
  try {
    const sub = new RTCPeerConnection();
    sub.ontrack = (event) => {
      const audio = new Audio();
      audio.srcObject = new MediaStream([event.track]);
      audio.play().catch(() => {});
    };
    for (;;) {
      const step = JSON.parse(await post("/offer", ""));
      if (step.done) break;
      await sub.setRemoteDescription({type: "offer", sdp: step.sdp});
      await sub.setLocalDescription(await sub.createAnswer());
      await post("/answer", sub.localDescription.sdp);
      const round = {mids: sub.getTransceivers().map((t) => t.mid), heard: 0};
      const listening = sub.getTransceivers().find((t) => t.mid === step.listen);
      for (let i = 0; listening && i < 100 && !round.heard; i++) {
        await new Promise((resolve) => setTimeout(resolve, 100));
        (await listening.receiver.getStats()).forEach((s) => {
          if (s.type === "inbound-rtp") {
            round.stats = [s.packetsReceived, s.totalAudioEnergy];
            if (s.packetsReceived > 30 && s.totalAudioEnergy > 0) round.heard = s.packetsReceived;
          }
        });
      }
      rounds.push(round);
    }
    await post("/result", JSON.stringify({rounds}));
  } catch (error) {
    await post("/result", JSON.stringify({error: String(error), rounds}));
  }
})();
</script>
"""


class PageServer:
    """A tiny HTTP/1.1 server for the page and its signalling calls (one request per connection)."""

    def __init__(
        self,
        control: Any,
        router_id: str,
        aiortc_producers: list[dict[str, Any]],
        page: bytes = PAGE,
    ) -> None:
        self.page = page
        self.control = control
        self.router_id = router_id
        self.aiortc_producers = aiortc_producers
        self.chromium_producers: list[dict[str, Any]] = []
        self.published = trio.Event()
        self.result: dict[str, Any] = {}
        self.finished = trio.Event()
        self._subscriber_transport = ""

    async def route(self, method: str, path: str, body: bytes) -> tuple[bytes, bytes]:
        if method == "GET" and path == "/":
            return b"text/html", self.page
        if path == "/publish":
            transport = await self.control.call("transport.create", router_id=self.router_id)
            connected = await self.control.call(
                "transport.connect",
                transport_id=transport["transport_id"],
                sdp_offer=body.decode(),
            )
            self.chromium_producers = connected["producers"]
            self.published.set()
            return b"application/sdp", connected["sdp_answer"].encode()
        if path == "/subscribe":
            transport = await self.control.call("transport.create", router_id=self.router_id)
            self._subscriber_transport = transport["transport_id"]
            for producer in self.aiortc_producers:
                await self.control.call(
                    "consumer.create",
                    transport_id=self._subscriber_transport,
                    producer_id=producer["producer_id"],
                )
            offer = await self.control.call(
                "transport.offer", transport_id=self._subscriber_transport
            )
            return b"application/sdp", offer["sdp_offer"].encode()
        if path == "/answer":
            await self.control.call(
                "transport.answer",
                transport_id=self._subscriber_transport,
                sdp_answer=body.decode(),
            )
            return b"text/plain", b"ok"
        if path == "/result":
            self.result = json.loads(body)
            self.finished.set()
            return b"text/plain", b"ok"
        return b"text/plain", b"not found"

    async def handle(self, stream: trio.SocketStream) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            body += await stream.receive_some(65536)
        content_type, payload = await self.route(method, path, body)
        await stream.send_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: "
            + content_type
            + b"\r\nContent-Length: "
            + str(len(payload)).encode()
            + b"\r\nConnection: close\r\n\r\n"
            + payload
        )
        await stream.aclose()


def _chromium(profile: str, port: int) -> list[str]:
    assert CHROMIUM is not None
    return [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        "--autoplay-policy=no-user-gesture-required",
        f"http://127.0.0.1:{port}/",
    ]


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
async def test_chromium_publishes_and_receives_through_the_sfu(
    control: Any, sfu_node: list[str], nursery: trio.Nursery
) -> None:
    assert CHROMIUM is not None
    router_id = (await control.call("router.create"))["router_id"]
    publisher, producers = await publish(control, nursery, router_id, "440", "--video")
    server = PageServer(control, router_id, producers)
    listeners = await nursery.start(partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    # Chromium's helper processes may still be writing as it dies; don't fail on cleanup.
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        browser = await trio.lowlevel.open_process(
            _chromium(profile, port),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            with trio.fail_after(30):
                await server.published.wait()
            subscriber = await subscribe(
                control, nursery, router_id, server.chromium_producers, "1"
            )
            heard = await subscriber.read(within=60)
            await subscriber.close()
            with trio.fail_after(30):
                await server.finished.wait()
        finally:
            browser.kill()
            await browser.wait()
            await publisher.close()
    # Chromium's fake microphone was decoded by aiortc...
    assert heard["frames"] > 0 and heard["first_audio_s"] is not None
    # ...and Chromium received and played aiortc's tone, and decoded its VP8.
    assert "error" not in server.result, server.result
    assert server.result["packetsReceived"] > 50
    assert server.result["totalAudioEnergy"] > 0
    assert server.result["framesDecoded"] > 10
    assert server.result["frameWidth"] == 320


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
async def test_chromium_vp8_simulcast_is_forwarded_and_decoded(
    control: Any, sfu_node: list[str], nursery: trio.Nursery
) -> None:
    router_id = (await control.call("router.create"))["router_id"]
    server = PageServer(control, router_id, [], SIMULCAST_PAGE)
    listeners = await nursery.start(partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    # Chromium's helper processes may still be writing as it dies; don't fail on cleanup.
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        browser = await trio.lowlevel.open_process(
            _chromium(profile, port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            with trio.fail_after(30):
                await server.published.wait()
            watcher = await subscribe(
                control, nursery, router_id, server.chromium_producers, "4", mode="watch"
            )
            seen = await watcher.read(within=60)
            await watcher.close()
            with trio.fail_after(30):
                await server.finished.wait()
        finally:
            browser.kill()
            await browser.wait()
    assert "error" not in server.result, server.result
    layers = server.result["layers"]
    # Chromium really sent both layers: its bandwidth estimate, fed by the SFU's
    # transport-cc feedback, allowed it (a wrong feedback starves the high layer).
    assert layers["l"]["frames"] > 10 and layers["h"]["frames"] > 10, server.result
    stats = await control.call("stats")
    assert stats["workers"][0]["producers"] == 1
    # The SFU learnt both layers' SSRCs from the rid extension, picked one, started it at a
    # key frame, and aiortc decoded it.
    assert seen["video_frames"] > 10, seen
    assert set(seen["widths"]) <= {320, 640}


class RecyclingServer(PageServer):
    """Drives a Chromium subscriber through a speaker leaving and another one arriving,
    while a third speaks throughout."""

    def __init__(self, control: Any, router_id: str, nursery: trio.Nursery) -> None:
        super().__init__(control, router_id, [], RECYCLE_PAGE)
        self.nursery = nursery
        self.publishers: list[Peer] = []
        self.consumers: list[dict[str, Any]] = []
        self.producers: list[dict[str, Any]] = []
        self.offers: list[SessionDescription] = []

    async def _speaker_arrives(self, frequency: str) -> str:
        publisher, producers = await publish(self.control, self.nursery, self.router_id, frequency)
        self.publishers.append(publisher)
        self.producers.append(producers[0])
        consumer = await self.control.call(
            "consumer.create",
            transport_id=self._subscriber_transport,
            producer_id=producers[0]["producer_id"],
        )
        self.consumers.append(consumer)
        return str(consumer["mid"])

    async def route(self, method: str, path: str, body: bytes) -> tuple[bytes, bytes]:
        if path != "/offer":
            return await super().route(method, path, body)
        listen = None
        if not self.offers:
            transport = await self.control.call("transport.create", router_id=self.router_id)
            self._subscriber_transport = transport["transport_id"]
            # Someone stays throughout: with every m-section rejected, Chromium would drop
            # the BUNDLE transport itself.
            await self._speaker_arrives("880")
            listen = await self._speaker_arrives("440")
        elif len(self.offers) == 1:
            await self.control.call("consumer.close", consumer_id=self.consumers[1]["consumer_id"])
            await self.control.call("producer.close", producer_id=self.producers[1]["producer_id"])
            await self.publishers[1].close()
        elif len(self.offers) == 2:
            listen = await self._speaker_arrives("660")
        else:
            return b"application/json", b'{"done": true}'
        offer = await self.control.call("transport.offer", transport_id=self._subscriber_transport)
        self.offers.append(SessionDescription.parse_untrusted(offer["sdp_offer"]))
        step = {"sdp": offer["sdp_offer"], "listen": listen}
        return b"application/json", json.dumps(step).encode()


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
async def test_chromium_plays_a_new_speaker_in_a_recycled_m_section(
    control: Any, sfu_node: list[str], nursery: trio.Nursery
) -> None:
    router_id = (await control.call("router.create"))["router_id"]
    server = RecyclingServer(control, router_id, nursery)
    listeners = await nursery.start(partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    # Chromium's helper processes may still be writing as it dies; don't fail on cleanup.
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        browser = await trio.lowlevel.open_process(
            _chromium(profile, port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            with trio.fail_after(90):
                await server.finished.wait()
        finally:
            browser.kill()
            await browser.wait()
            for publisher in server.publishers:
                await publisher.close()
    assert "error" not in server.result, server.result
    steady, first, second = (c["mid"] for c in server.consumers)
    assert first != second
    assert [[(m.mid, m.port != 0) for m in o.media] for o in server.offers] == [
        [(steady, True), (first, True)],
        [(steady, True), (first, False)],
        [(steady, True), (second, True)],  # the recycled slot, under its new mid
    ]
    rounds = server.result["rounds"]
    assert rounds[0]["heard"] > 30 and rounds[2]["heard"] > 30, rounds
    assert second in rounds[2]["mids"], rounds
