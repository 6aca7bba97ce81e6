"""Device linking through the server's provisioning mailbox, with separate CLI processes
for the new and the existing device, against a real control process."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from client_cli import Cli, passphrase_env
from client_live import ControlProcess

from client.store import STORE_FILE
from e2ee import LinkingSecret
from e2ee.linking import parse_link_code

pytestmark = pytest.mark.slow


def join(cli: Cli, server: str, profile: str, *extra: str) -> tuple[subprocess.Popen[str], str]:
    """Start ``join-device`` and return it with the link code it shows."""
    proc = cli.popen("join-device", "--profile", profile, "--server", server, "--json", *extra)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, proc.communicate(timeout=30)
    shown = json.loads(line)
    assert shown["qr"] == "hushroom-link:1:" + shown["code"].replace("-", "")
    return proc, str(shown["code"])


def one_sentence(result: subprocess.CompletedProcess[str], start: str) -> None:
    assert result.returncode == 1, result
    assert result.stdout == ""
    assert result.stderr.startswith(f"hushroom: {start}"), result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.rstrip().endswith(".")


def test_a_device_linked_through_the_server_receives_dms_sent_after_linking(
    control: ControlProcess, tmp_path: Path
) -> None:
    cli = Cli(tmp_path, passphrase_env("linking test passphrase"))
    cli("register", "ann", "--profile", "a", "--server", control.url)
    cli("register", "ben", "--profile", "b", "--server", control.url)
    cli("dm", "ann", "sent before the new device existed", "--profile", "b")

    joining, code = join(cli, control.url, "a2")
    linked = cli.json("link-device", code, "--profile", "a")
    out, err = joining.communicate(timeout=60)
    assert joining.returncode == 0, err
    joined = json.loads(out.strip().splitlines()[-1])
    assert isinstance(linked, dict) and joined["device_id"] == linked["device_id"]
    assert joined["handle"] == "ann" and joined["key_source"] == "passphrase"

    # Both profiles see the same two devices; each knows which one it is.
    for profile in ("a", "a2"):
        devices = cli.json("devices", "--profile", profile)
        assert isinstance(devices, list) and len(devices) == 2
        (this,) = [d for d in devices if d["this"]]
        assert (this["id"] == linked["device_id"]) == (profile == "a2")

    cli("dm", "ann", "sent after linking", "--profile", "b")
    old_and_new = cli.json("read", "@ben", "--profile", "a")
    assert [m["body"] for m in old_and_new] == [  # type: ignore[union-attr]
        "sent before the new device existed",
        "sent after linking",
    ]
    only_new = cli.json("read", "@ben", "--profile", "a2")
    assert [m["body"] for m in only_new] == ["sent after linking"]  # type: ignore[union-attr]

    # The new device also sends: ben reads it, ann's first device gets its copy.
    cli("dm", "ben", "from the new device", "--profile", "a2")
    conversation = cli.json("read", "@ann", "--profile", "b")
    assert isinstance(conversation, list)
    assert (conversation[-1]["body"], conversation[-1]["direction"]) == (
        "from the new device",
        "in",
    )
    copies = cli.json("read", "@ben", "--profile", "a")
    assert [m["body"] for m in copies][-1] == "from the new device"  # type: ignore[union-attr]

    # The server only relayed ciphertext under an id it cannot turn into the key: neither
    # the code nor the mailbox id reached its database or its (debug-level) log.
    mailbox = LinkingSecret(parse_link_code(code)).mailbox_id.hex()
    stored = b"".join(p.read_bytes() for p in control.data_dir.glob("control.sqlite3*"))
    log = control.log_path.read_bytes()
    for needle in (code.encode(), code.replace("-", "").encode(), mailbox.encode()):
        assert needle not in stored and needle not in log


def test_bad_expired_and_used_link_codes_are_one_sentence_errors(
    control: ControlProcess, tmp_path: Path
) -> None:
    cli = Cli(tmp_path, passphrase_env("linking test passphrase"))
    cli("register", "cat", "--profile", "c", "--server", control.url)

    one_sentence(cli("link-device", "not-a-code", "--profile", "c", ok=False), "That is not")
    unknown = LinkingSecret().code
    one_sentence(cli("link-device", unknown, "--profile", "c", ok=False), "No device is waiting")
    # The device made for the unknown code was taken off the account again.
    assert len(cli.json("devices", "--profile", "c")) == 1  # type: ignore[arg-type]

    # A code nobody used expires; the waiting side says so and leaves no profile.
    waiting, code = join(cli, control.url, "c2", "--timeout", "1")
    _, err = waiting.communicate(timeout=60)
    one_sentence(subprocess.CompletedProcess(waiting.args, waiting.returncode, "", err), "The link")
    assert "expired" in err
    assert not (tmp_path / "c2" / STORE_FILE).exists() and not (tmp_path / "c2").exists()
    one_sentence(cli("link-device", code, "--profile", "c", ok=False), "No device is waiting")

    # A code works once: the mailbox went when the new device read it.
    joining, code = join(cli, control.url, "c3")
    cli("link-device", code, "--profile", "c")
    _, err = joining.communicate(timeout=60)
    assert joining.returncode == 0, err
    one_sentence(cli("link-device", code, "--profile", "c", ok=False), "No device is waiting")
    assert len(cli.json("devices", "--profile", "c")) == 2  # type: ignore[arg-type]

    usage = cli("join-device", "--profile", "c4", "--timeout", "601", ok=False)
    assert usage.returncode == 2 and "600" in usage.stderr
