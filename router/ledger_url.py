"""The ledger's database URL: which databases and drivers it takes, and how a URL is shown.

Apart from router/ledger/ (whose package imports the writer and the tables) so the typed config
can check `ledger:` when it is read without importing the ledger.
"""

from __future__ import annotations

from sqlalchemy.engine import URL, make_url

DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}


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
