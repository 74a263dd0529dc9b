"""LangChain (`ChatOpenAI`, `ChatAnthropic`) and the OpenAI Agents SDK, unchanged, run a tool loop
through the gateway; the `llm` CLI answers one turn.

The scripted upstream answers the first turn with a call of the test's tool and then the tool's
result in text; each test asserts that the tool (a Python function here) ran, that its result
reached the upstream, and that the final text came back to the client.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import make_config
from tests.support import MASTER, agent_key, anthropic_format_model, tool_outputs

MARKER = "TOOL-RAN-51c9"
CLAUDE = "claude-sonnet-4-5"  # what the upstream sees of model "cl"
ASK = "What is the weather in Paris? Use the tool."


def pool(upstream) -> list[dict]:
    """An OpenAI-format model and an Anthropic-format one (litellm's anthropic provider)."""
    return [
        {
            "name": "oa",
            "backend": "openai",
            "params": {"model": "oa", "base_url": upstream.base_url, "timeout": 10},
            "capabilities": ["tools"],
            "context_window": 128_000,
            "quality": {"default": 0.6},
        },
        anthropic_format_model(
            upstream, "cl", CLAUDE, capabilities=["tools"], context_window=200_000, quality={"default": 0.9}
        ),
    ]


@pytest.fixture
def gw(upstream, start_gateway):
    auth = {"require_keys": True, "master_key": MASTER}
    return start_gateway(make_config(upstream.base_url, models=pool(upstream), auth=auth))


def weather_tool(ran: list[str]):
    def weather(city: str) -> str:
        """The weather in a city."""
        ran.append(city)
        return f"sunny in {city} {MARKER}"

    return weather


def script(upstream) -> None:
    for name in ("oa", CLAUDE):
        upstream.behave(name, tool="weather", tool_args={"city": "Paris"})


def answered_by(upstream) -> str:
    """The upstream model that served the loop (routed: either format; both turns on one model)."""
    served = [name for name in ("oa", CLAUDE) if upstream.calls(name)]
    assert len(served) == 1 and len(upstream.calls(served[0])) == 2
    return served[0]


# ---- LangChain -----------------------------------------------------------------------------------
def langchain_loop(chat, ran: list[str]) -> str:
    """The tool loop as LangChain's docs write it: bind the tool, invoke, run the calls, invoke again."""
    from langchain_core.messages import HumanMessage
    from langchain_core.tools import tool

    weather = tool(weather_tool(ran))
    model = chat.bind_tools([weather])
    messages = [HumanMessage(ASK)]
    first = model.invoke(messages)
    assert [c["name"] for c in first.tool_calls] == ["weather"]
    messages.append(first)
    messages += [weather.invoke(call) for call in first.tool_calls]
    return model.invoke(messages).text


@pytest.mark.parametrize("api", ["ChatOpenAI", "ChatAnthropic"])
def test_langchain_runs_a_tool_loop(gw, upstream, api):
    script(upstream)
    key = agent_key(gw)
    if api == "ChatOpenAI":
        from langchain_openai import ChatOpenAI

        chat = ChatOpenAI(model="router", base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=30)
    else:
        from langchain_anthropic import ChatAnthropic

        chat = ChatAnthropic(
            model="router", base_url=gw.url, api_key=key, max_retries=0, timeout=30, max_tokens=1024
        )
    ran: list[str] = []
    final = langchain_loop(chat, ran)
    assert ran == ["Paris"]  # the tool ran once, with the model's arguments
    assert any(MARKER in t for t in tool_outputs(upstream))  # its result went upstream
    assert final == f"{answered_by(upstream)}: the tool said sunny in Paris {MARKER}"


# ---- OpenAI Agents SDK ---------------------------------------------------------------------------
@pytest.mark.parametrize("api", ["responses", "chat_completions"])
def test_openai_agents_sdk_runs_a_tool_loop(gw, upstream, api):
    from agents import (
        Agent,
        OpenAIChatCompletionsModel,
        OpenAIResponsesModel,
        RunConfig,
        Runner,
        function_tool,
    )
    from openai import AsyncOpenAI

    script(upstream)
    client = AsyncOpenAI(base_url=gw.url + "/v1", api_key=agent_key(gw), max_retries=0, timeout=30)
    kind = OpenAIResponsesModel if api == "responses" else OpenAIChatCompletionsModel
    ran: list[str] = []
    agent = Agent(
        name="forecaster",
        instructions="Answer with the tool's result.",
        model=kind(model="router", openai_client=client),
        tools=[function_tool(weather_tool(ran))],
    )
    result = asyncio.run(Runner.run(agent, ASK, run_config=RunConfig(tracing_disabled=True)))
    assert ran == ["Paris"]
    assert any(MARKER in t for t in tool_outputs(upstream))
    assert result.final_output == f"{answered_by(upstream)}: the tool said sunny in Paris {MARKER}"


# ---- the llm CLI ---------------------------------------------------------------------------------
LLM = str(Path(sys.executable).parent / "llm")


def test_llm_cli_answers_through_an_extra_openai_model(gw, upstream, tmp_path):
    """`llm`'s OpenAI-compatible model (extra-openai-models.yaml), api_base at the gateway, the key
    from an environment variable."""
    entry = {"model_id": "router", "model_name": "router", "api_base": gw.url + "/v1", "api_key_name": "moe"}
    (tmp_path / "extra-openai-models.yaml").write_text(yaml.safe_dump([entry]))
    upstream.behave("oa", reply="Paris is on the Seine.")
    upstream.behave(CLAUDE, reply="Paris is on the Seine.")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "LLM_USER_PATH": str(tmp_path),
        "LLM_LOAD_PLUGINS": "",  # only llm's own OpenAI plugin, none the environment has installed
        "OPENAI_API_KEY": agent_key(gw),
    }
    done = subprocess.run(
        [LLM, "-m", "router", "Which river runs through Paris?"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "Paris is on the Seine."
    sent = upstream.calls()  # routed to either model: one call, the prompt in its last turn
    assert len(sent) == 1 and "Which river runs through Paris?" in str(sent[0]["messages"][-1]["content"])


def test_the_readme_names_the_setups_these_tests_use():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    for setup in (
        "OPENAI_API_BASE=http://127.0.0.1:8082/v1 OPENAI_API_KEY=<moe-router key> aider --model openai/router",
        '{model_id: router, model_name: router, api_base: "http://127.0.0.1:8082/v1", api_key_name: moe}',
        'ChatOpenAI(model="router", base_url="http://127.0.0.1:8082/v1"',
        'ChatAnthropic(model="router", base_url="http://127.0.0.1:8082"',
        'OpenAIResponsesModel(model="router", openai_client=AsyncOpenAI(base_url="http://127.0.0.1:8082/v1"',
    ):
        assert setup in readme, setup
