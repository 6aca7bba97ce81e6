"""An SFU node dials control, proves the node secret and is counted healthy."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from hushroom import node_link

pytestmark = pytest.mark.slow


def _healthz(base: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{base}/healthz", timeout=5) as response:
        body: dict[str, Any] = json.load(response)
        return body


def _start_control(spawn: Any, tmp_path: Path) -> tuple[Any, str]:
    control = spawn("control", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "data"))
    where = control.wait_for_line("control listening http ").rsplit(" ", 1)[1]
    control.wait_for_line("control ready")
    return control, f"http://{where}"


def test_healthz_answers_ok_with_version(spawn: Any, tmp_path: Path) -> None:
    _, base = _start_control(spawn, tmp_path)
    body = _healthz(base)
    assert body["status"] == "ok"
    assert isinstance(body["version"], str)
    assert body["sfu_nodes"] == 0
    secret = tmp_path / "data" / "node-secret"
    assert secret.stat().st_mode & 0o777 == 0o600


def test_node_registers_and_is_counted_until_it_stops(spawn: Any, tmp_path: Path) -> None:
    control, base = _start_control(spawn, tmp_path)
    url = base.replace("http://", "ws://") + node_link.PATH
    secret = str(tmp_path / "data" / "node-secret")
    node = spawn("sfu", "--control-url", url, "--node-secret-file", secret, "--workers", "2")
    lines = [node.wait_for_line(f"sfu worker {i} listening udp ") for i in (0, 1)]
    ports = [int(line.rsplit(":")[1]) for line in lines]
    assert all(p > 0 for p in ports) and ports[0] != ports[1]
    node.wait_for_line("sfu ready")
    assert _healthz(base)["sfu_nodes"] == 1
    assert node.interrupt() == 0
    deadline = time.monotonic() + 10
    while _healthz(base)["sfu_nodes"] != 0:
        assert time.monotonic() < deadline, "control still counts a stopped node"
        time.sleep(0.1)
    assert control.interrupt() == 0


def test_node_with_the_wrong_secret_is_refused(spawn: Any, tmp_path: Path) -> None:
    _, base = _start_control(spawn, tmp_path)
    url = base.replace("http://", "ws://") + node_link.PATH
    wrong = tmp_path / "wrong-secret"
    wrong.write_text("not the secret\n")
    node = spawn("sfu", "--control-url", url, "--node-secret-file", str(wrong), "--workers", "1")
    # Refusal is an absence: watch for a while that the node is never counted, and that
    # it keeps retrying rather than crashing.
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        assert _healthz(base)["sfu_nodes"] == 0
        assert node.popen.poll() is None
        time.sleep(0.2)
    assert "sfu ready" not in node.lines
    assert node.interrupt() == 0


def test_link_proof_is_bound_to_challenge_and_node_id() -> None:
    secret, challenge = b"s" * 32, node_link.new_challenge()
    proof = node_link.prove(secret, challenge, "node-a")
    assert node_link.verify_proof(secret, challenge, "node-a", proof)
    assert not node_link.verify_proof(secret, node_link.new_challenge(), "node-a", proof)
    assert not node_link.verify_proof(secret, challenge, "node-b", proof)
    assert not node_link.verify_proof(b"t" * 32, challenge, "node-a", proof)
    assert not node_link.verify_proof(secret, challenge, "node-a", "not bytes")


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xc1",
        b"\x93\x01\x02\x03",
        node_link.encode_frame("x", {})[:-1],
        "text",
        b"\x81\x01\x02",
    ],
)
def test_malformed_link_frames_are_typed_errors(raw: bytes | str) -> None:
    with pytest.raises(node_link.LinkProtocolError):
        node_link.decode_frame_untrusted(raw)
