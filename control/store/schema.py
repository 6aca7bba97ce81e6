"""Tables of the control plane, each with its owner, purpose and retention rule.

Times are whole seconds since the Unix epoch (UTC) and only where a purpose needs them;
"day" columns hold whole days since the epoch, the coarsest grain that serves their purpose.
Ids are random strings (``control.ids.new_id``), never time-ordered, so an id reveals neither
when nor in which order things were created.
"""

from __future__ import annotations

import sqlalchemy as sa

__all__ = ["RETENTION", "metadata"]

metadata = sa.MetaData()

ID = sa.String(32)
Key = sa.LargeBinary(4096)

_CASCADE = "CASCADE"

schema_version = sa.Table(
    "schema_version",
    metadata,
    sa.Column("version", sa.Integer, primary_key=True),
)

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("handle", sa.String(32), nullable=False, unique=True),
    sa.Column("created_day", sa.Integer, nullable=False),
)

devices = sa.Table(
    "devices",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("user_id", ID, sa.ForeignKey("users.id", ondelete=_CASCADE), nullable=False),
    sa.Column("identity_key", sa.LargeBinary(32), nullable=False, unique=True),
    sa.Column("created_day", sa.Integer, nullable=False),
    sa.Column("last_seen_day", sa.Integer, nullable=False),
    sa.Index("ix_devices_user", "user_id"),
)

# Cross-signing (migration 3): the account signing key and the latest device list it
# signed. Clients trust a device only when such a list names it; the server keeps the
# list to hand it out, and checks signature and version on upload (clients never rely on
# that check). ``device_keys`` is the listed identity keys, sorted, 32 bytes each.
device_lists = sa.Table(
    "device_lists",
    metadata,
    sa.Column("user_id", ID, sa.ForeignKey("users.id", ondelete=_CASCADE), primary_key=True),
    sa.Column("account_key", sa.LargeBinary(32), nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("device_keys", sa.LargeBinary(64 * 32), nullable=False),
    sa.Column("signature", sa.LargeBinary(64), nullable=False),
)

challenges = sa.Table(
    "challenges",
    metadata,
    sa.Column("challenge", sa.LargeBinary(32), primary_key=True),
    sa.Column("expires_at", sa.BigInteger, nullable=False),
)

sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("token_hash", sa.LargeBinary(32), primary_key=True),
    sa.Column("user_id", ID, sa.ForeignKey("users.id", ondelete=_CASCADE), nullable=False),
    sa.Column("device_id", ID, sa.ForeignKey("devices.id", ondelete=_CASCADE), nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=False),
    sa.Index("ix_sessions_device", "device_id"),
)

signed_prekeys = sa.Table(
    "signed_prekeys",
    metadata,
    sa.Column("device_id", ID, sa.ForeignKey("devices.id", ondelete=_CASCADE), primary_key=True),
    sa.Column("key_id", sa.BigInteger, nullable=False),
    sa.Column("public_key", Key, nullable=False),
    sa.Column("signature", sa.LargeBinary(64), nullable=False),
)

pq_prekeys = sa.Table(
    "pq_prekeys",
    metadata,
    sa.Column("device_id", ID, sa.ForeignKey("devices.id", ondelete=_CASCADE), primary_key=True),
    sa.Column("key_id", sa.BigInteger, nullable=False),
    sa.Column("public_key", Key, nullable=False),
    sa.Column("signature", sa.LargeBinary(64), nullable=False),
)

one_time_prekeys = sa.Table(
    "one_time_prekeys",
    metadata,
    sa.Column("device_id", ID, sa.ForeignKey("devices.id", ondelete=_CASCADE), primary_key=True),
    sa.Column("key_id", sa.BigInteger, primary_key=True),
    sa.Column("public_key", sa.LargeBinary(32), nullable=False),
)

# One-time PQ prekeys (migration 4): ML-KEM-1024 keys, each signed under its own label, so
# a first message usually has a one-time KEM key as well as a one-time DH key; the PQ
# prekey above is the last resort once they run out.
pq_one_time_prekeys = sa.Table(
    "pq_one_time_prekeys",
    metadata,
    sa.Column("device_id", ID, sa.ForeignKey("devices.id", ondelete=_CASCADE), primary_key=True),
    sa.Column("key_id", sa.BigInteger, primary_key=True),
    sa.Column("public_key", Key, nullable=False),
    sa.Column("signature", sa.LargeBinary(64), nullable=False),
)

guilds = sa.Table(
    "guilds",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("owner_id", ID, sa.ForeignKey("users.id"), nullable=False),
)

roles = sa.Table(
    "roles",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("guild_id", ID, sa.ForeignKey("guilds.id", ondelete=_CASCADE), nullable=False),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("permissions", sa.BigInteger, nullable=False),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Index("ix_roles_guild", "guild_id"),
)

members = sa.Table(
    "members",
    metadata,
    sa.Column("guild_id", ID, sa.ForeignKey("guilds.id", ondelete=_CASCADE), primary_key=True),
    sa.Column("user_id", ID, sa.ForeignKey("users.id", ondelete=_CASCADE), primary_key=True),
    sa.Index("ix_members_user", "user_id"),
)

member_roles = sa.Table(
    "member_roles",
    metadata,
    sa.Column("guild_id", ID, primary_key=True),
    sa.Column("user_id", ID, primary_key=True),
    sa.Column("role_id", ID, sa.ForeignKey("roles.id", ondelete=_CASCADE), primary_key=True),
    sa.ForeignKeyConstraint(
        ["guild_id", "user_id"],
        ["members.guild_id", "members.user_id"],
        ondelete=_CASCADE,
    ),
)

