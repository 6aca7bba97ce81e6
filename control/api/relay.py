"""The ciphertext relay's envelopes: per-device ciphertexts, opaque to the server.

The sender posts one ciphertext per recipient device (and per own other device).
If the list of devices for any recipient is not exactly that user's current list the whole
post is refused with 409 and the current lists, so no device is ever silently skipped.
Envelopes are committed before the 2xx, dispatched to the device's live sessions, fetched
by REST, deleted on ack and purged after the envelope TTL. Channel messages, the relay's
other half, are in :mod:`control.api.messages`.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from contract.gateway import EventName
from contract.relay import (
    ENVELOPE_PAGE_BYTES,
    ENVELOPE_PAGE_LIMIT,
    MAX_CIPHERTEXT,
    MAX_ENVELOPE_RECIPIENTS,
)

from ..bus import Event
from ..errors import InvalidBody, NotFound, StaleDevices
from ..ids import new_id, now
from ..quotas import EnvelopeQuota, check_envelope_quota
from ..store import schema as t
from ..wire import Field, Schema
from ._routing import Call, Router, id_field, int_field
from .accounts import device_view

__all__ = ["CIPHERTEXT", "MAX_CIPHERTEXT", "envelope_page", "envelope_view", "router"]

CIPHERTEXT = Field("bytes", "opaque ciphertext", min=1, max=MAX_CIPHERTEXT)

SEND_ENVELOPES = Schema(
    "SendEnvelopes",
    {
        "recipients": Field(
            "list",
            "one entry per recipient user (include yourself for your other devices)",
            min=1,
            max=MAX_ENVELOPE_RECIPIENTS,
            items=Field(
                "object",
                schema=Schema(
                    "Recipient",
                    {
                        "user_id": id_field("recipient user"),
                        "devices": Field(
                            "list",
                            "every current device of the user",
                            max=64,
                            items=Field(
                                "object",
                                schema=Schema(
                                    "DeviceCiphertext",
                                    {"device_id": id_field("device"), "ciphertext": CIPHERTEXT},
                                ),
                            ),
                        ),
                    },
                ),
            ),
        )
    },
)
SEND_ENVELOPES_BATCH = Schema(
    "SendEnvelopesBatch",
    {
        "sends": Field(
            "list",
            "several POST /envelopes bodies, queued in this order in one transaction",
            min=1,
            max=64,
            items=Field("object", schema=SEND_ENVELOPES),
        )
    },
)
ACK = Schema(
    "AckEnvelopes",
    {"ids": Field("list", "envelope ids", min=1, max=500, items=id_field("envelope"))},
)
FETCH = Schema(
    "FetchEnvelopes",
    {"limit": int_field("at most this many", 1, ENVELOPE_PAGE_LIMIT, False)},
)


def envelope_view(row: Any) -> dict[str, Any]:
    """The wire form of a queued envelope."""
    return {
        "id": row.id,
        "sender_user_id": row.sender_user_id,
        "sender_device_id": row.sender_device_id,
        "ciphertext": row.ciphertext,
        "created_at": row.created_at,
        "seq": row.seq,
    }


def devices_of(conn: Connection, user_ids: set[str]) -> dict[str, list[dict[str, Any]]]:
    """The current devices of each of ``user_ids`` (in :func:`current_devices` order), read
    with one statement: the relay's hot path pays per statement, not per recipient."""
    d = t.devices
    found: dict[str, list[dict[str, Any]]] = {user_id: [] for user_id in user_ids}
    rows = conn.execute(
        sa.select(d.c.user_id, d.c.id, d.c.identity_key)
        .where(d.c.user_id.in_(sorted(user_ids)))
        .order_by(d.c.id)
    )
    for row in rows:
        found[row.user_id].append(device_view(row))
    return found


def store_envelopes(
    conn: Connection,
    sender_user: str,
    sender_device: str,
    recipients: list[dict[str, Any]],
    quota: EnvelopeQuota,
) -> list[dict[str, Any]]:
    """Check every recipient's device list against the store, then queue the envelopes.

    Raises :class:`StaleDevices` naming each user whose list differs, with the current list,
    and :class:`~control.errors.QueueFull` when a device's queue is at its ``quota``.
    """
    return store_envelope_sends(conn, sender_user, sender_device, [recipients], quota)[0]


