"""A private redis-server on a free port, for tests that need a clean database or an outage."""

from __future__ import annotations

import subprocess
import tempfile
import time

import redis

from tests.servers import free_port


class RedisServer:
    """`persist`: keep the data across a restart (append-only file, fsync on every write), as a
    production Redis does; without it a restart comes back empty."""

    def __init__(self, port: int | None = None, persist: bool = False):
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="moe-redis-")
        self.persist = persist
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if self.persist else "no",
                "--appendfsync",
                "always",
                "--dir",
                self.dir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port)
        for _ in range(200):
            try:
                if client.ping():
                    return self
            except redis.ConnectionError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(5)
            self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)
