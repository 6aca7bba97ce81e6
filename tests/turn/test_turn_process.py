"""The ``python -m turn`` process contract: announce lines, Binding on UDP and TCP, clean exit."""

from __future__ import annotations

import contextlib
import random
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from turn_support import REALM, SECRET, TurnProcess, binding_probe, self_signed, start_turn

from turn.auth import rest_password, rest_username
from turn.stun import (
    Attr,
    Message,
    MessageClass,
    Method,
    decode_xor_address_untrusted,
    long_term_key,
    new_transaction_id,
    parse_message_untrusted,
)

pytestmark = pytest.mark.slow


def _binding_request() -> bytes:
    return Message(Method.BINDING, MessageClass.REQUEST, new_transaction_id()).serialize(
        fingerprint=True
    )


def test_announces_real_ports_then_ready(turn_server: TurnProcess) -> None:
    assert re.fullmatch(r"turn listening udp 127\.0\.0\.1:\d+", turn_server.lines[0])
    assert re.fullmatch(r"turn listening tcp 127\.0\.0\.1:\d+", turn_server.lines[1])
    assert turn_server.lines[-1] == "turn ready"
    assert turn_server.udp_port != 0 and turn_server.tcp_port != 0


def test_binding_over_udp_returns_xor_mapped_address(turn_server: TurnProcess) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.bind(("127.0.0.1", 0))
        sock.sendto(_binding_request(), ("127.0.0.1", turn_server.udp_port))
        response = parse_message_untrusted(sock.recv(2048))
        mapped = decode_xor_address_untrusted(
            response.get(Attr.XOR_MAPPED_ADDRESS) or b"", response.transaction_id
        )
        assert mapped == sock.getsockname()
        assert response.message_class == MessageClass.SUCCESS
        assert response.check_fingerprint()


def test_binding_over_tcp_returns_xor_mapped_address(turn_server: TurnProcess) -> None:
    with socket.create_connection(("127.0.0.1", turn_server.tcp_port), timeout=5) as sock:
        sock.sendall(_binding_request())
        response = parse_message_untrusted(sock.recv(2048))
        mapped = decode_xor_address_untrusted(
            response.get(Attr.XOR_MAPPED_ADDRESS) or b"", response.transaction_id
        )
        assert mapped == sock.getsockname()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_exits_zero_on_signal(sig: int) -> None:
    turn = start_turn("--listen", "127.0.0.1:0")
    assert turn.stop(sig) == 0


def test_help_works() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "turn", "--help"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0
    assert "--listen" in result.stdout and "--secret-file" in result.stdout


def test_bad_value_is_one_line_error_with_exit_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "turn", "--listen", "nonsense"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"HUSHROOM_TURN_SECRET": "x", "PATH": "/usr/bin"},
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "--listen" in result.stderr


def test_workers_share_the_ports_and_all_exit_zero_on_sigterm() -> None:
    turn = start_turn("--listen", "127.0.0.1:0", "--workers", "2")
    try:
        for _ in range(8):  # several source ports, so the kernel spreads them over workers
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(5)
                sock.sendto(_binding_request(), ("127.0.0.1", turn.udp_port))
                assert parse_message_untrusted(sock.recv(2048)).message_class == (
                    MessageClass.SUCCESS
                )
        with socket.create_connection(("127.0.0.1", turn.tcp_port), timeout=5) as sock:
            sock.sendall(_binding_request())
            assert parse_message_untrusted(sock.recv(2048)).message_class == MessageClass.SUCCESS
    finally:
        assert turn.stop(signal.SIGTERM) == 0


def test_logs_carry_no_client_address(turn_server: TurnProcess) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(_binding_request(), ("127.0.0.1", turn_server.udp_port))
        sock.recv(2048)
        sock.sendto(b"\x00\x03garbage" * 4, ("127.0.0.1", turn_server.udp_port))
    turn_server.stop()
    assert turn_server.process.stderr is not None
    log = turn_server.process.stderr.read()
    assert "turn counters" in log
    assert "127.0.0.1" not in log


def test_tls_listener_is_announced_and_answers_binding(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    turn = start_turn(
        "--listen",
        "127.0.0.1:0",
        "--tls-listen",
        "127.0.0.1:0",
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
    )
    try:
        assert any(line.startswith("turn listening tls 127.0.0.1:") for line in turn.lines)
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        port = next(iter(turn.tls.values()))
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw) as sock,
        ):
            sock.sendall(_binding_request())
            response = parse_message_untrusted(sock.recv(2048))
            assert response.message_class == MessageClass.SUCCESS
    finally:
        assert turn.stop() == 0


