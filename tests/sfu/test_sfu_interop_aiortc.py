"""Interop with aiortc, a WebRTC stack nobody here wrote: Opus (and VP8) through the SFU."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from interop_peers import publish, subscribe

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
