"""The ``python -m turn`` process contract: announce lines, Binding on UDP and TCP, clean exit."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys

import pytest
from turn_support import TurnProcess, start_turn

from turn.stun import (
    Attr,
    Message,
    MessageClass,
    Method,
    decode_xor_address_untrusted,
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
