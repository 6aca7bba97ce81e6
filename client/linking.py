"""What a new device receives when it is linked, inside ``e2ee.linking``'s sealed message.

``e2ee.ProvisioningPayload`` carries the user id, the new device's identity seed and opaque
``extra`` bytes; this module gives ``extra`` its shape: msgpack
``{"v": 2, "handle", "prekeys", "account_key", "device_list"}``.

* ``prekeys`` — the new device's serialized :class:`e2ee.PreKeyStore`: the existing device
  published the matching public prekeys when it added the device (the add-device route
  needs a bundle), so the private halves must travel with the seed or the first messages
  to the new device would not open. The existing device keeps no copy.
* ``account_key`` — the account signing key's seed (cross-signing, docs/e2ee.md): the
  new device can then add and remove devices itself, and pins the account key as the
  one it received here rather than on the server's word.
* ``device_list`` — the account's device list naming the new device, as the existing
  device signed it and the server took it (``DeviceList`` of the control API); the new
  device trusts exactly these devices, and later lists only under the same key and with
  a higher version.

Version 1 (a device list without signature, before cross-signing) is refused: a device
that old cannot vouch for the account.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgpack

from client.device_list import SignedDeviceList
from client.errors import ProtocolError

__all__ = ["LinkExtra"]

_VERSION = 2
_MAX_PREKEYS = 48 * 1024


@dataclass(frozen=True)
class LinkExtra:
    """The application part of a provisioning payload."""

    handle: str
    # The new device's private prekeys and the account signing key: never in repr().
    prekeys: bytes = field(repr=False)
    account_key: bytes = field(repr=False)
    device_list: SignedDeviceList

    def encode(self) -> bytes:
        """The msgpack form placed in ``ProvisioningPayload.extra``."""
        return msgpack.packb(
            {
                "v": _VERSION,
                "handle": self.handle,
                "prekeys": self.prekeys,
                "account_key": self.account_key,
                "device_list": self.device_list.to_wire(),
            },
            use_bin_type=True,
        )

    @classmethod
    def decode_untrusted(cls, data: bytes) -> LinkExtra:
        """Decode ``extra`` from an opened provisioning message.

        The message authenticated under the link secret, so it comes from whoever read the
        code; it is still checked field by field, like anything received (whether the
        list verifies under the account key is the caller's check).
        """
        try:
            raw = msgpack.unpackb(data, raw=False, strict_map_key=True, timestamp=0)
        except (ValueError, TypeError, RecursionError, msgpack.UnpackException):
            raise ProtocolError("the provisioning message is not msgpack") from None
        if not isinstance(raw, dict) or raw.get("v") != _VERSION:
            raise ProtocolError("the provisioning message has an unknown version")
        handle, prekeys, account_key = raw.get("handle"), raw.get("prekeys"), raw.get("account_key")
        if not isinstance(handle, str) or not 2 <= len(handle) <= 32:
            raise ProtocolError("the provisioning message carries no valid handle")
        if not isinstance(prekeys, bytes) or not 0 < len(prekeys) <= _MAX_PREKEYS:
            raise ProtocolError("the provisioning message carries no valid prekeys")
        if not isinstance(account_key, bytes) or len(account_key) != 32:
            raise ProtocolError("the provisioning message carries no valid account key")
        device_list = SignedDeviceList.from_wire_untrusted(raw.get("device_list"))
        return cls(handle, prekeys, account_key, device_list)