def store_envelope_sends(
    conn: Connection,
    sender_user: str,
    sender_device: str,
    sends: list[list[dict[str, Any]]],
    quota: EnvelopeQuota,
) -> list[list[dict[str, Any]]]:
    """Queue several sends (each a ``recipients`` list) in order, all or nothing.

    A stale device list in any send refuses them all with one :class:`StaleDevices` naming
    every stale user with the current list, so a client re-encrypts once. Three statements
    whatever the number of sends and recipients: the devices of every user named, the last
    ``seq`` of every target device, and one multi-row insert; plus one for the quota check
    (:func:`control.quotas.check_envelope_quota`, 409 ``queue_full``).
    """
    for recipients in sends:
        users = [r["user_id"] for r in recipients]
        if len(set(users)) != len(users):
            raise InvalidBody("a recipient user appears twice")
        for recipient in recipients:
            given = [d["device_id"] for d in recipient["devices"]]
            if len(set(given)) != len(given):
                raise InvalidBody("a device appears twice for one recipient")
    named = {r["user_id"] for recipients in sends for r in recipients} | {sender_user}
    current = devices_of(conn, named)
    own_others = {d["id"] for d in current[sender_user]} - {sender_device}
    stale: dict[str, list[dict[str, Any]]] = {}
    for recipients in sends:
        listed = {r["user_id"] for r in recipients}
        if own_others and sender_user not in listed:
            # The sender's other devices must get every envelope too.
            stale[sender_user] = current[sender_user]
        for recipient in recipients:
            user_id = recipient["user_id"]
            expected = {d["id"] for d in current[user_id]}
            if user_id == sender_user:
                expected.discard(sender_device)
            if {d["device_id"] for d in recipient["devices"]} != expected:
                stale[user_id] = current[user_id]
    if stale:
        raise StaleDevices(
            "the device list of some recipients is stale; re-encrypt for the current devices",
            devices=stale,
        )
    created_at = now()
    env = t.envelopes
    targets = {d["device_id"] for recipients in sends for r in recipients for d in r["devices"]}
    # Writes are serialised, so max+1 per recipient device is a gap-free arrival order.
    last: dict[str, int] = dict.fromkeys(targets, 0)
    if targets:
        for device_id, seq in conn.execute(
            sa.select(env.c.recipient_device_id, sa.func.max(env.c.seq))
            .where(env.c.recipient_device_id.in_(sorted(targets)))
            .group_by(env.c.recipient_device_id)
        ):
            last[device_id] = seq or 0
    stored: list[list[dict[str, Any]]] = []
    for recipients in sends:
        rows = []
        for recipient in recipients:
            for device in recipient["devices"]:
                device_id = device["device_id"]
                last[device_id] += 1
                rows.append(
                    {
                        "id": new_id(),
                        "recipient_device_id": device_id,
                        "sender_user_id": sender_user,
                        "sender_device_id": sender_device,
                        "ciphertext": device["ciphertext"],
                        "created_at": created_at,
                        "seq": last[device_id],
                    }
                )
        stored.append(rows)
    inserts = [row for rows in stored for row in rows]
    check_envelope_quota(conn, sender_user, inserts, quota)
    if inserts:
        conn.execute(sa.insert(env), inserts)
    return stored


def envelope_events(rows: list[dict[str, Any]]) -> list[Event]:
    """One ENVELOPE_CREATE per stored envelope, addressed to its recipient device only."""
    return [
        Event(
            EventName.ENVELOPE_CREATE,
            {k: v for k, v in row.items() if k != "recipient_device_id"},
            device_ids=frozenset({row["recipient_device_id"]}),
        )
        for row in rows
    ]


