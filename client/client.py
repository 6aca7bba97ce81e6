"""The hushroom client: account, devices, end-to-end encrypted DMs and channels.

A :class:`Client` owns one profile (an unlocked :class:`~client.store.Store`) and talks to
one control plane through :class:`~client.api.ControlApi`. It is a façade: each concern
is a part of its own, given the shared state it needs (store, API, account, and the
parts below it) explicitly, and usable without a ``Client`` (docs/client.md has the map):

* :mod:`client.account` — who this profile is; registration, sign-in, privacy requests;
* :mod:`client.prekeys` — this device's prekeys, topped up and rotated;
* :mod:`client.trust` — pinned contact keys, verification, safety numbers, device lists;
* :mod:`client.sessions` — pairwise sessions and fan-out over them;
* :mod:`client.dm` — DMs and device-sync copies;
* :mod:`client.inbox` — envelopes: receive, persist, ack exactly once;
* :mod:`client.audience`, :mod:`client.sender_keys`, :mod:`client.channels` — who may
  read a channel, sender-key chains, channel messages;
* :mod:`client.devices` — this account's devices and linking a new one;
* :mod:`client.backup` — what an encrypted key backup carries and what it restores;
* :mod:`client.sync` — catching up by REST and following the gateway live;
* :mod:`client.media_keys`, :mod:`client.voice` — voice calls: media keys over pairwise
  sessions, signalling, SFrame-protected aiortc media;
* :mod:`client.history`, :mod:`client.notices` — what is kept to show.

Everything the server sees is ciphertext built with :mod:`e2ee`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from client import account as _account
from client.account import Account
from client.api import ControlApi
from client.audience import Audience
from client.backup import backup_contents as _backup_contents
from client.backup import restore_backup as _restore_backup
from client.channels import Channels
from client.devices import LINK_CODE_TTL_S, Devices
from client.devices import join_device as _join_device
from client.dm import DirectMessages
from client.errors import ClientError, NotRegistered, UsageError
from client.gateway import GatewayClient
from client.history import History, Message
from client.inbox import Inbox
from client.media_keys import MediaKeys
from client.models import Channel, ChannelMessage, Device, Envelope, PrekeyCounts
from client.notices import Notice, Notices
from client.prekeys import Prekeys
from client.sender_keys import SenderKeys
from client.sessions import Sessions
from client.store import Passphrase, Store
from client.sync import Sync
from client.trust import Trust
from client.voice.calls import Voice
from client.voice.signalling import VoiceState
from contract.gateway import Op
from e2ee import BackupContents, IdentityKeyPair, LinkingSecret, PreKeyStore

if TYPE_CHECKING:
    from aiortc import MediaStreamTrack

    from client.voice.call import TrackHandler, VoiceCall

__all__ = ["Client", "Message", "Notice"]


class Client:
    """One profile signed in to one server. Open with :meth:`open` or :meth:`register`."""

    def __init__(self, store: Store, api: ControlApi) -> None:
        self.store = store
        self.api = api
        self.account = Account.load(store)
        self.user_id: str = self.account.user_id
        self.handle: str = self.account.handle
        self.device_id: str = self.account.device_id
        self.identity: IdentityKeyPair = self.account.identity
        # An expired session token is renewed by signing a challenge, transparently.
        api.relogin = self.login
        notices = Notices(store)
        history = History(store)
        prekeys = Prekeys(store, api, self.identity)
        trust = Trust(store, api, self.account, notices)
        audience = Audience(api, self.account, trust)
        sessions = Sessions(store, api, self.account, trust, prekeys, audience.forget)
        sender_keys = SenderKeys(store)
        dms = DirectMessages(self.account, trust, sessions, history)
        inbox = Inbox(
            store,
            api,
            self.account,
            trust,
            sessions,
            dms,
            sender_keys,
            history,
            notices,
            audience.can_read,
        )
        channels = Channels(
            store,
            api,
            self.account,
            trust,
            audience,
            sessions,
            sender_keys,
            inbox,
            history,
            notices,
        )
        self._notices = notices
        self._history = history
        self._prekeys = prekeys
        self._trust = trust
        self._audience = audience
        self._sessions = sessions
        self._dms = dms
        self._inbox = inbox
        self._channels = channels
        self._devices = Devices(api, self.account, trust)
        # An account older than cross-signing: the device that sets up its account key
        # hands it to the others over their pairwise sessions (client.trust).
        trust.hand_over = dms.hand_over_account_key
        self._sync = Sync(api, trust, prekeys, audience, inbox, channels)
        # Voice: media keys arrive through the inbox, voice dispatches through Sync.
        self._media_keys = MediaKeys(self.account, trust, sessions, notices)
        inbox.on_media_key = self._media_keys.received
        self._voice = Voice(self.user_id, self.device_id, self._media_keys)
        self._sync.on_voice = self._voice.dispatch

    @property
    def prekeys(self) -> PreKeyStore:
        """This device's prekey store as last loaded or saved."""
        return self._prekeys.current

    @property
    def gateway(self) -> GatewayClient | None:
        """The gateway session while :meth:`live` runs (``gateway.reconnect()`` resumes)."""
        return self._sync.gateway

    # --- opening, registration, login --------------------------------------------------

    @classmethod
    def open(cls, profile: Path, passphrase: Passphrase, server: str | None = None) -> Client:
        """Unlock an existing profile (``passphrase`` is only asked for by passphrase stores)."""
        store = Store.open(profile, passphrase)
        account = store.get("account", "self")
        if account is None:
            store.close()
            raise NotRegistered(f"the profile at {profile} has no account; register first")
        return cls(store, ControlApi(server or account["server"], account["token"]))

    @classmethod
    async def register(
        cls,
        profile: Path,
        passphrase: Passphrase,
        server: str,
        handle: str,
        *,
        use_keyring: bool = False,
    ) -> Client:
        """Create the account: a fresh device identity, prekeys, and a signed challenge
        (:func:`client.account.register_account`)."""
        store, api = await _account.register_account(
            profile, passphrase, server, handle, use_keyring=use_keyring
        )
        client = cls(store, api)
        await client._trust.set_up_new_account()
        return client

    async def login(self) -> None:
        """Get a new session token for this device by signing a challenge."""
        await _account.sign_in(self.api, self.store, self.identity)

    async def aclose(self) -> None:
        """Close the connection and the store."""
        await self.api.aclose()
        self.store.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- devices and linking (client.devices, client.prekeys) ---------------------------

    async def devices(self) -> list[Device]:
        """This account's devices."""
        return await self._devices.current()

    async def link_device(self, code: str) -> Device:
        """Make a new device of this account for the device showing ``code``
        (:meth:`client.devices.Devices.link`)."""
        return await self._devices.link(code)

    @classmethod
    async def join_device(
        cls,
        profile: Path,
        passphrase: Passphrase,
        server: str,
        show_code: Callable[[LinkingSecret, int], None],
        *,
        use_keyring: bool = False,
        expires_in: int = LINK_CODE_TTL_S,
    ) -> Client:
        """Become a new device of an existing account: the other side of
        :meth:`link_device` (:func:`client.devices.join_device`)."""
        store, api = await _join_device(
            profile, passphrase, server, show_code, use_keyring=use_keyring, expires_in=expires_in
        )
        return cls(store, api)

    def backup_contents(self) -> BackupContents:
        """What an encrypted backup of this profile carries, the account key included
        when this device holds it (:func:`client.backup.backup_contents`); encrypt it
        with :func:`e2ee.export_backup`."""
        return _backup_contents(self.store, self.prekeys, self._trust)

    @classmethod
    async def restore_backup(
        cls,
        profile: Path,
        passphrase: Passphrase,
        server: str,
        contents: BackupContents,
        *,
        use_keyring: bool = False,
    ) -> Client:
        """A new profile of the backed-up device, signed in, holding the account key if
        the backup does (:func:`client.backup.restore_backup`; decrypt the backup with
        :func:`e2ee.import_backup`)."""
        store, api = await _restore_backup(
            profile, passphrase, server, contents, use_keyring=use_keyring
        )
        return cls(store, api)

    async def remove_device(self, device_id: str) -> None:
        """Remove one of this account's devices (not this one)."""
        await self._devices.remove(device_id)

    async def maintain_prekeys(self) -> PrekeyCounts:
        """Top up one-time prekeys of both kinds and rotate the signed and PQ prekeys when
        due; returns the one-time prekeys the server holds
        (:meth:`client.prekeys.Prekeys.maintain`)."""
        return await self._prekeys.maintain()

    def prune_envelope_marks(self, now: float | None = None) -> int:
        """Forget "already handled" marks older than the relay keeps envelopes."""
        return self._inbox.prune_marks(now)

    # --- contacts, identity keys and safety numbers (client.trust) ---------------------

    def notices(self) -> list[Notice]:
        """Notices not yet shown (and forget them)."""
        return self._notices.take()

    async def safety_number(self, handle: str) -> tuple[str, bool]:
        """The formatted safety number with ``handle`` over their current keys, and whether
        exactly those keys are marked verified (:meth:`client.trust.Trust.safety_number`)."""
        return await self._trust.safety_number(handle)

    async def mark_verified(self, handle: str) -> None:
        """Mark the contact's current keys as verified (after comparing safety numbers)."""
        await self._trust.mark_verified(handle)

    async def accept_identity(self, handle: str) -> None:
        """Accept a contact's changed keys (unverified until compared again), and drop the
        sessions under their old keys."""
        user_id, devices = await self._trust.accept_identity(handle)
        self._sessions.keep_matching(user_id, devices)

    # --- direct messages (client.dm, client.inbox) --------------------------------------

    async def send_dm(self, handle: str, text: str, expires_in: int | None = None) -> Message:
        """Send an end-to-end encrypted direct message to every device of ``handle``."""
        return await self._dms.send(handle, text, expires_in)

    def history(self, conversation: str, limit: int = 50) -> list[Message]:
        """The stored messages of ``conversation`` (``dm:<user id>`` or ``ch:<channel id>``).

        Channel messages are in the server's order; DMs in the order their senders wrote
        them (the relay hands out envelopes of one second in no particular order).
        """
        return self._history.conversation(conversation, limit)

    async def dm_history(self, handle: str, limit: int = 50) -> list[Message]:
        """Stored DMs with ``handle``."""
        return await self._dms.history(handle, limit)

    async def sync(self) -> list[Message]:
        """Fetch, decrypt, persist and ack every envelope queued for this device
        (:meth:`client.sync.Sync.envelopes`)."""
        return await self._sync.envelopes()

    async def receive_envelopes(
        self, envelopes: list[Envelope], *, ack: bool = True
    ) -> list[Message]:
        """Handle envelopes (from REST, READY or ENVELOPE_CREATE) and ack them
        (:meth:`client.inbox.Inbox.receive`)."""
        return await self._inbox.receive(envelopes, ack=ack)

    async def flush_acks(self) -> None:
        """Ack every envelope handled so far."""
        await self._inbox.flush_acks()

    # --- channels (client.audience, client.channels) ------------------------------------

    async def audience(self, channel_id: str) -> dict[str, list[Device]]:
        """user id → devices of everyone who may read ``channel_id`` (minus this device)."""
        return await self._audience.of(channel_id)

    async def send_channel(
        self, channel_id: str, text: str, expires_in: int | None = None
    ) -> Message:
        """Encrypt with this device's sender key and post to the channel."""
        return await self._channels.send(channel_id, text, expires_in)

    async def expire_sent_messages(self, now: float | None = None) -> int:
        """Delete this device's disappearing channel messages that are due from the server."""
        return await self._channels.expire_sent(now)

    async def sync_channel(self, channel_id: str) -> list[Message]:
        """Fetch stored channel messages after the last one seen, decrypt and persist them."""
        return await self._channels.sync(channel_id)

    async def receive_channel_messages(self, messages: list[ChannelMessage]) -> list[Message]:
        """Decrypt channel messages (history or MESSAGE_CREATE) in order."""
        return await self._channels.receive(messages)

    async def conversation_label(self, conversation: str) -> str:
        """``@handle`` for a DM, ``#channel`` for a channel (names remembered once seen)."""
        kind, _, ident = conversation.partition(":")
        if kind == "dm":
            return "@" + self._trust.name(ident)
        return await self._channels.label(ident)

    async def find_channel(self, name: str, guild: str | None = None) -> Channel:
        """A channel by id, ``guild/channel`` or plain name across the caller's guilds."""
        return await self._channels.find(name, guild)

    # --- catching up and live (client.sync) ---------------------------------------------

    async def sync_all(self) -> list[Message]:
        """Fetch everything new: envelopes, then every text channel of every guild."""
        return await self._sync.everything()

    def live(self) -> AbstractAsyncContextManager[trio.MemoryReceiveChannel[Message]]:
        """Follow the gateway: yields a channel of new messages (DMs and channels), once
        connected and caught up (:meth:`client.sync.Sync.live`)."""
        return self._sync.live()

    # --- voice (client.voice, client.media_keys) ---------------------------------------

    @property
    def media_keys(self) -> MediaKeys:
        """The media keys of the running call (:class:`client.media_keys.MediaKeys`)."""
        return self._media_keys

    def voice_states(self, channel_id: str) -> dict[tuple[str, str], VoiceState]:
        """Who is in voice channel ``channel_id``, as the gateway said (while live)."""
        return self._voice.states.in_channel(channel_id)

    def voice_call(
        self,
        guild_id: str,
        channel_id: str,
        source: Callable[[], MediaStreamTrack],
        *,
        self_mute: bool = False,
        self_deaf: bool = False,
        relay_only: bool = False,
        on_track: TrackHandler | None = None,
    ) -> AbstractAsyncContextManager[VoiceCall]:
        """Be in a voice channel for the ``async with`` block, inside :meth:`live`
        (:meth:`client.voice.call.Voice.join`). ``source`` makes the track to publish;
        ``on_track(participant, track)`` gets each participant's received audio."""
        return self._voice.join(
            self._send_gateway,
            guild_id,
            channel_id,
            source,
            self_mute=self_mute,
            self_deaf=self_deaf,
            relay_only=relay_only,
            on_track=on_track,
        )

    async def _send_gateway(self, op: Op, d: dict[str, Any]) -> None:
        gateway = self._sync.gateway
        if gateway is None:
            raise ClientError("voice needs the gateway: join inside client.live()")
        await gateway.send(op, d)

    async def moderate_voice(
        self,
        guild_id: str,
        user_id: str,
        *,
        mute: bool | None = None,
        deaf: bool | None = None,
        move_to: str | None = None,
        disconnect: bool = False,
    ) -> None:
        """Server mute/deafen, move or disconnect a member (MUTE_MEMBERS, DEAFEN_MEMBERS,
        MOVE_MEMBERS; docs/voice.md "Moderation")."""
        body: dict[str, Any] = {}
        if mute is not None:
            body["mute"] = mute
        if deaf is not None:
            body["deaf"] = deaf
        if move_to is not None or disconnect:
            body["channel_id"] = move_to
        if not body:
            raise UsageError("say what to change: mute, deaf, a channel to move to, or disconnect")
        await self.api.moderate_voice(guild_id, user_id, body)

    # --- privacy (client.account) -------------------------------------------------------

    async def export_my_data(self) -> dict[str, Any]:
        """What the server holds about this account, and what this device holds locally."""
        return await _account.export_my_data(self.api, self.store, self.account)

    async def delete_account(self) -> None:
        """Erase the account on the server, then this profile's local store."""
        await _account.delete_account(self.api, self.store)
