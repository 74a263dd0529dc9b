"""`moe-router keys create | list | update | revoke`: API keys in the shared state (same settings as `serve`)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import typer

from router.cli import app
from router.cli.options import ConfigOption, UserError, load

keys_app = typer.Typer(
    help="Create, list and revoke API keys (stored as salted hashes).", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")


def _store(config: Path | None):
    from router.engine import build_store
    from router.metrics import Metrics

    cfg = load(config)
    if cfg.state == "memory":
        raise UserError(
            "keys need shared state: set MOE_ROUTER_STATE=redis://host:port/db (or 'state:' in the config) "
            "for both this command and 'serve'"
        )
    return build_store(cfg, Metrics())


async def _run(config: Path | None, op):
    from router.keys_admin import KeyAdminError, KeyNotFound
    from router.state import StateUnavailable

    store = _store(config)
    try:
        return await op(store)
    except StateUnavailable as e:
        raise UserError(f"{e} ({store.url})") from None
    except (KeyAdminError, KeyNotFound) as e:
        raise UserError(str(e.args[0])) from None
    finally:
        await store.aclose()


@keys_app.command("create")
def create(
    name: str = typer.Option(..., "--name", "-n", help="unique name (used to revoke it)"),
    budget_usd: float = typer.Option(None, min=0, help="spend limit in USD per window"),
    budget_window: str = typer.Option("monthly", help="daily | monthly | total"),
    rpm: int = typer.Option(None, min=1, help="requests per minute"),
    tpm: int = typer.Option(None, min=1, help="tokens per minute"),
    models: str = typer.Option(None, help="comma-separated models this key may use (default: all)"),
    team: str = typer.Option(None, help="team whose budget (config budgets.teams) also applies"),
    config: Path | None = ConfigOption,
) -> None:
    """Create a key. The raw key is printed once, alone on the last line; only its hash is stored."""
    from router.keys_admin import create_key

    allowed = [m.strip() for m in models.split(",") if m.strip()] if models else None
    cfg = load(config)

    async def op(store):
        return await create_key(
            store,
            cfg,
            name,
            budget_usd=budget_usd,
            budget_window=budget_window,
            rpm=rpm,
            tpm=tpm,
            models=allowed,
            team=team,
        )

    raw, rec = asyncio.run(_run(config, op))
    typer.echo(f"created key {name!r} (id {rec.id}); store it now, it is not shown again:", err=True)
    typer.echo(raw)


@keys_app.command("list")
def list_keys(config: Path | None = ConfigOption, as_json: bool = typer.Option(False, "--json")) -> None:
    """List keys (never their secrets) with this window's spend."""
    from router.keys_admin import list_keys as rows_of

    cfg = load(config)

    async def op(store):
        return await rows_of(store, cfg)

    rows = asyncio.run(_run(config, op))
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    typer.echo(f"{'name':<20} {'id':<13} {'created':<17} {'budget':>16} {'rpm':>6} {'tpm':>8}  status")
    for r in rows:
        budget = (
            "-"
            if r["budget_usd"] is None
            else f"{r['spent_usd']:.4g}/{r['budget_usd']:g} {r['budget_window'][0]}"
        )
        created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(r["created"]))
        typer.echo(
            f"{r['name']:<20} {r['id']:<13} {created:<17} {budget:>16} {r['rpm'] or '-':>6} {r['tpm'] or '-':>8}  "
            f"{'revoked' if r['revoked'] else 'active'}"
        )


@keys_app.command("update")
def update(
    name: str = typer.Argument(..., help="the key's name"),
    budget_usd: float = typer.Option(None, min=0, help="new spend limit in USD per window"),
    budget_window: str = typer.Option(None, help="daily | monthly | total"),
    rpm: int = typer.Option(None, min=1, help="requests per minute"),
    tpm: int = typer.Option(None, min=1, help="tokens per minute"),
    models: str = typer.Option(None, help="comma-separated models this key may use"),
    team: str = typer.Option(None, help="team whose budget also applies"),
    clear: list[str] = typer.Option(
        None, "--clear", help="remove a limit: budget_usd | rpm | tpm | models | team (repeatable)"
    ),
    config: Path | None = ConfigOption,
) -> None:
    """Change an active key's budget and limits (the same function as PATCH /admin/keys/NAME)."""
    from router.keys_admin import update_key

    given = {"budget_usd": budget_usd, "budget_window": budget_window, "rpm": rpm, "tpm": tpm, "team": team}
    changes = {k: v for k, v in given.items() if v is not None}
    if models is not None:
        changes["models"] = [m.strip() for m in models.split(",") if m.strip()]
    for field in clear or []:
        changes[field] = None
    if not changes:
        raise UserError("nothing to change: give at least one option")
    cfg = load(config)

    async def op(store):
        return await update_key(store, cfg, name, changes)

    asyncio.run(_run(config, op))
    typer.echo(f"updated key {name!r}: {', '.join(sorted(changes))}")


@keys_app.command("revoke")
def revoke(
    name: str = typer.Argument(..., help="the key's name"), config: Path | None = ConfigOption
) -> None:
    """Revoke a key: every replica refuses it from the next request on."""
    from router.keys_admin import revoke_key

    async def op(store):
        return await revoke_key(store, name)

    asyncio.run(_run(config, op))
    typer.echo(f"revoked key {name!r}")
