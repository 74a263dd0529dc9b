"""`moe-router keys create | list | revoke`: API keys in the shared state (same settings as `serve`)."""

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
    from router.state import StateUnavailable

    store = _store(config)
    try:
        return await op(store)
    except StateUnavailable as e:
        raise UserError(f"{e} ({store.url})") from None
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
    from router.state.keys import new_key

    allowed = [m.strip() for m in models.split(",") if m.strip()] if models else None
    if allowed:
        known = {m.name for m in load(config).models}
        unknown = sorted(set(allowed) - known)
        if unknown:
            raise UserError(f"unknown model(s) for --models: {', '.join(unknown)}")
    try:
        raw, rec = new_key(
            name,
            budget_usd=budget_usd,
            budget_window=budget_window,
            rpm=rpm,
            tpm=tpm,
            models=allowed,
            team=team,
        )
    except ValueError as e:
        raise UserError(str(e)) from None

    async def op(store):
        try:
            await store.keys.put(rec)
        except ValueError as e:
            raise UserError(str(e)) from None

    asyncio.run(_run(config, op))
    typer.echo(f"created key {name!r} (id {rec.id}); store it now, it is not shown again:", err=True)
    typer.echo(raw)


@keys_app.command("list")
def list_keys(config: Path | None = ConfigOption, as_json: bool = typer.Option(False, "--json")) -> None:
    """List keys (never their secrets) with this window's spend."""
    from router.access import Access, Caller

    async def op(store):
        rows = []
        access = Access(load(config), store)
        for rec in await store.keys.all():
            spent = None
            if rec.budget_usd is not None:
                spent = (await store.budgets.spent(access.scopes(Caller(rec))[:1]))[0]
            rows.append({**rec.public(), "spent_usd": spent})
        return rows

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


@keys_app.command("revoke")
def revoke(
    name: str = typer.Argument(..., help="the key's name"), config: Path | None = ConfigOption
) -> None:
    """Revoke a key: every replica refuses it from the next request on."""

    async def op(store):
        return await store.keys.revoke(name)

    if asyncio.run(_run(config, op)) is None:
        raise UserError(f"no active key named {name!r}")
    typer.echo(f"revoked key {name!r}")
