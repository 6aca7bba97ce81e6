"""Device linking through the server's provisioning mailbox, with separate CLI processes
for the new and the existing device, against a real control process."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import trio
from client_cli import Cli, passphrase_env
from client_live import ControlProcess
from lying_server import envelopes_for, plant_device

from client import Client, ProtocolError, UntrustedDevice
from client._prekeys import directory_prekeys
from client.api import ControlApi
from client.device_list import SignedDeviceList
from client.errors import LinkError
from client.linking import LinkExtra
from client.models import Device
from client.store import STORE_FILE
from e2ee import (
    IdentityKeyPair,
    LinkingSecret,
    PreKeyStore,
    ProvisioningPayload,
    build_provisioning_message,
)
from e2ee.linking import parse_link_code

pytestmark = pytest.mark.slow

PASS = "linking test passphrase"


def join(cli: Cli, server: str, profile: str, *extra: str) -> tuple[subprocess.Popen[str], str]:
    """Start ``join-device`` and return it with the link code it shows."""
    proc = cli.popen("join-device", "--profile", profile, "--server", server, "--json", *extra)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, proc.communicate(timeout=30)
    shown = json.loads(line)
    assert shown["qr"] == "hushroom-link:1:" + shown["code"].replace("-", "")
    return proc, str(shown["code"])


def one_sentence(result: subprocess.CompletedProcess[str], start: str) -> None:
    assert result.returncode == 1, result
    assert result.stdout == ""
    assert result.stderr.startswith(f"hushroom: {start}"), result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.rstrip().endswith(".")


def account_key_of(client: Client) -> IdentityKeyPair:
    """The account signing key ``client``'s profile holds."""
    return IdentityKeyPair(client.store.get("identity", "account_key"))


def signed_list(client: Client, version: int, keys: list[bytes]) -> SignedDeviceList:
    """A device list of ``client``'s account, signed with its account key."""
    return SignedDeviceList.sign(account_key_of(client), client.user_id, version, keys)


async def add_device_unseen(client: Client) -> tuple[Device, IdentityKeyPair, PreKeyStore]:
    """A device added to ``client``'s account through the API (with a list the account
    key signed), not through the client's linking: a linking device that then seals
    something else than it should."""
    identity = IdentityKeyPair.generate()
    prekeys = PreKeyStore.generate(identity)
    challenge = await client.api.challenge()
    signed = b"hushroom-v1 add-device\x00" + challenge + identity.public + client.user_id.encode()
    listed = await client.api.device_directory(client.user_id)
    assert listed.device_list is not None
    new_list = signed_list(
        client,
        listed.device_list.version + 1,
        [*listed.device_list.identity_keys, identity.public],
    )
    device = await client.api.add_device(
        {
            "identity_key": identity.public,
            "challenge": challenge,
            "signature": identity.sign(signed),
            "device_list": new_list.to_wire(),
            **directory_prekeys(identity, prekeys, prekeys.generate_one_time_prekeys(1)),
        }
    )
    return device, identity, prekeys


def empty_bucket(url: str, method: str, path: str) -> None:
    """Spend a public route's shared rate-limit bucket until the server answers 429, as
    anyone on the internet can (the route needs no account)."""
    while True:
        request = urllib.request.Request(url + "/api/v1" + path, method=method)
        try:
            urllib.request.urlopen(request, timeout=10).close()
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 429:
                return


def test_a_device_linked_through_the_server_receives_dms_sent_after_linking(
    control: ControlProcess, tmp_path: Path
) -> None:
    cli = Cli(tmp_path, passphrase_env("linking test passphrase"))
    cli("register", "ann", "--profile", "a", "--server", control.url)
    cli("register", "ben", "--profile", "b", "--server", control.url)
    cli("dm", "ann", "sent before the new device existed", "--profile", "b")

    joining, code = join(cli, control.url, "a2")
    linked = cli.json("link-device", code, "--profile", "a")
    out, err = joining.communicate(timeout=60)
    assert joining.returncode == 0, err
    joined = json.loads(out.strip().splitlines()[-1])
    assert isinstance(linked, dict) and joined["device_id"] == linked["device_id"]
    assert joined["handle"] == "ann" and joined["key_source"] == "passphrase"

    # Both profiles see the same two devices; each knows which one it is.
    for profile in ("a", "a2"):
        devices = cli.json("devices", "--profile", profile)
        assert isinstance(devices, list) and len(devices) == 2
        (this,) = [d for d in devices if d["this"]]
        assert (this["id"] == linked["device_id"]) == (profile == "a2")

    cli("dm", "ann", "sent after linking", "--profile", "b")
    old_and_new = cli.json("read", "@ben", "--profile", "a")
    assert [m["body"] for m in old_and_new] == [  # type: ignore[union-attr]
        "sent before the new device existed",
        "sent after linking",
    ]
    only_new = cli.json("read", "@ben", "--profile", "a2")
    assert [m["body"] for m in only_new] == ["sent after linking"]  # type: ignore[union-attr]

    # The new device also sends: ben reads it, ann's first device gets its copy.
    cli("dm", "ben", "from the new device", "--profile", "a2")
    conversation = cli.json("read", "@ann", "--profile", "b")
    assert isinstance(conversation, list)
    assert (conversation[-1]["body"], conversation[-1]["direction"]) == (
        "from the new device",
        "in",
    )
    copies = cli.json("read", "@ben", "--profile", "a")
    assert [m["body"] for m in copies][-1] == "from the new device"  # type: ignore[union-attr]

    # The server only relayed ciphertext under an id it cannot turn into the key: neither
    # the code nor the mailbox id reached its database or its (debug-level) log.
    mailbox = LinkingSecret(parse_link_code(code)).mailbox_id.hex()
    stored = b"".join(p.read_bytes() for p in control.data_dir.glob("control.sqlite3*"))
    log = control.log_path.read_bytes()
    for needle in (code.encode(), code.replace("-", "").encode(), mailbox.encode()):
        assert needle not in stored and needle not in log


