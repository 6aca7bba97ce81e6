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

After registration control sends requests ``{"id", "method", "params"}`` and the node
answers each with ``{"id", "result"}`` or ``{"id", "error": {"code", "message"}}``
(:func:`encode_request`, :func:`decode_request_untrusted`, :func:`encode_reply`,
:func:`decode_reply_untrusted`). Replies may come out of request order; the id matches them.
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
    "decode_message_untrusted",
    "decode_reply_untrusted",
    "decode_request_untrusted",
    "encode_frame",
    "encode_reply",
    "encode_request",
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


def decode_message_untrusted(raw: bytes | str) -> dict[Any, Any]:
    """Decode any frame on the link (event, request or reply) into its msgpack map.

    Raises :class:`LinkProtocolError` for anything but a bounded binary msgpack map.
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
    return frame


def encode_request(request_id: int, method: str, params: dict[str, Any]) -> bytes:
    """Encode one RPC request (control → node)."""
    return msgpack.packb({"id": request_id, "method": method, "params": params}, use_bin_type=True)


def decode_request_untrusted(frame: dict[Any, Any]) -> tuple[int | str, str, dict[str, Any]]:
    """``(id, method, params)`` of a decoded request frame; :class:`LinkProtocolError` if the
    id is not an integer or short string, the method not a string or the params not a map."""
    request_id = frame.get("id")
    method = frame.get("method")
    params = frame.get("params", {})
    if isinstance(request_id, bool) or not isinstance(request_id, int | str):
        raise LinkProtocolError("request id must be an integer or a string")
    if isinstance(request_id, str) and len(request_id) > 64:
        raise LinkProtocolError("request id too long")
    if not isinstance(method, str) or not isinstance(params, dict):
        raise LinkProtocolError("request needs a string 'method' and a map 'params'")
    return request_id, method, params


def encode_reply(
    request_id: int | str,
    *,
    result: dict[str, Any] | None = None,
    error: tuple[str, str] | None = None,
) -> bytes:
    """Encode the reply to one request: a result map or an ``(code, message)`` error."""
    if error is not None:
        body: dict[str, Any] = {"id": request_id, "error": {"code": error[0], "message": error[1]}}
    else:
        body = {"id": request_id, "result": result or {}}
    return msgpack.packb(body, use_bin_type=True)


def decode_reply_untrusted(
    frame: dict[Any, Any],
) -> tuple[int | str, dict[str, Any] | None, dict[str, Any] | None]:
    """``(id, result, error)`` of a decoded reply frame; exactly one of the last two is set."""
    request_id = frame.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, int | str):
        raise LinkProtocolError("reply id must be an integer or a string")
    result, error = frame.get("result"), frame.get("error")
    if (result is None) == (error is None):
        raise LinkProtocolError("reply needs exactly one of 'result' and 'error'")
    if result is not None and not isinstance(result, dict):
        raise LinkProtocolError("reply result must be a map")
    if error is not None and not isinstance(error, dict):
        raise LinkProtocolError("reply error must be a map")
    return request_id, result, error


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
