"""`moe-router serve`: run the gateway."""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import tempfile
from pathlib import Path

import typer

from router.cli import app
from router.cli.options import ConfigOption, UserError, load
from router.quiet import quiet_libraries


def quiet(level: str) -> None:
    """Logs are for operators: no progress bars, no per-call lines from HTTP clients."""
    quiet_libraries(debug=level == "debug")


# How `serve --workers N` hands what the parent resolved to its workers (fresh interpreters).
WORKER_HEALTHCHECK_S = 60
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


def listen(host: str, port: int) -> socket.socket:
    """Bind and listen before anything is built or printed: an address in use, or one this machine
    does not have, is one line and exit 1, never a "listening on" first (as uvicorn's own bind)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)  # the --workers processes serve it too
    return sock


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


def listening(url: str, warmup: bool) -> str:
    ready = "/ready answers 503 until local models are loaded" if warmup else "/ready"
    return f"  listening on {url} (OpenAI base URL {url}/v1; {ready})"


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
    cfg.server.host, cfg.server.port = bind_host, bind_port  # server.metrics_host defaults to it
    if workers > 1 and cfg.server.metrics_port is not None:
        raise UserError("server.metrics_port needs --workers 1 (each worker would bind it)")
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
    log = logging.getLogger("moe_router")
    sock = listen(bind_host, bind_port)
    if workers == 1:
        app = build(cfg, config, bind_host, url, warmup, summary=True)
        log.info("%s", listening(url, app.state.engine.warmup))
        server = uvicorn.Server(uvicorn.Config(app, **common))
        server.run(sockets=[sock])
        if not server.started:
            sys.exit(1)
        return
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
        log.info("moe-router: starting %d worker processes", workers)
        log.info("%s", listening(url, bool(cfg.server.warmup)))
        from uvicorn.supervisors import Multiprocess

        server_config = uvicorn.Config(
            "router.cli.serve:worker_app",
            factory=True,
            workers=workers,
            # a worker imports torch and builds its engine before it answers the supervisor's
            # pings: on a busy machine that outlasts uvicorn's 5 s and the worker is killed
            timeout_worker_healthcheck=WORKER_HEALTHCHECK_S,
            **common,
        )
        Multiprocess(server_config, sockets=[sock]).run()
