"""hushroom's STUN/TURN relay (RFC 8489, RFC 8656) with TURN REST-API credentials.

* :mod:`turn.stun` — the sans-I/O STUN codec, also used by the SFU's ICE-lite;
* :mod:`turn.server` — the sans-I/O TURN core (:class:`turn.server.TurnServer`), with
  :mod:`turn.allocation`, :mod:`turn.auth`, :mod:`turn.peer_filter`, :mod:`turn.framing`
  and the error types of :mod:`turn.errors`;
* :mod:`turn.serve` — the trio shell; :mod:`turn.config` — :class:`turn.config.TurnConfig`;
* ``python -m turn`` / ``hushroom turn`` — :func:`turn.__main__.main`.

Nothing is imported here, so ``import turn.stun`` stays light for the SFU.
"""
