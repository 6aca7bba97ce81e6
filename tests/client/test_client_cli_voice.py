"""The voice commands against a real control process: what works before control's voice
side exists (channel creation, refusals that need no voice session)."""

from __future__ import annotations

from pathlib import Path

import pytest
from client_cli import Cli, passphrase_env
from client_live import ControlProcess

pytestmark = pytest.mark.slow


def test_voice_channel_create_and_refusals(control: ControlProcess, tmp_path: Path) -> None:
    cli = Cli(tmp_path, passphrase_env("voice cli test passphrase"))
    cli("register", "vic", "--profile", "v", "--server", control.url)
    cli("guild", "create", "hall", "--profile", "v")
    made = cli.json(
        "channel",
        "create",
        "hall",
        "lounge",
        "--voice",
        "--user-limit",
        "5",
        "--bitrate",
        "96000",
        "--profile",
        "v",
    )
    assert isinstance(made, dict) and made["name"] == "lounge"
    listed = cli.json("channel", "list", "hall", "--profile", "v")
    assert isinstance(listed, list)
    assert {"id": made["id"], "name": "lounge", "type": "voice"} in listed
    # Voice options on a text channel, and joining a text channel, are usage errors.
    bad = cli("channel", "create", "hall", "x", "--user-limit", "3", "--profile", "v", ok=False)
    assert bad.returncode == 2 and "--voice" in bad.stderr
    text = cli("voice", "join", "hall/general", "--duration", "1", "--profile", "v", ok=False)
    assert text.returncode == 2 and "not a voice channel" in text.stderr
    # --play and --tone exclude each other.
    both = cli("voice", "join", "hall/lounge", "--tone", "440", "--play", "x.wav", ok=False)
    assert both.returncode == 2
    missing = cli("voice", "join", "hall/lounge", "--play", "nope.wav", "--profile", "v", ok=False)
    assert missing.returncode == 1 and "nope.wav" in missing.stderr
