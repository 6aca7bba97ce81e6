"""Provisioning mailboxes: the rendezvous through which an existing device hands a new
device its identity (device linking, after Signal's provisioning socket).

1. The **new** device, which has no account yet, opens a mailbox under an id it derived
   from a one-time secret (``e2ee.linking``: HKDF of the secret, so the id tells nothing
   about the key): ``POST /provisioning``. No authentication: it has nothing to sign with.
2. It shows the secret as a link code. The **existing** device (signed in) seals the
   provisioning message under a key derived from the same secret and deposits it:
   ``PUT /provisioning/{id}``.
3. The new device long-polls ``GET /provisioning/{id}?wait=`` and the message is deleted
   as it is handed out: a mailbox is read once.

Retention: mailboxes live **in this process's memory only**, never in the store, for at
most ``expires_in`` seconds (10 minutes by default and at most), and are deleted when read
or cancelled. A mailbox holds its id, its deadline and at most one opaque ciphertext of at
most 66 KiB; nothing about who opened it or who filled it (no user, device, token or
address) is kept, and nothing here is logged. At most :data:`MAX_MAILBOXES` exist at once
and they hold at most :data:`MAX_HELD_BYTES` of ciphertext together; beyond that the
server answers 429. Ids are random-looking 128-bit values, so a mailbox cannot be found
without its code. Because opening needs no account and limits are never keyed by address,
one anonymous client can keep the table full (at the route's rate limit) and so delay
linking for everyone; clients retry after the 429's ``retry_after``. Rate limiting by
address would stop that, at the price of handling addresses: not done.

With several control processes behind one address, a mailbox lives in the process that
opened it: route ``/api/v1/provisioning/{id}`` by id (or to one process).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, cast

import trio
from quart import current_app
from quart_trio import QuartTrio

from contract.proof_of_work import MAX_DIFFICULTY, Purpose

from ..errors import BadRequest, Conflict, NotFound, RateLimited
from ..wire import Field, Schema
from ._routing import Call, Router, int_field

__all__ = [
    "MAILBOX_TTL_S",
    "MAX_HELD_BYTES",
    "MAX_MAILBOXES",
    "MAX_MESSAGE",
    "MAX_WAIT_S",
    "Mailbox",
    "Mailboxes",
    "close_mailboxes",
    "router",
]

EXTENSION = "hushroom.provisioning"
#: A mailbox lives at most this long (the time to type or scan a code, with room).
MAILBOX_TTL_S = 600
#: Mailboxes held at once by one process.
MAX_MAILBOXES = 1000
#: The largest provisioning message: e2ee.linking's 64 KiB of extras plus its framing.
MAX_MESSAGE = 64 * 1024 + 2048
#: Ciphertext held by all mailboxes together (a full table of largest messages would be
#: 66 MiB; linking messages are a few KiB).
MAX_HELD_BYTES = 16 * 1024 * 1024
#: A long poll waits at most this long, below the clients' 30 s request timeout.
MAX_WAIT_S = 25
#: Body limit of a deposit: the message, base64 in JSON, plus the field name.
_DEPOSIT_BODY_LIMIT = MAX_MESSAGE * 4 // 3 + 1024
_MAILBOX_ID = r"[0-9a-f]{32}"
_FULL_RETRY_S = 60.0

OPEN = Schema(
    "OpenMailbox",
    {
        "mailbox_id": Field(
            "str", "32 hex digits derived from the link secret", pattern=_MAILBOX_ID
        ),
        "expires_in": int_field(
            f"lifetime in seconds (default and at most {MAILBOX_TTL_S})",
            1,
            MAILBOX_TTL_S,
            required=False,
        ),
    },
)
DEPOSIT = Schema(
    "DepositProvisioning",
    {"message": Field("bytes", "the sealed provisioning message", min=1, max=MAX_MESSAGE)},
)
FETCH = Schema(
    "FetchProvisioning",
    {"wait": int_field(f"seconds to wait for a message (0-{MAX_WAIT_S})", 0, MAX_WAIT_S, False)},
)
EMPTY = Schema("Empty", {})


@dataclass(eq=False)
class Mailbox:
    """One mailbox: its deadline (trio clock), its message once deposited, and the scope
    of the task that deletes it at the deadline."""

    deadline: float
    message: bytes | None = None
    filled: trio.Event = field(default_factory=trio.Event)
    expiry: trio.CancelScope = field(default_factory=trio.CancelScope)


class Mailboxes:
    """The mailboxes of one process, bounded in count and bytes. Times are passed in, so
    every rule is checked without a clock; waiting is the routes' business."""

    def __init__(self, max_count: int = MAX_MAILBOXES, max_bytes: int = MAX_HELD_BYTES) -> None:
        self.max_count = max_count
        self.max_bytes = max_bytes
        self._boxes: dict[str, Mailbox] = {}
        self._held = 0

    def __len__(self) -> int:
        return len(self._boxes)

    @property
    def held_bytes(self) -> int:
        """Ciphertext bytes waiting to be read."""
        return self._held

    def open(self, mailbox_id: str, ttl: float, now: float) -> Mailbox:
        """A new empty mailbox; 409 when the id is taken, 429 when the table is full."""
        self.expire(now)
        if mailbox_id in self._boxes:
            raise Conflict("this provisioning mailbox already exists; draw a new link code")
        if len(self._boxes) >= self.max_count:
            raise RateLimited(
                "too many devices are being linked right now", retry_after=_FULL_RETRY_S
            )
        box = Mailbox(deadline=now + ttl)
        self._boxes[mailbox_id] = box
        return box

    def get(self, mailbox_id: str, now: float) -> Mailbox:
        """The live mailbox ``mailbox_id``; 404 when unknown, expired or already read."""
        box = self._boxes.get(mailbox_id)
        if box is None or box.deadline <= now:
            if box is not None:
                self._remove(mailbox_id, box)
            raise NotFound("no such provisioning mailbox: the link code is wrong, expired or used")
        return box

    def deposit(self, mailbox_id: str, message: bytes, now: float) -> None:
        """Put the one message into the mailbox; 409 when it already holds one."""
        box = self.get(mailbox_id, now)
        if box.message is not None:
            raise Conflict("this provisioning mailbox already holds a message")
        if self._held + len(message) > self.max_bytes:
            raise RateLimited(
                "too many devices are being linked right now", retry_after=_FULL_RETRY_S
            )
        box.message = message
        self._held += len(message)
        box.filled.set()

    def take(self, mailbox_id: str, now: float) -> bytes | None:
        """The message, deleting the mailbox with it; None (mailbox kept) while empty."""
        box = self.get(mailbox_id, now)
        message = box.message
        if message is not None:
            self._remove(mailbox_id, box)
        return message

    def discard(self, mailbox_id: str, box: Mailbox | None = None) -> bool:
        """Delete the mailbox (only if it is still ``box``, when given); True if it went."""
        current = self._boxes.get(mailbox_id)
        if current is None or (box is not None and current is not box):
            return False
        self._remove(mailbox_id, current)
        return True

    def clear(self) -> None:
        """Delete every mailbox (the process is stopping): their deadline tasks end and
        their long polls answer 404 at once."""
        for mailbox_id, box in list(self._boxes.items()):
            self._remove(mailbox_id, box)

    def expire(self, now: float) -> int:
        """Delete every mailbox past its deadline; returns how many went."""
        dead = [(i, b) for i, b in self._boxes.items() if b.deadline <= now]
        for mailbox_id, box in dead:
            self._remove(mailbox_id, box)
        return len(dead)

    def _remove(self, mailbox_id: str, box: Mailbox) -> None:
        del self._boxes[mailbox_id]
        if box.message is not None:
            self._held -= len(box.message)
            box.message = None
        box.expiry.cancel()
        # Wake long polls so they answer 404 at once instead of at their timeout.
        box.filled.set()


