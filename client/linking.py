"""What a new device receives when it is linked, inside ``e2ee.linking``'s sealed message.

``e2ee.ProvisioningPayload`` carries the user id, the new device's identity seed and opaque
``extra`` bytes; this module gives ``extra`` its shape: msgpack
``{"v": 1, "handle", "prekeys", "devices": [[device id, identity key], ...]}``.

* ``prekeys`` — the new device's serialized :class:`e2ee.PreKeyStore`: the existing device
  published the matching public prekeys when it added the device (the add-device route
  needs a bundle), so the private halves must travel with the seed or the first messages
  to the new device would not open. The existing device keeps no copy.
* ``devices`` — the account's devices as the existing device saw them right after adding
  the new one: the new device pins these keys for its own account, vouched for by a
  device the user controls rather than by the server's word.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgpack

from client.errors import ProtocolError
from client.models import Device

__all__ = ["LinkExtra"]

_VERSION = 1
_MAX_DEVICES = 64
_MAX_PREKEYS = 48 * 1024


@dataclass(frozen=True)
class LinkExtra:
    """The application part of a provisioning payload."""

    handle: str
    # The new device's private prekeys: never in repr().
    prekeys: bytes = field(repr=False)
    devices: list[Device]

    def encode(self) -> bytes:
        """The msgpack form placed in ``ProvisioningPayload.extra``."""
        return msgpack.packb(
            {
                "v": _VERSION,
                "handle": self.handle,
                "prekeys": self.prekeys,
                "devices": [[d.id, d.identity_key] for d in self.devices],
            },
            use_bin_type=True,
        )

    @classmethod
    def decode_untrusted(cls, data: bytes) -> LinkExtra:
        """Decode ``extra`` from an opened provisioning message.

        The message authenticated under the link secret, so it comes from whoever read the
        code; it is still checked field by field, like anything received.
        """
        try:
            raw = msgpack.unpackb(data, raw=False, strict_map_key=True, timestamp=0)
        except (ValueError, TypeError, RecursionError, msgpack.UnpackException):
            raise ProtocolError("the provisioning message is not msgpack") from None
        if not isinstance(raw, dict) or raw.get("v") != _VERSION:
            raise ProtocolError("the provisioning message has an unknown version")
        handle, prekeys, devices = raw.get("handle"), raw.get("prekeys"), raw.get("devices")
        if not isinstance(handle, str) or not 2 <= len(handle) <= 32:
            raise ProtocolError("the provisioning message carries no valid handle")
        if not isinstance(prekeys, bytes) or not 0 < len(prekeys) <= _MAX_PREKEYS:
            raise ProtocolError("the provisioning message carries no valid prekeys")
        if not isinstance(devices, list) or not 0 < len(devices) <= _MAX_DEVICES:
            raise ProtocolError("the provisioning message carries no valid device list")
        parsed = []
        for entry in devices:
            if (
                not isinstance(entry, list)
                or len(entry) != 2
                or not isinstance(entry[0], str)
                or not 0 < len(entry[0]) <= 32
                or not isinstance(entry[1], bytes)
                or len(entry[1]) != 32
            ):
                raise ProtocolError("the provisioning message has a malformed device entry")
            parsed.append(Device(entry[0], entry[1]))
        return cls(handle, prekeys, parsed)
