"""The same store on PostgreSQL (HUSHROOM_TEST_DATABASE_URL), in a throw-away schema."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
import trio
from control_harness import API, Harness, b64, make_config, make_guild

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

        async def claim() -> None:
            for _ in range(6):
                _, body = await harness.call(
                    "POST", f"{API}/users/{ann.id}/keys/claim", bob, json={}
                )
                otk = body["devices"][0]["one_time_prekey"]
                if otk is not None:
                    got.append(otk["key_id"])

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(claim)
        assert sorted(got) == list(range(1, 21))
        status, _ = await harness.call("DELETE", f"{API}/users/@me", bob)
        assert status == 204
