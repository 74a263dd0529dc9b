"""router.params: the three kinds of field, and error paths as the client wrote them."""

from __future__ import annotations

import httpx
import pytest

from router.gateway.responses_format import ResponsesRequest
from router.params import ParamError, body_path, screen
from router.schemas import ChatCompletionRequest


def test_screen_drops_unknown_fields_at_any_depth_and_names_them():
    body = ChatCompletionRequest(
        model="router",
        messages=[{"role": "user", "content": [{"type": "text", "text": "x", "colour": "red"}], "mood": 1}],
        tools=[{"type": "function", "function": {"name": "f", "beta": True}}],
        novel=1,
        top_k=3,
    )
    assert screen(body, allowed={"top_k"}) == [
        "novel",
        "messages[0].mood",
        "messages[0].content[0].colour",
        "tools[0].function.beta",
    ]
    assert body.extra_params() == {"top_k": 3}  # an operator's allowed field stays
    dumped = str([m.model_dump() for m in body.messages]) + str(body.forwarded())
    assert "colour" not in dumped and "mood" not in dumped and "beta" not in dumped


@pytest.mark.parametrize("where", ["top", "nested"])
def test_screen_refuses_destination_fields_anywhere(where):
    message = {"role": "user", "content": "x"} | ({"base_url": "http://evil"} if where == "nested" else {})
    extra = {"api_key": "sk"} if where == "top" else {}
    body = ChatCompletionRequest(model="router", messages=[message], **extra)
    with pytest.raises(ParamError) as e:
        screen(body)
    assert e.value.forbidden and e.value.name == ("api_key" if where == "top" else "messages[0].base_url")


def test_hosted_tools_and_untranslated_items_are_kept_whole_not_reported_field_by_field():
    body = ResponsesRequest(
        model="router",
        input=[
            {"type": "reasoning", "summary": [], "encrypted_content": "x"},
            {"role": "user", "content": "hi"},
        ],
        tools=[{"type": "web_search", "external_web_access": False}],
    )
    assert screen(body) == []


def test_body_path_skips_the_validators_labels():
    body = {"input": [{"type": "message", "role": "robot", "content": "x"}]}
    loc = ("body", "input", "list[tagged-union[MessageItem,...]]", 0, "message", "role")
    assert body_path(loc, body) == "input[0].role"
    assert body_path(("body", "model"), {"messages": []}) == "model"


def test_a_responses_schema_error_names_the_clients_path(gateway):
    body = {"model": "router", "input": [{"type": "message", "role": "robot", "content": "x"}]}
    r = httpx.post(gateway.url + "/v1/responses", json=body, timeout=30)
    assert r.status_code == 422 and r.json()["error"]["param"] == "input[0].role"


async def test_in_process_requests_are_screened_by_the_planner(gateway):
    """router.sdk callers skip the HTTP edge: the planner's check screens what the edge did not."""
    from router.errors import ForbiddenParameter

    engine = gateway.engine
    bad = ChatCompletionRequest(
        model="cheap", messages=[{"role": "user", "content": "x", "api_base": "http://evil"}]
    )
    with pytest.raises(ForbiddenParameter):
        await engine.plan(bad)
    odd = ChatCompletionRequest(
        model="cheap", messages=[{"role": "user", "content": "x", "mood": 1}], novel=2
    )
    await engine.plan(odd)
    assert odd.messages[0].model_extra == {} and odd.extra_params() == {}
