"""The store key in a real OS keyring (gnome-keyring's Secret Service on a private bus)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import keyring
import pytest
import secretstorage
from client_cli import Cli
from client_live import ControlProcess
from keyring.backends.SecretService import Keyring as SecretServiceKeyring
from secret_service import SecretService, running_secret_service

from client import os_keyring
from client.errors import StoreError
from client.store import STORE_FILE, Store

pytestmark = pytest.mark.slow


@pytest.fixture
def secret_service(tmp_path: Path) -> Iterator[SecretService]:
    """An unlocked gnome-keyring-daemon on a D-Bus session bus of this test's own."""
    with running_secret_service(tmp_path / "secret-service") as service:
        yield service


@pytest.fixture
def keyring_here(
    secret_service: SecretService, monkeypatch: pytest.MonkeyPatch
) -> Iterator[SecretService]:
    """This test process pointed at the private bus, with the Secret Service backend.

    keyring settles its backend (and which backends are viable) once per process, so the
    backend is set explicitly here and the previous one put back afterwards.
    """
    for name, value in secret_service.env({}).items():
        monkeypatch.setenv(name, value)
    previous = keyring.get_keyring()
    keyring.set_keyring(SecretServiceKeyring())
    try:
        yield secret_service
    finally:
        keyring.set_keyring(previous)


def never_asked() -> str:
    raise AssertionError("a keyring store must not ask for a passphrase")


def meta(profile: Path) -> dict[str, object]:
    with sqlite3.connect(profile / STORE_FILE) as db:
        return dict(db.execute("SELECT name, value FROM meta").fetchall())


def test_keyring_store_opens_again_without_a_passphrase_and_seals_records(
    keyring_here: SecretService, tmp_path: Path
) -> None:
    profile = tmp_path / "p"
    store = Store.open(profile, never_asked, create=True, use_keyring=True)
    assert store.key_source == "keyring"
    store.put("contact", "user-id-in-the-clear?", {"handle": "marker-handle"})
    store.close()

    row = meta(profile)
    assert row["key_source"] == "keyring"
    assert "salt" not in row
    entry = row["keyring_entry"]
    assert isinstance(entry, str) and entry.startswith("store-")
    # The keyring holds the key under the profile's random id, not under any name.
    secret = keyring.get_password(os_keyring.SERVICE, entry)
    assert secret is not None and len(secret) == 44
    raw = b"".join(p.read_bytes() for p in profile.glob(STORE_FILE + "*"))
    assert b"marker-handle" not in raw and b"user-id-in-the-clear?" not in raw

    again = Store.open(profile, never_asked)
    assert again.get("contact", "user-id-in-the-clear?") == {"handle": "marker-handle"}
    again.close()

    keyring.delete_password(os_keyring.SERVICE, entry)
    with pytest.raises(StoreError, match="no longer holds this profile's store key"):
        Store.open(profile, never_asked)


def test_passphrase_is_used_when_the_keyring_is_not_wanted(
    keyring_here: SecretService, tmp_path: Path
) -> None:
    store = Store.open(tmp_path / "p", "a passphrase", create=True, use_keyring=False)
    assert store.key_source == "passphrase"
    store.close()
    assert meta(tmp_path / "p")["key_source"] == "passphrase"
    with pytest.raises(StoreError, match="wrong passphrase"):
        Store.open(tmp_path / "p", "another one")


def test_destroying_a_keyring_store_removes_its_keyring_entry(
    keyring_here: SecretService, tmp_path: Path
) -> None:
    store = Store.open(tmp_path / "p", never_asked, create=True, use_keyring=True)
    entry = meta(tmp_path / "p")["keyring_entry"]
    assert isinstance(entry, str)
    store.destroy()
    assert not Store.exists(tmp_path / "p")
    assert keyring.get_password(os_keyring.SERVICE, entry) is None


def test_a_store_whose_meta_cannot_be_written_leaves_no_keyring_entry(
    keyring_here: SecretService, tmp_path: Path
) -> None:
    # A store file whose meta table refuses every row, as a full or failing disk would.
    profile = tmp_path / "p"
    profile.mkdir()
    with sqlite3.connect(profile / STORE_FILE) as db:
        db.executescript(
            "CREATE TABLE meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);"
            "CREATE TRIGGER refuse BEFORE INSERT ON meta BEGIN SELECT RAISE(ABORT, 'no'); END;"
        )
    with pytest.raises(sqlite3.IntegrityError):
        Store.open(profile, never_asked, create=True, use_keyring=True)
    bus = secretstorage.dbus_init()
    try:
        left = list(secretstorage.search_items(bus, {"service": os_keyring.SERVICE}))
    finally:
        bus.close()
    assert left == []


