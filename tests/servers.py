"""Run an ASGI app on a real socket in a background thread (tests talk to it over HTTP)."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    def __init__(
        self,
        app,
        host: str = "127.0.0.1",
        port: int = 0,
        lifespan: str = "on",
        graceful_s: float | None = None,
    ):
        self.host, self.port = host, port or free_port()
        config = uvicorn.Config(
            app,
            host=self.host,
            port=self.port,
            log_level="error",
            lifespan=lifespan,
            timeout_graceful_shutdown=graceful_s,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 60) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"server on {self.url} did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
