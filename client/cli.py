"""The people's commands: ``hushroom register|login|guild|channel|voice|send|dm|read|...``.

``main(argv)`` receives the command name first (``hushroom`` routes here). Every command
takes ``--profile DIR`` (default ``$XDG_DATA_HOME/hushroom/profiles/default``) and
``--json`` for scripts. A new profile keeps its store key in the OS keyring when one works
(``--no-keyring`` or ``HUSHROOM_NO_KEYRING=1`` say not to); otherwise, and for profiles
made that way, the store passphrase comes from ``HUSHROOM_PASSPHRASE``,
``--passphrase-file`` or, on a terminal, a prompt — asked for only when the store needs
it. Output is readable text by default; errors are one plain sentence on stderr with exit
status 1 (2 for bad usage).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import getpass
import json
import math
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from client.client import Client, Message
from client.errors import ApiError, ClientError, UsageError
from client.store import KEYRING, Store, write_private_file
from e2ee import (
    E2EEError,
    LinkingSecret,
    export_backup,
    import_backup,
)

__all__ = ["default_profile", "main"]

DEFAULT_SERVER = "http://127.0.0.1:8080"
COMMANDS = (
    "register",
    "login",
    "guild",
    "channel",
    "voice",
    "send",
    "dm",
    "read",
    "tail",
    "devices",
    "link-device",
    "join-device",
    "verify",
    "backup",
    "export-my-data",
    "delete-account",
)


def default_profile() -> Path:
    """``$XDG_DATA_HOME/hushroom/profiles/default`` (``~/.local/share`` when unset)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "hushroom" / "profiles" / "default"


class _Out:
    """Readable lines or JSON documents, as asked."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def emit(self, data: Any, text: str) -> None:
        if self.as_json:
            print(json.dumps(data, default=_json_default, sort_keys=True), flush=True)
        else:
            print(text, flush=True)


def _json_default(value: object) -> object:
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(type(value).__name__)


def _when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


def _message_line(m: Message, where: str = "") -> str:
    arrow = f"[{where}] " if where else ""
    return f"{_when(m.ts)} {arrow}{m.sender_handle}: {m.body}"


def _message_json(m: Message) -> dict[str, Any]:
    return m.to_record()


def _link_lifetime(text: str) -> int:
    """A link code's lifetime: 1 to 600 seconds (the server keeps a mailbox no longer)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 1 <= value <= 600:
        raise argparse.ArgumentTypeError("a link code lives 1 to 600 seconds")
    return value


