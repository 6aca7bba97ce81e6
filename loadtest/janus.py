"""``--compare janus``: the ``voice-room`` load against the Janus VideoRoom plugin.

The same synthetic participants (:class:`loadtest.participant.VoiceParticipant`: ICE checks,
DTLS, SRTP, SFrame-protected frames carrying the in-ciphertext stamps of
:mod:`loadtest.metrics`) talk to Janus (Debian ``janus``) through its own API, as
``janus.js`` does: one WebSocket session per participant (``create``, keepalives), a
``janus.plugin.videoroom`` handle per PeerConnection; participant 0 creates the room; each
joins as a publisher with a sendonly Opus offer (``joinandconfigure`` with the offer as
JSEP); once everyone publishes, each subscribes to every other feed with one multistream
subscription (``join`` as ``subscriber`` with ``streams``, Janus ≥ 1.0) and answers Janus's
offer (``start``). The measurement window, the figures and the report are those of
:mod:`loadtest.voice_room`, computed by the same code.

**Where it runs.** Janus gathers ICE candidates only on non-loopback interfaces (its
``janus_ice_setup_local`` skips ``IFF_LOOPBACK`` ones), so it cannot do ICE on 127.0.0.1.
The harness therefore runs the Janus side in a child process inside a private network
namespace (``unshare --net``) in which it creates a veth pair with two addresses of the
benchmarking range (RFC 2544, 198.18.0.0/15): Janus's media on one, the participants on the
other, nothing routed anywhere else. Janus's API (the WebSocket transport only) listens on
that namespace's 127.0.0.1; ICE is ``ice_lite`` on 198.18.0.1 only, with no STUN, TURN or
NAT settings. Creating the namespace needs root (or ``CAP_SYS_ADMIN`` and
``CAP_NET_ADMIN``); :class:`JanusUnavailable` says what is missing.

Run as ``unshare --net -- python -m loadtest.janus FILE`` by :func:`run_janus`, never by
hand: the child refuses to touch a network namespace that has interfaces besides ``lo``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import psutil
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from e2ee.media import MediaKeySender
from loadtest.metrics import ReceiverStats
from loadtest.participant import Account, KeyDirectory, Leg, VoiceParticipant
from loadtest.voice_room import RoomConfig, _Room, _SfuSampler

__all__ = ["JanusError", "JanusUnavailable", "janus_missing", "run_janus"]

JANUS_BINARY = Path("/usr/bin/janus")
#: Where distributions put Janus's plugin folders (``<dir>/plugins``, ``<dir>/transports``).
_LIBRARY_GLOBS = ("/usr/lib/*/janus", "/usr/lib/janus", "/usr/local/lib/janus")
#: The veth pair inside the private namespace: Janus's side and the participants' side.
JANUS_IP, PEER_IP = "198.18.0.1", "198.18.0.2"
_VETH = ("hrjanus0", "hrjanus1")
#: Janus drops a session after 60 s without a request; janus.js sends a keepalive every 25 s.
KEEPALIVE_S = 25.0


class JanusError(Exception):
    """Janus answered a request with an error (core or VideoRoom plugin)."""


class JanusUnavailable(RuntimeError):
    """Janus cannot be run here: the binary, its plugins or a network namespace is missing."""


def janus_missing() -> str | None:
    """Why ``--compare janus`` cannot run on this machine, or ``None`` if it can."""
    if not JANUS_BINARY.exists():
        return f"{JANUS_BINARY} is missing (Debian package janus)"
    if _library() is None:
        return "the Janus VideoRoom plugin and WebSocket transport are missing"
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (util-linux, iproute2)"
    return None


def _library() -> Path | None:
    for pattern in _LIBRARY_GLOBS:
        for folder in sorted(Path("/").glob(pattern.lstrip("/"))):
            if (folder / "plugins" / "libjanus_videoroom.so").exists() and (
                folder / "transports" / "libjanus_websockets.so"
            ).exists():
                return folder
    return None


# --- the Janus process ------------------------------------------------------------------


def write_config(root: Path, ws_port: int) -> Path:
    """Janus's configuration under ``root``: the VideoRoom plugin and the WebSocket transport
    only (folders holding just those two libraries), the API on 127.0.0.1:``ws_port``,
    ICE-lite on :data:`JANUS_IP` only, no STUN/TURN/NAT, no event handlers or loggers.
    Returns the configuration folder."""
    library = _library()
    if library is None:
        raise JanusUnavailable("the Janus VideoRoom plugin and WebSocket transport are missing")
    conf = root / "conf"
    folders = {name: root / name for name in ("plugins", "transports", "events", "loggers")}
    for folder in (conf, *folders.values()):
        folder.mkdir(parents=True, exist_ok=True)
    (folders["plugins"] / "libjanus_videoroom.so").symlink_to(
        library / "plugins" / "libjanus_videoroom.so"
    )
    (folders["transports"] / "libjanus_websockets.so").symlink_to(
        library / "transports" / "libjanus_websockets.so"
    )
    (conf / "janus.jcfg").write_text(
        "general: {\n"
        f'\tconfigs_folder = "{conf}"\n'
        + "".join(f'\t{name}_folder = "{folder}"\n' for name, folder in folders.items())
        + "\tdebug_level = 3\n"
        "}\n"
        "media: {\n}\n"
        "nat: {\n"
        "\tice_lite = true\n"
        f'\tice_enforce_list = "{JANUS_IP}"\n'
        "}\n"
        "plugins: {\n}\ntransports: {\n}\nloggers: {\n}\nevents: {\n\tbroadcast = false\n}\n"
    )
    (conf / "janus.transport.websockets.jcfg").write_text(
        "general: {\n"
        '\tjson = "plain"\n'
        "\tws = true\n"
        f"\tws_port = {ws_port}\n"
        '\tws_ip = "127.0.0.1"\n'
        "\twss = false\n"
        "}\n"
        "admin: {\n\tadmin_ws = false\n\tadmin_wss = false\n}\n"
    )
    (conf / "janus.plugin.videoroom.jcfg").write_text("general: {\n}\n")
    return conf


def _free_port() -> int:
    """A TCP port free on 127.0.0.1 now (Janus's transport cannot be told to pick one)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _private_network() -> None:
    """Inside the fresh namespace: ``lo`` up and the veth pair with both addresses."""
    others = [name for _, name in socket.if_nameindex() if name != "lo"]
    if others:
        raise JanusUnavailable(
            f"refusing to add interfaces to a network namespace that has {others}: "
            "run through run_janus (unshare --net)"
        )
    a, b = _VETH
    for command in (
        ["ip", "link", "set", "lo", "up"],
        ["ip", "link", "add", a, "type", "veth", "peer", "name", b],
        ["ip", "addr", "add", f"{JANUS_IP}/24", "dev", a],
        ["ip", "addr", "add", f"{PEER_IP}/24", "dev", b],
        ["ip", "link", "set", a, "up"],
        ["ip", "link", "set", b, "up"],
    ):
        subprocess.run(command, check=True, capture_output=True)
    # Janus's libnice sends from its address through the veth, so the packets arrive with a
    # source address that is local here: accept them (Linux drops them by default).
    for conf in ("all", "default", a, b):
        Path(f"/proc/sys/net/ipv4/conf/{conf}/accept_local").write_text("1\n")
        Path(f"/proc/sys/net/ipv4/conf/{conf}/rp_filter").write_text("0\n")


# --- the Janus API ------------------------------------------------------------------------


class JanusSession:
    """One participant's Janus session over its own WebSocket (``janus-protocol``)."""

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.session_id = 0
        self._waiting: dict[str, trio.MemorySendChannel[dict[str, Any]]] = {}

    async def run(self) -> None:
        """Read messages, handing each transaction's answer to its requester; events without
        a transaction (``webrtcup``, ``media``, publisher lists) are read and dropped."""
        with contextlib.suppress(ConnectionClosed):
            while True:
                message = json.loads(await self.ws.get_message())
                if message.get("janus") == "ack":
                    continue
                waiter = self._waiting.pop(str(message.get("transaction")), None)
                if waiter is not None:
                    waiter.send_nowait(message)

    async def request(self, body: dict[str, Any]) -> dict[str, Any]:
        """Send one request and return its answer (the asynchronous plugin event for a
        ``message``); :class:`JanusError` if Janus or the plugin refused it."""
        transaction = secrets.token_hex(8)
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        self._waiting[transaction] = send
        if self.session_id:
            body = {"session_id": self.session_id, **body}
        await self.ws.send_message(json.dumps({**body, "transaction": transaction}))
        answer = await receive.receive()
        if answer.get("janus") == "error":
            raise JanusError(str(answer.get("error")))
        data = answer.get("plugindata", {}).get("data", {})
        if "error" in data:
            raise JanusError(f"{data.get('error_code')}: {data['error']}")
        return answer

    async def create(self) -> None:
        """``create``: the session."""
        self.session_id = int((await self.request({"janus": "create"}))["data"]["id"])

    async def attach(self) -> int:
        """``attach`` a VideoRoom handle (one per PeerConnection); its id."""
        answer = await self.request({"janus": "attach", "plugin": "janus.plugin.videoroom"})
        return int(answer["data"]["id"])

    async def message(
        self, handle: int, body: dict[str, Any], jsep: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """A VideoRoom request on ``handle`` (with a JSEP offer or answer); its answer, whose
        ``plugindata`` and ``jsep`` the caller reads."""
        request: dict[str, Any] = {"janus": "message", "handle_id": handle, "body": body}
        if jsep is not None:
            request["jsep"] = jsep
        return await self.request(request)

    async def keepalive(self) -> None:
        """A keepalive every :data:`KEEPALIVE_S`, as janus.js does (Janus answers it with
        an ``ack`` only, so nothing waits for the answer)."""
        while True:
            await trio.sleep(KEEPALIVE_S)
            body = {"janus": "keepalive", "session_id": self.session_id}
            await self.ws.send_message(json.dumps({**body, "transaction": secrets.token_hex(8)}))


def _with_candidate(sdp: str, leg: Leg) -> str:
    """``sdp`` with the leg's host candidate and end-of-candidates, as a client that does
    not trickle sends it (Janus half-trickles: it waits for the remote's candidates)."""
    ip, port = leg.sock.getsockname()
    return sdp + f"a=candidate:1 1 udp 2130706431 {ip} {port} typ host\r\na=end-of-candidates\r\n"


def _setup_of(sdp: str) -> str:
    """The ``a=setup`` value of an SDP (Janus puts the same one in every m-section)."""
    for line in sdp.splitlines():
        if line.startswith("a=setup:"):
            return line.split(":", 1)[1].strip()
    raise ValueError("SDP without a=setup")


# --- the room -----------------------------------------------------------------------------


class _JanusRoom(_Room):
    """:class:`loadtest.voice_room._Room` with the join flow of the Janus VideoRoom."""

    def __init__(self, config: RoomConfig) -> None:
        super().__init__(config)
        self.sessions: dict[int, JanusSession] = {}
        self.handles: dict[int, tuple[int, int]] = {}
        self.feeds: dict[int, int] = {}
        self.room_id = 0

    async def connect(
        self, ws_url: str, p: VoiceParticipant, *, task_status: trio.TaskStatus[None]
    ) -> None:
        """The participant's WebSocket, session and two handles (publish, subscribe)."""
        async with (
            open_websocket_url(ws_url, subprotocols=["janus-protocol"]) as ws,
            trio.open_nursery() as nursery,
        ):
            session = JanusSession(ws)
            nursery.start_soon(session.run)
            await session.create()
            self.handles[p.number] = (await session.attach(), await session.attach())
            self.sessions[p.number] = session
            nursery.start_soon(session.keepalive)
            task_status.started()
            await trio.sleep_forever()

    async def create_room(self, p: VoiceParticipant) -> None:
        """Participant 0 creates the room (audio only, the audio-level extension on)."""
        answer = await self.sessions[p.number].message(
            self.handles[p.number][0],
            {
                "request": "create",
                "publishers": self.config.participants,
                "audiocodec": "opus",
                "audiolevel_ext": True,
                "notify_joining": False,
            },
        )
        self.room_id = int(answer["plugindata"]["data"]["room"])

    async def join(self, participant: VoiceParticipant, nursery: trio.Nursery) -> None:
        p = participant
        session, (publish, _) = self.sessions[p.number], self.handles[p.number]
        p.join_started_ns = time.monotonic_ns()
        nursery.start_soon(p.keep_consent)
        try:
            with trio.fail_after(self.config.join_timeout):
                answer = await session.message(
                    publish,
                    {"request": "joinandconfigure", "room": self.room_id, "ptype": "publisher"},
                    {"type": "offer", "sdp": _with_candidate(p.publish_offer(), p.send_leg)},
                )
                p.marks["publish_answer"] = time.monotonic_ns()
                self.feeds[p.number] = int(answer["plugindata"]["data"]["id"])
                sdp = answer["jsep"]["sdp"]
                # Janus answers an actpass offer with a=setup:active: it is the DTLS client.
                await p.send_leg.connect(
                    sdp, self.config.join_timeout, dtls_server=_setup_of(sdp) == "active"
                )
        except (trio.TooSlowError, ConnectionClosed, JanusError, OSError, KeyError) as exc:
            p.error(f"join_failed:{type(exc).__name__}")
            self.failed_joins += 1
            return
        p.marks["send_connected"] = time.monotonic_ns()
        self.joined.append(p)
        self.joined_by_room[0].append(p)
        nursery.start_soon(self.send_frames, p)

    async def subscribe(self, p: VoiceParticipant, nursery: trio.Nursery) -> None:
        """One multistream subscription to every other joined publisher's feed."""
        session, (_, handle) = self.sessions[p.number], self.handles[p.number]
        streams = [{"feed": self.feeds[o.number]} for o in self.joined if o is not p]
        try:
            with trio.fail_after(self.config.join_timeout):
                offer = await session.message(
                    handle,
                    {
                        "request": "join",
                        "room": self.room_id,
                        "ptype": "subscriber",
                        "streams": streams,
                    },
                )
                p.marks["subscribe_offer"] = time.monotonic_ns()
                sdp = offer["jsep"]["sdp"]
                answer, active = p.subscribe_answer(sdp)
                await session.message(
                    handle, {"request": "start"}, {"type": "answer", "sdp": answer}
                )
        except (trio.TooSlowError, ConnectionClosed, JanusError, KeyError, ValueError) as exc:
            p.error(f"subscribe_failed:{type(exc).__name__}")
            return
        p.consuming = active
        # What the hushroom run reads from VOICE_SUBSCRIBE_OFFER's consumers list: here
        # every feed subscribed to, once Janus offered an active stream for each.
        if active >= len(streams):
            p.consumed_devices = frozenset(o.account.device_id for o in self.joined if o is not p)
        p.marks["subscribe_answered"] = time.monotonic_ns()
        nursery.start_soon(p._receive, sdp, self.config.join_timeout)


def _participants(room: _JanusRoom) -> None:
    """N participants with media keys installed as the gateway flow would: each learns
    every other one's key bound to its (synthetic) user and device."""
    keys = KeyDirectory()
    for n in range(room.config.participants):
        account = Account(f"janus{n}", f"user{n}", f"device{n}", "")
        p = VoiceParticipant(
            n, account, keys=keys, stats=ReceiverStats(room.window), bind_ip=PEER_IP
        )
        # The sender index hushroom's control plane would assign (1-based, unique in the room).
        p.sender = MediaKeySender(n + 1)
        room.device_numbers[account.device_id] = p.number
        room.participants.append(p)
    for p in room.participants:
        assert p.sender is not None
        keys.publish(p.account.device_id, p.sender.current_key())
    for p in room.participants:
        for other in room.participants:
            if other is not p and other.sender is not None:
                device = other.account.device_id
                p.states[device] = (other.account.user_id, other.sender.sender_index)
                p.try_install(device)


async def _run_room(config: RoomConfig, ws_url: str, janus: psutil.Process) -> dict[str, Any]:
    room = _JanusRoom(config)
    room.sampler = _SfuSampler([janus])
    _participants(room)
    try:
        async with trio.open_nursery() as nursery:
            for p in room.participants:
                await nursery.start(room.connect, ws_url, p)
            nursery.start_soon(room.monitor)
            first, *rest = room.participants
            await room.create_room(first)
            await room.join(first, nursery)
            if first not in room.joined:
                raise RuntimeError(f"the first participant could not join Janus: {first.errors}")
            await room.ramp(rest, nursery)
            async with trio.open_nursery() as subscriptions:
                for p in room.joined:
                    subscriptions.start_soon(room.subscribe, p, nursery)
            await room.measure()
            nursery.cancel_scope.cancel()
    finally:
        for p in room.participants:
            p.close()
    report = room.report(None)
    report["target"] = "janus"
    return report


async def _janus_version(ws_url: str) -> str:
    async with open_websocket_url(ws_url, subprotocols=["janus-protocol"]) as ws:
        session = JanusSession(ws)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(session.run)
            info = await session.request({"janus": "info"})
            nursery.cancel_scope.cancel()
    return str(info.get("version_string", "?"))


async def _until_listening(port: int, process: trio.Process, within: float) -> None:
    """Until Janus's WebSocket transport accepts connections (polled: another process)."""
    with trio.fail_after(within):
        while True:
            if process.returncode is not None:
                raise JanusUnavailable(f"janus exited with status {process.returncode}")
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.05)
                continue
            await stream.aclose()
            return


async def _child(config: RoomConfig) -> dict[str, Any]:
    """The Janus side, inside the private namespace: start Janus, run the room, stop it."""
    with tempfile.TemporaryDirectory(prefix="hushroom-janus-") as root:
        port = _free_port()
        conf = write_config(Path(root), port)
        log_path = Path(root) / "janus.log"
        with log_path.open("wb") as log:
            process = await trio.lowlevel.open_process(
                [str(JANUS_BINARY), "-F", str(conf), "-C", str(conf / "janus.jcfg"), "-o"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            try:
                await _until_listening(port, process, 15.0)
                ws_url = f"ws://127.0.0.1:{port}/"
                version = await _janus_version(ws_url)
                report = await _run_room(config, ws_url, psutil.Process(process.pid))
            except BaseException:
                log.flush()
                tail = log_path.read_text(errors="replace")[-4000:]
                print(f"janus's log ends:\n{tail}", file=sys.stderr)
                raise
            finally:
                process.terminate()
                with trio.CancelScope(shield=True), trio.move_on_after(10):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    with trio.CancelScope(shield=True):
                        await process.wait()
    report["janus_version"] = version
    return report


async def run_janus(config: RoomConfig) -> dict[str, Any]:
    """Run the ``voice-room`` load of ``config`` against Janus (in a child process in a
    private network namespace) and return its report, shaped as ``voice-room``'s."""
    missing = janus_missing()
    if missing is not None:
        raise JanusUnavailable(missing)
    with tempfile.TemporaryDirectory(prefix="hushroom-janus-run-") as root:
        spec, out = Path(root) / "config.json", Path(root) / "report.json"
        spec.write_text(json.dumps(_config_fields(config)))
        command = ["unshare", "--net", "--", sys.executable, "-m", "loadtest.janus"]
        result = await trio.run_process(
            [*command, str(spec), str(out)],
            check=False,
            capture_stderr=config.progress is None,
        )
        if result.returncode != 0:
            detail = (result.stderr or b"").decode(errors="replace")[-2000:]
            raise JanusUnavailable(f"the Janus run failed (status {result.returncode}) {detail}")
        report: dict[str, Any] = json.loads(out.read_text())
    return report


def _config_fields(config: RoomConfig) -> dict[str, Any]:
    """``config`` as JSON for the child (the progress stream becomes a flag)."""
    values = {f.name: getattr(config, f.name) for f in fields(config)}
    values.update(progress=config.progress is not None, target=None)
    return values


def main(argv: list[str] | None = None) -> int:
    """The child: ``python -m loadtest.janus CONFIG.json REPORT.json`` (inside ``unshare``)."""
    parser = argparse.ArgumentParser(prog="python -m loadtest.janus")
    parser.add_argument("config", type=Path)
    parser.add_argument("report", type=Path)
    args = parser.parse_args(argv)
    values = json.loads(args.config.read_text())
    values["progress"] = sys.stderr if values["progress"] else None
    _private_network()
    report = trio.run(_child, RoomConfig(**values))
    args.report.write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
