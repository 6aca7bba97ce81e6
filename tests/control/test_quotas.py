"""Hostile clients against the relay's queue quotas and the prekey directory's claim limits."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from control_harness import API, Harness, User, b64, make_config

from control.app import create_app
from control.config import ControlConfig

#: Close to the largest ciphertext (64 KiB), so three fit a 256 KiB body.
BIG = 60 * 1024


@asynccontextmanager
async def _app(tmp_path: Path, **overrides: Any) -> AsyncIterator[Harness]:
    app = create_app(make_config(tmp_path, **overrides))
    async with app.test_app():
        yield Harness(app)


def _send(recipient: User, *ciphertexts: bytes) -> dict[str, Any]:
    """A batch of sends, one envelope each, to the one device of ``recipient``."""
    return {
        "sends": [
            {
                "recipients": [
                    {
                        "user_id": recipient.id,
                        "devices": [{"device_id": recipient.device_id, "ciphertext": b64(c)}],
                    }
                ]
            }
            for c in ciphertexts
        ]
    }


async def _flood(h: Harness, sender: User, victim: User, size: int, most: int) -> tuple[int, Any]:
    """Send envelopes of ``size`` bytes three at a time, waiting out 429s as the server asks,
    until refused (or ``most`` sent); return how many were queued and the refusal."""
    queued = 0
    while queued < most:
        status, body = await h.call(
            "POST", f"{API}/envelopes/batch", sender, json=_send(victim, *[os.urandom(size)] * 3)
        )
        if status == 429:
            await trio.sleep(body["error"]["retry_after"])
        elif status != 201:
            return queued, (status, body)
        else:
            queued += 3
    return queued, None


async def _queued(h: Harness, victim: User) -> list[dict[str, Any]]:
    status, envelopes = await h.call("GET", f"{API}/envelopes", victim, query={"limit": 500})
    assert status == 200
    return list(envelopes)


async def test_one_sender_cannot_fill_a_device_queue(tmp_path: Path) -> None:
    # Defaults: one sender may hold 8 MiB queued for one device (the audit queued 137 MB).
    async with _app(tmp_path) as h:
        mallory, victim, friend = [await h.register(n) for n in ("mallory", "victim", "friend")]
        queued, refusal = await _flood(h, mallory, victim, BIG, 300)
        assert refusal is not None, "the flood was never refused"
        status, body = refusal
        assert status == 409 and body["error"]["code"] == "queue_full", body
        assert body["error"]["device_id"] == victim.device_id
        assert body["error"]["limit"] == "sender_bytes"
        assert queued * BIG <= ControlConfig().sender_queue_max_bytes
        # Others can still reach the victim.
        status, body = await h.call(
            "POST", f"{API}/envelopes/batch", friend, json=_send(victim, b"hi")
        )
        assert status == 201, body
        # The refused batch queued nothing (pages are bounded in bytes: count them all
        # while acknowledging), and acknowledging frees the sender's share again.
        senders = []
        while envelopes := await _queued(h, victim):
            senders += [e["sender_user_id"] for e in envelopes]
            ids = [e["id"] for e in envelopes]
            status, _ = await h.call("POST", f"{API}/envelopes/ack", victim, json={"ids": ids})
            assert status == 200
        assert senders.count(mallory.id) == queued and senders.count(friend.id) == 1
        status, body = await h.call(
            "POST", f"{API}/envelopes/batch", mallory, json=_send(victim, os.urandom(BIG))
        )
        assert status == 201, body


@pytest.mark.parametrize(
    ("overrides", "limit"),
    [
        ({"sender_queue_max_envelopes": 3}, "sender_envelopes"),
        ({"queue_max_envelopes": 6}, "device_envelopes"),
        ({"queue_max_bytes": 6 * 1024}, "device_bytes"),
    ],
)
async def test_queue_quotas_count_envelopes_and_bytes(
    tmp_path: Path, overrides: dict[str, int], limit: str
) -> None:
    async with _app(tmp_path, **overrides) as h:
        ann, bob, victim = [await h.register(n) for n in ("ann", "bob", "victim")]
        for sender in (ann, bob):
            status, body = await h.call(
                "POST", f"{API}/envelopes/batch", sender, json=_send(victim, *[b"k" * 1024] * 3)
            )
            assert status == 201, body
        status, body = await h.call(
            "POST", f"{API}/envelopes", ann, json=_send(victim, b"k" * 1024)["sends"][0]
        )
        assert status == 409 and body["error"]["limit"] == limit, body
        assert len(await _queued(h, victim)) == 6


async def test_the_database_file_shrinks_back_after_acks(tmp_path: Path) -> None:
    async with _app(tmp_path) as h:
        senders = [await h.register(f"s{i}") for i in range(2)]
        victim = await h.register("victim")
        data_dir = tmp_path / "data"

        def size() -> int:
            return sum(f.stat().st_size for f in data_dir.glob("control.sqlite3*"))

        before = size()
        for sender in senders:
            queued, refusal = await _flood(h, sender, victim, BIG, 60)
            assert refusal is None and queued == 60
        assert size() > before + 6 * 1024 * 1024
        while envelopes := await _queued(h, victim):
            ids = [e["id"] for e in envelopes]
            status, _ = await h.call("POST", f"{API}/envelopes/ack", victim, json={"ids": ids})
            assert status == 200
        assert size() < before + 1024 * 1024, (before, size())


async def _claim(h: Harness, claimer: User, target: User) -> dict[str, Any]:
    """One claim of ``target``'s bundle (of its single device), waiting out the general
    per-token 429s; a claim limit's 429 is returned as the body."""
    while True:
        status, body = await h.call("POST", f"{API}/users/{target.id}/keys/claim", claimer, json={})
        if status == 429 and body["error"]["message"] == "slow down":
            await trio.sleep(body["error"]["retry_after"])
            continue
        if status == 429:
            return dict(body)
        assert status == 200, body
        (bundle,) = body["devices"]
        assert bundle["signed_prekey"] is not None and bundle["pq_prekey"] is not None
        return dict(bundle)


