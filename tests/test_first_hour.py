"""The first hour with moe-router, as a new user meets it: documented commands work as written,
the CLI checks configs for real, start-up says what it started, logs are one line per request,
and /ready waits for local models."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from importlib.metadata import version
from pathlib import Path

import httpx
import pytest
import yaml

from router.cli.summary import mask_url
from router.config import ConfigError, RouterConfig, load_config
from router.engine import Engine
from router.gateway import create_app
from tests.conftest import make_config, pool
from tests.servers import ServerThread, free_port
from tests.support import CLI
from tests.upstream import Fail

ROOT = Path(__file__).resolve().parent.parent
ROUTE_BODY = '{"messages":[{"role":"user","content":"Write a Python quicksort function."}]}'


def run(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout
    )


def write_config(tmp_path: Path, models: list[dict], **extra) -> Path:
    p = tmp_path / "cfg.yaml"
    no_ledger = {"ledger": "none"} if "ledger" in RouterConfig.model_fields else {}  # no files in the repo
    p.write_text(yaml.safe_dump({"models": models, **no_ledger, **extra}))
    return p


@contextlib.contextmanager
def served(tmp_path: Path, cfg: Path, env: dict[str, str]):
    """`moe-router serve -c cfg` in `tmp_path` until ready; yields its base URL and log file."""
    port = free_port()
    log = tmp_path / "serve.log"
    proc = subprocess.Popen(
        [CLI, "serve", "-c", str(cfg), "--port", str(port)],
        cwd=tmp_path,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(480):
            try:
                if httpx.get(base + "/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        yield base, log
    finally:
        proc.terminate()
        proc.wait(20)


def closed_port_model(name: str = "down") -> dict:
    # a port nothing listens on: connection refused at once
    return {
        "name": name,
        "backend": "openai",
        "params": {"model": name, "base_url": f"http://127.0.0.1:{free_port()}/v1"},
    }


def one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode != 0, r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in r.stderr, r.stderr
    return lines[0]


# ---- the README's curl commands ---------------------------------------------------------------
@pytest.mark.parametrize(
    "content_type",
    [None, "application/x-www-form-urlencoded", "text/plain", "application/json; charset=utf-8"],
)
def test_json_body_is_read_whatever_the_content_type(gateway, content_type):
    headers = {"content-type": content_type} if content_type else {}
    r = gateway.post("/v1/route", content=ROUTE_BODY.encode(), headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "coder"
    chat = gateway.post(
        "/v1/chat/completions",
        content=b'{"model":"router:cheapest","messages":[{"role":"user","content":"hey"}]}',
        headers=headers,
    )
    assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["content"] == "cheap: hey"


def test_a_body_that_is_not_json_is_a_clear_400(gateway):
    for content_type in ("application/x-www-form-urlencoded", "application/json"):
        r = gateway.post("/v1/route", content=b"messages=hello", headers={"content-type": content_type})
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "invalid_json"


def test_curl_as_the_readme_writes_it(gateway):
    """`curl -d` sends application/x-www-form-urlencoded: the README's command as a user types it."""
    r = subprocess.run(
        ["curl", "-s", "-w", "\n%{http_code}", gateway.url + "/v1/route", "-d", ROUTE_BODY],
        capture_output=True,
        text=True,
        timeout=30,
    )
    body, _, status = r.stdout.rpartition("\n")
    assert status == "200", r.stdout
    assert json.loads(body)["model"] == "coder"


# ---- config validate / models ------------------------------------------------------------------
def test_unknown_backend_is_a_config_error(upstream):
    # the typed config holds any name; the gateway refuses one that no adapter registers
    cfg = load_config(None, models=[{"name": "a", "backend": "nope"}])
    with pytest.raises(ConfigError, match=r"models\.0\.backend: .*unknown backend 'nope'.*openai"):
        Engine(cfg)


