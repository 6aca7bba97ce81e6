"""Benchmarks of the e2ee package on one core.

Figures (medians of ``--runs`` rounds; a round times a fixed number of operations of each
figure in turn, so that figures compared with each other share the machine's load):

* ``ratchet_msgs_per_s`` — Double Ratchet encrypt + decrypt of a 200-byte message over an
  established pairwise session (one direction, in order);
* ``ratchet_pingpong_msgs_per_s`` — the same with the direction changing every message, so
  every message also performs a DH ratchet step (two X25519 + key generation);
* ``sframe_opus_frames_per_s`` — SFrame suite 0x0004 (AES-128-GCM) encrypt + decrypt of a
  160-byte frame through ``SFrameSender`` / ``SFrameReceiver``;
* ``aesgcm_160b_pairs_per_s`` — reference floor for the figure above: bare ``cryptography``
  AES-128-GCM encrypt + decrypt of the same 160 bytes (no header, counter, key lookup or
  replay check); ``sframe_vs_aesgcm`` is the median of the two's per-round ratios;
* ``sframe_opus_suite1_frames_per_s`` — the same with suite 0x0001 (AES-CTR + HMAC);
* ``media_opus_frames_per_s`` — ``protect_frame`` / ``unprotect_frame`` of a 160-byte Opus
  frame (TOC byte in clear) through the media-key receiver;
* ``sender_key_msgs_per_s`` — Sender Key encrypt + sign + verify + decrypt, 200 bytes;
* ``pqxdh_ms`` — one full PQXDH handshake, both sides: decode and verify the bundle, encap
  and three/four X25519 on the initiator, first message sealed, the responder's DH, ML-KEM
  decapsulation, ratchet start and first message opened;
* ``x3dh_ms`` — the same without the KEM.

Rates are operations per CPU-second of this single-threaded process
(``time.process_time``), which is what "on one core" means on a machine shared with other
work: time spent descheduled is not counted. Wall-clock figures are measured in the same
runs and reported alongside (``*_wall`` keys); on an idle machine the two agree.

Run ``python bench/e2ee_bench.py`` for a table, ``--json`` for one JSON object on the last
line.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from e2ee import (
    Codec,
    DecryptedMessage,
    IdentityKeyPair,
    MediaKeyReceiver,
    MediaKeySender,
    MessageType,
    PreKeyBundle,
    PreKeyStore,
    SenderKeyReceiver,
    SenderKeySender,
    SFrameReceiver,
    SFrameSender,
    accept_session,
    initiate_session,
    protect_frame,
    unprotect_frame,
)

CONV = b"bench-conversation"


Measurement = tuple[float, float]  # (per CPU-second or CPU ms, per wall-second or wall ms)


def _rate(n: int, body: Callable[[int], None]) -> Measurement:
    cpu, wall = time.process_time(), time.perf_counter()
    body(n)
    return n / (time.process_time() - cpu), n / (time.perf_counter() - wall)


def _sessions() -> tuple[object, object]:
    store = PreKeyStore.generate(IdentityKeyPair.generate(), 1)
    alice = initiate_session(
        IdentityKeyPair.generate(), store.bundle(next(iter(store.one_time_prekeys)))
    )
    bob, _ = accept_session(
        store, alice.encrypt(b"hi", conversation_id=CONV), conversation_id=CONV, now=0
    )
    alice.decrypt(bob.encrypt(b"hello", conversation_id=CONV), conversation_id=CONV, now=0)
    return alice, bob


def bench_ratchet(n: int) -> Measurement:
    alice, bob = _sessions()
    enc, dec = alice.encrypt, bob.decrypt  # type: ignore[attr-defined]
    msg = b"m" * 200

    def body(count: int) -> None:
        for _ in range(count):
            dec(enc(msg, conversation_id=CONV), conversation_id=CONV, now=0.0)

    return _rate(n, body)


def bench_ratchet_pingpong(n: int) -> Measurement:
    alice, bob = _sessions()
    msg = b"m" * 200

    def body(count: int) -> None:
        a, b = alice, bob
        for _ in range(count):
            b.decrypt(a.encrypt(msg, conversation_id=CONV), conversation_id=CONV, now=0.0)  # type: ignore[attr-defined]
            a, b = b, a

    return _rate(n, body)


def bench_sframe(n: int, suite: int) -> Measurement:
    sender = SFrameSender(suite, b"k" * 16, 3)
    receiver = SFrameReceiver(suite)
    receiver.add_key(3, b"k" * 16)
    enc, dec = sender.encrypt, receiver.decrypt
    frame = b"o" * 160

    def body(count: int) -> None:
        for _ in range(count):
            dec(enc(frame))

    return _rate(n, body)


def bench_aesgcm_reference(n: int) -> Measurement:
    aead = AESGCM(b"k" * 16)
    enc, dec = aead.encrypt, aead.decrypt
    nonce, frame, aad = bytes(12), b"o" * 160, b"\x38\x01"

    def body(count: int) -> None:
        for _ in range(count):
            dec(nonce, enc(nonce, frame, aad), aad)

    return _rate(n, body)


def bench_media(n: int) -> Measurement:
    sender = MediaKeySender(1)
    receiver = MediaKeyReceiver()
    receiver.install(sender.current_key(), user_id="alice", device_id="phone", now=0.0)
    frame = b"\x78" + b"o" * 159

    def body(count: int) -> None:
        for _ in range(count):
            unprotect_frame(
                receiver, Codec.OPUS, protect_frame(sender.sframe, Codec.OPUS, frame), now=0.0
            )

    return _rate(n, body)


def bench_sender_keys(n: int) -> Measurement:
    sender = SenderKeySender(b"channel")
    receiver = SenderKeyReceiver(b"channel")
    receiver.process_distribution(
        DecryptedMessage(
            MessageType.SENDER_KEY_DISTRIBUTION, b"channel", sender.distribution().encode()
        )
    )
    msg = b"m" * 200

    def body(count: int) -> None:
        for _ in range(count):
            receiver.decrypt(sender.encrypt(msg))

    return _rate(n, body)


def bench_handshake(n: int, pq: bool) -> Measurement:
    """Milliseconds per full handshake (both sides); prekeys are generated beforehand."""
    alice_id = IdentityKeyPair.generate()
    store = PreKeyStore.generate(IdentityKeyPair.generate())
    bundles = []
    while len(bundles) < n:
        for otk in store.generate_one_time_prekeys(min(100, n - len(bundles))):
            bundles.append(store.bundle(otk.key_id, pq=pq).encode())
    cpu, wall = time.process_time(), time.perf_counter()
    for wire in bundles:
        alice = initiate_session(alice_id, PreKeyBundle.decode_untrusted(wire), require_pq=pq)
        first = alice.encrypt(b"hello", conversation_id=CONV)
        accept_session(store, first, conversation_id=CONV, now=0.0, require_pq=pq)
    return (time.process_time() - cpu) / n * 1000, (time.perf_counter() - wall) / n * 1000


FIGURES: list[tuple[str, str, Callable[[float], Measurement]]] = [
    ("ratchet_msgs_per_s", "msg/s", lambda s: bench_ratchet(int(20_000 * s))),
    ("ratchet_pingpong_msgs_per_s", "msg/s", lambda s: bench_ratchet_pingpong(int(5_000 * s))),
    ("sframe_opus_frames_per_s", "frames/s", lambda s: bench_sframe(int(200_000 * s), 4)),
    ("aesgcm_160b_pairs_per_s", "pairs/s", lambda s: bench_aesgcm_reference(int(200_000 * s))),
    ("sframe_opus_suite1_frames_per_s", "frames/s", lambda s: bench_sframe(int(50_000 * s), 1)),
    ("media_opus_frames_per_s", "frames/s", lambda s: bench_media(int(100_000 * s))),
    ("sender_key_msgs_per_s", "msg/s", lambda s: bench_sender_keys(int(10_000 * s))),
    ("pqxdh_ms", "ms", lambda s: bench_handshake(max(20, int(200 * s)), pq=True)),
    ("x3dh_ms", "ms", lambda s: bench_handshake(max(20, int(200 * s)), pq=False)),
]

GOALS = {
    "ratchet_msgs_per_s": (">=", 20_000),
    "sframe_opus_frames_per_s": (">=", 250_000),
    "pqxdh_ms": ("<=", 2.0),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    parser.add_argument("--runs", type=int, default=5, help="rounds of all figures (medians)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply operation counts")
    args = parser.parse_args()

    # Rounds of every figure rather than all runs of one figure in a row: on a shared machine
    # the load changes over seconds, and a ratio is only meaningful between figures measured
    # under the same load (sframe_vs_aesgcm is the median of the per-round ratios).
    samples: dict[str, list[Measurement]] = {name: [] for name, _, _ in FIGURES}
    for _ in range(args.runs):
        for name, _, run in FIGURES:
            samples[name].append(run(args.scale))
    results: dict[str, float] = {}
    spread: dict[str, tuple[float, float]] = {}
    for name, _, _ in FIGURES:
        cpu = [c for c, _ in samples[name]]
        results[name] = round(statistics.median(cpu), 3)
        results[name + "_wall"] = round(statistics.median(w for _, w in samples[name]), 3)
        spread[name] = (min(cpu), max(cpu))
    ratios = [
        sframe / floor
        for (sframe, _), (floor, _) in zip(
            samples["sframe_opus_frames_per_s"], samples["aesgcm_160b_pairs_per_s"], strict=True
        )
    ]

    print(
        f"e2ee benchmarks — {args.runs} rounds, median (min..max) per CPU-second of one core;"
        f" Python {platform.python_version()}"
    )
    print(f"{'figure':34} {'median':>14} {'min..max':>26} {'wall median':>14}  unit, goal")
    for name, unit, _ in FIGURES:
        lo, hi = spread[name]
        goal = ""
        if name in GOALS:
            op, target = GOALS[name]
            met = results[name] >= target if op == ">=" else results[name] <= target
            goal = f"{op} {target:,} {'met' if met else 'MISSED'}"
        span = f"{lo:.3f}..{hi:.3f}" if unit == "ms" else f"{lo:,.0f}..{hi:,.0f}"
        print(
            f"{name:34} {results[name]:>14,.3f} {span:>26}"
            f" {results[name + '_wall']:>14,.3f}  {unit} {goal}"
        )
    results["sframe_vs_aesgcm"] = round(statistics.median(ratios), 3)
    print(
        f"{'sframe_vs_aesgcm':34} {results['sframe_vs_aesgcm']:>14,.3f}"
        f" {f'{min(ratios):.3f}..{max(ratios):.3f}':>26}  (ratio to the floor, per round)"
    )
    if args.json:
        print(json.dumps(results, sort_keys=True))


if __name__ == "__main__":
    main()
