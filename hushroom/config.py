"""Process configuration: flags > ``HUSHROOM_*`` environment > optional TOML file.

Every process (control, sfu, turn, up) describes its settings as one frozen dataclass whose
fields carry :func:`option` metadata. :func:`add_arguments` turns the dataclass into argparse
flags and :func:`load` merges the three sources in order of precedence, converts each value
to the field's type and runs the field's check, so a bad value stops start-up with a single
line naming the key (see :func:`run_main`, exit code 2) — the hypercorn ``Config`` model,
without module-level globals.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import os
import sys
import tomllib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

__all__ = [
    "ConfigError",
    "add_arguments",
    "load",
    "option",
    "parse_host_port",
    "parse_port_range",
    "run_main",
]

C = TypeVar("C")

EXIT_CONFIG = 2


class ConfigError(Exception):
    """A configuration value is missing or invalid; ``key`` names it as the user wrote it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def option(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    env: str | None = None,
    check: Callable[[Any], Any] | None = None,
    default_factory: Callable[[], Any] | None = None,
) -> Any:
    """Declare a configuration field.

    ``env`` overrides the default environment name ``HUSHROOM_<SECTION>_<FIELD>``; ``check``
    receives the converted value and returns it (possibly normalised) or raises ``ValueError``
    whose message becomes the error shown to the operator.
    """
    metadata = {"help": help, "env": env, "check": check}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def parse_host_port(text: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` or ``[V6]:PORT``; raise ``ValueError`` with a readable message."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    if bracketed or ":" in host:
        # An IPv6 literal must be bracketed, or "::1:80" would be ambiguous.
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"bad IPv6 address {host!r}") from None
        if not bracketed:
            raise ValueError(f"write an IPv6 address as [{host}]:PORT")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"port must be a number, got {port_text!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be 0-65535, got {port}")
    return host, port


def parse_port_range(text: str) -> tuple[int, int]:
    """Parse ``LO-HI`` into an inclusive port range."""
    lo_text, sep, hi_text = text.partition("-")
    try:
        lo, hi = int(lo_text), int(hi_text)
    except ValueError:
        raise ValueError(f"expected LO-HI, got {text!r}") from None
    if not sep or not 1 <= lo <= hi <= 65535:
        raise ValueError(f"expected LO-HI with 1 <= LO <= HI <= 65535, got {text!r}")
    return lo, hi


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _env_name(section: str, field: dataclasses.Field[Any]) -> str:
    explicit = field.metadata.get("env")
    if explicit:
        return str(explicit)
    return f"HUSHROOM_{section.upper()}_{field.name.upper()}"


def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _is_list(tp: Any) -> bool:
    return typing.get_origin(_unwrap_optional(tp)) in (list, tuple)


def _convert_scalar(tp: Any, raw: Any) -> Any:
    if tp is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"expected true or false, got {raw!r}")
    if tp is int:
        if isinstance(raw, bool):
            raise ValueError(f"expected an integer, got {raw!r}")
        try:
            return int(raw)
        except (TypeError, ValueError):
            raise ValueError(f"expected an integer, got {raw!r}") from None
    if tp is float:
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number, got {raw!r}") from None
    if tp is Path:
        if not isinstance(raw, str | Path):
            raise ValueError(f"expected a path, got {raw!r}")
        return Path(raw)
    if tp is str:
        if not isinstance(raw, str):
            raise ValueError(f"expected a string, got {raw!r}")
        return raw
    raise TypeError(f"unsupported config type {tp!r}")


def _convert(tp: Any, raw: Any, *, from_text: bool) -> Any:
    tp = _unwrap_optional(tp)
    if typing.get_origin(tp) in (list, tuple):
        (item_tp, *_) = typing.get_args(tp)
        if from_text and isinstance(raw, str):
            raw = [part for part in (p.strip() for p in raw.split(",")) if part]
        if not isinstance(raw, list | tuple):
            raise ValueError(f"expected a list, got {raw!r}")
        items = [_convert_scalar(item_tp, item) for item in raw]
        return tuple(items) if typing.get_origin(tp) is tuple else items
    return _convert_scalar(tp, raw)


def add_arguments(parser: argparse.ArgumentParser, cls: type[Any]) -> None:
    """Add one flag per field of ``cls`` (plus ``--config``) to ``parser``.

    Flags default to "absent" so :func:`load` can tell an explicit flag from a default.
    """
    hints = typing.get_type_hints(cls)
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="TOML configuration file (also HUSHROOM_CONFIG); flags and environment win over it",
    )
    for field in dataclasses.fields(cls):
        tp = hints[field.name]
        help_text = field.metadata.get("help", "")
        if field.default is not dataclasses.MISSING and field.default not in (None, "", False):
            help_text += f" (default: {field.default})"
        if _unwrap_optional(tp) is bool:
            parser.add_argument(
                _flag(field.name),
                dest=field.name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        elif _is_list(tp):
            parser.add_argument(
                _flag(field.name),
                dest=field.name,
                action="append",
                default=argparse.SUPPRESS,
                help=help_text + " (repeatable)",
            )
        else:
            parser.add_argument(
                _flag(field.name), dest=field.name, default=argparse.SUPPRESS, help=help_text
            )


def load(
    cls: type[C],
    section: str,
    flags: Mapping[str, Any] | argparse.Namespace,
    environ: Mapping[str, str] | None = None,
) -> C:
    """Build ``cls`` from flags, then ``HUSHROOM_*`` environment, then the TOML file.

    Raises :class:`ConfigError` naming the flag, variable or TOML key that is wrong.
    """
    if isinstance(flags, argparse.Namespace):
        flags = vars(flags)
    environ = os.environ if environ is None else environ
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]

    file_values: dict[str, Any] = {}
    config_path = flags.get("config") or environ.get("HUSHROOM_CONFIG")
    if config_path:
        try:
            with open(config_path, "rb") as fh:
                document = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError("--config", f"cannot read {config_path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("--config", f"{config_path} is not valid TOML: {exc}") from None
        table = document.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}]", "must be a table")
        for key, value in table.items():
            name = key.replace("-", "_")
            if name not in fields:
                raise ConfigError(f"[{section}].{key}", "unknown setting")
            file_values[name] = value

    values: dict[str, Any] = {}
    for name, field in fields.items():
        tp = hints[name]
        env_name = _env_name(section, field)
        if name in flags:
            key, raw, from_text = _flag(name), flags[name], True
        elif env_name in environ:
            key, raw, from_text = env_name, environ[env_name], True
        elif name in file_values:
            key, raw, from_text = f"[{section}].{name}", file_values[name], False
        else:
            continue
        try:
            value = _convert(tp, raw, from_text=from_text)
            check = field.metadata.get("check")
            if check is not None:
                value = check(value)
        except ValueError as exc:
            raise ConfigError(key, str(exc)) from None
        values[name] = value

    missing = [
        n
        for n, f in fields.items()
        if n not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(_flag(missing[0]), "is required")
    config = cls(**values)
    validate = getattr(config, "validate", None)
    if validate is not None:
        validate()
    return config


class _OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_CONFIG, f"{self.prog}: {message}\n")


def make_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An argument parser that reports errors on one line with exit code 2."""
    return _OneLineParser(prog=prog, description=description)


def run_main(
    prog: str,
    description: str,
    cls: type[C],
    section: str,
    argv: Sequence[str] | None,
    body: Callable[[C], int],
    *,
    extra_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
) -> int:
    """Parse ``argv`` into ``cls`` and call ``body(config)``; config errors exit with code 2."""
    parser = make_parser(prog, description)
    add_arguments(parser, cls)
    if extra_arguments is not None:
        extra_arguments(parser)
    namespace = parser.parse_args(argv)
    try:
        config = load(cls, section, namespace)
    except ConfigError as exc:
        print(f"{prog}: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return body(config)
