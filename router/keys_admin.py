"""Managing API keys: the one implementation behind `moe-router keys` and `/admin/keys`.

Both the CLI and the admin API call these functions, so a key made either way is hashed, named,
validated and stored the same way. Bad input raises `KeyAdminError` (a message for the operator);
a name that does not exist (or is revoked) raises `KeyNotFound`.
"""

from __future__ import annotations

import math
from typing import Any

from router.access import Access, Caller
from router.config import RouterConfig
from router.state.keys import MUTABLE, WINDOWS, KeyRecord, new_key
from router.state.store import Store


class KeyAdminError(ValueError):
    """The operator asked for something invalid (bad name, window, limit, unknown model...)."""


class KeyNotFound(LookupError):
    pass


def _check_models(config: RouterConfig, models: list[str] | None) -> list[str] | None:
    allowed = [m.strip() for m in models or [] if m.strip()]
    if not allowed:
        return None
    unknown = sorted(set(allowed) - {m.name for m in config.models})
    if unknown:
        raise KeyAdminError(f"unknown model(s): {', '.join(unknown)}")
    return list(dict.fromkeys(allowed))


def _check_limits(fields: dict[str, Any]) -> None:
    b = fields.get("budget_usd")
    if b is not None and (not isinstance(b, int | float) or not math.isfinite(b) or b < 0):
        raise KeyAdminError("budget_usd must be a finite number >= 0 (or null for no budget)")
    if "budget_window" in fields and fields["budget_window"] not in WINDOWS:
        raise KeyAdminError(f"budget_window must be one of {', '.join(WINDOWS)}")
    for k in ("rpm", "tpm"):
        v = fields.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise KeyAdminError(f"{k} must be an integer >= 1 (or null for no limit)")
    team = fields.get("team")
    if team is not None and (not isinstance(team, str) or not team.strip()):
        raise KeyAdminError("team must be a non-empty string (or null)")


async def create_key(
    store: Store,
    config: RouterConfig,
    name: str,
    *,
    budget_usd: float | None = None,
    budget_window: str = "monthly",
    rpm: int | None = None,
    tpm: int | None = None,
    models: list[str] | None = None,
    team: str | None = None,
) -> tuple[str, KeyRecord]:
    """Store a new key; returns (raw key, record). The raw key is never stored: show it once."""
    _check_limits(
        {"budget_usd": budget_usd, "budget_window": budget_window, "rpm": rpm, "tpm": tpm, "team": team}
    )
    try:
        raw, rec = new_key(
            name,
            budget_usd=budget_usd,
            budget_window=budget_window,
            rpm=rpm,
            tpm=tpm,
            models=_check_models(config, models),
            team=team,
        )
        await store.keys.put(rec)  # refuses a taken name (atomically on Redis: SET NX)
    except ValueError as e:
        raise KeyAdminError(str(e)) from None
    return raw, rec


async def describe(store: Store, config: RouterConfig, rec: KeyRecord) -> dict[str, Any]:
    """A key's public fields (never salt or hash) with this window's spend against its budget."""
    spent = None
    if rec.budget_usd is not None:
        scope = Access(config, store).scopes(Caller(rec))[:1]
        spent = (await store.budgets.spent(scope))[0]
    return {**rec.public(), "spent_usd": spent}


async def list_keys(store: Store, config: RouterConfig) -> list[dict[str, Any]]:
    return [await describe(store, config, rec) for rec in await store.keys.all()]


async def update_key(store: Store, config: RouterConfig, name: str, changes: dict[str, Any]) -> KeyRecord:
    """Change an active key's limits (`MUTABLE` fields); a null clears budget, rpm, tpm, models, team."""
    bad = sorted(set(changes) - set(MUTABLE))
    if bad:
        raise KeyAdminError(f"cannot change {', '.join(bad)}; changeable: {', '.join(MUTABLE)}")
    if changes.get("budget_window", "monthly") is None:
        raise KeyAdminError(f"budget_window must be one of {', '.join(WINDOWS)}")
    _check_limits(changes)
    changes = dict(changes)
    if "models" in changes:
        changes["models"] = _check_models(config, changes["models"])
    rec = await store.keys.update(name, changes)
    if rec is None:
        raise KeyNotFound(f"no active key named {name!r}")
    return rec


async def revoke_key(store: Store, name: str) -> KeyRecord:
    """Revoke a key: every replica refuses it from its next request on."""
    rec = await store.keys.revoke(name)
    if rec is None:
        raise KeyNotFound(f"no active key named {name!r}")
    return rec
