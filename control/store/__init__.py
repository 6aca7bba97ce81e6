"""Storage of the control plane: one interface over SQLite and PostgreSQL."""

from ._database import Database, sqlite_url
from .migrations import MIGRATIONS, migrate
from .schema import RETENTION, metadata

__all__ = ["MIGRATIONS", "RETENTION", "Database", "metadata", "migrate", "sqlite_url"]
