"""``python -m loadtest`` and ``hushroom loadtest``: the load-test harness (docs/loadtest.md).

Scenarios: ``voice-room`` (N participants in one voice channel, S of them speaking),
``many-rooms`` (R such rooms at once), ``video`` (P of N participants publishing
simulcast video) and ``churn`` (participants joining and leaving at a rate, with media keys
sent pairwise as clients do). The harness starts a local deployment with
``--spawn`` or drives a running one with ``--target URL``; it prints a progress line while
it runs, a summary at the end, writes the full report as JSON with ``--json FILE`` and
draws it with ``--plot FILE.png``. ``voice-room --compare janus`` then runs the same load
against Janus's VideoRoom plugin and reports both side by side.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["main"]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _where_options(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--spawn", action="store_true", help="start a local deployment in a temporary directory"
    )
    where.add_argument("--target", metavar="URL", help="a running deployment's control URL")


def _output_options(parser: argparse.ArgumentParser, plot: str) -> None:
    parser.add_argument(
        "--nodes", type=_positive_int, default=1, help="SFU nodes to spawn (with --spawn)"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the report here")
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help=plot)
    parser.add_argument("--quiet", action="store_true", help="no progress line")


def _room_options(room: argparse.ArgumentParser, *, speakers: bool = True) -> None:
    _where_options(room)
    room.add_argument(
        "--participants", type=_positive_int, default=10, help="participants per room"
    )
    if speakers:
        room.add_argument(
            "--speakers", type=_positive_int, default=2, help="speakers per room (the rest: DTX)"
        )
    room.add_argument(
        "--duration", type=_non_negative, default=20.0, help="seconds measured (default 20)"
    )
    room.add_argument(
        "--ramp", type=_non_negative, default=5.0, help="seconds over which participants join"
    )
    room.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="SFU worker processes per spawned node (default 1)",
    )
    room.add_argument(
        "--measure",
        type=_positive_int,
        metavar="K",
        help="receivers per room that decrypt and measure, spread over the room (default "
        "all); the others join and keep their transports up but do not read media",
    )
    room.add_argument(
        "--join-timeout",
        type=_positive_float,
        default=30.0,
        help="seconds one participant's join may take (default 30)",
    )
    room.add_argument(
        "--ready-timeout",
        type=_positive_float,
        default=60.0,
        help="seconds after the last join to wait for the window's condition (default 60)",
    )
    room.add_argument(
        "--aiortc",
        type=int,
        default=0,
        metavar="N",
        help="add N full aiortc participants (SDK clients, real Opus) to each room",
    )
    _output_options(room, "draw latency, loss and CPU over time")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hushroom loadtest",
        description="Load-test a hushroom deployment with synthetic voice participants.",
    )
    scenarios = parser.add_subparsers(dest="scenario", required=True)
    room = scenarios.add_parser(
        "voice-room",
        help="N participants in one voice channel, S of them speaking",
        description="N participants in one voice channel; S speak (20 ms Opus-sized "
        "frames), the rest are silent with DTX. Real accounts, gateway, ICE/DTLS/SRTP and "
        "SFrame; see docs/loadtest.md.",
    )
    _room_options(room)
    room.add_argument(
        "--compare",
        choices=["janus"],
        help="then run the same load against Janus's VideoRoom and compare (with --spawn)",
    )
    many = scenarios.add_parser(
        "many-rooms",
        help="R rooms of N participants, S speaking in each",
        description="R voice channels (each in its own guild) of N participants, S of whom "
        "speak in each; measured as voice-room, per room and in total.",
    )
    many.add_argument("--rooms", type=_positive_int, default=2, help="rooms (default 2)")
    _room_options(many)
    video = scenarios.add_parser(
        "video",
        help="P publishers with three simulcast layers, N participants receiving them",
        description="N participants in one voice channel; P of them publish VP8 video with "
        "three simulcast layers (180p/360p/720p), every participant receives every other "
        "publisher on a layer the SFU picks by its REMB; see docs/loadtest.md.",
    )
    video.add_argument(
        "--publishers",
        type=_positive_int,
        default=2,
        help="participants publishing video (default 2)",
    )
    video.add_argument(
        "--switch",
        type=_non_negative,
        default=0.0,
        metavar="SECONDS",
        help="every SECONDS of the window each subscriber asks for another layer (default 0: "
        "never)",
    )
    _room_options(video, speakers=False)
    churn = scenarios.add_parser(
        "churn",
        help="participants join and leave a voice channel at a rate",
        description="Participants (full SDK clients) join and leave one voice channel, "
        "alternately, at a rate; media keys go pairwise (PQXDH sessions, Double Ratchet, "
        "MEDIA_KEY envelopes through the relay). Reports per join and per leave the keys "
        "and envelopes sent, their bytes, and the time until everyone decrypted the new "
        "keys; see docs/loadtest.md.",
    )
    _where_options(churn)
    churn.add_argument(
        "--participants", type=_positive_int, default=10, help="participants in the call"
    )
    churn.add_argument(
        "--rate",
        type=_positive_float,
        default=0.5,
        help="joins and leaves per second (default 0.5)",
    )
    churn.add_argument(
        "--joins", type=_positive_int, help="joins (and as many leaves); default rate × duration"
    )
    churn.add_argument(
        "--duration", type=_non_negative, default=20.0, help="seconds of churn (default 20)"
    )
    churn.add_argument(
        "--settle-timeout",
        type=_positive_float,
        default=900.0,
        help="seconds an event (or a batch of the fill) may take to settle (default 900)",
    )
    _output_options(churn, "draw the cost and settle time per event")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m loadtest`` and ``hushroom loadtest``."""
    args = _parser().parse_args(argv)
    command = ["python", "-m", "loadtest", *(sys.argv[1:] if argv is None else argv)]
    if args.scenario == "churn":
        from loadtest.churn import main_churn

        return main_churn(args, command)
    from loadtest.voice_room import RoomConfig, main_voice_room, summary_table

    video = args.scenario == "video"
    speakers = args.publishers if video else args.speakers
    if speakers > args.participants:
        option = "--publishers" if video else "--speakers"
        print(f"hushroom loadtest: {option} exceeds --participants", file=sys.stderr)
        return 2
    if args.participants < 2:
        print("hushroom loadtest: --participants must be at least 2", file=sys.stderr)
        return 2
    if video and args.aiortc:
        print("hushroom loadtest: --aiortc is for voice-room and many-rooms", file=sys.stderr)
        return 2
    if args.target is not None and (args.workers != 1 or args.nodes != 1):
        print("hushroom loadtest: --workers and --nodes are for --spawn", file=sys.stderr)
        return 2
    compare = getattr(args, "compare", None)
    if compare is not None:
        from loadtest.janus import janus_missing

        if args.target is not None:
            print("hushroom loadtest: --compare needs --spawn (SFU CPU)", file=sys.stderr)
            return 2
        missing = janus_missing()
        if missing is not None:
            print(f"hushroom loadtest: --compare janus: {missing}", file=sys.stderr)
            return 2
    from loadtest.video import VideoConfig

    config = (VideoConfig if video else RoomConfig)(
        participants=args.participants,
        speakers=speakers,
        duration=args.duration,
        ramp=args.ramp,
        rooms=getattr(args, "rooms", 1),
        target=args.target,
        nodes=args.nodes,
        workers=args.workers,
        measure=args.measure,
        join_timeout=args.join_timeout,
        ready_timeout=args.ready_timeout,
        aiortc=max(0, args.aiortc),
        progress=None if args.quiet else sys.stderr,
        command=command,
    )
    if isinstance(config, VideoConfig):
        config.switch = args.switch
    if video:
        from loadtest.video import main_video, video_summary_table

        report = main_video(config)
        print(video_summary_table(report))
    elif compare is not None:
        import trio

        from loadtest.compare import compare_table, run_compare

        report = trio.run(run_compare, config)
        print(summary_table(report))
        print(compare_table(report["compare"]))
    else:
        report = main_voice_room(config)
        print(summary_table(report))
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if args.plot is not None:
        from loadtest.plot import plot_report

        plot_report(report, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
