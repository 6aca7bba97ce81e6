"""The per-application state every handler reaches through :func:`get_state`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from quart import current_app

from .bus import LocalBus
from .config import ControlConfig
from .proof_of_work import ProofOfWork
from .quotas import EnvelopeQuota
from .ratelimit import ClaimLimiter, RateLimiter
from .sessions import SessionCache
from .store import Database

if TYPE_CHECKING:
    from .gateway.hub import GatewayHub
    from .nodes import NodeRegistry
    from .voice import VoiceService

__all__ = ["ControlState", "get_state"]

EXTENSION = "hushroom.control"


@dataclass
class ControlState:
    """Everything one control process holds: config, store, bus, limits and live sessions."""

    config: ControlConfig
    db: Database
    bus: LocalBus
    limiter: RateLimiter
    hub: GatewayHub
    sessions: SessionCache
    proof_of_work: ProofOfWork
    envelope_quota: EnvelopeQuota
    prekey_claims: ClaimLimiter
    nodes: NodeRegistry
    voice: VoiceService


def get_state() -> ControlState:
    """The state of the application serving the current request."""
    state = current_app.extensions[EXTENSION]
    assert isinstance(state, ControlState)
    return state