def test_secret_file_with_several_lines_and_env_precedence(tmp_path: Path) -> None:
    from hushroom.config import load
    from turn.config import TurnConfig

    secret_file = tmp_path / "secrets"
    secret_file.write_text("old\n\nnew\n")
    config = load(
        TurnConfig,
        "turn",
        {"secret_file": str(secret_file), "realm": "flag-realm"},
        {"HUSHROOM_TURN_SECRET": "envsecret", "HUSHROOM_TURN_REALM": "env-realm"},
    )
    assert config.secrets() == [b"old", b"new", b"envsecret"]
    assert config.realm == "flag-realm"


def test_missing_secret_is_a_configuration_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "turn", "--listen", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin"},
    )
    assert result.returncode == 2
    assert "secret" in result.stderr


def _allocate_over(sock: socket.socket, server: tuple[str, int], family: bytes) -> Message:
    """Allocate with REST credentials over a real socket; returns the final response."""
    username = rest_username(int(time.time()) + 600, "v6-test")
    key = long_term_key(username, REALM, rest_password(SECRET.encode(), username))
    nonce = b""
    for _ in range(3):
        msg = Message(Method.ALLOCATE, MessageClass.REQUEST, new_transaction_id())
        msg.add(Attr.REQUESTED_TRANSPORT, b"\x11\x00\x00\x00")
        msg.add(Attr.REQUESTED_ADDRESS_FAMILY, family)
        if nonce:
            msg.add(Attr.USERNAME, username.encode()).add(Attr.REALM, REALM.encode())
            msg.add(Attr.NONCE, nonce)
        sock.sendto(msg.serialize(integrity_key=key if nonce else None), server)
        response = parse_message_untrusted(sock.recv(2048))
        if response.message_class == MessageClass.SUCCESS:
            return response
        nonce = response.get(Attr.NONCE) or b""
    return response


def test_ipv6_listener_answers_binding_and_allocates_ipv6_relays() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    try:
        turn = start_turn("--listen", "[::1]:0", "--listen", "127.0.0.1:0")
    except RuntimeError as exc:
        pytest.skip(f"cannot listen on ::1: {exc}")
    try:
        assert any(line.startswith("turn listening udp [::1]:") for line in turn.lines)
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            server = ("::1", turn.udp["::1"])
            sock.sendto(_binding_request(), server)
            response = parse_message_untrusted(sock.recv(2048))
            mapped = decode_xor_address_untrusted(
                response.get(Attr.XOR_MAPPED_ADDRESS) or b"", response.transaction_id
            )
            assert mapped == ("::1", sock.getsockname()[1])
            response = _allocate_over(sock, server, b"\x02\x00\x00\x00")
            relayed = decode_xor_address_untrusted(
                response.get(Attr.XOR_RELAYED_ADDRESS) or b"", response.transaction_id
            )
            assert relayed[0] == "::1"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            response = _allocate_over(
                sock, ("127.0.0.1", turn.udp["127.0.0.1"]), b"\x01\x00\x00\x00"
            )
            relayed = decode_xor_address_untrusted(
                response.get(Attr.XOR_RELAYED_ADDRESS) or b"", response.transaction_id
            )
            assert relayed[0] == "127.0.0.1"
    finally:
        assert turn.stop() == 0


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_garbage_flood_does_not_crash_the_process_nor_grow_it(turn_server: TurnProcess) -> None:
    rng = random.Random(7)
    valid = _binding_request()
    target = ("127.0.0.1", turn_server.udp_port)

    def flood(n: int) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for i in range(n):
                if i % 2:
                    packet = bytearray(valid)
                    packet[rng.randrange(len(packet))] ^= 1 << rng.randrange(8)
                    sock.sendto(bytes(packet), target)
                else:
                    sock.sendto(rng.randbytes(rng.randint(1, 600)), target)
        with (
            socket.create_connection(("127.0.0.1", turn_server.tcp_port), timeout=5) as tcp,
            contextlib.suppress(OSError),
        ):
            tcp.sendall(b"\x00\x01\xff\xff" + rng.randbytes(3000))  # a frame that never ends
            tcp.sendall(b"\x7f" * 100)

    flood(5000)
    # An answered probe means the server has read what was queued before it (a UDP socket is
    # one FIFO); the kernel may drop probes while the queue is full, hence the retries.
    assert binding_probe(target).message_class == MessageClass.SUCCESS
    before = _rss_kib(turn_server.process.pid)
    flood(20000)
    assert binding_probe(target).message_class == MessageClass.SUCCESS
    assert turn_server.process.poll() is None
    assert _rss_kib(turn_server.process.pid) - before < 4096