def _parser() -> argparse.ArgumentParser:
    # SUPPRESS: the options are accepted at every level (``guild --json create x`` and
    # ``guild create x --json``) without a deeper level's default erasing a given value.
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument("--profile", type=Path, help="profile directory")
    common.add_argument("--server", help=f"server URL (default {DEFAULT_SERVER})")
    common.add_argument("--json", action="store_true", help="print JSON for scripts")
    common.add_argument("--passphrase-file", type=Path, help="read the store passphrase from FILE")
    common.add_argument(
        "--no-keyring",
        action="store_true",
        help="a new profile's store key comes from a passphrase, not the OS keyring "
        "(also HUSHROOM_NO_KEYRING=1)",
    )
    parser = argparse.ArgumentParser(
        prog="hushroom",
        description="hushroom's end-to-end encrypted chat, from a terminal.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("register", parents=[common], help="create an account and device")
    p.add_argument("handle", help="your handle: 2-32 of a-z 0-9 _ .")
    sub.add_parser("login", parents=[common], help="sign this device in again")

    p = sub.add_parser("guild", parents=[common], help="create, join, list guilds; invites")
    gsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    gsub.add_parser("create", parents=[common], help="create a guild").add_argument("name")
    gsub.add_parser("join", parents=[common], help="join by invite code").add_argument("code")
    gsub.add_parser("list", parents=[common], help="your guilds")
    inv = gsub.add_parser("invite", parents=[common], help="make an invite code")
    inv.add_argument("guild", help="guild id or name")
    inv.add_argument("--channel", default="general", help="channel the invite points at")
    inv.add_argument("--max-uses", type=int, default=0, help="0 = unlimited")

    p = sub.add_parser("channel", parents=[common], help="create and list channels")
    csub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    cc = csub.add_parser("create", parents=[common], help="create a text or voice channel")
    cc.add_argument("guild", help="guild id or name")
    cc.add_argument("name")
    cc.add_argument("--retention-days", type=int, default=None)
    cc.add_argument("--voice", action="store_true", help="a voice channel")
    cc.add_argument("--user-limit", type=int, default=None, help="voice: 0 = unlimited")
    cc.add_argument("--bitrate", type=int, default=None, help="voice: bits per second")

    p = sub.add_parser("voice", parents=[common], help="voice channels: join, moderate")
    vsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    vj = vsub.add_parser("join", parents=[common], help="join a voice channel")
    vj.add_argument("channel", help="GUILD/CHANNEL, channel id or name")
    source = vj.add_mutually_exclusive_group()
    source.add_argument("--play", type=Path, metavar="FILE.wav", help="publish a WAV file")
    source.add_argument("--tone", type=float, metavar="HZ", help="publish a sine tone")
    vj.add_argument("--record", type=Path, metavar="OUT.wav", help="record each participant")
    vj.add_argument("--mute", action="store_true", help="join self-muted")
    vj.add_argument("--deaf", action="store_true", help="join self-deafened")
    vj.add_argument("--duration", type=float, default=None, metavar="S", help="leave after S")
    vj.add_argument("--relay-only", action="store_true", help="media through TURN only")
    for action, text in (("mute", "server-mute"), ("deafen", "server-deafen")):
        vm = vsub.add_parser(action, parents=[common], help=f"{text} a member")
        vm.add_argument("guild", help="guild id or name")
        vm.add_argument("member", help="handle")
        vm.add_argument("--off", action="store_true", help=f"undo the {text}")
    vmv = vsub.add_parser("move", parents=[common], help="move a member to a voice channel")
    vmv.add_argument("guild", help="guild id or name")
    vmv.add_argument("member", help="handle")
    vmv.add_argument("channel", help="voice channel id or name")
    vd = vsub.add_parser("disconnect", parents=[common], help="disconnect a member from voice")
    vd.add_argument("guild", help="guild id or name")
    vd.add_argument("member", help="handle")
    csub.add_parser("list", parents=[common], help="channels you can see").add_argument("guild")

    p = sub.add_parser("send", parents=[common], help="send to a channel")
    p.add_argument("channel", help="channel id, name or GUILD/NAME")
    p.add_argument("text")
    p.add_argument("--expire", type=int, default=None, help="disappear after SECONDS")

    p = sub.add_parser("dm", parents=[common], help="send a direct message")
    p.add_argument("handle")
    p.add_argument("text")
    p.add_argument("--expire", type=int, default=None, help="disappear after SECONDS")

    p = sub.add_parser("read", parents=[common], help="fetch and show messages")
    p.add_argument("target", nargs="?", help="channel (id, name, GUILD/NAME) or @HANDLE")
    p.add_argument("--limit", type=int, default=50)

    p = sub.add_parser("tail", parents=[common], help="follow messages live")
    p.add_argument("--count", type=int, default=None, help="stop after COUNT messages")
    p.add_argument("--timeout", type=float, default=None, help="stop after SECONDS")

    p = sub.add_parser("devices", parents=[common], help="list or remove devices")
    dsub = p.add_subparsers(dest="action", metavar="ACTION")
    dsub.add_parser("list", parents=[common], help="this account's devices")
    dsub.add_parser("remove", parents=[common], help="remove a device").add_argument("device_id")

    p = sub.add_parser(
        "link-device", parents=[common], help="add the device showing CODE to this account"
    )
    p.add_argument("code", help="the link code join-device shows on the new device")
    p = sub.add_parser(
        "join-device", parents=[common], help="make this a new device of an existing account"
    )
    p.add_argument(
        "--timeout",
        type=_link_lifetime,
        default=600,
        metavar="SECONDS",
        help="how long the link code stays valid (1-600, default 600)",
    )

    p = sub.add_parser("verify", parents=[common], help="safety number with a contact")
    p.add_argument("handle")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--mark", action="store_true", help="mark as verified (numbers match)")
    group.add_argument("--accept", action="store_true", help="accept changed identity keys")

    p = sub.add_parser("backup", parents=[common], help="encrypted key backup")
    bsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    bsub.add_parser("export", parents=[common], help="write a backup").add_argument(
        "file", type=Path
    )
    bsub.add_parser("import", parents=[common], help="restore into --profile").add_argument(
        "file", type=Path
    )

    p = sub.add_parser("export-my-data", parents=[common], help="everything held about you")
    p.add_argument("--output", type=Path, default=None, help="write JSON to FILE")

    p = sub.add_parser("delete-account", parents=[common], help="erase your account")
    p.add_argument("--yes", action="store_true", help="confirm: this cannot be undone")
    return parser


_COMMON_DEFAULTS: dict[str, Any] = {
    "profile": None,
    "server": None,
    "json": False,
    "passphrase_file": None,
    "no_keyring": False,
}


def _passphrase(args: argparse.Namespace, env: str = "HUSHROOM_PASSPHRASE") -> Callable[[], str]:
    """The store passphrase, as a function: a keyring profile never asks for it."""

    def ask() -> str:
        if args.passphrase_file is not None:
            try:
                text: str = Path(args.passphrase_file).read_text().rstrip("\n")
            except OSError as exc:
                raise UsageError(f"cannot read the passphrase file ({exc.strerror})") from None
            if text:
                return text
        value = os.environ.get(env)
        if value:
            return value
        if sys.stdin.isatty():
            return getpass.getpass("profile passphrase: ")
        raise UsageError(f"no passphrase: set {env} or pass --passphrase-file")

    return ask


def _use_keyring(args: argparse.Namespace) -> bool:
    """Whether a new profile should try the OS keyring for its store key."""
    forced_off = os.environ.get("HUSHROOM_NO_KEYRING", "").strip().lower()
    return not args.no_keyring and forced_off in ("", "0", "false", "no")


def _key_text(store: Store) -> str:
    if store.key_source == KEYRING:
        return "store key in the OS keyring"
    return "store key from the passphrase"


def _backup_passphrase(args: argparse.Namespace) -> str:
    value = os.environ.get("HUSHROOM_BACKUP_PASSPHRASE")
    if value:
        return value
    if sys.stdin.isatty():
        return getpass.getpass("backup passphrase: ")
    raise UsageError("no backup passphrase: set HUSHROOM_BACKUP_PASSPHRASE")


def _profile(args: argparse.Namespace) -> Path:
    return Path(args.profile) if args.profile is not None else default_profile()


async def _open(args: argparse.Namespace) -> Client:
    return Client.open(_profile(args), _passphrase(args), args.server)


def _show_notices(client: Client, out: _Out) -> None:
    for notice in client.notices():
        if out.as_json:
            out.emit({"notice": notice.kind, "text": notice.text}, "")
        else:
            print(f"! {notice.text}", file=sys.stderr, flush=True)


async def _find_guild(client: Client, name: str) -> dict[str, Any]:
    for g in await client.api.my_guilds():
        if name in (g.get("id"), g.get("name")):
            return g
    raise UsageError(f"you are not in a guild called {name!r}")


def _this_device(client: Client) -> dict[str, Any]:
    """What ``register`` and ``join-device`` report about the profile they made."""
    return {
        "user_id": client.user_id,
        "handle": client.handle,
        "device_id": client.device_id,
        "key_source": client.store.key_source,
    }


async def _cmd_register(args: argparse.Namespace, out: _Out) -> None:
    server = args.server or DEFAULT_SERVER
    client = await Client.register(
        _profile(args), _passphrase(args), server, args.handle, use_keyring=_use_keyring(args)
    )
    async with client:
        out.emit(
            _this_device(client),
            f"registered {client.handle} on {server} (device {client.device_id}, "
            f"{_key_text(client.store)})",
        )


async def _cmd_login(args: argparse.Namespace, out: _Out) -> None:
    async with await _open(args) as client:
        await client.login()
        out.emit({"user_id": client.user_id}, f"signed in as {client.handle}")


async def _cmd_guild(args: argparse.Namespace, out: _Out) -> None:
    async with await _open(args) as client:
        if args.action == "create":
            guild = await client.api.create_guild(args.name)
            out.emit({"id": guild.id, "name": guild.name}, f"created guild {guild.name}")
        elif args.action == "join":
            guild = await client.api.accept_invite(args.code)
            out.emit({"id": guild.id, "name": guild.name}, f"joined guild {guild.name}")
        elif args.action == "list":
            guilds = await client.api.my_guilds()
            out.emit(guilds, "\n".join(f"{g['name']}  ({g['id']})" for g in guilds) or "none")
        else:
            g = await _find_guild(client, args.guild)
            channel = await client.find_channel(args.channel, str(g["id"]))
            code = await client.api.create_invite(channel.id, max_uses=args.max_uses)
            out.emit({"code": code, "guild_id": g["id"]}, code)


async def _cmd_channel(args: argparse.Namespace, out: _Out) -> None:
    async with await _open(args) as client:
        g = await _find_guild(client, args.guild)
        if args.action == "create":
            fields: dict[str, Any] = {}
            if args.retention_days is not None:
                fields["retention_days"] = args.retention_days
            if args.voice:
                fields["type"] = "voice"
            elif args.user_limit is not None or args.bitrate is not None:
                raise UsageError("--user-limit and --bitrate are for voice channels (--voice)")
            if args.user_limit is not None:
                fields["user_limit"] = args.user_limit
            if args.bitrate is not None:
                fields["bitrate"] = args.bitrate
            channel = await client.api.create_channel(str(g["id"]), args.name, **fields)
            out.emit({"id": channel.id, "name": channel.name}, f"created #{channel.name}")
        else:
            channels = await client.api.channels(str(g["id"]))
            out.emit(
                [{"id": c.id, "name": c.name, "type": c.type} for c in channels],
                "\n".join(f"#{c.name}  {c.type}  ({c.id})" for c in channels),
            )


async def _cmd_send(args: argparse.Namespace, out: _Out) -> None:
    async with await _open(args) as client:
        channel = await client.find_channel(args.channel)
        await client.sync()
        message = await client.send_channel(channel.id, args.text, args.expire)
        _show_notices(client, out)
        out.emit(_message_json(message), f"sent to #{channel.name}")


async def _cmd_dm(args: argparse.Namespace, out: _Out) -> None:
    async with await _open(args) as client:
        await client.sync()
        message = await client.send_dm(args.handle, args.text, args.expire)
        _show_notices(client, out)
        out.emit(_message_json(message), f"sent to {args.handle}")


async def _cmd_read(args: argparse.Namespace, out: _Out) -> None:
    async with await _open(args) as client:
        if args.target is None:
            new = await client.sync_all()
        else:
            await client.sync()
        # Reading is the regular moment a CLI user is around: keep the prekeys fresh and
        # the store small here (a running `tail` does the same on PREKEYS_LOW).
        await client.maintain_prekeys()
        client.prune_envelope_marks()
        await client.expire_sent_messages()
        if args.target is None:
            messages = new
        elif args.target.startswith("@"):
            messages = await client.dm_history(args.target[1:], args.limit)
        else:
            channel = await client.find_channel(args.target)
            await client.sync_channel(channel.id)
            messages = client.history(f"ch:{channel.id}", args.limit)
        _show_notices(client, out)
        if out.as_json:
            out.emit([_message_json(m) for m in messages], "")
            return
        for m in messages:
            where = await client.conversation_label(m.conversation) if args.target is None else ""
            print(_message_line(m, where), flush=True)


async def _cmd_tail(args: argparse.Namespace, out: _Out) -> None:
    async with await _open(args) as client:
        seen = 0
        with trio.move_on_after(args.timeout if args.timeout is not None else float("inf")):
            async with client.live() as messages:
                async for m in messages:
                    where = await client.conversation_label(m.conversation)
                    out.emit(_message_json(m), _message_line(m, where))
                    _show_notices(client, out)
                    seen += 1
                    if args.count is not None and seen >= args.count:
                        break


async def _cmd_devices(args: argparse.Namespace, out: _Out) -> None:
    async with await _open(args) as client:
        if args.action == "remove":
            await client.remove_device(args.device_id)
            out.emit({"removed": args.device_id}, f"removed device {args.device_id}")
            return
        devices = await client.devices()
        out.emit(
            [
                {"id": d.id, "identity_key": d.identity_key.hex(), "this": d.id == client.device_id}
                for d in devices
            ],
            "\n".join(
                f"{d.id}  {d.identity_key.hex()[:16]}…"
                + ("  (this device)" if d.id == client.device_id else "")
                for d in devices
            ),
        )


async def _cmd_link_device(args: argparse.Namespace, out: _Out) -> None:
    async with await _open(args) as client:
        device = await client.link_device(args.code)
        out.emit(
            {"device_id": device.id},
            f"linked device {device.id} to {client.handle}; it finishes setting up on its own",
        )


async def _cmd_join_device(args: argparse.Namespace, out: _Out) -> None:
    server = args.server or DEFAULT_SERVER

    def show(secret: LinkingSecret, expires_in: int) -> None:
        out.emit(
            {"code": secret.code, "qr": secret.qr_string, "expires_in": expires_in},
            f"link code: {secret.code}\n"
            f"On a device already signed in, run:  hushroom link-device {secret.code}\n"
            f"(valid for {expires_in} s; waiting…)",
        )

    client = await Client.join_device(
        _profile(args),
        _passphrase(args),
        server,
        show,
        use_keyring=_use_keyring(args),
        expires_in=args.timeout,
    )
    async with client:
        out.emit(
            _this_device(client),
            f"this is now device {client.device_id} of {client.handle} on {server} "
            f"({_key_text(client.store)})",
        )


async def _cmd_verify(args: argparse.Namespace, out: _Out) -> None:
    async with await _open(args) as client:
        if args.accept:
            await client.accept_identity(args.handle)
        number, verified = await client.safety_number(args.handle)
        if args.mark:
            await client.mark_verified(args.handle)
            verified = True
        state = "verified" if verified else "not verified"
        out.emit(
            {"handle": args.handle, "safety_number": number, "verified": verified},
            f"safety number with {args.handle} ({state}):\n{number}",
        )


async def _cmd_backup(args: argparse.Namespace, out: _Out) -> None:
    if args.action == "export":
        async with await _open(args) as client:
            data = export_backup(client.backup_contents(), _backup_passphrase(args))
            write_private_file(args.file, data)
            out.emit({"file": str(args.file)}, f"backup written to {args.file}")
        return
    profile = _profile(args)
    if Store.exists(profile):
        raise UsageError(f"a profile already exists at {profile}; import into a new one")
    try:
        contents = import_backup(args.file.read_bytes(), _backup_passphrase(args))
    except OSError as exc:
        raise UsageError(f"cannot read {args.file} ({exc.strerror})") from None
    async with await Client.restore_backup(
        profile,
        _passphrase(args),
        args.server or DEFAULT_SERVER,
        contents,
        use_keyring=_use_keyring(args),
    ) as client:
        _show_notices(client, out)
        out.emit(
            {"user_id": client.user_id, "handle": client.handle},
            f"restored {client.handle} into {profile}",
        )


async def _cmd_export(args: argparse.Namespace, out: _Out) -> None:
    async with await _open(args) as client:
        data = await client.export_my_data()
        if args.output is not None:
            args.output.write_text(json.dumps(data, default=_json_default, indent=2))
            out.emit({"file": str(args.output)}, f"written to {args.output}")
        elif out.as_json:
            out.emit(data, "")
        else:
            print(json.dumps(data, default=_json_default, indent=2), flush=True)


async def _cmd_delete(args: argparse.Namespace, out: _Out) -> None:
    if not args.yes:
        raise UsageError("deleting the account cannot be undone: add --yes to confirm")
    client = await _open(args)
    handle = client.handle
    await client.delete_account()
    out.emit({"deleted": handle}, f"account {handle} erased from the server and this device")


async def _cmd_voice(args: argparse.Namespace, out: _Out) -> None:
    async with await _open(args) as client:
        if args.action == "join":
            await _voice_join(client, args, out)
            return
        g = await _find_guild(client, args.guild)
        guild_id = str(g["id"])
        member = await client.api.user_by_handle(args.member)
        if args.action == "mute":
            await client.moderate_voice(guild_id, member.id, mute=not args.off)
        elif args.action == "deafen":
            await client.moderate_voice(guild_id, member.id, deaf=not args.off)
        elif args.action == "move":
            channel = await client.find_channel(args.channel, guild_id)
            await client.moderate_voice(guild_id, member.id, move_to=channel.id)
        else:
            await client.moderate_voice(guild_id, member.id, disconnect=True)
        out.emit({"done": args.action, "user_id": member.id}, f"{args.action}: @{member.handle}")


async def _voice_join(client: Client, args: argparse.Namespace, out: _Out) -> None:
    """Be in a voice channel, showing who is there and who speaks, until --duration or ^C;
    with --record, one WAV file per participant, summed up on leaving."""
    # Loaded here: aiortc is heavy, and only this command needs it.
    from aiortc.mediastreams import MediaStreamError

    from client.voice import (
        ToneSource,
        WavFileSource,
        WavRecorder,
        dominant_frequency,
        record_track,
    )
    from client.voice.call import record_tracks
    from client.voice.errors import VoiceRefused
    from client.voice.signalling import CallFailed, ParticipantsChanged, SpeakingChanged

    channel = await client.find_channel(args.channel)
    if channel.type != "voice":
        raise UsageError(f"#{channel.name} is not a voice channel")
    if args.play is not None:
        WavFileSource(args.play).stop()  # a file that cannot be read fails here, not mid-call
    tone, play = args.tone, args.play

    def source() -> Any:
        if args.mute or (tone is None and play is None):
            # No microphone capture yet: silence keeps the send transport alive.
            return ToneSource(440, amplitude=0.0)
        if play is not None:
            return WavFileSource(play, loop=True)
        return ToneSource(tone)

    # Handles of the guild's members, looked up again when someone new appears: the
    # people in a call need not be contacts of this device.
    handles = {m.user_id: m.handle for m in await client.api.members(channel.guild_id)}

    async def name(user_id: str) -> str:
        if user_id not in handles:
            members = await client.api.members(channel.guild_id)
            handles.update({m.user_id: m.handle for m in members})
        handle = handles.get(user_id)
        return f"@{handle}" if handle else await client.conversation_label(f"dm:{user_id}")

    #: (user id, device id) → (path, recorder); one file per participant's device.
    recorders: dict[tuple[str, str], tuple[Path, Any]] = {}

    def record_path(who: tuple[str, str]) -> Path:
        base: Path = args.record
        stem, suffix = base.stem, base.suffix or ".wav"
        label = handles.get(who[0]) or who[0]
        path = base.with_name(f"{stem}-{label}{suffix}")
        if any(p == path for k, (p, _) in recorders.items() if k != who):
            path = base.with_name(f"{stem}-{label}-{who[1]}{suffix}")
        return path

    async def record(consumer: Any, track: Any) -> None:
        if args.record is None or args.deaf:
            # Read and dropped: aiortc queues every decoded frame until someone reads it.
            with contextlib.suppress(MediaStreamError):
                while True:
                    await track.recv()
            return
        who = (consumer.user_id, consumer.device_id) if consumer else ("unknown", "unknown")
        if who in recorders:  # new transports (a move, a restart): a fresh file
            recorders.pop(who)[1].close()
        recorder = WavRecorder(record_path(who))
        recorders[who] = (recorder.path, recorder)
        await record_track(track, recorder)

    async def show_participants(participants: Any) -> None:
        names = [await name(u) for u, _ in participants]
        out.emit(
            {"participants": [list(k) for k in participants]},
            "in the channel: " + (", ".join(sorted(names)) or "nobody else"),
        )

    try:
        async with (
            client.live(),
            client.voice_call(
                channel.guild_id,
                channel.id,
                source,
                self_mute=args.mute,
                self_deaf=args.deaf,
                relay_only=args.relay_only,
                on_track=record_tracks(record),
            ) as call,
        ):
            out.emit({"joined": channel.id}, f"joined voice #{channel.name}")
            await show_participants(dict(call.signalling.participants))
            with trio.move_on_after(args.duration if args.duration is not None else math.inf):
                async for update in call.updates:
                    if isinstance(update, ParticipantsChanged):
                        await show_participants(update.participants)
                    elif isinstance(update, SpeakingChanged):
                        verb = "speaking" if update.speaking else "quiet"
                        out.emit(
                            {"speaking": update.speaking, "user_id": update.user_id},
                            f"{await name(update.user_id)} {verb}",
                        )
                    elif isinstance(update, CallFailed):
                        raise VoiceRefused(update.code, update.message)
    finally:
        for _, recorder in recorders.values():
            recorder.close()
    out.emit({"left": channel.id}, f"left voice #{channel.name}")
    for (user_id, _), (path, recorder) in recorders.items():
        samples = recorder.samples()
        hz = dominant_frequency(samples) if len(samples) > 1 else 0.0
        out.emit(
            {"recorded": str(path), "user_id": user_id, "seconds": recorder.seconds, "hz": hz},
            f"recorded {await name(user_id)}: {recorder.seconds:.1f} s in {path}"
            f" (strongest frequency {hz:.0f} Hz)",
        )


_HANDLERS: dict[str, Callable[[argparse.Namespace, _Out], Awaitable[None]]] = {
    "register": _cmd_register,
    "login": _cmd_login,
    "guild": _cmd_guild,
    "channel": _cmd_channel,
    "voice": _cmd_voice,
    "send": _cmd_send,
    "dm": _cmd_dm,
    "read": _cmd_read,
    "tail": _cmd_tail,
    "devices": _cmd_devices,
    "link-device": _cmd_link_device,
    "join-device": _cmd_join_device,
    "verify": _cmd_verify,
    "backup": _cmd_backup,
    "export-my-data": _cmd_export,
    "delete-account": _cmd_delete,
}


def _sentence(exc: BaseException) -> str:
    if isinstance(exc, ApiError):
        text = exc.message
    elif isinstance(exc, E2EEError):
        text = f"a cryptographic check failed ({type(exc).__name__}: {exc})"
    else:
        text = str(exc)
    text = text.strip() or type(exc).__name__
    return text[0].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception of a (nested) group: the one the user is told about."""
    first: BaseException = group.exceptions[0]
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    return first


def main(argv: list[str]) -> int:
    """Run one command; ``argv[0]`` is the command name."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    for name, default in _COMMON_DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, default)
    out = _Out(args.json)
    status = 0
    try:
        trio.run(_HANDLERS[args.command], args, out)
    except* (ClientError, E2EEError) as group:
        first = _first(group)
        print(f"hushroom: {_sentence(first)}", file=sys.stderr, flush=True)
        status = 2 if isinstance(first, UsageError) else 1
    except* KeyboardInterrupt as group:
        # Interrupted mid-way, a command may have left something the user must see to.
        for note in getattr(_first(group), "__notes__", []):
            print(f"hushroom: {_sentence(Exception(note))}", file=sys.stderr, flush=True)
        status = 130
    return status
