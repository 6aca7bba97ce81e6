"""The SDK's call transports (client.voice.call.CallMedia) against a real SFU node.

Two SDK-style participants, each with its own SFrame key and the other's installed as the
pairwise sessions would deliver it, publish tones at different frequencies through one
router of a real ``python -m sfu``, driven over its RPC the way control will
(:class:`ControlStub`): send transport offer → ``transport.connect``; ``consumer.create`` +
``transport.offer`` → the receive transport's answer → ``transport.answer``. Each hears the
other; what the SFU forwarded (captured after SRTP at the receiving transport) is SFrame
ciphertext behind a clear Opus TOC byte.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import trio
import trio_asyncio
from aiortc import MediaStreamTrack
from aiortc.rtp import RtpPacket

from client.voice import FrameKeys, ToneSource, WavRecorder, band_energy_fraction, record_track
from client.voice import dominant_frequency as frequency_of
from client.voice.call import CallMedia
from client.voice.signalling import ConsumerInfo
from e2ee.errors import E2EEError
from e2ee.media import Codec

pytestmark = pytest.mark.slow

SECONDS = 1.5


class Participant:
    """One SDK participant: its keys, its call transports, what it heard per participant."""

    def __init__(self, user_id: str, index: int, tone: float, tmp: Any) -> None:
        self.user_id = user_id
        self.device_id = f"{user_id}-device"
        self.keys = FrameKeys.create(index)
        self.tone = tone
        self.tmp = tmp
        self.heard: dict[str, WavRecorder] = {}
        self.captured: list[RtpPacket] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.media = CallMedia(self.keys, (), lambda: ToneSource(self.tone), self.on_track)

    def on_track(self, consumer: ConsumerInfo | None, track: MediaStreamTrack) -> None:
        assert consumer is not None
        recorder = WavRecorder(self.tmp / f"{self.user_id}-hears-{consumer.user_id}.wav")
        self.heard[consumer.user_id] = recorder

        async def record() -> None:
            await record_track(track, recorder, seconds=SECONDS)

        self.tasks.append(asyncio.ensure_future(record()))

    def tap(self) -> None:
        """Keep every RTP packet the SFU sends this participant (after SRTP): what the SFU
        forwarded."""
        assert self.media.receive_pc is not None
        dtls = self.media.receive_pc.getTransceivers()[0].receiver.transport
        handle = dtls._handle_rtp_data

        async def tap(data: bytes, arrival_time_ms: int) -> None:
            self.captured.append(RtpPacket.parse(data))
            await handle(data, arrival_time_ms)

        dtls._handle_rtp_data = tap


async def aio(function: Any, *args: Any) -> Any:
    return await trio_asyncio.aio_as_trio(function)(*args)


async def publish(control: Any, router_id: str, who: Participant) -> list[dict[str, Any]]:
    transport = await control.call("transport.create", router_id=router_id)
    offer = await aio(who.media.offer)
    connected = await control.call(
        "transport.connect", transport_id=transport["transport_id"], sdp_offer=offer
    )
    await aio(who.media.apply_answer, connected["sdp_answer"])
    producers: list[dict[str, Any]] = connected["producers"]
    return producers


async def subscribe(
    control: Any, router_id: str, who: Participant, to: list[tuple[Participant, str]]
) -> None:
    transport = await control.call("transport.create", router_id=router_id)
    consumers = []
    for owner, producer_id in to:
        consumer = await control.call(
            "consumer.create", transport_id=transport["transport_id"], producer_id=producer_id
        )
        consumers.append(
            ConsumerInfo(
                consumer["mid"],
                consumer["kind"],
                owner.user_id,
                owner.device_id,
                owner.keys.sender_index,
            )
        )
    offer = await control.call("transport.offer", transport_id=transport["transport_id"])
    answer = await aio(who.media.answer, offer["sdp_offer"], tuple(consumers))
    who.tap()
    await control.call(
        "transport.answer", transport_id=transport["transport_id"], sdp_answer=answer
    )


async def test_two_sdk_participants_hear_each_other_through_the_sfu_as_sframe_ciphertext(
    control: Any, sfu_node: list[str], tmp_path: Any
) -> None:
    alice = Participant("alice", 1, 440, tmp_path)
    bob = Participant("bob", 2, 660, tmp_path)
    # As MediaKeys does on receipt: each key bound to the device whose session delivered it.
    alice.keys.install(bob.keys.current_key(), user_id="bob", device_id=bob.device_id)
    bob.keys.install(alice.keys.current_key(), user_id="alice", device_id=alice.device_id)

    with trio.fail_after(90):
        async with trio_asyncio.open_loop():
            router_id = (await control.call("router.create"))["router_id"]
            alice_producers = await publish(control, router_id, alice)
            bob_producers = await publish(control, router_id, bob)
            assert [p["kind"] for p in alice_producers + bob_producers] == ["audio", "audio"]
            await subscribe(control, router_id, alice, [(bob, bob_producers[0]["producer_id"])])
            await subscribe(control, router_id, bob, [(alice, alice_producers[0]["producer_id"])])
            # Each participant's recorders end once they hold SECONDS of sound.
            recording = [*alice.tasks, *bob.tasks]
            assert len(recording) == 2
            await trio_asyncio.aio_as_trio(lambda: asyncio.gather(*recording))()
            stats = {"alice": alice.media.stats(), "bob": bob.media.stats()}
            for who in (alice, bob):
                await aio(who.media.close)
                for recorder in who.heard.values():
                    recorder.close()

    # Each hears the other, at the other's frequency, and only the other.
    heard_by_alice = alice.heard["bob"].samples()[-48000:]
    heard_by_bob = bob.heard["alice"].samples()[-48000:]
    assert abs(frequency_of(heard_by_alice) - 660) < 5
    assert abs(frequency_of(heard_by_bob) - 440) < 5
    assert band_energy_fraction(heard_by_alice, 660) > 0.8
    assert band_energy_fraction(heard_by_bob, 440) > 0.8
    # The frames opened under the other's sender index: SFrame's KID, authenticated.
    for name, other in (("alice", bob), ("bob", alice)):
        (received,) = stats[name]["received"].values()
        assert received["sender_index"] == other.keys.sender_index
        assert received["opened"] > 50 and received["dropped"] <= 2
        assert stats[name]["protected"] > 50

    # What the SFU forwarded to bob: alice's Opus frames as SFrame ciphertext.
    payloads = [p.payload for p in bob.captured if p.payload]
    assert len(payloads) > 50
    stranger = FrameKeys.create(9)
    witness = FrameKeys.create(9)
    witness.install(alice.keys.current_key(), user_id="alice", device_id=alice.device_id)
    for payload in payloads:
        with pytest.raises(E2EEError):
            stranger.open_untrusted(Codec.OPUS, payload)
        index, clear = witness.open_untrusted(Codec.OPUS, payload)
        assert index == alice.keys.sender_index
        assert payload[0] == clear[0]  # the TOC byte stays clear for the SFU
        assert len(payload) >= len(clear) + 17  # SFrame header + tag
        assert payload[1:] != clear[1:]
