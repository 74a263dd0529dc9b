"""Stored Responses-API responses (issue 24 item 4, issue 23 item 3): each response stores only
what it added plus a pointer to its parent, the conversation is assembled on read, stored bytes are
bounded per key, and `GET`/`DELETE /v1/responses/{id}` and `.../input_items` answer only the key
that made the response. On a real Redis and real HTTP, through the official openai client."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest
import redis as redis_sync

from router.state import MemoryStore, RedisStore
from router.state.keys import new_key
from router.state.responses import Entry, MemoryResponses
from tests.conftest import make_config


def pool(upstream) -> list[dict]:
    return [
        {
            "name": "oa",
            "backend": "openai",
            "params": {"model": "oa", "base_url": upstream.base_url},
            "input_price_per_1m": 1.0,
            "output_price_per_1m": 2.0,
            "context_window": 200_000,
            "capabilities": ["tools"],
        }
    ]


def oai(gw, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=30)


def make_keys(redis_url: str, *names: str) -> list[str]:
    raws = []
    for name in names:
        raw, rec = new_key(name)

        async def put(rec=rec):
            s = RedisStore(redis_url)
            await s.keys.put(rec)
            await s.aclose()

        asyncio.run(put())
        raws.append(raw)
    return raws


def stored_bytes(r: redis_sync.Redis) -> tuple[int, int]:
    """(keys, bytes Redis reports for them) of everything stored for responses."""
    keys = list(r.scan_iter("moe:resp*"))
    return len(keys), sum(r.memory_usage(k) or 0 for k in keys)


@pytest.fixture
def redis_gw(upstream, start_gateway, redis_url):
    cfg = make_config(upstream.base_url, models=pool(upstream), state=redis_url, auth={"require_keys": True})
    return start_gateway(cfg)


def test_responses_pointing_at_one_large_response_store_only_their_own_turns(redis_gw, upstream, redis_url):
    (alice,) = make_keys(redis_url, "alice")
    o = oai(redis_gw, alice)
    r = redis_sync.Redis.from_url(redis_url)
    big = o.responses.create(model="oa", input="remember this: " + "x" * 96_000)
    n0, b0 = stored_bytes(r)
    assert b0 > 96_000  # the large response is stored once
    for i in range(50):
        o.responses.create(model="oa", input=f"small question number {i}?", previous_response_id=big.id)
    n1, b1 = stored_bytes(r)
    assert n1 - n0 == 50  # one small entry each (the key's index and byte count were there already)
    # before: each of the 50 copied the 96 KB conversation (~4.9 MB); now each costs its own turns
    assert b1 - b0 < 50 * 4096, (b1 - b0, "bytes for 50 small responses")
    # and each one still sees the whole conversation
    last = upstream.calls("oa")[-1]["messages"]
    assert [m["role"] for m in last] == ["user", "assistant", "user"]
    assert (
        last[0]["content"].startswith("remember this: ") and last[2]["content"] == "small question number 49?"
    )


def test_a_chain_replays_every_turn_and_get_delete_input_items_are_the_callers_own(
    redis_gw, upstream, redis_url
):
    alice, bob = make_keys(redis_url, "alice", "bob")
    o, ob = oai(redis_gw, alice), oai(redis_gw, bob)
    r1 = o.responses.create(model="oa", input="first", instructions="Be brief.")
    r2 = o.responses.create(model="oa", input="second", previous_response_id=r1.id)
    r3 = o.responses.create(
        model="oa", input=[{"role": "user", "content": "third"}], previous_response_id=r2.id
    )
    sent = upstream.calls("oa")[-1]["messages"]
    assert [(m["role"], m["content"]) for m in sent] == [
        ("user", "first"),
        ("assistant", "oa: first"),
        ("user", "second"),
        ("assistant", "oa: second"),
        ("user", "third"),
    ]  # instructions are not carried over

    got = o.responses.retrieve(r3.id)
    assert got.id == r3.id and got.output_text == "oa: third" and got.previous_response_id == r2.id

    items = o.responses.input_items.list(r3.id, order="asc")
    texts = [(i.type, i.role, i.content[0].text) for i in items.data]
    assert texts == [
        ("message", "user", "first"),
        ("message", "assistant", "oa: first"),
        ("message", "user", "second"),
        ("message", "assistant", "oa: second"),
        ("message", "user", "third"),
    ]
    page = o.responses.input_items.list(r3.id, limit=2)  # newest first by default
    assert [i.content[0].text for i in page.data] == ["third", "oa: second"] and page.has_more
    nxt = o.responses.input_items.list(r3.id, limit=2, after=page.data[-1].id)
    assert [i.content[0].text for i in nxt.data] == ["second", "oa: first"]

    # another key sees nothing of it: 404 for every verb, and it cannot continue or delete it
    for call in (
        lambda: ob.responses.retrieve(r3.id),
        lambda: ob.responses.input_items.list(r3.id),
        lambda: ob.responses.delete(r3.id),
        lambda: ob.responses.create(model="oa", input="?", previous_response_id=r3.id),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert o.responses.retrieve(r3.id).id == r3.id  # bob's delete did nothing

    raw = httpx.delete(f"{redis_gw.url}/v1/responses/{r3.id}", headers={"authorization": f"Bearer {alice}"})
    assert raw.status_code == 200 and raw.json() == {"id": r3.id, "object": "response", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        o.responses.retrieve(r3.id)
    assert o.responses.retrieve(r2.id).id == r2.id  # its parent stays
    # deleting a parent breaks the chains below it: continuing from them is a 404, not half a conversation
    o.responses.delete(r1.id)
    with pytest.raises(openai.NotFoundError):
        o.responses.create(model="oa", input="?", previous_response_id=r2.id)


def test_streamed_responses_are_stored_before_the_client_sees_them_complete(redis_gw, upstream, redis_url):
    (alice,) = make_keys(redis_url, "alice")
    o = oai(redis_gw, alice)
    events = list(o.responses.create(model="oa", input="stream me", stream=True))
    done = events[-1].response
    assert events[-1].type == "response.completed"
    r2 = o.responses.create(model="oa", input="and then?", previous_response_id=done.id)
    assert r2.output_text == "oa: and then?"
    assert o.responses.retrieve(done.id).output_text == "oa: stream me"
    unstored = list(o.responses.create(model="oa", input="not me", stream=True, store=False))[-1].response
    with pytest.raises(openai.NotFoundError):
        o.responses.retrieve(unstored.id)


def test_stored_bytes_are_bounded_per_key_with_a_clear_error_before_any_model_runs(
    upstream, start_gateway, redis_url
):
    cfg = make_config(
        upstream.base_url,
        models=pool(upstream),
        state=redis_url,
        auth={"require_keys": True},
        responses={"max_stored_bytes_per_key": 30_000},
    )
    gw = start_gateway(cfg)
    alice, bob = make_keys(redis_url, "alice", "bob")
    o = oai(gw, alice)
    kept = [o.responses.create(model="oa", input="y" * 6_000) for _ in range(2)]  # ~12 KB each
    calls = len(upstream.calls("oa"))
    with pytest.raises(openai.BadRequestError) as e:
        o.responses.create(model="oa", input="z" * 10_000)
    err = e.value.body
    assert err["code"] == "storage_limit_exceeded" and err["param"] == "store"
    assert "DELETE /v1/responses" in err["message"]
    assert len(upstream.calls("oa")) == calls  # refused before anything was sent
    assert o.responses.create(model="oa", input="z" * 10_000, store=False).output_text.startswith("oa: ")
    oai(gw, bob).responses.create(model="oa", input="z" * 10_000)  # the bound is per key
    o.responses.delete(kept[0].id)  # deleting gives the bytes back
    o.responses.create(model="oa", input="z" * 10_000)


def test_memory_store_counts_bytes_and_gives_them_back_on_expiry():
    now = [0.0]
    s = MemoryResponses(clock=lambda: now[0])

    async def run():
        a = await s.put(Entry("r1", "k", None, 100, {}), ttl_s=10, limit=250)
        b = await s.put(Entry("r2", "k", "r1", 100, {}), ttl_s=10, limit=250)
        c = await s.put(Entry("r3", "k", "r2", 100, {}), ttl_s=10, limit=250)
        assert (a.ok, b.ok, c.ok, c.used) == (True, True, False, 200)
        assert [e.id for e in await s.chain("r2")] == ["r1", "r2"]
        now[0] = 5.0
        await s.put(Entry("r3", "k2", None, 100, {}), ttl_s=10, limit=250)  # another owner
        assert await s.used("k") == 200
        now[0] = 10.5  # r1 and r2 expired
        assert await s.used("k") == 0 and await s.chain("r2") == []
        assert not await s.delete("r3", "k") and await s.delete("r3", "k2")

    asyncio.run(run())


def test_memory_state_gateway_serves_the_same_verbs(upstream, start_gateway):
    gw = start_gateway(make_config(upstream.base_url, models=pool(upstream)))
    o = oai(gw, "unused")
    r1 = o.responses.create(model="oa", input="hello")
    r2 = o.responses.create(model="oa", input="again", previous_response_id=r1.id)
    assert [m["content"] for m in upstream.calls("oa")[-1]["messages"]] == ["hello", "oa: hello", "again"]
    assert o.responses.retrieve(r2.id).output_text == "oa: again"
    assert json.loads(o.responses.input_items.list(r2.id).model_dump_json())["data"][0]["content"][0][
        "text"
    ] == ("again")
    o.responses.delete(r2.id)
    with pytest.raises(openai.NotFoundError):
        o.responses.retrieve(r2.id)
    assert isinstance(gw.engine.store, MemoryStore)


def test_an_outage_makes_reads_a_503_and_skips_writes():
    from router.state import StateUnavailable
    from tests.redis_server import RedisServer

    srv = RedisServer().start()

    async def run():
        s = RedisStore(srv.url, timeout_s=0.3, retry_every_s=0.1)
        e = Entry("resp_a", "k", None, 100, {"input": [], "response": {}})
        assert (await s.responses.put(e, 60, 0)).ok
        assert [x.id for x in await s.responses.chain("resp_a")] == ["resp_a"]
        srv.stop()
        with pytest.raises(StateUnavailable):
            await s.responses.chain("resp_a")
        with pytest.raises(StateUnavailable):
            await s.responses.delete("resp_a", "k")
        assert not (await s.responses.put(Entry("resp_b", "k", "resp_a", 10, {}), 60, 0)).ok  # skipped
        assert await s.responses.used("k") == 0  # nothing refused for a count it cannot read
        await s.aclose()

    try:
        asyncio.run(run())
    finally:
        srv.stop()


def test_input_items_list_function_calls_and_their_outputs(upstream, start_gateway):
    upstream.behave("oa", use_tools=True)
    gw = start_gateway(make_config(upstream.base_url, models=pool(upstream)))
    o = oai(gw, "unused")
    tools = [{"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {}}}]
    r1 = o.responses.create(model="oa", input="find x", tools=tools)
    (call,) = [i for i in r1.output if i.type == "function_call"]
    r2 = o.responses.create(
        model="oa",
        previous_response_id=r1.id,
        tools=tools,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "the Seine"}],
    )
    items = o.responses.input_items.list(r2.id, order="asc").data
    assert [i.type for i in items] == ["message", "function_call", "function_call_output"]
    assert items[1].call_id == call.call_id and items[1].name == "lookup"
    assert items[2].call_id == call.call_id and items[2].output == "the Seine"
    assert len({i.id for i in items}) == 3  # every item has its own id (pagination cursors)
    # the replayed conversation carries the call and its output to the model
    sent = upstream.calls("oa")[-1]["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert sent[1]["tool_calls"][0]["id"] == call.call_id
