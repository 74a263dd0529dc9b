"""`moe-router serve`: run the gateway."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from router.cli import app
from router.cli.options import ConfigOption, load


@app.command()
def serve(
    host: str = typer.Option(None, help="bind address (default: server.host from config, 127.0.0.1)"),
    port: int = typer.Option(None, help="port (default: server.port from config, 8080)"),
    config: Path | None = ConfigOption,
    log_level: str = typer.Option("info", help="debug | info | warning | error"),
) -> None:
    """Start the OpenAI-compatible gateway (one process; scale out with replicas sharing Redis)."""
    import uvicorn

    from router.gateway import create_app

    cfg = load(config)
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("moe_router").setLevel(log_level.upper())
    app_ = create_app(cfg)
    uvicorn.run(
        app_,
        host=host or cfg.server.host,
        port=port or cfg.server.port,
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=10,
    )