def _mailboxes() -> Mailboxes:
    """This application's mailboxes (made on first use, so they belong to the app)."""
    boxes = current_app.extensions.get(EXTENSION)
    if boxes is None:
        boxes = current_app.extensions[EXTENSION] = Mailboxes()
    assert isinstance(boxes, Mailboxes)
    return boxes


def close_mailboxes(app: QuartTrio) -> None:
    """Delete ``app``'s mailboxes as it shuts down. Their deadline tasks belong to the app's
    nursery, which Quart gives BACKGROUND_TASK_SHUTDOWN_TIMEOUT (5 s) to finish: left
    sleeping towards a deadline minutes away, one open mailbox held every stop that long."""
    boxes = app.extensions.get(EXTENSION)
    if isinstance(boxes, Mailboxes):
        boxes.clear()


def crowding_bits() -> int:
    """Extra proof-of-work bits for a new mailbox: one more each time the free share of the
    table halves (half full +1, three quarters +2, ...), so the last mailboxes cost the most."""
    boxes = _mailboxes()
    free = boxes.max_count - len(boxes)
    if free <= 0:
        return MAX_DIFFICULTY
    return max(0, math.floor(math.log2(boxes.max_count / free)))


def _check_id(mailbox_id: str) -> str:
    if re.fullmatch(_MAILBOX_ID, mailbox_id) is None:
        raise BadRequest("a provisioning mailbox id is 32 lower-case hex digits")
    return mailbox_id


