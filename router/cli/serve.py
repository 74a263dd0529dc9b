"""`moe-router serve`: run the gateway."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import typer

from router.cli import app
from router.cli.options import ConfigOption, load

# libraries that log every HTTP call or model load at INFO: WARNING unless --log-level debug
CHATTY = (
    "httpx",
    "httpcore",
    "urllib3",
    "litellm",
    "LiteLLM",
    "LiteLLM Router",
    "LiteLLM Proxy",
    "openai",
    "sentence_transformers",
    "transformers",
    "huggingface_hub",
    "filelock",
    "accelerate",
    "alembic",
)


def quiet(level: str) -> None:
    """Logs are for operators: no progress bars, no per-call lines from HTTP clients."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error" if level != "debug" else "info")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.DEBUG if level == "debug" else logging.WARNING)


@app.command()
def serve(
    host: str = typer.Option(None, help="bind address (default: server.host from config, 127.0.0.1)"),
    port: int = typer.Option(None, help="port (default: server.port from config, 8080)"),
    config: Path | None = ConfigOption,
    log_level: str = typer.Option("info", help="debug | info | warning | error"),
    warmup: bool = typer.Option(
        None,
        "--warmup/--no-warmup",
        help="load local models before /ready says ready (default: server.warmup; on when the pool "
        "has local models). --no-warmup: each loads on its first request",
        show_default=False,
    ),
) -> None:
    """Start the OpenAI-compatible gateway (one process; scale out with replicas sharing Redis)."""
    level = log_level.lower()
    quiet(level)
    import uvicorn

    from router.cli.console_key import console_access
    from router.cli.summary import summary_lines
    from router.engine import Engine
    from router.gateway import create_app

    cfg = load(config)
    if warmup is not None:
        cfg.server.warmup = warmup
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("moe_router").setLevel(level.upper())
    bind_host, bind_port = host or cfg.server.host, port or cfg.server.port
    console = console_access(cfg, bind_host)
    engine = Engine(cfg)
    shown = "localhost" if bind_host in ("127.0.0.1", "0.0.0.0", "::") else bind_host
    url = f"http://{shown}:{bind_port}"
    for line in [*summary_lines(engine, config, url), f"  console: {url}/ui ({console})"]:
        logging.getLogger("moe_router").info("%s", line)
    uvicorn.run(
        create_app(engine=engine),
        host=bind_host,
        port=bind_port,
        log_level=level,
        access_log=False,
        timeout_graceful_shutdown=10,
    )
