"""Media keys of a voice call: this device's SFrame key and everyone else's, over pairwise
sessions (docs/voice.md, docs/e2ee.md "Media").

One call at a time: :meth:`MediaKeys.begin` makes a fresh :class:`~client.voice.FrameKeys`
under the sender index of the voice session. Who is in the call comes from the voice
states (:meth:`MediaKeys.update`); each participant device gets this device's key inside
the pairwise session with it (``MessageType.MEDIA_KEY``, conversation ``voice:<channel
id>``, through :meth:`client.sessions.Sessions.fan_out`):

* on joining, the current key goes to everyone already there;
* when someone joins, this device ratchets its key (RFC 9605 §5.1) and sends the result to
  the joiner only — the others follow the ratchet by themselves — so a joiner cannot read
  what was said before;
* when someone leaves, this device draws a fresh key and sends it to everyone remaining,
  so the leaver cannot follow, and forgets the leaver's keys.

A key counts as sent (:attr:`MediaKeys.sent`) to a device only once the relay accepted the
post that carries it (a fan-out to more users than one post takes goes out in several). A
device whose key did not get through (the relay refused or was unreachable: the error
propagates out of :meth:`MediaKeys.update`) is *owed*: every later update sends it the then
current key along with whatever that update sends, and an update with nobody joining or
leaving sends the owed keys alone — so calling :meth:`MediaKeys.update` again with the same
participants is the retry. A device that leaves is owed nothing.

The relay takes a fan-out only if it names every device of each recipient user (and this
user's other devices), so devices of a participant that are not in the call get a
MEDIA_KEY message *without* a key: the key itself reaches only devices in the call.
Recipients are the devices of each participant's signed device list (:mod:`client.trust`);
a device in the call that its account did not sign gets nothing and is reported.

A received key is installed bound to the user and device whose pairwise session delivered
it (``MediaKeyReceiver.install``): its sender index is then that device's, whatever anyone
else sends later. It must also be the index the voice states give that device; a key from a
device not (yet) in the call is held until its voice state arrives (keys travel as
envelopes, voice states as dispatches, and either may come first).

Media keys live in memory only: they are worth nothing after the call.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import trio

from client.account import Account
from client.errors import ClientError, IdentityChanged
from client.models import Device
from client.notices import Notices
from client.sessions import Sessions
from client.trust import Trust
from client.voice.keys import FrameKeys
from client.voice.signalling import VoiceState
from e2ee import DecryptedMessage, E2EEError, MessageType, pad, unpad
from e2ee.errors import SenderIndexClaimed
from e2ee.media import MediaKey, MediaKeyReceiver, MediaKeySender

__all__ = ["MAX_HELD_KEYS", "MediaKeys", "voice_conversation"]

#: Keys held per device until its voice state names it (the newest few).
MAX_HELD_KEYS = 4
_PREFIX = b"voice:"


def voice_conversation(channel_id: str) -> bytes:
    """The pairwise conversation id media keys of a voice channel travel under."""
    return _PREFIX + channel_id.encode()


@dataclass
class _Call:
    channel_id: str
    keys: FrameKeys
    voice_session_id: str | None = None
    #: (user id, device id) → the voice state the key distribution last acted on.
    participants: dict[tuple[str, str], VoiceState] = field(default_factory=dict)
    distributed: bool = False
    held: dict[tuple[str, str], list[MediaKey]] = field(default_factory=dict)
    #: Participant devices whose last key did not reach the relay: they get the current key
    #: on the next update.
    owed: set[tuple[str, str]] = field(default_factory=set)


class MediaKeys:
    """This device's media keys for its current voice call, and the participants' keys."""

    def __init__(
        self,
        account: Account,
        trust: Trust,
        sessions: Sessions,
        notices: Notices,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._account = account
        self._trust = trust
        self._sessions = sessions
        self._notices = notices
        self._clock = clock
        self._call: _Call | None = None
        # One distribution at a time: a key change must reach its recipients in order.
        self._lock = trio.Lock()
        #: Keys sent so far, by recipient (user id, device id) → generations (for tests and
        #: the CLI's diagnostics; nothing secret).
        self.sent: dict[tuple[str, str], list[int]] = {}

    @property
    def keys(self) -> FrameKeys | None:
        """The current call's frame keys (None outside a call)."""
        return self._call.keys if self._call is not None else None

    @property
    def channel_id(self) -> str | None:
        """The channel of the current call."""
        return self._call.channel_id if self._call is not None else None

    def begin(
        self, channel_id: str, sender_index: int, voice_session_id: str | None = None
    ) -> FrameKeys:
        """Start (or restart, after a move or a new voice session) a call: a fresh own key
        under ``sender_index`` and no one else's yet.

        The same ``voice_session_id`` again (the server restarting this session's media,
        e.g. after the SFU closed a transport that never connected) keeps the keys: nobody
        joined or left, so the others keep theirs and send nothing new, and a fresh own key
        would start again at generation 0, which every receiver already holds for this
        sender index and ignores."""
        call = self._call
        if (
            call is not None
            and voice_session_id is not None
            and call.voice_session_id == voice_session_id
            and call.channel_id == channel_id
            and call.keys.sender_index == sender_index
        ):
            return call.keys
        keys = FrameKeys(MediaKeySender(sender_index), MediaKeyReceiver(), clock=self._clock)
        self._call = _Call(channel_id, keys, voice_session_id)
        return keys

    def end(self) -> None:
        """Forget the call's keys (left, or refused)."""
        self._call = None

    async def update(self, participants: Mapping[tuple[str, str], VoiceState]) -> None:
        """Act on who is in the call now (this device excluded): distribute keys as the
        module docstring says, and install keys held for devices that are now in it."""
        async with self._lock:
            call = self._call
            if call is None:
                return
            now = {k: s for k, s in participants.items() if s.channel_id == call.channel_id}
            before = call.participants
            # A device back under another sender index is a new voice session: it left.
            changed = {k for k in before.keys() & now.keys() if before[k] != now[k]}
            changed = {k for k in changed if before[k].sender_index != now[k].sender_index}
            left = (before.keys() - now.keys()) | changed
            joined = (now.keys() - before.keys()) | changed
            call.participants = dict(now)
            for key in sorted(left):
                call.keys.remove_sender(before[key].sender_index)
            # Only devices still in the call (and under the same voice session) are owed.
            call.owed = {k for k in call.owed - left if k in now}
            self._release_held(call)
            if not call.distributed:
                call.distributed = True
                await self._send(call, call.keys.current_key(), set(now))
            elif left:
                await self._send(call, call.keys.on_member_left(), set(now))
            elif joined:
                await self._send(call, call.keys.on_member_joined(), joined | call.owed)
            elif call.owed:
                await self._send(call, call.keys.current_key(), set(call.owed))

    async def _send(self, call: _Call, key: MediaKey, targets: set[tuple[str, str]]) -> None:
        """Fan ``key`` out to the ``targets`` devices; every other device of their users
        (and this user's other devices) gets a MEDIA_KEY message without it."""
        if not targets:
            return
        secret = pad(key.encode())
        empty = pad(b"")
        recipients: dict[str, list[Device]] = {}
        for user_id in sorted({u for u, _ in targets} | {self._account.user_id}):
            try:
                if user_id == self._account.user_id:
                    devices = await self._trust.own_other_devices()
                else:
                    devices = await self._trust.devices_of(user_id, None)
            except IdentityChanged:
                continue
            if devices:
                recipients[user_id] = devices
        trusted = {(u, d.id) for u, devices in recipients.items() for d in devices}
        for user_id, device_id in sorted(targets - trusted):
            self._notices.add(
                "untrusted_device",
                f"a device of {self._trust.name(user_id)} in the voice call ({device_id}) is "
                "not one their account signed: it gets no media key and cannot hear you",
            )
        if not recipients:
            return
        conv = voice_conversation(call.channel_id)
        # Owed until the relay took the post that carries it (a later update sends again).
        call.owed |= targets & trusted

        def plaintext_for(user_id: str, device_id: str) -> bytes:
            return secret if (user_id, device_id) in targets else empty

        def posted(users: list[str]) -> None:
            for target in {t for t in targets & trusted if t[0] in users}:
                call.owed.discard(target)
                self.sent.setdefault(target, []).append(key.generation)

        await self._sessions.fan_out(
            recipients,
            lambda _u: conv,
            lambda _u: empty,
            lambda _u: MessageType.MEDIA_KEY,
            device_plaintext=plaintext_for,
            on_posted=posted,
        )

    async def received(
        self, conversation: bytes, user_id: str, device_id: str, message: DecryptedMessage
    ) -> None:
        """A MEDIA_KEY message out of the pairwise session with ``user_id``'s device
        ``device_id`` (from the inbox). Installs its key, holds it, or drops it."""
        if not conversation.startswith(_PREFIX):
            raise ClientError("a media key outside a voice conversation")
        plaintext = unpad(message.plaintext)
        if not plaintext:
            return  # a key for this user's other device in the call, not for this one
        key = MediaKey.decode_untrusted(plaintext)
        call = self._call
        if call is None or conversation != voice_conversation(call.channel_id):
            return  # a key of a call this device is not in (any more): worthless
        owner = (user_id, device_id)
        state = call.participants.get(owner)
        if state is None:
            held = call.held.setdefault(owner, [])
            held[:] = [*held, key][-MAX_HELD_KEYS:]
            return
        self._install(call, owner, state, key)

    def _release_held(self, call: _Call) -> None:
        for owner in [o for o in call.held if o in call.participants]:
            for key in call.held.pop(owner):
                self._install(call, owner, call.participants[owner], key)

    def _install(
        self, call: _Call, owner: tuple[str, str], state: VoiceState, key: MediaKey
    ) -> None:
        name = self._trust.name(owner[0])
        if key.sender_index != state.sender_index:
            self._notices.add(
                "media_key_refused",
                f"a device of {name} sent a media key for another participant's sender index "
                f"({key.sender_index}, theirs is {state.sender_index}); it was refused",
            )
            return
        try:
            call.keys.install(key, user_id=owner[0], device_id=owner[1])
        except SenderIndexClaimed:
            self._notices.add(
                "media_key_refused",
                f"a device of {name} sent a media key for sender index {key.sender_index}, "
                "which another device already holds in this call; it was refused",
            )
        except E2EEError as exc:
            self._notices.add(
                "media_key_refused",
                f"a media key from a device of {name} was refused ({type(exc).__name__})",
            )
