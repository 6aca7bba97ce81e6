"""Strict msgpack decoding for untrusted bytes.

Every hushroom e2ee wire structure is a msgpack array ``[tag, version, field...]``. The tag
keeps structures of different kinds apart (a sender-key message can never be parsed as a
pairwise message — the Matrix 2022 lesson); the version lets the format evolve. Decoding is
bounded in total size, in every string/binary length and in every container count, and any
library failure is translated into :class:`~e2ee.errors.DecodeError`.
"""

from __future__ import annotations

from typing import Any

import msgpack

from e2ee.errors import DecodeError, UnsupportedVersion

# Tags of every wire structure in the package, in one place so none is reused.
TAG_PREKEY_BUNDLE = 1
TAG_PREKEY_UPLOAD = 2
TAG_INITIAL_MESSAGE = 3
TAG_RATCHET_MESSAGE = 4
TAG_SESSION_STATE = 5
TAG_SENDER_KEY_MESSAGE = 6
TAG_SENDER_KEY_DISTRIBUTION = 7
TAG_SENDER_KEY_STATE = 8
TAG_MEDIA_KEY = 9
TAG_BACKUP = 10
TAG_BACKUP_PAYLOAD = 11
TAG_PROVISIONING = 12
TAG_PROVISIONING_PAYLOAD = 13
TAG_PREKEY_STORE = 14
TAG_SESSION = 15

VERSION = 1

# Absolute ceiling on any structure this package decodes (backups of many sessions are the
# largest legitimate ones).
MAX_STRUCTURE_BYTES = 16 * 1024 * 1024


def pack(items: list[Any]) -> bytes:
    """Encode a wire structure (a list whose first two items are tag and version)."""
    return msgpack.packb(items, use_bin_type=True)


def unpack_untrusted(
    data: object,
    tag: int,
    *,
    max_bytes: int,
    max_items: int = 64,
    max_fields: int | None = None,
    min_fields: int | None = None,
    versions: tuple[int, ...] = (VERSION,),
) -> list[Any]:
    """Decode ``data`` as ``[tag, version, ...]`` with every length and count bounded.

    ``max_items`` bounds every array and map inside the structure; ``min_fields`` and
    ``max_fields`` bound the number of top-level fields (tag and version included).
    ``versions`` lists the versions the caller reads (it finds which one in item 1).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError("expected bytes")
    if len(data) > max_bytes or len(data) > MAX_STRUCTURE_BYTES:
        raise DecodeError(f"structure longer than {max_bytes} bytes")
    try:
        obj = msgpack.unpackb(
            bytes(data),
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_bin_len=max_bytes,
            max_str_len=max_bytes,
            max_array_len=max_items,
            max_map_len=max_items,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many unrelated types on hostile input
        raise DecodeError(f"malformed msgpack: {type(exc).__name__}") from None
    if not isinstance(obj, list) or len(obj) < 2:
        raise DecodeError("expected an array [tag, version, ...]")
    if obj[0] != tag or type(obj[0]) is not int:
        raise DecodeError(f"expected structure tag {tag}")
    if type(obj[1]) is not int or obj[1] not in versions:
        raise UnsupportedVersion(f"unsupported version {obj[1]!r}")
    if min_fields is not None and len(obj) < min_fields:
        raise DecodeError("too few fields")
    if max_fields is not None and len(obj) > max_fields:
        raise DecodeError("too many fields")
    return obj


def get_bytes(
    value: object, name: str, *, size: int | None = None, max_len: int = 1 << 20
) -> bytes:
    """Return ``value`` as bytes, checking its exact ``size`` or its ``max_len``."""
    if not isinstance(value, bytes):
        raise DecodeError(f"{name}: expected bytes")
    if size is not None and len(value) != size:
        raise DecodeError(f"{name}: expected {size} bytes, got {len(value)}")
    if len(value) > max_len:
        raise DecodeError(f"{name}: longer than {max_len} bytes")
    return value


def get_opt_bytes(value: object, name: str, *, size: int | None = None) -> bytes | None:
    """Like :func:`get_bytes` but ``None`` (msgpack nil) is allowed."""
    if value is None:
        return None
    return get_bytes(value, name, size=size)


def get_int(value: object, name: str, lo: int, hi: int) -> int:
    """Return ``value`` as an int in ``[lo, hi]`` (booleans are not integers here)."""
    if type(value) is not int:
        raise DecodeError(f"{name}: expected an integer")
    if not lo <= value <= hi:
        raise DecodeError(f"{name}: {value} out of range [{lo}, {hi}]")
    return value


def get_opt_int(value: object, name: str, lo: int, hi: int) -> int | None:
    """Like :func:`get_int` but ``None`` is allowed."""
    if value is None:
        return None
    return get_int(value, name, lo, hi)


def get_float(value: object, name: str) -> float:
    """Return ``value`` as a finite float (ints are accepted)."""
    if type(value) is int:
        return float(value)
    if type(value) is not float or value != value or value in (float("inf"), float("-inf")):
        raise DecodeError(f"{name}: expected a finite number")
    return value


def get_list(value: object, name: str, *, max_len: int) -> list[Any]:
    """Return ``value`` as a list of at most ``max_len`` items."""
    if not isinstance(value, list):
        raise DecodeError(f"{name}: expected an array")
    if len(value) > max_len:
        raise DecodeError(f"{name}: more than {max_len} items")
    return value


def get_str(value: object, name: str, *, max_len: int) -> str:
    """Return ``value`` as a str of at most ``max_len`` characters."""
    if not isinstance(value, str):
        raise DecodeError(f"{name}: expected a string")
    if len(value) > max_len:
        raise DecodeError(f"{name}: longer than {max_len}")
    return value


def peek_tag(data: object) -> int:
    """The structure tag of an encoded ``[tag, version, ...]`` without decoding the rest."""
    if not isinstance(data, bytes | bytearray | memoryview) or len(data) < 2:
        raise DecodeError("too short for a wire structure")
    # Every structure here is a msgpack fixarray (at most 15 items) with a fixint tag.
    if not 0x92 <= data[0] <= 0x9F or data[1] > 0x7F:
        raise DecodeError("not a hushroom wire structure")
    return int(data[1])
