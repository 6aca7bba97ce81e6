"""The ``hushroom`` command: one entry point for every part of hushroom."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

from . import __version__

__all__ = ["main"]

#: subcommand -> (module whose ``main(argv)`` runs it, one-line description)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "up": ("hushroom.up", "start control, TURN and an SFU node on this machine"),
    "control": ("control.__main__", "run the control plane"),
    "sfu": ("sfu.__main__", "run an SFU node"),
    "turn": ("turn.__main__", "run a STUN/TURN server"),
    "loadtest": ("loadtest.__main__", "load-test a running deployment"),
    "version": ("", "print the version"),
}

#: commands for people, all served by the client SDK's CLI (``client.cli.main``), which
#: receives the command name as its first argument.
CLIENT_COMMANDS: dict[str, str] = {
    "register": "create an account and this device's identity",
    "login": "sign this device in",
    "guild": "create, join, list guilds and make invites",
    "channel": "create and list channels (text or voice)",
    "voice": "join a voice channel (tone, WAV, record); moderators: mute, deafen, move, disconnect",
    "send": "send an encrypted message to a channel",
    "dm": "send an encrypted direct message",
    "read": "show messages",
    "tail": "follow messages live",
    "devices": "list or remove this account's devices",
    "link-device": "add the device showing a link code to this account",
    "join-device": "make this a new device of an existing account (shows a link code)",
    "verify": "compare and mark a contact's safety number",
    "backup": "export or import an encrypted key backup",
    "export-my-data": "everything the server holds about you",
    "delete-account": "erase your account from the server",
}


def _usage() -> str:
    width = max(len(name) for name in SUBCOMMANDS)
    lines = ["usage: hushroom <command> [options]", "", "commands:"]
    width = max(width, *(len(name) for name in CLIENT_COMMANDS))
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in SUBCOMMANDS.items()]
    lines += ["", "commands for people (client):"]
    lines += [f"  {name:<{width}}  {text}" for name, text in CLIENT_COMMANDS.items()]
    lines += ["", "Run 'hushroom <command> --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch ``hushroom <command> ...`` to the command's own ``main``."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command in ("version", "--version"):
        print(f"hushroom {__version__}")
        return 0
    if command in CLIENT_COMMANDS:
        client_cli = importlib.import_module("client.cli")
        client_main: Callable[[list[str]], int] = client_cli.main
        return client_main(args)
    if command not in SUBCOMMANDS:
        print(f"hushroom: unknown command {command!r} (see 'hushroom --help')", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[command][0])
    entry: Callable[[list[str]], int] = module.main
    return entry(rest)


if __name__ == "__main__":
    sys.exit(main())
