"""``hushroom up``: every part of a deployment on one machine, on embedded defaults.

Starts the control plane, one TURN server and one SFU node as child processes, waits until
each proves it is ready (control answers ``/healthz``, TURN answers a STUN Binding request,
the SFU node is registered and healthy as seen by control), prints where everything listens,
and on Ctrl-C (or SIGTERM) stops all of them and exits 0. A child that dies stops the rest
and makes ``up`` exit 1.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import trio

from .config import ConfigError, option, run_main
from .secrets_file import ensure_secret_file

__all__ = ["UpConfig", "main"]

STOP_GRACE_S = 10.0
STUN_BINDING_REQUEST = 0x0001
STUN_BINDING_SUCCESS = 0x0101
STUN_MAGIC_COOKIE = 0x2112A442


def _check_port(value: int) -> int:
    if not 0 <= value < 65536:
        raise ValueError("must be 0-65535 (0: any free port)")
    return value


def _check_timeout(value: float) -> float:
    if not 0 < value <= 600:
        raise ValueError("must be between 0 and 600 seconds")
    return value


def _check_ip(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"expected an IP address, got {value!r}") from None
    return value


@dataclass(frozen=True)
class UpConfig:
    """Settings of ``hushroom up`` (flags > ``HUSHROOM_UP_*`` > TOML ``[up]``)."""

    host: str = option("127.0.0.1", help="address every part listens on", check=_check_ip)
    announce_ip: str | None = option(
        None,
        help="address clients are given for TURN relays and SFU media "
        "(default: --host; required when --host is a wildcard)",
        check=_check_ip,
    )
    control_port: int = option(8080, help="control plane HTTP port", check=_check_port)
    turn_port: int = option(3478, help="TURN port, UDP and TCP", check=_check_port)
    data_dir: Path = option(Path("data"), help="database and secrets live here")
    workers: int = option(0, help="SFU worker processes, 0 = one per core")
    realm: str = option("hushroom", help="TURN realm")
    ready_timeout: float = option(60.0, help="seconds to wait for each part", check=_check_timeout)

    @property
    def local_host(self) -> str:
        """Where ``up`` itself reaches the parts (loopback when they listen on a wildcard)."""
        if ipaddress.ip_address(self.host).is_unspecified:
            return "::1" if ":" in self.host else "127.0.0.1"
        return self.host

    def validate(self) -> None:
        """A wildcard listener cannot tell clients where to send media by itself."""
        if ipaddress.ip_address(self.host).is_unspecified and self.announce_ip is None:
            raise ConfigError("--announce-ip", "is required when --host is a wildcard")


class ChildFailed(Exception):
    """A child process could not start or exited while running."""


@dataclass
class Child:
    """One started part and what it announced on stdout."""

    name: str
    process: _ChildProcess
    listening: list[str]

    def port(self, kind: str) -> int:
        """The port of the first ``<kind> HOST:PORT`` the child announced (real, even for 0)."""
        for where in self.listening:
            announced_kind, _, address = where.partition(" ")
            if announced_kind == kind:
                return int(address.rsplit(":", 1)[1])
        raise ChildFailed(f"{self.name} did not announce a {kind} listener")


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this child if ``up`` dies without cleaning up (e.g. SIGKILL)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


class _ChildProcess:
    """A child forked by the thread that runs trio, waited on through a pidfd.

    Linux sends the parent-death signal (``_die_with_parent``) when the *thread* that forked
    the child ends, not the process. ``trio.lowlevel.open_process`` forks from a worker
    thread, which trio retires after 10 s idle: every child was then sent SIGTERM about
    10 s after ``up`` had started it. Forking here, on the thread that runs trio and lives
    exactly as long as ``up``, ties the signal to ``up``'s life. The fork blocks the event
    loop for a few milliseconds, once per part, before anything else runs.
    """

    def __init__(self, argv: list[str]) -> None:
        self._popen = subprocess.Popen(
            argv, stdout=subprocess.PIPE, process_group=0, preexec_fn=_die_with_parent
        )
        assert self._popen.stdout is not None
        self.stdout = trio.lowlevel.FdStream(os.dup(self._popen.stdout.fileno()))
        self._popen.stdout.close()
        self._pidfd = os.pidfd_open(self._popen.pid)

    @property
    def returncode(self) -> int | None:
        """The exit status once :meth:`wait` has seen the child end."""
        return self._popen.returncode

    async def wait(self) -> int:
        """Wait for the child to end (a pidfd turns readable then) and reap it."""
        if self._popen.returncode is None:
            await trio.lowlevel.wait_readable(self._pidfd)
            self._popen.wait()
        return self._popen.returncode

    def terminate(self) -> None:
        """SIGTERM, unless it has been reaped (``Popen`` checks)."""
        self._popen.terminate()

    def kill(self) -> None:
        """SIGKILL, unless it has been reaped."""
        self._popen.kill()

    async def aclose(self) -> None:
        """Release the pipe and the pidfd (after the child was reaped)."""
        await self.stdout.aclose()
        os.close(self._pidfd)


async def _stop(process: _ChildProcess) -> None:
    """SIGTERM, then SIGKILL after a grace period; always reaps the child."""
    with trio.CancelScope(shield=True):
        if process.returncode is None:
            process.terminate()
            with trio.move_on_after(STOP_GRACE_S):
                await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()


async def run_child(
    name: str,
    argv: list[str],
    ready_line: str,
    ready_within_s: float,
    *,
    task_status: trio.TaskStatus[Child] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run ``python -m <argv>``; ``started`` once it prints ``ready_line``; raise if it dies.

    The child gets its own process group so Ctrl-C at the terminal reaches only ``up``,
    which then stops the children in order instead of all of them racing.
    """
    process = _ChildProcess([sys.executable, "-m", *argv])
    try:
        lines = _Lines(process.stdout)
        listening: list[str] = []
        with trio.move_on_after(ready_within_s) as scope:
            while (line := await lines.next()) != ready_line:
                if line is None:
                    raise ChildFailed(f"{name} exited before it was ready")
                if " listening " in line:
                    listening.append(line.split(" listening ", 1)[1])
                print(f"[{name}] {line}", flush=True)
        if scope.cancelled_caught:
            raise ChildFailed(f"{name} was not ready within {ready_within_s:.0f} s")
        task_status.started(Child(name, process, listening))
        while (line := await lines.next()) is not None:
            print(f"[{name}] {line}", flush=True)
        await process.wait()
        raise ChildFailed(f"{name} exited unexpectedly with status {process.returncode}")
    finally:
        await _stop(process)
        with trio.CancelScope(shield=True):
            await process.aclose()


