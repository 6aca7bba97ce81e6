"""The README's "First call" walk-through, run exactly as written after "First chat",
against a whole deployment (``hushroom up``: control, TURN, an SFU node)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from client.voice import band_energy_fraction, dominant_frequency

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def readme_block(title: str) -> str:
    """The first ``sh`` block of the README section ``title``."""
    section = (ROOT / "README.md").read_text().split(f"\n## {title}\n", 1)[1]
    section = section.split("\n## ", 1)[0]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match is not None, f"no sh block in the {title} section"
    return match.group(1)


class Up:
    """``hushroom up`` on ports the OS picks; its output read by a thread as it comes."""

    def __init__(self, data_dir: Path) -> None:
        command = [
            str(Path(sys.executable).parent / "hushroom"), "up",
            "--control-port", "0",
            "--turn-port", "0",
            "--data-dir", str(data_dir),
            "--workers", "1",
        ]  # fmt: skip
        self.popen = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        self.ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith("Press Ctrl-C to stop."):
                self.ready.set()
        self.ready.set()  # exited: let the waiter look

    def url(self) -> str:
        assert self.ready.wait(120) and self.popen.poll() is None, "\n".join(self.lines)
        port = next(
            line.rsplit(":", 1)[1] for line in self.lines if line.startswith("  control  http ")
        )
        return f"http://127.0.0.1:{port}"

    def stop(self) -> int:
        self.popen.send_signal(signal.SIGINT)
        code = self.popen.wait(60)
        self._reader.join(10)
        return code


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[str]:
    """A whole deployment for one test; its control plane's URL."""
    up = Up(tmp_path / "data")
    try:
        yield up.url()
    finally:
        assert up.stop() == 0, "\n".join(up.lines)


def test_readme_first_call_runs_as_written(deployment: str, tmp_path: Path) -> None:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["HUSHROOM_SERVER"] = deployment
    env.pop("HUSHROOM_PASSPHRASE", None)
    env["HUSHROOM_NO_KEYRING"] = "1"  # never the keyring of whoever runs the tests
    work = tmp_path / "work"
    work.mkdir()
    script = readme_block("First chat") + readme_block("First call")
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    # Alice and Bob share the terminal: their lines may interleave mid-line.
    out = result.stdout
    # Both were in the call, each saw the other, someone was shown speaking.
    assert out.count("joined voice #Lounge") == 2, out
    assert out.count("left voice #Lounge") == 2, out
    assert "in the channel: @alice" in out and "in the channel: @bob" in out, out
    assert re.search(r"@(alice|bob) speaking", out), out
    # Bob recorded Alice, and says what he heard.
    said = re.search(
        r"recorded @alice: (\d+\.\d) s in (\S+?) \(strongest frequency (\d+) Hz\)", out
    )
    assert said is not None, out
    assert float(said.group(1)) >= 2.0 and said.group(2) == "call-alice.wav", out
    assert abs(int(said.group(3)) - 440) <= 5, out
    # The file itself holds Alice's 440 Hz, not Bob's own 660 Hz.
    with wave.open(str(work / "call-alice.wav")) as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (48000, 1, 2)
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    tail = samples[-2 * 48000 :]
    assert abs(dominant_frequency(tail) - 440) < 2
    assert band_energy_fraction(tail, 440) > 0.8
    assert band_energy_fraction(tail, 660) < 0.01
    assert [p.name for p in work.glob("call-*.wav")] == ["call-alice.wav"]
