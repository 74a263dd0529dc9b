"""Claude Code and Codex, unchanged, run a multi-turn tool loop through the gateway.

Each CLI is pointed at the gateway the way the README says, with no proxy and no special flags;
the scripted upstream answers the first turn with a call of the agent's own shell tool (its
command prints a marker), then answers the tool's result in text. The test asserts that the CLI
ran the tool (the marker is in the tool output the agent sent back upstream) and that the final
answer carrying that output reached the CLI.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from router.config import load_config
from tests.agents.clis import agent_bin
from tests.conftest import make_config
from tests.support import MASTER, agent_key, anthropic_format_model, tool_outputs

MARKER = "TOOL-RAN-7f3a"
PROMPT = "Run the tool once, then report what it printed."


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "agent-pool.yaml"
MOCK_URL = "http://127.0.0.1:9000/v1"


def agent_config(upstream, **sections):
    """examples/agent-pool.yaml, the README's pool, with its mock models on this test's upstream
    (the real provider entries stay, unavailable without their keys)."""
    raw = yaml.safe_load(EXAMPLE.read_text())
    for m in raw["models"]:
        if m["params"].get("base_url") == MOCK_URL:
            m["params"]["base_url"] = upstream.base_url
    raw.pop("server", None)
    auth = {"require_keys": True, "master_key": MASTER}
    return make_config(upstream.base_url, **{**raw, "auth": auth, **sections})


MOCKS = ("mock-small", "mock-coder", "mock-large")


def anthropic_model(upstream) -> dict:
    """An Anthropic-format upstream (litellm's anthropic provider against the mock's /v1/messages)."""
    return anthropic_format_model(
        upstream,
        "claude-upstream",
        "claude-upstream",
        timeout=20,
        input_price_per_1m=3.0,
        output_price_per_1m=15.0,
        # no `reasoning`: litellm sends reasoning_effort only to Claude models it knows think
        capabilities=["tools", "vision"],
        context_window=200_000,
        max_output_tokens=16384,
        quality={"default": 0.95},
    )


def run(cmd: list[str], env: dict[str, str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    full = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(cwd / "home"),
        "LANG": "C.UTF-8",
        "NO_COLOR": "1",
        **env,
    }
    (cwd / "home").mkdir(exist_ok=True)
    return subprocess.run(cmd, env=full, cwd=cwd / "work", capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def workdir(tmp_path) -> Path:
    (tmp_path / "work").mkdir()
    return tmp_path


def claude_env(gw, model: str | None) -> dict[str, str]:
    env = {"ANTHROPIC_BASE_URL": gw.url, "ANTHROPIC_API_KEY": agent_key(gw)}
    if model is not None:
        env["ANTHROPIC_MODEL"] = model
    return env


@pytest.mark.parametrize("model", ["router", None], ids=["ANTHROPIC_MODEL=router", "its-own-model-names"])
def test_claude_code_runs_a_tool_loop_through_the_gateway(upstream, start_gateway, workdir, model):
    claude = agent_bin("claude")
    gw = start_gateway(agent_config(upstream))
    for name in MOCKS:
        upstream.behave(name, tool="Bash", tool_args={"command": f"echo {MARKER}", "description": "print"})
    done = run([claude, "-p", PROMPT, "--allowedTools", "Bash"], claude_env(gw, model), workdir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert any(MARKER in t for t in tool_outputs(upstream))  # the tool ran, its output went back
    assert f"the tool said {MARKER}" in done.stdout  # and the answer to it came through
    # Claude Code asks 32,000 output tokens: each model got at most its own limit
    limits = {"mock-small": 16384, "mock-coder": 32000, "mock-large": 64000}
    assert all(c["max_tokens"] <= limits[m] for m in MOCKS for c in upstream.calls(m))
    assert all("context_management" not in c and "thinking" not in c for c in upstream.calls())


def test_claude_code_on_an_anthropic_format_upstream(upstream, start_gateway, workdir):
    claude = agent_bin("claude")
    gw = start_gateway(agent_config(upstream, models=[anthropic_model(upstream)]))
    upstream.behave(
        "claude-upstream", tool="Bash", tool_args={"command": f"echo {MARKER}", "description": "x"}
    )
    done = run([claude, "-p", PROMPT, "--allowedTools", "Bash"], claude_env(gw, "router"), workdir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert any(MARKER in t for t in tool_outputs(upstream))
    assert f"the tool said {MARKER}" in done.stdout


def codex_toml(base_url: str) -> str:
    """The README's config.toml provider block."""
    return (
        'model = "router"\n'
        'model_provider = "moe-router"\n\n'
        "[model_providers.moe-router]\n"
        'name = "moe-router"\n'
        f'base_url = "{base_url}"\n'
        'wire_api = "responses"\n'
        'env_key = "MOE_ROUTER_API_KEY"\n'
    )


