"""`moe-router serve`: run the gateway."""

from __future__ import annotations

import json
import logging
import os
import tempfile
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


# How `serve --workers N` hands what the parent resolved to its workers (fresh interpreters).
WORKER_ENV = "MOE_ROUTER_SERVE_WORKER"  # JSON: config path, host, url, log level, warm-up
MEMORY_STATE_WARNING = (
    "state is in memory with %d workers: budgets, rate limits, keys created at runtime, caches and "
    "bandit state are per process (each worker admits up to a key's whole limit). Share them with "
    "MOE_ROUTER_STATE=redis://host:6379/0 (or `state:` in the config)"
)


def server_options() -> dict:
    """uvloop and httptools when importable (they are in uvicorn[standard]), else uvicorn's pick."""
    try:
        import httptools  # noqa: F401
        import uvloop  # noqa: F401
    except ImportError:
        return {"loop": "auto", "http": "auto"}
    return {"loop": "uvloop", "http": "httptools"}


def build(cfg, config: Path | None, host: str, url: str, warmup: bool | None, summary: bool):
    """The app of one serving process from its config: console key, engine, start-up summary."""
    from adapters import redact
    from router.cli.console_key import console_access
    from router.cli.summary import summary_lines
    from router.engine import Engine
    from router.gateway import create_app

    if warmup is not None:
        cfg.server.warmup = warmup
    cfg.server.host = host  # the real bind: a loopback one checks `Host` (router/gateway/browsers.py)
    console = console_access(cfg, host)
    redact.install(cfg.secret_values())  # on the log's handlers: no record shows a configured secret
    engine = Engine(cfg)
    if summary:
        for line in [*summary_lines(engine, config, url), f"  console: {url}/ui ({console})"]:
            logging.getLogger("moe_router").info("%s", line)
    return create_app(engine=engine)


def setup_logging(level: str) -> None:
    quiet(level)
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("moe_router").setLevel(level.upper())


def worker_app():
    """The app factory of each `--workers N` process (uvicorn imports it by name, `factory=True`).

    Each worker builds its own engine from the config the parent resolved; the first worker to
    get here prints the start-up summary (the parent has no engine: building one there would cost
    the start-up time and memory of a worker for nothing)."""
    spec = json.loads(os.environ[WORKER_ENV])
    setup_logging(spec["level"])
    first = False
    try:
        os.mkdir(spec["once"])  # atomic: exactly one worker creates it
        first = True
    except FileExistsError:
        pass
    config = Path(spec["config"]) if spec["config"] else None
    return build(load(config), config, spec["host"], spec["url"], spec["warmup"], summary=first)


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
    workers: int = typer.Option(
        1,
        min=1,
        help="serving processes on one port, each with its own engine; share budgets, limits and "
        "keys between them with Redis state (MOE_ROUTER_STATE=redis://...)",
    ),
) -> None:
    """Start the OpenAI-compatible gateway (one process by default; --workers N, or replicas
    sharing Redis, to scale out)."""
    level = log_level.lower()
    setup_logging(level)
    import uvicorn

    from router.cli.console_key import console_access

    cfg = load(config)
    bind_host, bind_port = host or cfg.server.host, port or cfg.server.port
    shown = "localhost" if bind_host in ("127.0.0.1", "0.0.0.0", "::") else bind_host
    url = f"http://{shown}:{bind_port}"
    common = {
        "host": bind_host,
        "port": bind_port,
        "log_level": level,
        "access_log": False,
        "timeout_graceful_shutdown": 10,
        **server_options(),
    }
    if workers == 1:
        uvicorn.run(build(cfg, config, bind_host, url, warmup, summary=True), **common)
        return
    log = logging.getLogger("moe_router")
    if cfg.state == "memory":
        log.warning(MEMORY_STATE_WARNING, workers)
    console_access(cfg, bind_host)  # makes the loopback console key once, before workers read it
    with tempfile.TemporaryDirectory(prefix="moe-router-serve-") as tmp:
        os.environ[WORKER_ENV] = json.dumps(
            {
                "config": str(config.resolve()) if config else "",
                "host": bind_host,
                "url": url,
                "level": level,
                "warmup": warmup,
                "once": str(Path(tmp) / "summary"),
            }
        )
        log.info("moe-router: starting %d worker processes on %s", workers, url)
        uvicorn.run("router.cli.serve:worker_app", factory=True, workers=workers, **common)
