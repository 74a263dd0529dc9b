"""What `moe-router serve` says when it starts: where the config came from, the pool and what can
serve, the default policy, state, ledger and the URL. Never a secret: URLs lose their passwords,
params are not printed at all."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from router.engine import Engine


def mask_url(url: str) -> str:
    """`redis://:secret@host:6379/0` -> `redis://:***@host:6379/0` (anything unparsable: kept only
    up to its scheme)."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))
    except ValueError:
        return url.split("://", 1)[0] + "://***"


def summary_lines(engine: Engine, source: Path | None, url: str) -> list[str]:
    cfg = engine.config
    lines = [f"moe-router: config {source or 'embedded default config'}"]
    chat, embedding = cfg.chat_models(), [m for m in cfg.models if m.kind == "embedding"]
    lines.append(f"  pool: {len(chat)} chat models, {len(embedding)} embedding models")
    for m in cfg.models:
        if m.name in engine.unavailable:
            status = f"unavailable: {engine.unavailable[m.name]}"
        elif m.local:
            status = "loading (warm-up)" if engine.warmup else "loads on its first request"
        else:
            status = "available"
        lines.append(f"    {m.name:<28} {m.backend:<21} {status}")
    lines.append(
        f"  default policy: {engine.policies.default} (cost_weight {cfg.routing.cost_weight:g}); "
        f"policies: {', '.join(engine.policies.names)}"
    )
    lines += [f"  warning: {w}" for w in engine.policies.warnings]
    lines.append(f"  state: {mask_url(cfg.state)}")
    ledger = getattr(engine, "ledger", None)
    lines.append(f"  ledger: {getattr(ledger, 'where', None) or ('on' if ledger is not None else 'off')}")
    keys = (
        "required"
        if cfg.auth.require_keys
        else "not required (set MOE_ROUTER_REQUIRE_KEYS=1 before exposing it)"
    )
    lines.append(
        f"  API keys: {keys}; request log: {cfg.log.requests}; tracing: {'on' if engine.tracing.enabled else 'off'}"
    )
    return lines