def test_bad_expired_and_used_link_codes_are_one_sentence_errors(
    control: ControlProcess, tmp_path: Path
) -> None:
    cli = Cli(tmp_path, passphrase_env("linking test passphrase"))
    cli("register", "cat", "--profile", "c", "--server", control.url)

    one_sentence(cli("link-device", "not-a-code", "--profile", "c", ok=False), "That is not")
    unknown = LinkingSecret().code
    one_sentence(cli("link-device", unknown, "--profile", "c", ok=False), "No device is waiting")
    # The device made for the unknown code was taken off the account again.
    assert len(cli.json("devices", "--profile", "c")) == 1  # type: ignore[arg-type]

    # A code nobody used expires; the waiting side says so and leaves no profile.
    waiting, code = join(cli, control.url, "c2", "--timeout", "1")
    _, err = waiting.communicate(timeout=60)
    one_sentence(subprocess.CompletedProcess(waiting.args, waiting.returncode, "", err), "The link")
    assert "expired" in err
    assert not (tmp_path / "c2" / STORE_FILE).exists() and not (tmp_path / "c2").exists()
    one_sentence(cli("link-device", code, "--profile", "c", ok=False), "No device is waiting")

    # A code works once: the mailbox went when the new device read it.
    joining, code = join(cli, control.url, "c3")
    cli("link-device", code, "--profile", "c")
    _, err = joining.communicate(timeout=60)
    assert joining.returncode == 0, err
    one_sentence(cli("link-device", code, "--profile", "c", ok=False), "No device is waiting")
    assert len(cli.json("devices", "--profile", "c")) == 2  # type: ignore[arg-type]

    usage = cli("join-device", "--profile", "c4", "--timeout", "601", ok=False)
    assert usage.returncode == 2 and "600" in usage.stderr


async def test_link_device_never_vouches_for_an_account_device_only_the_server_knows(
    control: ControlProcess, tmp_path: Path
) -> None:
    cli = Cli(tmp_path, passphrase_env(PASS))
    cli("register", "ann", "--profile", "a", "--server", control.url)
    cli("register", "ben", "--profile", "b", "--server", control.url)
    ann = Client.open(tmp_path / "a", PASS)
    user_id = ann.user_id
    await ann.aclose()
    rogue, _ = plant_device(control.database, user_id)

    joining, code = join(cli, control.url, "a2")
    linked = cli.json("link-device", code, "--profile", "a")
    out, err = joining.communicate(timeout=60)
    assert joining.returncode == 0, err
    assert isinstance(linked, dict)
    assert json.loads(out.splitlines()[-1])["device_id"] == linked["device_id"]
    # The list the new device received, signed by the account key, names the real two
    # only: the new device never trusts the planted one, so nothing it sends reaches it.
    joined = Client.open(tmp_path / "a2", PASS)
    pinned = joined.store.get("contact", joined.user_id)["list"]["keys"]
    assert len(pinned) == 2 and joined.identity.public in pinned
    with pytest.raises(UntrustedDevice, match=rogue):
        await joined.send_dm("ben", "never sent")
    assert [n.kind for n in joined.notices()] == ["untrusted_device"]
    assert envelopes_for(control.database, rogue) == 0
    await joined.aclose()

    # The user removes the stranger with an ordinary, signed removal; all is well again.
    cli("devices", "remove", rogue, "--profile", "a")
    listed = cli.json("devices", "--profile", "a")
    assert isinstance(listed, list) and len(listed) == 2
    assert rogue not in {d["id"] for d in listed}
    cli("dm", "ben", "after the removal", "--profile", "a2")
    read = cli.json("read", "@ann", "--profile", "b")
    assert [m["body"] for m in read] == ["after the removal"]  # type: ignore[union-attr]