def test_cli_keeps_the_store_key_in_the_keyring_and_needs_no_passphrase(
    secret_service: SecretService, control: ControlProcess, tmp_path: Path
) -> None:
    base = {k: v for k, v in os.environ.items() if k != "HUSHROOM_PASSPHRASE"}
    cli = Cli(tmp_path, secret_service.env(base), check=False)

    made = cli("register", "kim", "--profile", "k", "--server", control.url, "--json")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["key_source"] == "keyring"
    listed = cli("devices", "--profile", "k", "--json")
    assert listed.returncode == 0, listed.stderr
    assert len(json.loads(listed.stdout)) == 1
    raw = (tmp_path / "k" / STORE_FILE).read_bytes()
    assert b"kim" not in raw and json.loads(made.stdout)["user_id"].encode() not in raw

    # A device joining the account through the server also keeps its key in the keyring.
    joining = subprocess.Popen(
        [
            *(sys.executable, "-m", "client", "join-device"),
            *("--profile", "k2", "--server", control.url, "--json"),
        ],
        cwd=tmp_path,
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert joining.stdout is not None
    code = json.loads(joining.stdout.readline())["code"]
    linked = cli("link-device", code, "--profile", "k")
    assert linked.returncode == 0, linked.stderr
    out, err = joining.communicate(timeout=60)
    assert joining.returncode == 0, err
    assert json.loads(out.strip().splitlines()[-1])["key_source"] == "keyring"
    assert meta(tmp_path / "k2")["keyring_entry"] != meta(tmp_path / "k")["keyring_entry"]
    both = cli("devices", "--profile", "k2", "--json")
    assert both.returncode == 0, both.stderr
    assert len(json.loads(both.stdout)) == 2

    # Forced off, by flag or by environment: a passphrase, and none given is a usage error
    # that leaves no half-made profile behind.
    refused = cli("register", "lee", "--profile", "l", "--server", control.url, "--no-keyring")
    assert refused.returncode == 2 and "passphrase" in refused.stderr
    assert not (tmp_path / "l").joinpath(STORE_FILE).exists()
    with_pass = cli.env | {"HUSHROOM_PASSPHRASE": "lee's passphrase", "HUSHROOM_NO_KEYRING": "1"}
    made = cli(
        "register", "lee", "--profile", "l", "--server", control.url, "--json", env=with_pass
    )
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["key_source"] == "passphrase"

    # The keyring item deleted behind the client's back: a clear sentence, status 1.
    entry = meta(tmp_path / "k")["keyring_entry"]
    deleted = subprocess.run(
        [sys.executable, "-c", f"import keyring; keyring.delete_password('hushroom', {entry!r})"],
        env=cli.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert deleted.returncode == 0, deleted.stderr
    gone = cli("devices", "--profile", "k")
    assert gone.returncode == 1
    assert gone.stderr.startswith("hushroom: The OS keyring no longer holds this profile's")
    assert gone.stderr.count("\n") == 1


def test_a_keyring_without_an_unlocked_collection_falls_back_to_the_passphrase(
    control: ControlProcess, tmp_path: Path
) -> None:
    with running_secret_service(tmp_path / "locked", unlocked=False) as locked:
        env = locked.env(dict(os.environ)) | {"HUSHROOM_PASSPHRASE": "fallback passphrase"}
        made = Cli(tmp_path, env, check=False)(
            "register", "ned", "--profile", "n", "--server", control.url, "--json"
        )
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["key_source"] == "passphrase"
    assert "keyring_entry" not in meta(tmp_path / "n")


def test_cli_falls_back_to_the_passphrase_without_a_keyring(
    control: ControlProcess, tmp_path: Path
) -> None:
    # No session bus at all: keyring has no backend to offer.
    env = {k: v for k, v in os.environ.items() if k != "DBUS_SESSION_BUS_ADDRESS"}
    env |= {"HUSHROOM_PASSPHRASE": "fallback passphrase", "HOME": str(tmp_path)}
    env.pop("HUSHROOM_NO_KEYRING", None)
    cli = Cli(tmp_path, env, check=False)
    made = cli("register", "max", "--profile", "m", "--server", control.url, "--json")
    assert made.returncode == 0, made.stderr
    assert json.loads(made.stdout)["key_source"] == "passphrase"
    wrong = cli("devices", "--profile", "m", env=env | {"HUSHROOM_PASSPHRASE": "not it"})
    assert wrong.returncode == 1 and "Wrong passphrase" in wrong.stderr
