"""Who may read a channel: the devices a channel's sender key (and its messages) go to.

The readers are the members holding VIEW_CHANNEL, evaluated from the guild's roles, the
members' roles and the channel's overwrites (:mod:`client.permissions`, Discord's order);
their devices come from :class:`~client.trust.Trust`, checked against the pinned keys.
The reader list is computed afresh for every send, unless a gateway session runs: then
membership, role, channel and device changes arrive as dispatches that call
:meth:`Audience.forget`, so it may be cached until one of them does.
"""

from __future__ import annotations

from client.account import Account
from client.api import ControlApi
from client.errors import ApiError
from client.models import Device
from client.permissions import readers
from client.trust import Trust

__all__ = ["Audience"]


class Audience:
    """The readers of each channel and their devices."""

    def __init__(self, api: ControlApi, account: Account, trust: Trust) -> None:
        self._api = api
        self._account = account
        self._trust = trust
        self._readers: dict[str, list[str]] = {}
        #: True while a gateway session runs (reader lists may then be cached).
        self.cache_readers = False

    async def _reader_ids(self, channel_id: str) -> tuple[list[str], dict[str, str | None]]:
        reader_ids = self._readers.get(channel_id)
        handles: dict[str, str | None] = {}
        if reader_ids is None:
            channel = await self._api.channel(channel_id)
            guild = await self._api.guild(channel.guild_id)
            members = await self._api.members(channel.guild_id)
            handles = {m.user_id: m.handle for m in members}
            reader_ids = readers(guild, members, channel)
            if self.cache_readers:
                self._readers[channel_id] = reader_ids
        return reader_ids, handles

    async def can_read(self, channel_id: str, user_id: str) -> bool | None:
        """Whether ``user_id`` holds VIEW_CHANNEL in ``channel_id`` by this client's own
        reckoning of the guild; None when this account cannot see the channel itself."""
        try:
            reader_ids, _ = await self._reader_ids(channel_id)
        except ApiError as exc:
            if exc.status in (403, 404):
                return None
            raise
        return user_id in reader_ids

    async def of(self, channel_id: str) -> dict[str, list[Device]]:
        """user id → devices of everyone who may read ``channel_id`` (minus this device)."""
        reader_ids, handles = await self._reader_ids(channel_id)
        out: dict[str, list[Device]] = {}
        for user_id in reader_ids:
            devices = await self._trust.devices_of(user_id, handles.get(user_id))
            if user_id == self._account.user_id:
                devices = [d for d in devices if d.id != self._account.device_id]
            if devices:
                out[user_id] = devices
        return out

    def forget(self) -> None:
        """Recompute every channel's readers before its next send (they may have changed)."""
        self._readers.clear()