def _receipts(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {"envelopes": [{"id": r["id"], "device_id": r["recipient_device_id"]} for r in rows]}


router = Router(tag="relay")


@router.route(
    "POST",
    "/envelopes",
    summary="Queue one ciphertext per recipient device (409 with current lists if stale)",
    body=SEND_ENVELOPES,
    status=201,
    errors=(409,),
)
async def send_envelopes(call: Call) -> dict[str, Any]:
    me = call.me
    rows = await call.state.db.write(
        lambda conn: store_envelopes(
            conn, me.user_id, me.device_id, call.body["recipients"], call.state.envelope_quota
        )
    )
    await call.state.bus.publish_many(envelope_events(rows))
    return _receipts(rows)


@router.route(
    "POST",
    "/envelopes/batch",
    summary="Several envelope sends in one request and one commit (all or nothing; "
    "409 with every stale user's current list)",
    body=SEND_ENVELOPES_BATCH,
    status=201,
    errors=(409,),
)
async def send_envelope_batch(call: Call) -> dict[str, Any]:
    me, sends = call.me, call.body["sends"]
    recipient_lists = [send["recipients"] for send in sends]
    stored = await call.state.db.write(
        lambda conn: store_envelope_sends(
            conn, me.user_id, me.device_id, recipient_lists, call.state.envelope_quota
        )
    )
    await call.state.bus.publish_many(event for rows in stored for event in envelope_events(rows))
    return {"sends": [_receipts(rows) for rows in stored]}


def envelope_page(conn: Connection, device_id: str, limit: int) -> list[dict[str, Any]]:
    """The oldest envelopes queued for ``device_id``, in ``seq`` order: at most ``limit``,
    and no more than :data:`ENVELOPE_PAGE_BYTES` of ciphertext (but always the first one),
    so a page of a stuffed queue stays far below what a client accepts in one answer."""
    env = t.envelopes
    of_device = env.c.recipient_device_id == device_id
    # Sizes first, so a stuffed queue is never loaded whole to pick what fits.
    sizes = conn.execute(
        sa.select(env.c.seq, sa.func.length(env.c.ciphertext))
        .where(of_device)
        .order_by(env.c.seq)
        .limit(limit)
    ).all()
    total, last_seq = 0, None
    for seq, size in sizes:
        total += size
        if total > ENVELOPE_PAGE_BYTES and last_seq is not None:
            break
        last_seq = seq
    if last_seq is None:
        return []
    rows = conn.execute(
        sa.select(env).where(of_device, env.c.seq <= last_seq).order_by(env.c.seq).limit(limit)
    ).all()
    # Checked again on the rows themselves: without one snapshot for both reads (PostgreSQL
    # READ COMMITTED), the queue may have changed in between.
    page: list[dict[str, Any]] = []
    total = 0
    for row in rows:
        total += len(row.ciphertext)
        if total > ENVELOPE_PAGE_BYTES and page:
            break
        page.append(envelope_view(row))
    return page


@router.route(
    "GET",
    "/envelopes",
    summary="Envelopes queued for the calling device, oldest first: at most `limit` and at "
    "most 1 MiB of ciphertext (always at least one); an empty page means none are queued",
    query=FETCH,
)
async def fetch_envelopes(call: Call) -> list[dict[str, Any]]:
    device_id, limit = call.me.device_id, call.query.get("limit", 100)
    return await call.state.db.read(lambda conn: envelope_page(conn, device_id, limit))


@router.route(
    "POST",
    "/envelopes/ack",
    summary="Acknowledge (and so delete) envelopes delivered to the calling device",
    body=ACK,
)
async def ack_envelopes(call: Call) -> dict[str, Any]:
    device_id, ids = call.me.device_id, call.body["ids"]
    env = t.envelopes
    stmt = sa.delete(env).where(env.c.recipient_device_id == device_id, env.c.id.in_(ids))
    deleted = await call.state.db.write(lambda conn: conn.execute(stmt).rowcount)
    return {"deleted": deleted}


@router.route(
    "DELETE",
    "/envelopes/{envelope_id}",
    summary="Acknowledge (delete) one envelope of the calling device",
    status=204,
    errors=(404,),
)
async def delete_envelope(call: Call, envelope_id: str) -> None:
    env = t.envelopes
    stmt = sa.delete(env).where(
        env.c.recipient_device_id == call.me.device_id, env.c.id == envelope_id
    )
    if not await call.state.db.write(lambda conn: conn.execute(stmt).rowcount):
        raise NotFound("no such envelope")
