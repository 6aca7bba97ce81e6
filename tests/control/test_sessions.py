"""The session-token cache: revocation takes effect at once, and races do not undo it."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from control_harness import Harness, make_config

from control.app import create_app
from control.sessions import SessionCache, revoked

API = "/api/v1"


def _cache(harness: Harness) -> SessionCache:
    cache = harness.app.extensions["hushroom.control"].sessions
    assert isinstance(cache, SessionCache)
    return cache


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def test_a_cached_token_is_refused_right_after_logout(harness: Harness) -> None:
    ann = await harness.register("ann")
    assert (await harness.call("GET", f"{API}/users/@me", ann))[0] == 200
    assert _digest(ann.token) in _cache(harness)
    assert (await harness.call("POST", f"{API}/auth/logout", ann, json={}))[0] == 204
    assert _digest(ann.token) not in _cache(harness)
    status, body = await harness.call("GET", f"{API}/users/@me", ann)
    assert status == 401 and body["error"]["code"] == "unauthorized"


async def test_a_cached_token_of_a_removed_device_is_refused(harness: Harness) -> None:
    ann = await harness.register("ann")
    phone = await harness.add_device(ann)
    assert (await harness.call("GET", f"{API}/users/@me", phone))[0] == 200
    assert _digest(phone.token) in _cache(harness)
    status, _ = await harness.call("DELETE", f"{API}/users/@me/devices/{phone.device_id}", ann)
    assert status == 204
    assert (await harness.call("GET", f"{API}/users/@me", phone))[0] == 401
    assert (await harness.call("GET", f"{API}/users/@me", ann))[0] == 200


async def test_cached_tokens_of_an_erased_account_are_refused(harness: Harness) -> None:
    ann = await harness.register("ann")
    phone = await harness.add_device(ann)
    assert (await harness.call("GET", f"{API}/users/@me", phone))[0] == 200
    assert (await harness.call("DELETE", f"{API}/users/@me", ann))[0] == 204
    assert (await harness.call("GET", f"{API}/users/@me", phone))[0] == 401
    assert (await harness.call("GET", f"{API}/users/@me", ann))[0] == 401


async def test_a_lookup_racing_a_revocation_is_not_cached(harness: Harness) -> None:
    ann = await harness.register("ann")
    digest = _digest(ann.token)
    db = harness.app.extensions["hushroom.control"].db
    caches: list[SessionCache] = []

    class RevokedDuringRead:
        """A store whose read is overtaken by a revocation, as a slow thread's would be."""

        async def read(self, fn: Any) -> Any:
            row = await db.read(fn)
            caches[0].on_event(revoked(token_hash=digest))
            return row

    cache = SessionCache(RevokedDuringRead(), 10)  # type: ignore[arg-type]
    caches.append(cache)
    assert await cache.lookup(digest) is not None, "the row was read before the revocation"
    assert digest not in cache, "what a revocation overtook is never cached"


async def test_a_zero_sized_cache_reads_the_store_every_time(tmp_path: Path) -> None:
    app = create_app(make_config(tmp_path, session_cache=0))
    async with app.test_app():
        harness = Harness(app)
        ann = await harness.register("ann")
        assert (await harness.call("GET", f"{API}/users/@me", ann))[0] == 200
        assert _digest(ann.token) not in _cache(harness)