def codex_config(home: Path, gw) -> None:
    (home / ".codex").mkdir(parents=True, exist_ok=True)
    (home / ".codex" / "config.toml").write_text(codex_toml(f"{gw.url}/v1"))


def test_the_readme_recipes_are_the_tested_ones():
    readme = (EXAMPLE.parents[1] / "README.md").read_text()
    served = f"http://127.0.0.1:{yaml.safe_load(EXAMPLE.read_text())['server']['port']}"
    assert "moe-router serve --config examples/agent-pool.yaml" in readme
    assert f"```toml\n{codex_toml(served + '/v1')}```" in readme
    assert (
        f"ANTHROPIC_BASE_URL={served} ANTHROPIC_API_KEY=<moe-router key> ANTHROPIC_MODEL=router claude"
        in readme
    )
    assert "codex login --with-api-key" in readme and f"codex -c openai_base_url={served}/v1" in readme
    cfg = load_config(EXAMPLE)  # the example itself: an agent-ready pool
    assert all("tools" in m.capabilities and m.context_window >= 128_000 for m in cfg.chat_models())
    assert cfg.server.max_body_bytes >= 8 * 2**20


CODEX = ["exec", "--skip-git-repo-check", "--dangerously-bypass-approvals-and-sandbox"]


def test_codex_with_a_config_provider_runs_a_tool_loop(upstream, start_gateway, workdir):
    codex = agent_bin("codex")
    gw = start_gateway(agent_config(upstream))
    for name in MOCKS:
        upstream.behave(name, tool="exec_command", tool_args={"cmd": f"echo {MARKER}"})
    codex_config(workdir / "home", gw)
    env = {"CODEX_HOME": str(workdir / "home" / ".codex"), "MOE_ROUTER_API_KEY": agent_key(gw)}
    done = run([codex, *CODEX, PROMPT], env, workdir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert any(MARKER in t for t in tool_outputs(upstream))
    assert "the tool said" in done.stdout and MARKER in done.stdout
    # namespace and hosted tools were flattened or dropped, nothing unknown went upstream
    sent = upstream.calls()[0]
    assert all(t["type"] == "function" for t in sent["tools"])
    assert not {"client_metadata", "include", "prompt_cache_key", "store"} & set(sent)


def test_codex_one_line_base_url_runs_a_tool_loop(upstream, start_gateway, workdir):
    """`-c openai_base_url=...`: Codex's built-in provider tries a WebSocket first (refused with
    426, so it falls back at once) and sends its tools as an `additional_tools` input item, the
    shell reached through its `exec` code tool."""
    codex = agent_bin("codex")
    gw = start_gateway(agent_config(upstream))
    script = f'const r = await tools.exec_command({{cmd: "echo {MARKER}"}}); text(r);'
    for name in MOCKS:
        upstream.behave(name, tool="exec", tool_args={"input": script})
    env = {"CODEX_HOME": str(workdir / "home" / ".codex")}
    (workdir / "home" / ".codex").mkdir(parents=True)
    # the built-in provider sends the key `codex login` saved (not OPENAI_API_KEY)
    login = subprocess.run(
        [codex, "login", "--with-api-key"],
        input=agent_key(gw),
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert login.returncode == 0, login.stderr
    done = run([codex, *CODEX, "-c", f"openai_base_url={gw.url}/v1", PROMPT], env, workdir)
    assert done.returncode == 0, done.stdout + done.stderr
    assert any(MARKER in t for t in tool_outputs(upstream))
    assert "the tool said" in done.stdout and MARKER in done.stdout
    assert "Reconnecting" not in done.stderr  # the WebSocket refusal cost no retries