class _Lines:
    """Split a child's stdout into text lines."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = bytearray()

    async def next(self) -> str | None:
        """The next line without its newline, or None at end of stream."""
        while (end := self._buffer.find(b"\n")) < 0:
            chunk = await self._stream.receive_some(65536)
            if not chunk:
                return None
            self._buffer += chunk
        line = bytes(self._buffer[:end]).decode(errors="replace")
        del self._buffer[: end + 1]
        return line


def _stun_binding_answered(host: str, port: int, timeout: float) -> bool:
    """Send a bare RFC 8489 Binding request over UDP and wait for its success response."""
    txid = secrets.token_bytes(12)
    request = (
        STUN_BINDING_REQUEST.to_bytes(2, "big")
        + (0).to_bytes(2, "big")
        + STUN_MAGIC_COOKIE.to_bytes(4, "big")
        + txid
    )
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(request, (host, port))
        try:
            while True:
                reply = sock.recv(2048)
                if reply[8:20] == txid:
                    return int.from_bytes(reply[:2], "big") == STUN_BINDING_SUCCESS
        except OSError:
            return False


def _healthz(url: str) -> dict[str, object]:
    with urllib.request.urlopen(url, timeout=2) as response:
        body: dict[str, object] = json.load(response)
        return body


async def _wait_for_sfu_node(url: str, within_s: float) -> None:
    with trio.move_on_after(within_s):
        while True:
            with contextlib.suppress(OSError, ValueError):
                health = await trio.to_thread.run_sync(_healthz, url)
                nodes = health.get("sfu_nodes")
                if isinstance(nodes, int) and nodes >= 1:
                    return
            await trio.sleep(0.2)
    raise ChildFailed(f"control did not see a healthy SFU node within {within_s:.0f} s")


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def run_up(config: UpConfig) -> None:
    """Start everything, report, and run until a signal or a failure."""
    data_dir = config.data_dir
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    node_secret, turn_secret = data_dir / "node-secret", data_dir / "turn-secret"
    ensure_secret_file(node_secret)
    ensure_secret_file(turn_secret)
    announce = ["--announce-ip", config.announce_ip] if config.announce_ip else []
    external = ["--external-ip", config.announce_ip] if config.announce_ip else []
    timeout = config.ready_timeout

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            turn: Child = await nursery.start(
                run_child,
                "turn",
                [
                    "turn",
                    "--listen",
                    f"{_url_host(config.host)}:{config.turn_port}",
                    "--realm",
                    config.realm,
                    "--secret-file",
                    str(turn_secret),
                    *external,
                ],
                "turn ready",
                timeout,
            )
            # Voice clients get TURN credentials minted with the secret turn holds.
            turn_host = _url_host(config.announce_ip or config.local_host)
            turn_urls = [
                f"turn:{turn_host}:{turn.port('udp')}?transport=udp",
                f"turn:{turn_host}:{turn.port('tcp')}?transport=tcp",
            ]
            control: Child = await nursery.start(
                run_child,
                "control",
                [
                    "control",
                    "--listen",
                    f"{_url_host(config.host)}:{config.control_port}",
                    "--data-dir",
                    str(data_dir),
                    "--node-secret-file",
                    str(node_secret),
                    "--turn-secret-file",
                    str(turn_secret),
                    "--turn-url",
                    ",".join(turn_urls),
                ],
                "control ready",
                timeout,
            )
            base = f"http://{_url_host(config.local_host)}:{control.port('http')}"
            control_ws = base.replace("http://", "ws://", 1) + "/internal/v1/sfu"
            answered = await trio.to_thread.run_sync(
                _stun_binding_answered, config.local_host, turn.port("udp"), 5.0
            )
            if not answered:
                raise ChildFailed("TURN did not answer a STUN Binding request")
            sfu: Child = await nursery.start(
                run_child,
                "sfu",
                [
                    "sfu",
                    "--control-url",
                    control_ws,
                    "--node-secret-file",
                    str(node_secret),
                    "--listen-ip",
                    config.host,
                    "--workers",
                    str(config.workers),
                    *announce,
                ],
                "sfu ready",
                timeout,
            )
            await _wait_for_sfu_node(f"{base}/healthz", timeout)
            print("hushroom is up", flush=True)
            for child in (control, turn, sfu):
                for where in child.listening:
                    print(f"  {child.name:<8} {where}", flush=True)
            print(f"  {'data':<8} {data_dir.resolve()}", flush=True)
            print("Press Ctrl-C to stop.", flush=True)
            async for _ in signals:
                print("stopping ...", flush=True)
                nursery.cancel_scope.cancel()
                break


@contextlib.contextmanager
def _own_terminal_foreground() -> Iterator[None]:
    """Make ``up`` the terminal's foreground process group for its lifetime.

    Under ``make run`` a Ctrl-C would otherwise also hit make, which then exits with the
    signal's status whatever ``up`` does; owning the foreground means only ``up`` sees it,
    stops everything, and make reports ``up``'s exit status (0).
    """
    try:
        fd = sys.stdin.fileno()
        if not os.isatty(fd) or os.tcgetpgrp(fd) != os.getpgrp():
            yield
            return
    except (OSError, ValueError):
        yield
        return
    previous = os.getpgrp()
    old_ttou = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    try:
        os.setpgid(0, 0)
        os.tcsetpgrp(fd, os.getpgrp())
        yield
    finally:
        with contextlib.suppress(OSError):
            os.tcsetpgrp(fd, previous)
        signal.signal(signal.SIGTTOU, old_ttou)


def _run(config: UpConfig) -> int:
    failures: list[str] = []
    with _own_terminal_foreground():
        try:
            trio.run(run_up, config)
        except* ChildFailed as group:
            failures += [str(exc) for exc in group.exceptions]
        except* OSError as group:
            failures += [f"cannot start: {exc}" for exc in group.exceptions]
    for failure in failures:
        print(f"hushroom up: {failure}", file=sys.stderr)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``hushroom up``."""
    return run_main(
        "hushroom up",
        "Start control plane, TURN and one SFU node on this machine.",
        UpConfig,
        "up",
        argv,
        _run,
    )
