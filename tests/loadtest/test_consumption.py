"""Who a receiver expects frames from (docs/loadtest.md, "The measurement window"): the
senders its subscribe offer's ``consumers`` list names — everyone in the full mode, only
some (a large channel's voice-active participants) otherwise — and which receivers
measure (``--measure``). Real participants and the room's bookkeeping, no deployment."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from loadtest.__main__ import main
from loadtest.metrics import ReceiverStats
from loadtest.participant import Account, KeyDirectory, VoiceParticipant
from loadtest.participant import _consumed_devices_untrusted as consumed_devices
from loadtest.voice_room import SETTLE_S, RoomConfig, _Room, measured_ranks

MS = 1_000_000


@pytest.fixture
def room() -> Iterator[_Room]:
    """Four joined participants, participant 0 the one speaker, receive transports up."""
    state = _Room(RoomConfig(participants=4, speakers=1, duration=2.0, ramp=0.0))
    keys = KeyDirectory()
    for rank in range(4):
        account = Account(f"h{rank}", f"user{rank}", f"device{rank}", "token")
        p = VoiceParticipant(
            rank, account, keys=keys, stats=ReceiverStats(state.window), bind_ip="127.0.0.1"
        )
        state.device_numbers[account.device_id] = rank
        state.participants.append(p)
        state.joined.append(p)
        state.joined_by_room[0].append(p)
        p.recv_connected.set()
    yield state
    for p in state.participants:
        p.close()


def _consume(p: VoiceParticipant, numbers: list[int], offer_age_s: float) -> None:
    """As if ``p`` answered an offer whose consumers are ``numbers``, ``offer_age_s`` ago."""
    p.consumed_devices = consumed_devices(
        [{"mid": str(n), "kind": "audio", "device_id": f"device{n}"} for n in numbers]
    )
    p.last_offer_ns = time.monotonic_ns() - int(offer_age_s * 1e9)


def test_receivers_consuming_only_the_speaker_expect_only_its_frames(room: _Room) -> None:
    speaker, *silent = room.participants
    _consume(speaker, [], offer_age_s=0.0)
    for p in silent:
        _consume(p, [0], offer_age_s=0.0)
        p.stats.heard.add(0)
    # Short of everyone, the window waits until the room's offers settle.
    assert not room.ready()
    for p in room.participants:
        p.last_offer_ns -= int(2 * SETTLE_S * 1e9)
    assert room.ready()

    room.open_window(0, 2000 * MS)
    for p in room.participants:
        p.sent_in_window = 100
        p.sent_per_second = [50, 50]
    for p in silent:
        for seq in range(1, 101):
            p.stats.record(0, seq, seq * 20 * MS - MS, seq * 20 * MS)
    silent[0].stats.record(2, 1, 10 * MS, 11 * MS)  # from a sender it does not consume
    report = room.report(None)

    rows = report["per_participant"]
    assert [row["consumes"] for row in rows] == [0, 1, 1, 1]
    assert [row["expected"] for row in rows] == [0, 100, 100, 100]
    assert report["expected"] == report["received"] == 300 and report["loss_pct"] == 0.0
    assert rows[1]["errors"] == {"unexpected_sender": 1}
    assert [row["expected"] for row in report["per_second"]] == [150, 150]
    assert report["sfu"]["pps_out_due"] == 150


def test_the_full_mode_opens_without_waiting_for_offers_to_settle(room: _Room) -> None:
    for p in room.participants:
        _consume(p, [q for q in range(4) if q != p.number], offer_age_s=0.0)
        p.stats.heard.add(0)
    assert room.ready()
    room.open_window(0, 1000 * MS)
    assert [p.stats.expects for p in room.participants] == [
        frozenset({1, 2, 3}),
        frozenset({0, 2, 3}),
        frozenset({0, 1, 3}),
        frozenset({0, 1, 2}),
    ]


def test_a_receiver_missing_a_speaker_holds_the_window_and_is_blamed(room: _Room) -> None:
    for p in room.participants:
        _consume(p, [], offer_age_s=10.0)
    assert not room.ready()
    room.blame_not_ready()
    assert [p.errors for p in room.participants] == [{}] + [{"not_consuming_speakers": 1}] * 3


def test_consumption_changed_inside_the_window_is_an_error(room: _Room) -> None:
    for p in room.participants:
        _consume(p, [q for q in range(4) if q != p.number], offer_age_s=0.0)
    room.open_window(0, 1000 * MS)
    _consume(room.participants[3], [0], offer_age_s=0.0)
    report = room.report(None)
    assert report["errors"] == {"consumption_changed": 1}


def test_unmeasured_receivers_expect_nothing(room: _Room) -> None:
    for p in room.participants:
        _consume(p, [q for q in range(4) if q != p.number], offer_age_s=0.0)
    room.participants[2].measured = False
    room.open_window(0, 1000 * MS)
    for p in room.participants:
        p.sent_in_window = 10
    report = room.report(None)
    assert report["measured"] == 3
    assert [row["expected"] for row in report["per_participant"]] == [30, 30, 0, 30]
    assert report["sfu"]["pps_out_due"] == 120


def test_measured_receivers_are_spread_over_the_room() -> None:
    assert measured_ranks(10, None) == frozenset(range(10))
    assert measured_ranks(10, 20) == frozenset(range(10))
    assert measured_ranks(10, 3) == frozenset({0, 3, 6})
    assert measured_ranks(500, 20) == frozenset(range(0, 500, 25))


def test_consumers_lists_are_read_as_untrusted() -> None:
    assert consumed_devices(None) == frozenset()
    assert consumed_devices([{"device_id": "a"}, {"device_id": "b"}]) == {"a", "b"}
    for bad in ("a", [{"mid": "0"}], [{"device_id": 5}], ["a"]):
        with pytest.raises(ValueError):
            consumed_devices(bad)


def test_cli_refuses_spawn_options_with_target_and_no_measure(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["voice-room", "--target", "http://127.0.0.1:1", "--workers", "2"]
    assert main(argv) == 2
    assert "--spawn" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["voice-room", "--spawn", "--measure", "0"])


def test_a_report_keeps_the_first_detail_of_each_error_kind(room: _Room) -> None:
    first, second, *_ = room.participants
    first.on_dispatch("VOICE_ERROR", {"code": "sfu_error", "message": "no worker has room"})
    second.on_dispatch("VOICE_ERROR", {"code": "sfu_error", "message": "a later message"})
    second.on_dispatch("VOICE_ERROR", {"code": "channel_full", "message": "x" * 500})
    assert room.errors() == {"voice_error:sfu_error": 2, "voice_error:channel_full": 1}
    details = room.error_details()
    assert details["voice_error:sfu_error"] == "no worker has room"
    assert details["voice_error:channel_full"] == "x" * 200
