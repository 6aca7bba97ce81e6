"""The same store on PostgreSQL (HUSHROOM_TEST_DATABASE_URL), in a throw-away schema."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import trio
from control_harness import API, Harness, User, b64, make_config, make_guild

from control.app import create_app

URL = os.environ.get("HUSHROOM_TEST_DATABASE_URL")
pytestmark = pytest.mark.skipif(
    not URL,
    reason="set HUSHROOM_TEST_DATABASE_URL (e.g. postgresql://postgres@127.0.0.1:5432/test)",
)


@pytest.fixture
def pg_url() -> Iterator[str]:
    assert URL is not None
    name = f"control_test_{secrets.token_hex(4)}"
    admin = sa.create_engine(URL)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {name}")
    separator = "&" if "?" in URL else "?"
    yield f"{URL}{separator}options=-csearch_path%3D{name}"
    with admin.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA {name} CASCADE")
    admin.dispose()


async def test_scenario_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    app = create_app(make_config(tmp_path, database_url=pg_url))
    async with app.test_app():
        harness = Harness(app)
        ann, bob = await harness.register("ann", otks=20), await harness.register("bob")
        guild = await make_guild(harness, ann, bob)
        general = guild["channels"][0]["id"]
        for i in range(3):
            status, _ = await harness.call(
                "POST",
                f"{API}/channels/{general}/messages",
                bob,
                json={"ciphertext": b64(b"%d" % i)},
            )
            assert status == 201
        _, page = await harness.call("GET", f"{API}/channels/{general}/messages", ann)
        assert [m["seq"] for m in page] == [3, 2, 1]
        got: list[int] = []
        # Eight claimers racing, three claims each (one claimer may take only a few of one
        # device's OTKs per day): 24 claims for 20 keys.
        claimers = [await harness.register(f"claimer{i}") for i in range(8)]

        async def claim(claimer: User) -> None:
            for _ in range(3):
                _, body = await harness.call(
                    "POST", f"{API}/users/{ann.id}/keys/claim", claimer, json={}
                )
                otk = body["devices"][0]["one_time_prekey"]
                if otk is not None:
                    got.append(otk["key_id"])

        async with trio.open_nursery() as nursery:
            for claimer in claimers:
                nursery.start_soon(claim, claimer)
        assert sorted(got) == list(range(1, 21))
        status, _ = await harness.call("DELETE", f"{API}/users/@me", bob)
        assert status == 204


async def test_queue_quotas_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    config = make_config(tmp_path, database_url=pg_url, sender_queue_max_bytes=5000)
    app = create_app(config)
    async with app.test_app():
        harness = Harness(app)
        ann, bob = await harness.register("ann"), await harness.register("bob")
        devices = [{"device_id": bob.device_id, "ciphertext": b64(b"x" * 2000)}]
        body = {"recipients": [{"user_id": bob.id, "devices": devices}]}
        for expected in (201, 201, 409):
            status, reply = await harness.call("POST", f"{API}/envelopes", ann, json=body)
            assert status == expected, reply
        assert reply["error"]["code"] == "queue_full"
        assert reply["error"]["limit"] == "sender_bytes"
