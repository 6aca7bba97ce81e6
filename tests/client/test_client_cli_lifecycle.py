"""The people's commands end to end: devices, verification, backup, tail, export, deletion."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from client_cli import Cli, passphrase_env
from client_live import ControlProcess

pytestmark = pytest.mark.slow


def test_devices_verify_backup_tail_export_delete(control: ControlProcess, tmp_path: Path) -> None:
    cli = Cli(
        tmp_path,
        passphrase_env(
            "lifecycle test passphrase",
            HUSHROOM_BACKUP_PASSPHRASE="backup passphrase for the test",
        ),
    )
    cli("register", "ann", "--profile", "a", "--server", control.url)
    cli("register", "ben", "--profile", "b", "--server", control.url)

    # A second device for ann, in its own profile, linked through the server; ben's DM
    # reaches both.
    joining = cli.popen("join-device", "--profile", "a2", "--server", control.url, "--json")
    assert joining.stdout is not None
    code = json.loads(joining.stdout.readline())["code"]
    cli("link-device", code, "--profile", "a")
    _, err = joining.communicate(timeout=60)
    assert joining.returncode == 0, err
    devices = cli.json("devices", "--profile", "a2")
    assert isinstance(devices, list) and len(devices) == 2
    cli("dm", "ann", "hello to both of your devices", "--profile", "b")
    for profile in ("a", "a2"):
        (message,) = cli.json("read", "@ben", "--profile", profile)  # type: ignore[misc]
        assert message["body"] == "hello to both of your devices"

    # Safety numbers agree on both sides; marking one verified is remembered.
    ben_view = cli.json("verify", "ann", "--profile", "b", "--mark")
    ann_view = cli.json("verify", "ben", "--profile", "a")
    assert isinstance(ben_view, dict) and isinstance(ann_view, dict)
    assert ben_view["safety_number"] == ann_view["safety_number"]
    assert ben_view["verified"] is True and ann_view["verified"] is False

    # Backup, then restore ben's device into a fresh profile: it reads what comes next.
    # The backup is readable by its owner only, even over a file others could read.
    (tmp_path / "ben.backup").write_bytes(b"")
    (tmp_path / "ben.backup").chmod(0o644)
    cli("backup", "export", "ben.backup", "--profile", "b")
    assert stat.S_IMODE((tmp_path / "ben.backup").stat().st_mode) == 0o600
    assert (tmp_path / "ben.backup").stat().st_size > 0
    assert b"hello" not in (tmp_path / "ben.backup").read_bytes()
    restored = cli.json(
        "backup", "import", "ben.backup", "--profile", "b-restored", "--server", control.url
    )
    assert isinstance(restored, dict) and restored["handle"] == "ben"
    cli("dm", "ben", "after the restore", "--profile", "a")
    (late,) = cli.json("read", "@ann", "--profile", "b-restored")  # type: ignore[misc]
    assert late["body"] == "after the restore"

    # tail catches up (the copy of ann's DM from her other device), follows live and
    # stops after --count messages.
    follower = cli.popen("tail", "--profile", "a2", "--count", "2", "--timeout", "30", "--json")
    cli("dm", "ann", "live one", "--profile", "b-restored")
    out, err = follower.communicate(timeout=40)
    assert follower.returncode == 0, err
    lines = [json.loads(line) for line in out.strip().splitlines()]
    # (Both may also arrive while tail catches up: the relay orders envelopes of one
    # second by random id.)
    assert sorted((m["body"], m["direction"]) for m in lines) == [
        ("after the restore", "out"),
        ("live one", "in"),
    ]

    # Channels: create one, list it, talk in it.
    cli("guild", "create", "Crew", "--profile", "a")
    made = cli.json("channel", "create", "Crew", "plans", "--profile", "a")
    assert isinstance(made, dict) and made["name"] == "plans"
    listed = cli.json("channel", "list", "Crew", "--profile", "a")
    assert isinstance(listed, list) and sorted(c["name"] for c in listed) == ["general", "plans"]
    cli("send", "Crew/plans", "a note to self", "--profile", "a")
    cli("dm", "ann", "and a DM", "--profile", "b-restored")
    # `read` alone fetches everything new and labels where each message was said.
    everything = cli("read", "--profile", "a2").stdout
    assert "[#plans] ann: a note to self" in everything
    assert "[@ben] ben: and a DM" in everything
    (note,) = cli.json("read", "Crew/plans", "--profile", "a2")  # type: ignore[misc]
    assert note["body"] == "a note to self" and note["sender_handle"] == "ann"

    # Removing the second device (from the first): it is gone from the account's list.
    second = next(d["id"] for d in devices if d["this"])  # type: ignore[index]
    cli("devices", "remove", second, "--profile", "a")
    assert len(cli.json("devices", "--profile", "a")) == 1  # type: ignore[arg-type]

    # The server's export names ann and holds no plaintext.
    exported = cli.json("export-my-data", "--profile", "a")
    assert isinstance(exported, dict)
    assert exported["server"]["user"]["handle"] == "ann"
    assert "live one" not in json.dumps(exported["server"])

    # Deleting the account works once confirmed; afterwards its tokens are dead.
    refused = cli("delete-account", "--profile", "b-restored", ok=False)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    cli("delete-account", "--profile", "b-restored", "--yes")
    gone = cli("devices", "--profile", "b", ok=False)
    assert gone.returncode == 1
    assert gone.stderr.startswith("hushroom: ") and gone.stderr.count("\n") == 1
