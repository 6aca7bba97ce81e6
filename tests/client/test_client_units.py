"""Fast tests of the client's pure parts: the sealed store, envelopes, permissions, bridges."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgpack
import pytest

from client._prekeys import directory_prekeys, prekey_bundle_untrusted
from client.api import RATE_LIMIT_DEFAULT_S, RATE_LIMIT_FLOOR_S, retry_after_untrusted
from client.envelope import (
    Body,
    decode_body_untrusted,
    decode_envelope_untrusted,
    dm_conversation,
    encode_body,
    encode_envelope,
)
from client.errors import ApiError, ProtocolError, StoreError, UndecryptableMessage
from client.http import MAX_RESPONSE
from client.models import Bundle, Channel, Guild, Member, Overwrite, Role
from client.permissions import VIEW_CHANNEL, readers
from client.store import Store
from contract.relay import MAX_ENVELOPE_PAGE_ANSWER
from e2ee import BadSignature, IdentityKeyPair, PreKeyStore, initiate_session, pad


def test_store_seals_records_and_refuses_a_wrong_passphrase(tmp_path: Path) -> None:
    store = Store.open(tmp_path, "right", create=True)
    store.put("contact", "user-secret-id", {"handle": "visible-handle"})
    store.add_message("dm:x", "m1", {"body": "a very private sentence"}, None)
    store.close()
    raw = (tmp_path / "store.sqlite3").read_bytes()
    for needle in (b"user-secret-id", b"visible-handle", b"a very private sentence"):
        assert needle not in raw
    with pytest.raises(StoreError, match="wrong passphrase"):
        Store.open(tmp_path, "wrong")
    again = Store.open(tmp_path, "right")
    assert again.get("contact", "user-secret-id") == {"handle": "visible-handle"}
    assert [m["body"] for m in again.messages("dm:x")] == ["a very private sentence"]
    again.close()
    assert (tmp_path / "store.sqlite3").stat().st_mode & 0o077 == 0


def test_a_record_moved_to_another_row_does_not_open(tmp_path: Path) -> None:
    store = Store.open(tmp_path, "pw", create=True)
    store.put("contact", "alice", {"verified": "fp-alice"})
    store.put("contact", "mallory", {"verified": None})
    store.close()
    db = sqlite3.connect(tmp_path / "store.sqlite3")
    rows = db.execute("SELECT key, value FROM records WHERE kind = 'contact'").fetchall()
    (k1, v1), (k2, v2) = rows
    with db:
        db.execute("UPDATE records SET value = ? WHERE key = ?", (v1, k2))
        db.execute("UPDATE records SET value = ? WHERE key = ?", (v2, k1))
    db.close()
    store = Store.open(tmp_path, "pw")
    with pytest.raises(StoreError, match="not where it belongs"):
        store.get("contact", "mallory")
    store.close()


def test_transaction_rolls_back_everything_on_error(tmp_path: Path) -> None:
    store = Store.open(tmp_path, "pw", create=True)
    with pytest.raises(RuntimeError), store.transaction():
        store.put("cursor", "c", 5)
        with store.transaction():
            store.add_message("ch:c", "m", {"body": "x"}, None)
        raise RuntimeError("crash before commit")
    assert store.get("cursor", "c") is None and not store.has_message("m")
    store.close()


def test_disappearing_messages_are_purged_when_due(tmp_path: Path) -> None:
    store = Store.open(tmp_path, "pw", create=True)
    store.add_message("dm:x", "keep", {"body": "keep"}, None)
    store.add_message("dm:x", "gone", {"body": "gone"}, expires_at=1000.0)
    assert store.purge_expired(now=999.0) == 0
    assert store.purge_expired(now=1000.0) == 1
    assert [m["body"] for m in store.messages("dm:x")] == ["keep"]
    store.close()


def test_envelope_and_body_round_trip_and_reject_malformed_input() -> None:
    conv = dm_conversation("b-user", "a-user")
    assert conv == dm_conversation("a-user", "b-user") == b"dm:a-user|b-user"
    assert decode_envelope_untrusted(encode_envelope(conv, b"msg")) == (conv, b"msg")
    body = Body("id1", "hello", 1.5, 30, "alice", to="bob-id")
    padded = encode_body(body)
    assert len(padded) % 64 == 0
    assert decode_body_untrusted(padded) == body
    for bad in (b"\xc1", msgpack.packb([2, conv, b"x"]), msgpack.packb([1, b"", b"x"])):
        with pytest.raises(UndecryptableMessage):
            decode_envelope_untrusted(bad)
    with pytest.raises(UndecryptableMessage):
        decode_body_untrusted(b"not padded")
    too_long = Body("id", "x", 1.0, 10**9, "a")
    with pytest.raises(UndecryptableMessage):
        decode_body_untrusted(encode_body(too_long))
    # A channel message names its author device inside; a malformed "by" is refused.
    signed = Body("id2", "hi", 2.0, None, "alice", author=("a-user", "a-device"))
    assert decode_body_untrusted(encode_body(signed)) == signed
    base = {"id": "i", "body": "b", "ts": 1.0, "exp": None, "from": "a"}
    for by in (["a-user"], ["a-user", 7], ["a-user", ""], ["a-user", "d" * 65], "a-user/d"):
        with pytest.raises(UndecryptableMessage):
            decode_body_untrusted(pad(msgpack.packb({**base, "by": by})))


def _guild(everyone: int, roles: tuple[Role, ...] = ()) -> Guild:
    return Guild("g", "G", "owner", (Role("g", "@everyone", everyone, 0), *roles), ())


def _channel(*overwrites: Overwrite) -> Channel:
    return Channel("c", "g", "text", "secret", 90, overwrites)


def test_readers_follow_discord_order() -> None:
    mods = Role("mods", "mods", 0, 1)
    admins = Role("admins", "admins", 1 << 3, 2)
    guild = _guild(VIEW_CHANNEL, (mods, admins))
    members = [
        Member("owner", "o", ()),
        Member("plain", "p", ()),
        Member("mod", "m", ("mods",)),
        Member("admin", "a", ("admins",)),
        Member("special", "s", ()),
    ]
    private = _channel(
        Overwrite("g", "role", 0, VIEW_CHANNEL),
        Overwrite("mods", "role", VIEW_CHANNEL, 0),
        Overwrite("special", "member", VIEW_CHANNEL, 0),
    )
    assert readers(guild, members, private) == ["admin", "mod", "owner", "special"]
    banned_mod = _channel(
        Overwrite("mods", "role", VIEW_CHANNEL, 0), Overwrite("mod", "member", 0, VIEW_CHANNEL)
    )
    assert "mod" not in readers(guild, members, banned_mod)
    assert readers(guild, members, _channel()) == sorted(m.user_id for m in members)


def _bundle_from(store: PreKeyStore, identity: IdentityKeyPair) -> Bundle:
    body = directory_prekeys(identity, store, [])
    spk, pq = body["signed_prekey"], body["pq_prekey"]
    return Bundle(
        "dev",
        identity.public,
        spk["key_id"],
        spk["public_key"],
        spk["signature"],
        pq["key_id"],
        pq["public_key"],
        pq["signature"],
        None,
        None,
    )


def test_directory_signatures_verify_and_a_forged_prekey_is_refused() -> None:
    identity = IdentityKeyPair.generate()
    store = PreKeyStore.generate(identity)
    bundle = _bundle_from(store, identity)
    session = initiate_session(IdentityKeyPair.generate(), prekey_bundle_untrusted(bundle))
    assert session.remote_identity == identity.public
    other = PreKeyStore.generate(IdentityKeyPair.generate())
    forged = Bundle(
        **{**bundle.__dict__, "signed_prekey": other.current_signed_prekey.key_pair.public}
    )
    with pytest.raises(BadSignature):
        prekey_bundle_untrusted(forged)


def test_a_one_time_pq_prekey_from_the_directory_is_checked_under_its_own_kind() -> None:
    identity = IdentityKeyPair.generate()
    store = PreKeyStore.generate(identity)
    body = directory_prekeys(identity, store, [], store.generate_pq_one_time_prekeys(1))
    (key,) = body["pq_one_time_prekeys"]
    wire = {
        "device_id": "dev",
        "identity_key": identity.public,
        "signed_prekey": body["signed_prekey"],
        "pq_prekey": key,
        "pq_prekey_one_time": True,
        "one_time_prekey": None,
    }
    bundle = Bundle.from_wire_untrusted(wire)
    assert bundle.pq_prekey_one_time and bundle.pq_prekey_id == key["key_id"]
    initiate_session(IdentityKeyPair.generate(), prekey_bundle_untrusted(bundle))
    # Passed off as the last-resort kind, its signature does not verify.
    with pytest.raises(BadSignature):
        prekey_bundle_untrusted(Bundle.from_wire_untrusted({**wire, "pq_prekey_one_time": False}))
    with pytest.raises(ProtocolError):
        Bundle.from_wire_untrusted({**wire, "pq_prekey_one_time": 1})
    del wire["pq_prekey_one_time"]  # a server from before: the last-resort kind
    assert not Bundle.from_wire_untrusted(wire).pq_prekey_one_time


def test_cli_options_work_before_and_after_the_action(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from client.cli import _parser, main

    early = _parser().parse_args(["guild", "--profile", "p", "--json", "create", "name"])
    late = _parser().parse_args(["guild", "create", "name", "--profile", "p", "--json"])
    for args in (early, late):
        assert (args.profile, args.json, args.name) == (Path("p"), True, "name")
    # Bad usage: argparse's message and status 2; a missing profile: one sentence, status 1.
    assert main(["dm"]) == 2
    assert main(
        ["read", "--profile", str(tmp_path / "none"), "--passphrase-file", "/dev/null"]
    ) in (1, 2)
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("hushroom: ")


def test_a_429_is_waited_out_for_the_servers_retry_after_within_bounds() -> None:
    def limited(**extra: object) -> ApiError:
        return ApiError(429, "rate_limited", "slow down", dict(extra))

    assert retry_after_untrusted(limited(retry_after=1.5)) == 1.5
    # A server saying "now" does not make the client spin; nonsense counts as the default.
    assert retry_after_untrusted(limited(retry_after=0)) == RATE_LIMIT_FLOOR_S
    for odd in (None, True, "2", float("nan"), float("inf")):
        assert retry_after_untrusted(limited(retry_after=odd)) == RATE_LIMIT_DEFAULT_S
    assert retry_after_untrusted(limited()) == RATE_LIMIT_DEFAULT_S
    assert retry_after_untrusted(ApiError(404, "not_found", "no", {})) is None


def test_a_full_page_of_envelopes_fits_one_answer() -> None:
    # The relay bounds a page of GET /envelopes in bytes so that it always fits.
    assert MAX_ENVELOPE_PAGE_ANSWER < MAX_RESPONSE