channels = sa.Table(
    "channels",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("guild_id", ID, sa.ForeignKey("guilds.id", ondelete=_CASCADE), nullable=False),
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("topic", sa.String(1024), nullable=True),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("parent_id", ID, sa.ForeignKey("channels.id", ondelete="SET NULL"), nullable=True),
    sa.Column("user_limit", sa.Integer, nullable=False),
    sa.Column("bitrate", sa.Integer, nullable=False),
    sa.Column("retention_days", sa.Integer, nullable=False),
    sa.Index("ix_channels_guild", "guild_id"),
)

overwrites = sa.Table(
    "overwrites",
    metadata,
    sa.Column("channel_id", ID, sa.ForeignKey("channels.id", ondelete=_CASCADE), primary_key=True),
    sa.Column("target_id", ID, primary_key=True),
    sa.Column("target_type", sa.String(8), nullable=False),
    sa.Column("allow", sa.BigInteger, nullable=False),
    sa.Column("deny", sa.BigInteger, nullable=False),
)

invites = sa.Table(
    "invites",
    metadata,
    sa.Column("code", sa.String(32), primary_key=True),
    sa.Column("guild_id", ID, sa.ForeignKey("guilds.id", ondelete=_CASCADE), nullable=False),
    sa.Column("channel_id", ID, sa.ForeignKey("channels.id", ondelete=_CASCADE), nullable=True),
    sa.Column("creator_id", ID, sa.ForeignKey("users.id", ondelete=_CASCADE), nullable=False),
    sa.Column("max_uses", sa.Integer, nullable=False),
    sa.Column("uses", sa.Integer, nullable=False),
    sa.Column("expires_at", sa.BigInteger, nullable=True),
    sa.Index("ix_invites_guild", "guild_id"),
)

bans = sa.Table(
    "bans",
    metadata,
    sa.Column("guild_id", ID, sa.ForeignKey("guilds.id", ondelete=_CASCADE), primary_key=True),
    sa.Column("user_id", ID, sa.ForeignKey("users.id", ondelete=_CASCADE), primary_key=True),
)

messages = sa.Table(
    "messages",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("channel_id", ID, sa.ForeignKey("channels.id", ondelete=_CASCADE), nullable=False),
    sa.Column("author_id", ID, sa.ForeignKey("users.id", ondelete=_CASCADE), nullable=False),
    sa.Column("author_device_id", ID, nullable=False),
    # Order within the channel (members see the count anyway); ids stay random.
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("ciphertext", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("edited_at", sa.BigInteger, nullable=True),
    sa.UniqueConstraint("channel_id", "seq", name="uq_messages_channel_seq"),
    sa.Index("ix_messages_created", "created_at"),
    sa.Index("ix_messages_author", "author_id"),
)

envelopes = sa.Table(
    "envelopes",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column(
        "recipient_device_id",
        ID,
        sa.ForeignKey("devices.id", ondelete=_CASCADE),
        nullable=False,
    ),
    sa.Column("sender_user_id", ID, nullable=False),
    sa.Column("sender_device_id", ID, nullable=False),
    sa.Column("ciphertext", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    # Arrival order per recipient device (migration 2): ids are random, seconds too coarse.
    sa.Column("seq", sa.BigInteger, nullable=False, server_default="0"),
    sa.Index("ix_envelopes_recipient", "recipient_device_id", "created_at"),
    sa.Index("ix_envelopes_recipient_seq", "recipient_device_id", "seq"),
    sa.Index("ix_envelopes_created", "created_at"),
)

#: Every table's retention rule, as published in docs/control.md. A test keeps this in
#: step with ``metadata`` so no table can appear without one.
RETENTION: dict[str, str] = {
    "schema_version": "Schema bookkeeping, no personal data; kept for the database's life.",
    "users": "Until the account is deleted (DELETE /api/v1/users/@me).",
    "devices": "Until the device is removed or the account deleted; last_seen_day is a day.",
    "device_lists": "The account signing key and its latest signed device list: replaced "
    "by each newer list, deleted with the account.",
    "challenges": "Single use; deleted when answered, purged 5 minutes after issue.",
    "sessions": "Until expiry (purged), sign-out, device removal or account deletion.",
    "signed_prekeys": "Replaced on upload; deleted with the device.",
    "pq_prekeys": "Replaced on upload; deleted with the device.",
    "one_time_prekeys": "Deleted when fetched (single use) or with the device.",
    "pq_one_time_prekeys": "Deleted when fetched (single use) or with the device.",
    "guilds": "Until the owner deletes the guild (or deletes an account owning it alone).",
    "roles": "Until deleted or the guild is deleted.",
    "members": "Until leave, kick, ban, guild deletion or account deletion.",
    "member_roles": "Until unassigned, the role or membership ends.",
    "channels": "Until deleted or the guild is deleted.",
    "overwrites": "Until deleted or the channel is deleted.",
    "invites": "Until revoked, used up, expired (purged) or the guild is deleted.",
    "bans": "Until unban, guild deletion or the banned account's deletion.",
    "messages": "Channel retention_days after posting (purged; 0 = never stored), "
    "deletion by author or moderator, or the author's account deletion.",
    "envelopes": "Until acknowledged by the recipient device, else the envelope TTL "
    "(default 30 days, purged).",
}
