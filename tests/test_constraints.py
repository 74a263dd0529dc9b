"""What the router reads off a request before routing it."""

from __future__ import annotations

from router.constraints import required_capabilities, routing_text
from router.schemas import ChatCompletionRequest, Message


def test_routing_text_is_the_last_user_message():
    msgs = [
        Message(role="system", content="be terse"),
        Message(role="user", content="first question"),
        Message(role="assistant", content="an answer"),
        Message(
            role="user", content=[{"type": "text", "text": "second"}, {"type": "text", "text": "question"}]
        ),
    ]
    assert routing_text(msgs) == "second question"


def test_routing_text_of_a_long_message_keeps_head_and_tail():
    doc = "CONTEXT " + "filler " * 2000 + " Now write a Python function that sorts it."
    text = routing_text([Message(role="user", content=doc)], max_chars=200)
    assert len(text) <= 210
    assert text.startswith("CONTEXT ") and text.endswith("Now write a Python function that sorts it.")


def test_required_capabilities_follow_the_request():
    req = ChatCompletionRequest(
        model="router",
        messages=[
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}],
            }
        ],
        tools=[{"type": "function", "function": {"name": "f"}}],
        response_format={"type": "json_object"},
    )
    assert required_capabilities(req) == {"tools", "vision", "json"}
    assert (
        required_capabilities(
            ChatCompletionRequest(model="router", messages=[{"role": "user", "content": "hi"}])
        )
        == set()
    )


def test_routing_text_skips_tool_turns_and_strips_injected_blocks():
    from router.constraints import compile_strip

    msgs = [
        Message(role="system", content="You are an agent."),
        Message(
            role="user", content="Summarise the failing test. <system-reminder>todo: none</system-reminder>"
        ),
        Message(role="assistant", tool_calls=[{"id": "c", "function": {"name": "run", "arguments": "{}"}}]),
        Message(role="tool", tool_call_id="c", content="FAILED test_x"),
        Message(role="user", content="<system-reminder>\nkeep going\n</system-reminder>"),
    ]
    assert routing_text(msgs) == "Summarise the failing test."
    custom = compile_strip([r"\[ctx\].*?\[/ctx\]"])
    assert (
        routing_text([Message(role="user", content="[ctx]noise[/ctx] real ask")], strip=custom) == "real ask"
    )
    # no human text anywhere: the system prompt and the last turn stand in
    only = [msgs[0], msgs[2], msgs[3]]
    assert routing_text(only) == "You are an agent.\nFAILED test_x"


def test_a_strip_pattern_that_is_not_a_regex_is_a_config_error():
    import pytest

    from router.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="strip pattern"):
        load_config(None, routing={"strip_patterns": ["(unclosed"]})