async def _held(h: Harness, user: User) -> int:
    status, body = await h.call("GET", f"{API}/users/@me/devices/@current/keys", user)
    assert status == 200
    return int(body["one_time_prekeys"])


async def test_one_claimer_cannot_drain_a_devices_one_time_prekeys(harness: Harness) -> None:
    victim, mallory = await harness.register("victim", otks=100), await harness.register("mallory")
    bundles = [await _claim(harness, mallory, victim) for _ in range(150)]
    taken = [b["one_time_prekey"] for b in bundles if b["one_time_prekey"] is not None]
    limit = ControlConfig().otk_per_claimer_device_per_day
    assert len(taken) == limit, "one claimer takes its daily few, then signed prekeys only"
    assert await _held(harness, victim) == 100 - limit


async def test_many_claimers_together_take_at_most_the_device_budget(harness: Harness) -> None:
    victim = await harness.register("victim", otks=100)
    budget = ControlConfig().otk_per_device_per_hour
    sybils = [await harness.register(f"sybil{i}") for i in range(budget // 3 + 4)]
    taken = 0
    for sybil in sybils:
        for _ in range(3):
            taken += (await _claim(harness, sybil, victim))["one_time_prekey"] is not None
    assert taken == budget
    assert await _held(harness, victim) == 100 - budget, "the rest of the keys last"
    # Anyone else still gets a bundle to start a session with: the signed prekeys alone.
    late = await harness.register("late")
    assert (await _claim(harness, late, victim))["one_time_prekey"] is None


async def test_claims_per_claimer_are_limited(tmp_path: Path) -> None:
    async with _app(tmp_path, rate_per_s=1e9, rate_burst=10**9) as h:
        mallory = await h.register("mallory")
        targets = [await h.register(f"t{i}", otks=1) for i in range(4)]
        config = ControlConfig()
        burst, per_second = config.prekey_claim_burst, config.prekey_claims_per_minute / 60
        started = trio.current_time()
        claims = 0
        while "error" not in (bundle := await _claim(h, mallory, targets[claims % 4])):
            claims += 1
            assert claims <= burst + 50, "claims were never limited"
        # Refused once the burst (plus what refilled meanwhile) was used up, not before.
        assert claims >= burst
        assert claims <= burst + (trio.current_time() - started) * per_second + 1
        assert bundle["error"]["code"] == "rate_limited", bundle
        assert 0 < bundle["error"]["retry_after"] <= 1 / per_second