async def test_a_join_that_fails_after_signing_in_takes_its_device_off_the_account(
    control: ControlProcess, tmp_path: Path
) -> None:
    ann = await Client.register(tmp_path / "a", PASS, control.url, "ann")
    send_code, receive_code = trio.open_memory_channel[str](1)

    async def join() -> None:
        with pytest.raises(ProtocolError, match="did not list this device"):
            await Client.join_device(
                tmp_path / "a2", PASS, control.url, lambda s, _ttl: send_code.send_nowait(s.code)
            )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(join)
        code = await receive_code.receive()
        # A linking device that adds the new device but leaves it out of the list it
        # seals: the new device signs in, then finds the list wrong.
        device, identity, prekeys = await add_device_unseen(ann)
        listed = signed_list(ann, 3, [ann.identity.public])
        extra = LinkExtra("ann", prekeys.serialize(), account_key_of(ann).seed, listed)
        payload = ProvisioningPayload(ann.user_id.encode(), identity.seed, extra.encode())
        await ann.api.deposit_provisioning(*build_provisioning_message(code, payload))

    assert device.id not in {d.id for d in await ann.devices()}
    assert len(await ann.devices()) == 1
    assert not (tmp_path / "a2").exists()
    await ann.aclose()


async def test_a_failed_join_whose_device_cannot_go_again_says_where_to_remove_it(
    control: ControlProcess, tmp_path: Path
) -> None:
    ann = await Client.register(tmp_path / "a", PASS, control.url, "ann")
    send_code, receive_code = trio.open_memory_channel[str](1)
    failures: list[LinkError] = []

    async def join() -> None:
        with pytest.raises(LinkError) as refused:
            await Client.join_device(
                tmp_path / "a2", PASS, control.url, lambda s, _ttl: send_code.send_nowait(s.code)
            )
        failures.append(refused.value)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(join)
        code = await receive_code.receive()
        device, identity, prekeys = await add_device_unseen(ann)
        # The new device becomes the account's only one, which the server refuses to
        # remove, and is left out of the sealed list: the join fails after signing in.
        other = ControlApi(control.url)
        challenge = await other.challenge()
        signed = b"hushroom-v1 login\x00" + challenge + identity.public
        other.token = (
            await other.login(
                {
                    "identity_key": identity.public,
                    "challenge": challenge,
                    "signature": identity.sign(signed),
                }
            )
        )["token"]
        await ann.api.remove_device(ann.device_id, signed_list(ann, 3, [identity.public]))
        listed = signed_list(ann, 4, [ann.identity.public])
        extra = LinkExtra("ann", prekeys.serialize(), account_key_of(ann).seed, listed)
        payload = ProvisioningPayload(ann.user_id.encode(), identity.seed, extra.encode())
        await other.deposit_provisioning(*build_provisioning_message(code, payload))
        await other.aclose()
    (failure,) = failures
    assert str(failure).startswith("the linking device did not list this device, and")
    assert f"check 'hushroom devices' on your other device and remove {device.id}" in str(failure)
    assert not (tmp_path / "a2").exists()
    await ann.aclose()


async def test_join_device_waits_out_the_shared_rate_limit_of_the_mailbox_routes(
    tmp_path: Path,
) -> None:
    # 2 requests a second: a bucket spent by somebody else refills within half a second.
    server = ControlProcess(
        tmp_path / "control-data",
        tmp_path / "control.log",
        *("--rate-per-s", "2", "--rate-burst", "5"),
    )
    try:
        ann = await Client.register(tmp_path / "a", PASS, server.url, "ann")
        send_code, receive_code = trio.open_memory_channel[str](1)

        def show(secret: LinkingSecret, _ttl: int) -> None:
            # The long poll that follows finds its mailbox's bucket empty.
            empty_bucket(server.url, "GET", "/provisioning/" + secret.mailbox_id.hex())
            send_code.send_nowait(secret.code)

        joined: list[Client] = []

        async def join() -> None:
            joined.append(await Client.join_device(tmp_path / "a2", PASS, server.url, show))

        # Opening the mailbox is paid with a proof of work, not a shared bucket; the long
        # poll after it still shares one.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(join)
            await ann.link_device(await receive_code.receive())
        assert joined[0].user_id == ann.user_id and len(await joined[0].devices()) == 2
        await joined[0].aclose()
        await ann.aclose()
    finally:
        server.stop()
