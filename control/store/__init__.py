"""Storage of the control plane: one interface over SQLite and PostgreSQL."""

from ._database import RECLAIM_BYTES, Database, StoreError, sqlite_url
from .migrations import MIGRATIONS, migrate
from .schema import RETENTION, metadata

__all__ = [
    "MIGRATIONS",
    "RECLAIM_BYTES",
    "RETENTION",
    "Database",
    "StoreError",
    "metadata",
    "migrate",
    "sqlite_url",
]
