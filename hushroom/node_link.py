"""The control ↔ SFU node link: framing and the node's proof of the shared secret.

An SFU node dials the control plane's internal WebSocket (``/internal/v1/sfu``). Every
frame is one msgpack map in a binary WebSocket message:

- control → node ``{"event": "hello", "data": {"challenge": <32 bytes>}}``;
- node → control ``{"event": "register", "data": {node_id, announce_ip, workers, capacity,
  proof}}`` where ``proof = HMAC-SHA256(secret, LABEL ‖ challenge ‖ node_id)``: the secret
  itself never crosses the wire, and a recorded registration cannot be replayed against a
  fresh challenge;
- control → node ``{"event": "registered", "data": {}}``, or a close with code 4001;
- node → control ``{"event": "health", "data": {"workers": [...]}}`` right after
  registering and every ``HEALTH_INTERVAL_S`` seconds.

Requests ``{id, method, params}`` and replies ``{id, result}`` / ``{id, error}`` travel on
the same link once the SFU's RPC surface exists.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

import msgpack

__all__ = [
    "CLOSE_BAD_PROOF",
    "CLOSE_PROTOCOL",
    "HEALTH_INTERVAL_S",
    "MAX_FRAME_BYTES",
    "PATH",
    "LinkProtocolError",
    "decode_frame_untrusted",
    "encode_frame",
    "new_challenge",
    "prove",
    "verify_proof",
]

PATH = "/internal/v1/sfu"
LABEL = b"hushroom node link v1\x00"
HEALTH_INTERVAL_S = 5.0
MAX_FRAME_BYTES = 1 << 20
CLOSE_BAD_PROOF = 4001
CLOSE_PROTOCOL = 4002


class LinkProtocolError(Exception):
    """A frame on the node link is malformed or out of order."""


def new_challenge() -> bytes:
    """A fresh random challenge for one registration attempt."""
    return secrets.token_bytes(32)


def prove(secret: bytes, challenge: bytes, node_id: str) -> bytes:
    """The node's answer to ``challenge``: an HMAC binding it to the node id."""
    return hmac.new(secret, LABEL + challenge + node_id.encode(), hashlib.sha256).digest()


def verify_proof(secret: bytes, challenge: bytes, node_id: str, proof: object) -> bool:
    """Check a node's proof in constant time."""
    if not isinstance(proof, bytes):
        return False
    return hmac.compare_digest(prove(secret, challenge, node_id), proof)


def encode_frame(event: str, data: dict[str, Any]) -> bytes:
    """Encode one event frame."""
    return msgpack.packb({"event": event, "data": data}, use_bin_type=True)


def decode_frame_untrusted(raw: bytes | str) -> tuple[str, dict[str, Any]]:
    """Decode a frame received from the peer into ``(event, data)``.

    Raises :class:`LinkProtocolError` for anything but a bounded msgpack map with a string
    ``event`` and a map ``data``.
    """
    if not isinstance(raw, bytes):
        raise LinkProtocolError("node link frames are binary")
    if len(raw) > MAX_FRAME_BYTES:
        raise LinkProtocolError("frame too large")
    try:
        frame = msgpack.unpackb(raw, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise LinkProtocolError(f"undecodable frame: {exc}") from None
    if not isinstance(frame, dict):
        raise LinkProtocolError("frame is not a map")
    event, data = frame.get("event"), frame.get("data", {})
    if not isinstance(event, str) or not isinstance(data, dict):
        raise LinkProtocolError("frame needs a string 'event' and a map 'data'")
    return event, data
