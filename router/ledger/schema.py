"""Connecting to the ledger database and bringing its schema to the newest migration.

The URL is `sqlite+aiosqlite:///path` (embedded; the folder is created) or
`postgresql+asyncpg://user:pass@host/db`; `sqlite:///` and `postgresql://` are read as those.
URLs are only ever shown with the password hidden (`safe_url`, router/ledger_url.py).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from router.ledger_url import parse_url
from router.private_files import private_database

MIGRATIONS = Path(__file__).parent / "migrations"
# any constant: replicas starting together take turns migrating (PostgreSQL advisory lock)
_MIGRATION_LOCK = 0x6D6F65_6C6467


def connect(raw: str) -> AsyncEngine:
    url = parse_url(raw)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            private_database(Path(url.database).expanduser())  # 0600 in a 0700 folder: it holds prompts
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _wal(dbapi_conn, _):  # readers (export, the console) do not block the writer
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.close()

        return engine
    return create_async_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


def _upgrade(conn: Connection) -> None:
    from alembic import command
    from alembic.config import Config

    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, "head")


async def upgrade(engine: AsyncEngine) -> None:
    """Run every migration not yet applied (a no-op at head), in one transaction."""
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)