async def _delete_at_deadline(boxes: Mailboxes, mailbox_id: str, box: Mailbox) -> None:
    """Owned by the app's nursery; cancelled when the mailbox goes earlier."""
    with box.expiry:
        await trio.sleep_until(box.deadline)
        boxes.discard(mailbox_id, box)


router = Router(tag="provisioning")


@router.route(
    "POST",
    "/provisioning",
    summary="Open a provisioning mailbox for a device being linked (memory only, "
    "at most 10 minutes, read once)",
    body=OPEN,
    auth=False,
    status=201,
    errors=(409,),
    proof_of_work=Purpose.PROVISIONING,
)
async def open_mailbox(call: Call) -> dict[str, Any]:
    boxes = _mailboxes()
    mailbox_id = call.body["mailbox_id"]
    ttl = call.body.get("expires_in", MAILBOX_TTL_S)
    box = boxes.open(mailbox_id, ttl, trio.current_time())
    # The app's nursery owns the deadline task, so shutdown cancels it with the rest.
    app = cast(QuartTrio, current_app)
    app.nursery.start_soon(_delete_at_deadline, boxes, mailbox_id, box)
    return {"mailbox_id": mailbox_id, "expires_in": ttl}


@router.route(
    "PUT",
    "/provisioning/{mailbox_id}",
    summary="Deposit the sealed provisioning message (once) for the new device",
    body=DEPOSIT,
    status=204,
    errors=(404, 409),
    limit=_DEPOSIT_BODY_LIMIT,
)
async def deposit(call: Call, mailbox_id: str) -> None:
    _mailboxes().deposit(_check_id(mailbox_id), call.body["message"], trio.current_time())


@router.route(
    "GET",
    "/provisioning/{mailbox_id}",
    summary="Wait up to `wait` seconds for the message; it is deleted as it is returned",
    query=FETCH,
    auth=False,
    errors=(404,),
)
async def fetch(call: Call, mailbox_id: str) -> dict[str, Any]:
    boxes = _mailboxes()
    _check_id(mailbox_id)
    box = boxes.get(mailbox_id, trio.current_time())
    wait = call.query.get("wait", 0)
    if box.message is None and wait:
        with trio.move_on_at(min(box.deadline, trio.current_time() + wait)):
            await box.filled.wait()
    now = trio.current_time()
    message = boxes.take(mailbox_id, now)
    left = max(0, math.ceil(box.deadline - now))
    return {"message": message, "expires_in": left}


@router.route(
    "DELETE",
    "/provisioning/{mailbox_id}",
    summary="Close a provisioning mailbox (the new device gave up)",
    auth=False,
    status=204,
    errors=(404,),
)
async def close_mailbox(call: Call, mailbox_id: str) -> None:
    if not _mailboxes().discard(_check_id(mailbox_id)):
        raise NotFound("no such provisioning mailbox: the link code is wrong, expired or used")
