"""The event bus: how a state change reaches every gateway hub of the deployment.

An :class:`Event` carries its audience, resolved by the publisher at publish time with the
permission function (so permission changes apply to the very next event). Hubs subscribe
and deliver to their local sessions. :class:`LocalBus` serves one process; a Redis pub/sub
bus implements the same :class:`EventBus` protocol when several control instances share a
deployment.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from contract.gateway import EventName

__all__ = ["Event", "EventBus", "InternalEvent", "LocalBus"]


class InternalEvent(enum.StrEnum):
    """Events between control processes that no client ever receives."""

    #: Sessions were revoked: caches and gateways drop them (control/sessions.py).
    SESSIONS_REVOKED = "SESSIONS_REVOKED"


@dataclass(frozen=True)
class Event:
    """A dispatch ``t`` with payload ``d`` for the listed users and/or devices."""

    type: EventName | InternalEvent
    data: dict[str, Any]
    user_ids: frozenset[str] = field(default_factory=frozenset)
    device_ids: frozenset[str] = field(default_factory=frozenset)


Handler = Callable[[Event], None]


class EventBus(Protocol):
    """Publish events to every subscribed hub of the deployment."""

    async def publish(self, event: Event) -> None:
        """Deliver ``event`` to every subscriber (ordered per publisher)."""

    async def publish_many(self, events: Iterable[Event]) -> None:
        """Publish several events in order (ordered like consecutive ``publish`` calls)."""

    def subscribe(self, handler: Handler) -> Callable[[], None]:
        """Call ``handler`` for each event; return a function that unsubscribes."""


class LocalBus:
    """The in-process bus: publishing calls every subscriber synchronously, in order."""

    def __init__(self) -> None:
        self._handlers: list[Handler] = []

    async def publish(self, event: Event) -> None:
        """Hand ``event`` to each subscriber; handlers never block."""
        for handler in list(self._handlers):
            handler(event)

    async def publish_many(self, events: Iterable[Event]) -> None:
        """Publish several events in order, with one await for all of them (a batch of
        envelopes must not cost a scheduling round per envelope)."""
        handlers = list(self._handlers)
        for event in events:
            for handler in handlers:
                handler(event)

    def subscribe(self, handler: Handler) -> Callable[[], None]:
        """Register ``handler``; the returned function removes it."""
        self._handlers.append(handler)

        def unsubscribe() -> None:
            if handler in self._handlers:
                self._handlers.remove(handler)

        return unsubscribe
