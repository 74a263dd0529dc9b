"""Connecting to the ledger database and bringing its schema to the newest migration.

The URL is `sqlite+aiosqlite:///path` (embedded; the folder is created) or
`postgresql+asyncpg://user:pass@host/db`; `sqlite:///` and `postgresql://` are read as those.
URLs are only ever shown with the password hidden (`safe_url`).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import event, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from router.private_files import private_database

DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}
MIGRATIONS = Path(__file__).parent / "migrations"
# any constant: replicas starting together take turns migrating (PostgreSQL advisory lock)
_MIGRATION_LOCK = 0x6D6F65_6C6467


def parse_url(raw: str) -> URL:
    """The URL with its async driver; ValueError (that never quotes the URL) for anything else."""
    try:
        url = make_url(raw)
    except Exception:  # noqa: BLE001 - the message must not echo a URL that may hold a password
        raise ValueError(
            "ledger: not a database URL (expected sqlite+aiosqlite:/// or postgresql+asyncpg://)"
        ) from None
    backend = url.get_backend_name()
    if backend not in DRIVERS:
        raise ValueError(f"ledger: unsupported database {backend!r} (use sqlite or postgresql)")
    if url.drivername not in (backend, DRIVERS[backend]):
        raise ValueError(f"ledger: use the {DRIVERS[backend]} driver, not {url.drivername!r}")
    return url.set(drivername=DRIVERS[backend])


def safe_url(url: URL | str) -> str:
    return (make_url(url) if isinstance(url, str) else url).render_as_string(hide_password=True)


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
