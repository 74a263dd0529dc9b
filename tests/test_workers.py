"""`moe-router serve --workers N`: N processes on one port; with Redis state they share limits."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from router.cli.serve import MEMORY_STATE_WARNING
from tests.conftest import pool
from tests.servers import free_port
from tests.support import CLI, wait_healthy

ASK = {"model": "cheap", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8}


class Served:
    """`moe-router serve --workers N` in a process group of its own, run from `cwd`."""

    def __init__(self, cwd: Path, env: dict[str, str], workers: int):
        self.port = free_port()
        self.log = cwd / f"serve-{self.port}.log"
        self.proc = subprocess.Popen(
            [CLI, "serve", "--port", str(self.port), "--workers", str(workers)],
            cwd=cwd,  # the loopback console key lands in cwd/data, not in the checkout
            env=env,
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
        )

    def wait_up(self) -> Served:
        wait_healthy(f"http://127.0.0.1:{self.port}", self.proc, 120.0, self.log)
        return self

    def workers(self) -> list[psutil.Process]:
        """The serving processes (uvicorn's supervisor also starts a resource tracker: no socket)."""
        kids = psutil.Process(self.proc.pid).children()
        return [p for p in kids if "spawn_main" in " ".join(p.cmdline())]

    def owner(self, conn: http.client.HTTPConnection) -> int | None:
        """The pid of the worker holding the server end of `conn`."""
        client_port = conn.sock.getsockname()[1]
        for p in self.workers():
            for c in p.net_connections("tcp"):
                if c.raddr and c.raddr.port == client_port and c.laddr.port == self.port:
                    return p.pid
        return None

    def stop(self) -> None:
        kids = psutil.Process(self.proc.pid).children(recursive=True)
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        for k in kids:  # what the supervisor did not stop (it does: this is a safety net)
            if k.is_running():
                k.kill()


@pytest.fixture
def serve(tmp_path, upstream):
    started: list[Served] = []

    def start(workers: int, **env: str) -> Served:
        cfg = tmp_path / "gateway.yaml"
        body = {
            "models": pool(upstream.base_url),
            "routing": {"default_policy": "cheapest"},
            "dispatch": {"retries": 0},
            "ledger": "none",
        }
        cfg.write_text(yaml.safe_dump(body))
        full = {k: v for k, v in os.environ.items() if k != "MOE_ROUTER_STATE"}
        full |= {"MOE_ROUTER_CONFIG": str(cfg), "HF_HUB_OFFLINE": "1", **env}
        s = Served(tmp_path, full, workers)
        started.append(s)
        return s.wait_up()

    yield start
    for s in started:
        s.stop()


def chat(conn: http.client.HTTPConnection, key: str) -> tuple[int, dict]:
    conn.request(
        "POST",
        "/v1/chat/completions",
        body=json.dumps(ASK),
        headers={"content-type": "application/json", "authorization": f"Bearer {key}"},
    )
    res = conn.getresponse()
    return res.status, json.loads(res.read())


def one_connection_per_worker(gw: Served) -> dict[int, http.client.HTTPConnection]:
    """Keep-alive connections until every worker holds one (the kernel picks who accepts)."""
    held: dict[int, http.client.HTTPConnection] = {}
    spare: list[http.client.HTTPConnection] = []
    for _ in range(200):
        conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
        conn.request("GET", "/health")
        conn.getresponse().read()
        pid = gw.owner(conn)
        if pid is not None and pid not in held:
            held[pid] = conn
        else:
            spare.append(conn)  # kept open: the worker holding it stays busy with it
        if len(held) == 2:
            break
    for c in spare:
        c.close()
    return held


def test_two_workers_serve_and_share_a_keys_rate_limit_through_redis(serve, private_redis, tmp_path):
    gw = serve(2, MOE_ROUTER_STATE=private_redis.url, MOE_ROUTER_REQUIRE_KEYS="1")
    assert len(gw.workers()) == 2
    env = {
        **os.environ,
        "MOE_ROUTER_STATE": private_redis.url,
        "MOE_ROUTER_CONFIG": str(tmp_path / "gateway.yaml"),
    }
    out = subprocess.run(
        [CLI, "keys", "create", "--name", "paced", "--rpm", "5"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    )
    key = out.stdout.strip().splitlines()[-1]
    conns = one_connection_per_worker(gw)
    assert len(conns) == 2, "both workers should accept connections"
    (pid_a, a), (pid_b, b) = conns.items()
    results = [(pid, *chat(conn, key)) for pid, conn in [(pid_a, a), (pid_b, b)] * 6]
    admitted = [pid for pid, status, _ in results if status == 200]
    refused = [body for _, status, body in results if status != 200]
    assert len(admitted) == 5  # the key's limit, across both processes: not 5 per process
    assert set(admitted) == {pid_a, pid_b}  # and both processes served some of them
    assert {r["error"]["code"] for r in refused} == {"rate_limit_exceeded"}
    for conn in conns.values():
        conn.close()
    log = gw.log.read_text()
    assert log.count("moe-router: config") == 1  # the start-up summary, once for the two
    assert "per process" not in log  # Redis state: no warning


def test_memory_state_with_workers_warns_that_limits_are_per_process(serve):
    gw = serve(2)  # no MOE_ROUTER_STATE: in-memory state
    assert len(gw.workers()) == 2
    r = httpx.post(f"http://127.0.0.1:{gw.port}/v1/chat/completions", json=ASK, timeout=30)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
    log = gw.log.read_text()
    assert (MEMORY_STATE_WARNING % 2) in log
    assert "MOE_ROUTER_STATE=redis://" in log
