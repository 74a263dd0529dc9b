"""What several test modules share: the CLI as a user runs it, polling for background work, the
ledger's row counts, `moe-router serve` replicas as processes, and what the agent tests give an
agent (its key) and read back (its tool results). (Fixtures live in conftest.py.)"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tests.conftest import make_config, pool
from tests.servers import free_port

CLI = str(Path(sys.executable).parent / "moe-router")
# the admin API as the tests of it and of what it shows (refusals, keys) call it
MASTER = "mk-" + "a" * 40
ADMIN = {"authorization": f"Bearer {MASTER}"}
ASK = {"model": "router", "messages": [{"role": "user", "content": "What is the capital of France?"}]}
T = TypeVar("T")


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def admin_config(upstream, tmp_path, **sections):
    """The mock pool with the master key and a SQLite ledger under `tmp_path`."""
    sections.setdefault("auth", {"master_key": MASTER})
    sections.setdefault("ledger", f"sqlite+aiosqlite:///{tmp_path}/ledger.db")
    return make_config(upstream.base_url, **sections)


def anthropic_format_model(upstream, name: str, model: str, timeout: float = 10, **fields: Any) -> dict:
    """A pool model on the mock upstream's Anthropic-format /v1/messages (litellm's anthropic
    provider, which names it `anthropic/<model>` upstream); `fields`: the rest of its entry."""
    params = {
        "model": f"anthropic/{model}",
        "api_base": f"http://127.0.0.1:{upstream.port}/v1/messages",
        "api_key": "sk-ant-test",
        "timeout": timeout,
    }
    return {"name": name, "backend": "litellm", "params": params, **fields}


def add_key(gw, name: str, **fields) -> tuple[dict, str]:
    """A key made through the admin API: (its record, the raw key)."""
    r = gw.post("/admin/keys", json={"name": name, **fields}, headers=ADMIN)
    assert r.status_code == 201, r.text
    body = r.json()
    return body, body["key"]


def agent_key(gw) -> str:
    """A moe-router key for an agent: every agent test's gateway requires one, so each client is
    seen to send its key the way it does (x-api-key, Authorization: Bearer)."""
    return add_key(gw, "agent")[1]


def tool_outputs(upstream) -> list[str]:
    """Every tool result the agents sent upstream (OpenAI `tool` messages, Anthropic tool_result blocks)."""
    out = []
    for call in upstream.calls():
        for m in call.get("messages") or []:
            if m.get("role") == "tool":
                out.append(json.dumps(m.get("content")))
            elif isinstance(m.get("content"), list):
                out += [json.dumps(b) for b in m["content"] if b.get("type") == "tool_result"]
    return out


def run(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """`moe-router *args` in a subprocess, output captured."""
    e = {**os.environ, **(env or {})}
    return subprocess.run([CLI, *args], capture_output=True, text=True, env=e, timeout=timeout)


def config_file(tmp_path, base_url: str, **extra: Any) -> Path:
    """A config file over the mock pool (conftest.pool), no ledger, `extra` sections added."""
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump({"models": pool(base_url), "ledger": "none", **extra}))
    return p


def wait_for(fn: Callable[[], T], timeout: float = 30.0, what: str = "condition", every: float = 0.1) -> T:
    """Poll `fn` until it returns something truthy (work the gateway does in the background) and
    return that; AssertionError naming `what` after `timeout` seconds."""
    end = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(every)


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float, log: Path | None = None) -> None:
    """Until the server process `proc` answers `url`/health; RuntimeError (with its `log`) when it
    exits first or does not answer within `timeout` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            said = f": {log.read_text()}" if log is not None else ""
            raise RuntimeError(f"{CLI} exited with {proc.returncode}{said}")
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not start within {timeout:g} s")


def query(url: str, sql: str, **params) -> list[tuple]:
    """Rows of `sql` on the database at `url` (a ledger's)."""

    async def go():
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                return [tuple(r) for r in await conn.execute(text(sql), params)]
        finally:
            await engine.dispose()

    return asyncio.run(go())


def count(url: str, table: str = "requests") -> int:
    """Rows in a ledger table; -1 while it is not there (not migrated yet, or the database is down)."""
    try:
        return query(url, f"SELECT count(*) FROM {table}")[0][0]
    except Exception:  # noqa: BLE001 - not migrated yet, or the database is down
        return -1


class Replica:
    def __init__(self, config: Path, env: dict[str, str], log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [CLI, "serve", "--config", str(config), "--port", str(self.port)],
            env=env,
            cwd=log.parent,  # the loopback console key (data/master-key) lands there, not in the checkout
            stdout=subprocess.DEVNULL,
            stderr=log.open("w"),
        )

    def wait_up(self) -> Replica:
        wait_healthy(self.url, self.proc, 40.0)
        return self

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)