def test_config_validate_rejects_unknown_backends_and_bad_params(tmp_path, upstream):
    cases = {
        "unknown backend 'nope'": [{"name": "a", "backend": "nope"}],
        "unexpected keyword argument 'colour'": [
            {"name": "a", "backend": "openai", "params": {"model": "a", "colour": "red"}}
        ],
        "missing a required argument: 'model'": [{"name": "a", "backend": "openai", "params": {}}],
        "needs 'path'": [{"name": "a", "backend": "transformers", "params": {"path": ""}}],
    }
    for expected, models in cases.items():
        cfg = write_config(tmp_path, models)
        for args in (("config", "validate", "-c", str(cfg)), ("config", "validate", str(cfg))):
            line = one_line_error(run(*args))
            assert expected in line, (args, line)


def test_config_validate_check_probes_every_endpoint(tmp_path, upstream):
    good = write_config(tmp_path, pool(upstream.base_url))
    r = run("config", "validate", "--config", str(good), "--check")
    assert r.returncode == 0, r.stderr
    rows = {ln.split()[0]: ln.split()[1] for ln in r.stdout.splitlines()[1:]}
    assert rows == {"cheap": "reachable", "coder": "reachable", "big": "reachable", "keyless": "unavailable"}
    # the probe is GET /models: no completion was asked for (nothing was spent)
    assert upstream.calls() == []

    bad = write_config(
        tmp_path,
        [
            *pool(upstream.base_url)[:1],
            closed_port_model(),
            {"name": "weights", "backend": "transformers", "params": {"path": str(tmp_path / "nowhere")}},
            {"name": "anthropic", "backend": "litellm", "params": {"model": "anthropic/claude-x"}},
        ],
    )
    r = run("config", "validate", "-c", str(bad), "--check", "--timeout", "2")
    assert "unreachable: down, weights" in one_line_error(r)
    status = {ln.split()[0]: ln.split()[1] for ln in r.stdout.splitlines()[1:]}
    assert status == {
        "cheap": "reachable",
        "down": "unreachable",
        "weights": "unreachable",
        "anthropic": "not",
    }
    assert run("config", "validate", "-c", str(bad)).returncode == 0  # without --check nothing is probed


