"""Request/reply over the node link (control → SFU node), and the node's events.

One :class:`NodeLink` per connected node. :meth:`NodeLink.request` numbers a request, hands
its frame to the link's writer and waits for the reply with the same id, at most
``timeout_s``; replies may come out of order. A refusal arrives as :class:`NodeRefused`
carrying the node's code (``not_found``, ``bad_params``), a silent node as
:class:`NodeTimeout`, a link that closes under a waiting request as :class:`NodeGone`.
Events (``speaker``, ``transport.closed``, ``stats``) go to the subscriber given at
construction. The frames are :mod:`hushroom.node_link`'s; the trio shell that moves them
is the link handler in :mod:`control.app`.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import Any

import trio

from hushroom import node_link

__all__ = ["NodeGone", "NodeLink", "NodeRefused", "NodeRpcError", "NodeTimeout"]

log = logging.getLogger("control.node_rpc")

#: Seconds a node has to answer one request.
DEFAULT_TIMEOUT_S = 5.0
#: Frames waiting for the link's writer at most (a node that stops reading is cut).
OUTBOX_FRAMES = 1024

EventHandler = Callable[[str, str, dict[str, Any]], None]


class NodeRpcError(Exception):
    """A request to an SFU node failed."""


class NodeRefused(NodeRpcError):
    """The node answered with an error ``code`` (``not_found``, ``bad_params``, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class NodeTimeout(NodeRpcError):
    """The node did not answer within the timeout."""


class NodeGone(NodeRpcError):
    """The link closed (or was never usable) while the request waited."""


class NodeLink:
    """The request/reply state of one registered node's link (see module docstring)."""

    def __init__(
        self, node_id: str, on_event: EventHandler, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> None:
        self.node_id = node_id
        self.timeout_s = timeout_s
        self._on_event = on_event
        self._ids = itertools.count(1)
        self._pending: dict[int, trio.MemorySendChannel[dict[str, Any]]] = {}
        self.outbox, self._outbox_out = trio.open_memory_channel[bytes](OUTBOX_FRAMES)
        self.closed = False

    async def request(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Send ``method`` with ``params`` and return the node's result map."""
        if self.closed:
            raise NodeGone(f"node {self.node_id} is gone")
        request_id = next(self._ids)
        send, receive = trio.open_memory_channel[dict[str, Any]](1)
        self._pending[request_id] = send
        try:
            try:
                self.outbox.send_nowait(node_link.encode_request(request_id, method, params or {}))
            except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                raise NodeGone(f"node {self.node_id} is not reading") from None
            with trio.move_on_after(self.timeout_s):
                try:
                    reply = await receive.receive()
                except trio.EndOfChannel:
                    raise NodeGone(f"node {self.node_id} went away") from None
                error = reply.get("error")
                if error is not None:
                    raise NodeRefused(str(error.get("code")), str(error.get("message"))[:200])
                result: dict[str, Any] = reply["result"]
                return result
            raise NodeTimeout(f"node {self.node_id} did not answer {method} in time")
        finally:
            self._pending.pop(request_id, None)

    def receive_untrusted(self, raw: bytes | str) -> None:
        """Take one frame from the node: a reply goes to its request, an event (health,
        stats, speaker, transport.closed) to the subscriber. Raises
        :class:`~hushroom.node_link.LinkProtocolError` on a malformed frame."""
        frame = node_link.decode_message_untrusted(raw)
        if "event" in frame:
            event, data = frame.get("event"), frame.get("data", {})
            if not isinstance(event, str) or not isinstance(data, dict):
                raise node_link.LinkProtocolError("event needs a string 'event' and a map 'data'")
            self._on_event(self.node_id, event, data)
            return
        request_id, result, error = node_link.decode_reply_untrusted(frame)
        waiting = self._pending.pop(request_id, None) if isinstance(request_id, int) else None
        if waiting is None:
            # Late (timed out) or unknown: nobody waits for it any more.
            return
        waiting.send_nowait({"result": result} if error is None else {"error": error})
        waiting.close()

    def close(self) -> None:
        """The link is down: every waiting request fails with :class:`NodeGone`."""
        self.closed = True
        for waiting in self._pending.values():
            waiting.close()
        self._pending.clear()
        self.outbox.close()

    async def run_writer(self, send: Callable[[bytes], Any]) -> None:
        """Move queued request frames to the link (``send`` is the WebSocket's)."""
        async for frame in self._outbox_out:
            await send(frame)
