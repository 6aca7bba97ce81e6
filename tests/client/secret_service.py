"""A real, private Secret Service for keyring tests: its own D-Bus session bus and an
unlocked gnome-keyring-daemon, both children of the test, torn down with it.

The bus has its own configuration with no service directories, so nothing is activated on
it behind the test's back, and it listens on a socket in a private temporary directory:
the machine's own session bus and keyrings (if any) are never touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from jeepney import DBus, MatchRule, message_bus
from jeepney.io.blocking import open_dbus_connection

__all__ = ["SecretService", "ensure_tools", "running_secret_service"]

PACKAGES = ("gnome-keyring", "dbus")
TOOLS = ("dbus-daemon", "gnome-keyring-daemon")
SECRETS_NAME = "org.freedesktop.secrets"
_START_TIMEOUT_S = 20.0

_BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:dir={socket_dir}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


def ensure_tools() -> None:
    """Install gnome-keyring and dbus when missing (the machines run as root), else skip."""
    if all(shutil.which(tool) for tool in TOOLS):
        return
    why = "not root, or no apt-get"
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]
        done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            # The package lists may be missing or stale on a fresh machine.
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
            done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
        why = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "apt-get failed"
    if not all(shutil.which(tool) for tool in TOOLS):
        pytest.skip(
            f"no Secret Service to test with: {' and '.join(PACKAGES)} cannot be "
            f"installed here ({why})"
        )


class SecretService:
    """Where the private bus is and the environment a client process needs to use it."""

    def __init__(self, address: str, home: Path) -> None:
        self.address = address
        self.home = home

    def env(self, base: dict[str, str]) -> dict[str, str]:
        """``base`` pointed at this bus, with a private HOME (keyring reads its config
        there) and the keyring not forced off."""
        env = dict(base)
        env.pop("HUSHROOM_NO_KEYRING", None)
        env.pop("PYTHON_KEYRING_BACKEND", None)
        return env | {
            "DBUS_SESSION_BUS_ADDRESS": self.address,
            "HOME": str(self.home),
            "XDG_CONFIG_HOME": str(self.home / ".config"),
            "XDG_DATA_HOME": str(self.home / ".local" / "share"),
        }


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@contextmanager
def running_secret_service(workdir: Path, *, unlocked: bool = True) -> Iterator[SecretService]:
    """Start the bus and gnome-keyring-daemon on it; stop both afterwards.

    ``unlocked``: the daemon creates and unlocks a login keyring; without it there is no
    usable collection (creating one would need a password prompt nobody can answer).
    """
    ensure_tools()
    home = workdir / "home"
    runtime = workdir / "run"
    for d in (home, runtime):
        d.mkdir(parents=True, mode=0o700)
    # A socket path has at most 107 bytes: a test's own directory can be too deep (under
    # pytest-xdist, say), so the bus listens in a short one of its own.
    sockets = Path(tempfile.mkdtemp(prefix="hushroom-bus-"))
    config = workdir / "bus.conf"
    config.write_text(_BUS_CONFIG.format(socket_dir=sockets))
    bus = subprocess.Popen(
        [
            "dbus-daemon",
            "--config-file",
            str(config),
            "--nofork",
            "--nopidfile",
            "--print-address=1",
        ],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        # It says on stderr that it could not raise its fd limit (not root-owned limits).
        stderr=subprocess.DEVNULL,
    )
    daemon: subprocess.Popen[bytes] | None = None
    try:
        assert bus.stdout is not None
        address = bus.stdout.readline().decode().strip()
        if not address:
            raise RuntimeError("dbus-daemon did not print its address")
        service = SecretService(address, home)
        daemon_env = service.env({"PATH": os.environ.get("PATH", "/usr/bin:/bin")}) | {
            "XDG_RUNTIME_DIR": str(runtime)
        }
        with open_dbus_connection(address) as watcher:
            # Subscribe before starting the daemon, then wait for the name to be taken:
            # the daemon is ready exactly when it owns org.freedesktop.secrets.
            rule = MatchRule(
                type="signal",
                sender=message_bus.bus_name,
                interface=message_bus.interface,
                member="NameOwnerChanged",
                path=message_bus.object_path,
            )
            rule.add_arg_condition(0, SECRETS_NAME)
            watcher.send_and_get_reply(message_bus.AddMatch(rule))
            with watcher.filter(rule) as owner_changes:
                unlock = ["--unlock"] if unlocked else []
                daemon = subprocess.Popen(
                    ["gnome-keyring-daemon", "--foreground", *unlock, "--components=secrets"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    env=daemon_env,
                )
                assert daemon.stdin is not None
                if unlocked:
                    # The login keyring is created, unlocked, with this password.
                    daemon.stdin.write(b"keyring password of the test")
                daemon.stdin.close()
                owned = watcher.send_and_get_reply(DBus().NameHasOwner(SECRETS_NAME)).body[0]
                if not owned:
                    watcher.recv_until_filtered(owner_changes, timeout=_START_TIMEOUT_S)
        yield service
    finally:
        if daemon is not None:
            _stop(daemon)
        _stop(bus)
        shutil.rmtree(sockets, ignore_errors=True)