def test_config_validate_loads_no_model_and_no_provider_library():
    """validate builds the default config's policies and adapters (its litellm models too) without
    importing litellm or starting an ONNX session: each took seconds, and validate should be quick."""
    code = (
        "import sys\n"
        "sys.argv = ['moe-router', 'config', 'validate']\n"
        "from router.cli import main\n"
        "main()\n"
        "print(sorted(m for m in ('litellm', 'onnxruntime', 'torch') if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    ok, *_, loaded = r.stdout.strip().splitlines()
    assert ok.startswith("ok: ") and "policies: category, cheapest, irt" in ok and loaded == "[]", r.stdout


def test_models_does_not_call_an_unreachable_server_available(tmp_path, upstream):
    cfg = write_config(tmp_path, [*pool(upstream.base_url), closed_port_model()])
    r = run("models", "-c", str(cfg), "--json")
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows["down"]["available"] is False and rows["down"]["status"] == "unreachable"
    assert "unreachable" in rows["down"]["reason"]
    assert rows["cheap"]["available"] is True and rows["cheap"]["status"] == "reachable"
    assert rows["keyless"]["available"] is False and rows["keyless"]["reason"] == "set MOE_TEST_NEVER_SET_KEY"
    table = run("models", "-c", str(cfg)).stdout
    assert next(ln for ln in table.splitlines() if ln.startswith("down")).split()[-1] != "available"
    assert "unreachable (" in next(ln for ln in table.splitlines() if ln.startswith("down"))
    assert next(ln for ln in table.splitlines() if ln.startswith("cheap")).endswith("available")


# ---- version, completion, route --url ----------------------------------------------------------
def test_version_and_shell_completion():
    r = run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"moe-router {version('moe-router')}"
    script = run("--show-completion", "bash")
    assert script.returncode == 0 and "_MOE_ROUTER_COMPLETE" in script.stdout
    # what the installed script asks: complete `moe-router con` -> config
    r = run(env={"_MOE_ROUTER_COMPLETE": "complete_bash", "COMP_WORDS": "moe-router con", "COMP_CWORD": "1"})
    assert r.stdout.split() == ["config"]


def test_route_url_asks_the_running_gateway(start_gateway, upstream):
    gw = start_gateway(
        make_config(upstream.base_url, auth={"require_keys": True, "master_key": "mk-h3-test-key"})
    )
    r = run(
        "route",
        "Write a Python quicksort function.",
        "--url",
        gw.url,
        "--api-key",
        "mk-h3-test-key",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["model"] == "coder" and d["routed"] is True and d["id"].startswith("chatcmpl-")
    plain = run(
        "route", "hello", "--url", gw.url, "-p", "cheapest", env={"MOE_ROUTER_API_KEY": "mk-h3-test-key"}
    )
    assert plain.returncode == 0 and "-> cheap" in plain.stdout.splitlines()[0]
    denied = one_line_error(run("route", "hello", "--url", gw.url))
    assert "HTTP 401" in denied
    assert "cannot reach the gateway" in one_line_error(
        run("route", "hello", "--url", f"http://127.0.0.1:{free_port()}")
    )
    assert upstream.calls() == []


# ---- /ready and warm-up ------------------------------------------------------------------------
def test_ready_is_503_until_warmup_has_finished(upstream, encoder, monkeypatch):
    """A gate holds the warm-up (the encoder load) so the test sees both sides of it."""
    gate = threading.Event()
    real_load = encoder.load

    def gated_load(*a, **kw):
        gate.wait(60)
        return real_load(*a, **kw)

    monkeypatch.setattr(encoder, "load", gated_load)
    engine = Engine(make_config(upstream.base_url, server={"warmup": True}), encoder=encoder)
    server = ServerThread(create_app(engine=engine)).start()
    try:
        assert httpx.get(server.url + "/health").json() == {"status": "ok"}  # alive at once
        r = httpx.get(server.url + "/ready")
        assert r.status_code == 503
        assert r.json()["status"] == "warming_up" and r.json()["warmup"] == "loading"
        gate.set()
        for _ in range(600):
            r = httpx.get(server.url + "/ready")
            if r.status_code == 200:
                break
            time.sleep(0.05)
        assert r.status_code == 200 and r.json()["status"] == "ok" and r.json()["warmup"] == "done"
    finally:
        gate.set()
        server.stop()


def test_warmup_is_on_by_default_only_with_local_models(upstream, encoder):
    local = {"name": "local", "backend": "transformers", "params": {"path": "/not/loaded/here"}}
    assert Engine(make_config(upstream.base_url), encoder=encoder).warmup is False
    cfg = make_config(upstream.base_url, models=[*pool(upstream.base_url), local])
    assert Engine(cfg, encoder=encoder).warmup is True
    off = make_config(upstream.base_url, models=[*pool(upstream.base_url), local], server={"warmup": False})
    assert Engine(off, encoder=encoder).warmup is False


def test_ready_means_local_models_are_loaded(upstream, start_gateway, tiny_moe_dir):
    local = {"name": "tiny", "backend": "transformers", "params": {"path": str(tiny_moe_dir)}}
    gw = start_gateway(make_config(upstream.base_url, models=[*pool(upstream.base_url), local]))
    for _ in range(1200):
        r = gw.get("/ready")
        if r.status_code == 200:
            break
        assert r.json()["status"] == "warming_up"
        time.sleep(0.05)
    assert r.status_code == 200
    # ready was said only once the model was in memory: the first request does not load it
    assert gw.engine.adapters["tiny"].model is not None
    assert r.json()["models"]["tiny"] is True and r.json()["warmup"] == "done"


def test_without_warmup_ready_at_once_and_local_models_load_on_demand(upstream, start_gateway):
    local = {"name": "local", "backend": "transformers", "params": {"path": "/not/loaded/here"}}
    cfg = make_config(upstream.base_url, models=[*pool(upstream.base_url), local], server={"warmup": False})
    gw = start_gateway(cfg)
    r = gw.get("/ready")
    assert r.status_code == 200 and r.json()["warmup"] == "off"
    assert gw.engine.adapters["local"].model is None  # not loaded by start-up


# ---- logs --------------------------------------------------------------------------------------
def test_one_text_line_per_request_without_the_prompt(gateway, caplog):
    caplog.set_level(logging.INFO, logger="moe_router.requests")
    resp = gateway.client.chat.completions.create(
        model="router:cheapest", messages=[{"role": "user", "content": "zebra-private-prompt"}]
    )
    lines = [r.getMessage() for r in caplog.records if r.name == "moe_router.requests"]
    assert len(lines) == 1
    line = lines[0]
    assert line.startswith(f"request id={resp.id} key=- policy=cheapest model=cheap status=ok ")
    assert re.search(r" cost_usd=\d+\.\d{6} latency_ms=\d+ cache=-$", line)
    assert f"tokens={resp.usage.prompt_tokens}+{resp.usage.completion_tokens}" in line
    assert "zebra" not in line


def test_request_lines_as_json_and_off(upstream, start_gateway, caplog):
    caplog.set_level(logging.INFO, logger="moe_router.requests")
    gw = start_gateway(make_config(upstream.base_url, log={"requests": "json"}))
    upstream.script("cheap", Fail(500), Fail(500))
    resp = gw.client.chat.completions.create(
        model="router:cheapest", messages=[{"role": "user", "content": "zebra-private-prompt"}]
    )
    (msg,) = [r.getMessage() for r in caplog.records if r.name == "moe_router.requests"]
    row = json.loads(msg)
    assert row["event"] == "request" and row["id"] == resp.id and row["model"] == resp.model != "cheap"
    assert row["fallbacks"] == ["cheap"] and row["policy"] == "cheapest" and row["status"] == "ok"
    assert row["cost_usd"] > 0 and row["latency_ms"] > 0 and "zebra" not in msg
    caplog.clear()
    quiet = start_gateway(make_config(upstream.base_url, log={"requests": "off"}))
    quiet.client.chat.completions.create(model="cheap", messages=[{"role": "user", "content": "x"}])
    assert [r for r in caplog.records if r.name == "moe_router.requests"] == []


def test_mask_url_hides_passwords():
    assert mask_url("redis://:s3cret@redis.internal:6379/0") == "redis://:***@redis.internal:6379/0"
    assert mask_url("postgresql+asyncpg://app:s3cret@db/ledger") == "postgresql+asyncpg://app:***@db/ledger"
    assert mask_url("memory") == "memory"


def test_serve_says_what_it_started_and_keeps_secrets_and_chatter_out(tmp_path, upstream):
    models = pool(upstream.base_url)
    models[0]["params"]["api_key"] = "sk-literal-h3-secret"
    cfg = write_config(tmp_path, models)
    env = {**os.environ, "MOE_ROUTER_MASTER_KEY": "mk-h3-master-secret", "MOE_ROUTER_REQUIRE_KEYS": "0"}
    with served(tmp_path, cfg, env) as (base, log):
        r = httpx.post(
            base + "/v1/chat/completions",
            json={
                "model": "router:cheapest",
                "messages": [{"role": "user", "content": "zebra-private-prompt"}],
            },
            headers={"authorization": "Bearer mk-h3-master-secret"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        request_id = r.json()["id"]
    port = base.rsplit(":", 1)[1]
    text = log.read_text()
    assert f"config {cfg}" in text
    assert re.search(r"keyless +openai +unavailable: set MOE_TEST_NEVER_SET_KEY", text)
    assert re.search(r"cheap +openai +available", text)
    assert "default policy: irt" in text and "state: memory" in text and "ledger:" in text
    assert f"listening on http://localhost:{port}" in text
    assert f"request id={request_id} " in text  # the per-request line
    for secret in ("sk-literal-h3-secret", "mk-h3-master-secret", "zebra"):
        assert secret not in text
    assert "HTTP Request:" not in text  # httpx's per-call INFO lines are quiet by default
    assert "it/s]" not in text and "%|" not in text  # no progress bars


def test_serve_on_a_taken_port_says_so_in_one_line_and_never_that_it_listens(tmp_path, upstream):
    cfg = write_config(tmp_path, pool(upstream.base_url))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run(
            [CLI, "serve", "-c", str(cfg), "--port", str(port)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
    line = one_line_error(r)
    assert line == f"error: cannot listen on 127.0.0.1:{port}: Address already in use"
    assert "listening on" not in r.stdout + r.stderr and "moe-router: config" not in r.stderr


def test_a_metrics_port_with_several_workers_is_refused_in_one_line(tmp_path, upstream):
    cfg = write_config(tmp_path, pool(upstream.base_url), server={"metrics_port": free_port()})
    r = subprocess.run(
        [CLI, "serve", "-c", str(cfg), "--port", str(free_port()), "--workers", "2"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert one_line_error(r) == "error: server.metrics_port needs --workers 1 (each worker would bind it)"


# ---- the README and the examples ---------------------------------------------------------------
def test_readme_install_line_and_cpu_index_advice():
    readme = (ROOT / "README.md").read_text()
    install = [ln for ln in readme.splitlines() if ln.startswith("python3 -m venv .venv && ")]
    assert len(install) == 1 and "pip install torch==2.13.0 &&" in install[0]
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in readme


def test_mock_pool_example_runs_beside_the_default_server_and_counts_its_models():
    path = ROOT / "examples" / "mock-pool.yaml"
    cfg = load_config(path)
    assert cfg.server.port != load_config(None).server.port
    said = re.match(r"# (\w+) models", path.read_text().lower())
    assert said is not None and {"three": 3, "four": 4, "five": 5}[said.group(1)] == len(cfg.models)
    readme = (ROOT / "README.md").read_text()
    assert f"moe-router serve --config examples/mock-pool.yaml --port {cfg.server.port}" in readme


def test_a_loopback_gateway_without_a_master_key_makes_one_for_its_console(tmp_path, upstream):
    cfg = write_config(tmp_path, pool(upstream.base_url))
    env = {
        k: v for k, v in os.environ.items() if k not in ("MOE_ROUTER_MASTER_KEY", "MOE_ROUTER_REQUIRE_KEYS")
    }
    with served(tmp_path, cfg, env) as (base, log):
        key_file = tmp_path / "data" / "master-key"
        key = key_file.read_text().strip()
        assert key.startswith("mk-") and len(key) > 40
        assert key_file.stat().st_mode & 0o777 == 0o600
        assert httpx.get(base + "/admin/session", timeout=10).status_code == 401
        ok = httpx.get(base + "/admin/session", headers={"authorization": f"Bearer {key}"}, timeout=10)
        assert ok.status_code == 200, ok.text
        assert httpx.get(base + "/metrics", timeout=10).status_code == 200  # open, as before
        chat = httpx.post(
            base + "/v1/chat/completions",
            json={"model": "cheap", "messages": [{"role": "user", "content": "hi"}]},
            timeout=30,
        )
        assert chat.status_code == 200  # anonymous use is unchanged
    port = base.rsplit(":", 1)[1]
    text = log.read_text()
    assert f"console: http://localhost:{port}/ui" in text and "data/master-key" in text
    assert key not in text


def test_the_console_key_is_reused_and_never_made_off_loopback(tmp_path):
    from router.cli.console_key import console_access

    key_file = tmp_path / "data" / "master-key"
    first = RouterConfig.model_validate({"ledger": "none"})
    assert "data/master-key" in console_access(first, "127.0.0.1", key_file)
    again = RouterConfig.model_validate({"ledger": "none"})
    console_access(again, "::1", key_file)
    assert again.auth.master() == first.auth.master() == key_file.read_text().strip()

    exposed = RouterConfig.model_validate({"ledger": "none"})
    assert console_access(exposed, "0.0.0.0", tmp_path / "other").startswith("off")
    assert exposed.auth.master() is None and not (tmp_path / "other").exists()

    keyed = RouterConfig.model_validate(
        {"ledger": "none", "auth": {"master_key": "mk-own", "require_keys": True}}
    )
    assert console_access(keyed, "127.0.0.1", key_file) == "log in with the master key"
    assert keyed.auth.master() == "mk-own" and keyed.auth.public_metrics is False
