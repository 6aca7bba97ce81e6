"""The control-plane ASGI application (Quart on trio)."""

from __future__ import annotations

import logging
import time
from typing import Any

import trio
from quart import websocket
from quart_trio import QuartTrio

from hushroom import __version__, node_link
from hushroom.secrets_file import read_secret_file

from .api import build_api
from .api.provisioning import close_mailboxes
from .bus import LocalBus
from .config import ControlConfig
from .errors import register_error_handlers
from .gateway.hub import GatewayHub
from .gateway.shell import serve_gateway
from .node_rpc import NodeLink
from .nodes import NodeInfo, NodeRegistry, parse_register_untrusted, parse_workers_untrusted
from .proof_of_work import ProofOfWork, derive_key
from .purger import run_purger
from .quotas import EnvelopeQuota
from .ratelimit import ClaimLimiter, RateLimiter
from .sessions import SessionCache
from .state import EXTENSION, ControlState
from .store import Database
from .voice import VoiceService
from .wire import guard_request_target

__all__ = ["create_app"]

log = logging.getLogger("control")

#: A node that has not registered this long after connecting is dropped.
REGISTER_TIMEOUT_S = 10.0


def create_app(config: ControlConfig) -> QuartTrio:
    """Build the application for ``config``; every piece of state hangs off the app."""
    app = QuartTrio("control")
    app.config["HUSHROOM"] = config
    # Paths and query strings that are not text are refused before Quart parses them.
    app.asgi_app = guard_request_target(app.asgi_app)  # type: ignore[method-assign,assignment]
    # Quart refuses larger bodies before a handler runs; routes apply their own lower limits.
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    node_secrets = read_secret_file(config.resolved_node_secret_file)
    registry = NodeRegistry()
    app.extensions["hushroom.nodes"] = registry
    bus = LocalBus()
    db = Database(config.resolved_database_url)
    sessions = SessionCache(db, config.session_cache)
    # Subscribed before anything can publish: revocations must never pass the cache by.
    bus.subscribe(sessions.on_event)
    turn_secret = read_secret_file(config.turn_secret_file)[0] if config.turn_secret_file else None
    voice = VoiceService(config, db, bus, registry, turn_secret)
    state = ControlState(
        config=config,
        db=db,
        bus=bus,
        limiter=RateLimiter(config.rate_per_s, config.rate_burst),
        hub=GatewayHub(bus, config.resume_window_s, config.gateway_pending_limit),
        sessions=sessions,
        proof_of_work=ProofOfWork(
            # Derived from the node secret, which every control process of a deployment
            # shares, so a puzzle one process issued is redeemable at any other.
            derive_key(node_secrets[0]),
            base_bits=config.pow_base_bits,
            max_bits=config.pow_max_bits,
            target_per_s=config.pow_target_per_s,
        ),
        envelope_quota=EnvelopeQuota.from_config(config),
        prekey_claims=ClaimLimiter(
            config.prekey_claims_per_minute,
            config.prekey_claim_burst,
            config.otk_per_claimer_device_per_day,
            config.otk_per_device_per_hour,
        ),
        nodes=registry,
        voice=voice,
    )
    app.extensions[EXTENSION] = state
    register_error_handlers(app)
    api = build_api()
    app.register_blueprint(api.blueprint)

    # The purger and the voice service belong to the app's nursery; their own scope lets
    # shutdown stop them at once.
    background_scope = trio.CancelScope()

    async def background() -> None:
        with background_scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run_purger, state)
                nursery.start_soon(voice.run)

    @app.before_serving
    async def open_store() -> None:
        version = await state.db.migrate()
        log.info("database schema at version %d", version)
        app.nursery.start_soon(background)

    @app.after_serving
    async def close_store() -> None:
        background_scope.cancel()
        close_mailboxes(app)
        state.db.close()

    @app.websocket("/api/v1/gateway")
    async def gateway() -> None:
        await serve_gateway(state)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        # Counts only: which channels are busy, and who is in them, is never shown.
        return {
            "status": "ok",
            "version": __version__,
            "sfu_nodes": registry.healthy_count(),
            "voice_channels": len(voice.registry.channels),
        }

    @app.websocket(node_link.PATH)
    async def sfu_node_link() -> None:
        await websocket.accept()
        challenge = node_link.new_challenge()
        await websocket.send(node_link.encode_frame("hello", {"challenge": challenge}))
        with trio.move_on_after(REGISTER_TIMEOUT_S) as scope:
            raw = await websocket.receive()
        if scope.cancelled_caught:
            await websocket.close(node_link.CLOSE_PROTOCOL, "register timeout")
            return
        try:
            event, data = node_link.decode_frame_untrusted(raw)
            if event != "register":
                raise node_link.LinkProtocolError("expected register")
            info = parse_register_untrusted(data)
        except node_link.LinkProtocolError as exc:
            await websocket.close(node_link.CLOSE_PROTOCOL, str(exc)[:120])
            return
        proof = data.get("proof")
        if not any(node_link.verify_proof(s, challenge, info.node_id, proof) for s in node_secrets):
            log.warning("SFU node registration refused: bad proof")
            await websocket.close(node_link.CLOSE_BAD_PROOF, "bad proof")
            return
        await _serve_node(info, registry, voice, config.sfu_request_timeout_s)

    return app


async def _serve_node(
    info: NodeInfo, registry: NodeRegistry, voice: VoiceService, timeout_s: float
) -> None:
    """A registered node's link: health reports, RPC replies and events in; requests out
    (through :class:`~control.node_rpc.NodeLink`). When it closes, the node's voice channels
    are placed elsewhere."""

    def on_event(node_id: str, event: str, data: dict[str, Any]) -> None:
        if event == "health":
            info.workers = parse_workers_untrusted(data.get("workers"))
            info.last_health = time.monotonic()
        elif event == "stats":
            info.stats = data
        else:
            voice.on_node_event(node_id, event, data)

    link = NodeLink(info.node_id, on_event, timeout_s)
    registry.register(info)
    log.info("SFU node %s registered with %d workers", info.node_id, len(info.workers))
    try:
        await websocket.send(node_link.encode_frame("registered", {}))
        info.link = link
        async with trio.open_nursery() as nursery:
            nursery.start_soon(link.run_writer, websocket.send)
            try:
                while True:
                    link.receive_untrusted(await websocket.receive())
            except node_link.LinkProtocolError as exc:
                await websocket.close(node_link.CLOSE_PROTOCOL, str(exc)[:120])
            nursery.cancel_scope.cancel()
    finally:
        link.close()
        registry.unregister(info.node_id, info)
        log.info("SFU node %s disconnected", info.node_id)
        voice.node_lost(info.node_id)
