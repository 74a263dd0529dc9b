"""The `moe-router` CLI as a user runs it: real subprocesses, one-line errors, a real server."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import httpx
import openai

from tests.servers import free_port
from tests.support import CLI, config_file, run


def test_route_prints_the_decision(tmp_path, upstream):
    cfg = config_file(tmp_path, upstream.base_url)
    r = run("route", "Write a Python quicksort function.", "--config", str(cfg), "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["model"] == "coder" and d["policy"] == "irt"
    assert {c["model"] for c in d["excluded"]} == {"keyless"}
    r = run("route", "hello", "--config", str(cfg), "--policy", "cheapest")
    assert r.returncode == 0 and "-> cheap" in r.stdout.splitlines()[0]
    assert upstream.calls() == []


def test_models_lists_availability(tmp_path, upstream):
    r = run("models", "--config", str(config_file(tmp_path, upstream.base_url)))
    assert r.returncode == 0
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("keyless"))
    assert "unavailable (set MOE_TEST_NEVER_SET_KEY)" in line


def test_user_errors_are_one_line_and_nonzero(tmp_path, upstream):
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [{name: a, backend: openai, colour: red}]\n")
    for args in (
        ("config", "validate", str(bad)),
        ("route", "hi", "--config", str(tmp_path / "missing.yaml")),
        ("route", "hi", "--config", str(config_file(tmp_path, upstream.base_url)), "--max-cost-usd", "0"),
        ("route", "hi", "--config", str(config_file(tmp_path, upstream.base_url)), "--policy", "nope"),
    ):
        r = run(*args)
        assert r.returncode != 0, args
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), (args, r.stderr)
        assert "Traceback" not in r.stderr
    # a command group run bare prints its help, and no empty "error:" line after it
    r = run("keys")
    assert r.returncode == 2 and "create" in r.stdout and "error:" not in r.stderr, r.stderr


def test_config_validate_ok(tmp_path, upstream):
    r = run("config", "validate", str(config_file(tmp_path, upstream.base_url)))
    assert r.returncode == 0 and r.stdout.startswith("ok: 4 models (3 available now)")


def test_serve_answers_through_openai_client(tmp_path, upstream):
    port = free_port()
    cfg = config_file(tmp_path, upstream.base_url)
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [CLI, "serve", "--config", str(cfg), "--port", str(port)],
        cwd=tmp_path,  # its loopback console key is written to ./data
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
    )
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(240):
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.25)
        client = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0)
        r = client.chat.completions.create(
            model="router:cheapest", messages=[{"role": "user", "content": "hey"}]
        )
        assert r.choices[0].message.content == "cheap: hey"
    finally:
        proc.terminate()
        # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status tells why it stopped
        assert proc.wait(15) in (0, -signal.SIGTERM)
        assert "Finished server process" in log.read_text()
