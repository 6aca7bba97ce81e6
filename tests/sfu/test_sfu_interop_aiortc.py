"""Interop with aiortc, a WebRTC stack nobody here wrote: Opus (and VP8) through the SFU."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from interop_peers import Peer, publish, subscribe

from sfu.sdp import SessionDescription

pytestmark = pytest.mark.slow


async def test_aiortc_opus_tone_arrives_with_its_frequency(
    control: Any, sfu_node: list[str], nursery: trio.Nursery
) -> None:
    router_id = (await control.call("router.create"))["router_id"]
    publisher, producers = await publish(control, nursery, router_id, "440")
    assert [p["kind"] for p in producers] == ["audio"]
    subscriber = await subscribe(control, nursery, router_id, producers, "1.5")
    result = await subscriber.read(within=60)
    await subscriber.close()
    await publisher.close()
    assert result["first_audio_s"] is not None and result["first_audio_s"] < 2.0
    assert abs(result["frequency"] - 440) < 5
    stats = await control.call("stats")
    assert stats["workers"][0]["packets_out"] > 50


async def test_aiortc_opus_and_vp8_through_the_sfu(
    control: Any, sfu_node: list[str], nursery: trio.Nursery
) -> None:
    router_id = (await control.call("router.create"))["router_id"]
    publisher, producers = await publish(control, nursery, router_id, "660", "--video")
    assert sorted(p["kind"] for p in producers) == ["audio", "video"]
    subscriber = await subscribe(control, nursery, router_id, producers, "2", "--video")
    result = await subscriber.read(within=60)
    await subscriber.close()
    await publisher.close()
    assert abs(result["frequency"] - 660) < 5
    assert result["video_frames"] > 5


async def test_a_recycled_m_section_carries_the_next_speaker_to_aiortc(
    control: Any, sfu_node: list[str], nursery: trio.Nursery
) -> None:
    # A speaker leaves and another joins: the second one's stream takes the first one's
    # closed m-section under a new mid, and aiortc plays it (and keeps playing it through a
    # later renegotiation that adds a third speaker).
    router_id = (await control.call("router.create"))["router_id"]
    transport_id = (await control.call("transport.create", router_id=router_id))["transport_id"]
    listener = await Peer.start(nursery, "follow", "1.5")

    async def consume(producers: list[dict[str, Any]]) -> dict[str, Any]:
        consumer: dict[str, Any] = await control.call(
            "consumer.create", transport_id=transport_id, producer_id=producers[0]["producer_id"]
        )
        return consumer

    async def renegotiate() -> SessionDescription:
        offer = (await control.call("transport.offer", transport_id=transport_id))["sdp_offer"]
        await listener.write({"offer": offer})
        answer = (await listener.read())["answer"]
        await control.call("transport.answer", transport_id=transport_id, sdp_answer=answer)
        return SessionDescription.parse_untrusted(offer)

    async def frequency_of(mid: str) -> float:
        await listener.write({"hear": mid})
        heard = await listener.read(within=60)
        assert heard["first_audio_s"] is not None
        return float(heard["frequency"])

    first, first_producers = await publish(control, nursery, router_id, "440")
    leaving = await consume(first_producers)
    await renegotiate()
    assert abs(await frequency_of(leaving["mid"]) - 440) < 5

    await control.call("consumer.close", consumer_id=leaving["consumer_id"])
    await control.call("producer.close", producer_id=first_producers[0]["producer_id"])
    await first.close()
    closed = await renegotiate()
    assert [(m.mid, m.port) for m in closed.media] == [(leaving["mid"], 0)]

    second, second_producers = await publish(control, nursery, router_id, "660")
    joining = await consume(second_producers)
    recycled = await renegotiate()
    assert joining["mid"] != leaving["mid"]
    assert [m.mid for m in recycled.media] == [joining["mid"]]
    assert abs(await frequency_of(joining["mid"]) - 660) < 5

    third, third_producers = await publish(control, nursery, router_id, "880")
    added = await consume(third_producers)
    grown = await renegotiate()
    assert [m.mid for m in grown.media] == [joining["mid"], added["mid"]]
    assert abs(await frequency_of(added["mid"]) - 880) < 5
    assert abs(await frequency_of(joining["mid"]) - 660) < 5
    await listener.close()
    await second.close()
    await third.close()
