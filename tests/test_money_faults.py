"""Exactly-once money when Redis stalls, pauses or restarts, across two replicas.

A stalled Redis runs the commands it had queued once it is free, so a script whose answer timed
out may well have run: a replica that then applied it again (a queued second settlement) refunded
reservations twice and overspent budgets. Each test drives two replicas (two stores, or two
gateways) over one real redis-server through a fault, and ends with the same books: the budget
counter holds exactly the sum of the ledger's request records (to the micro-dollar), the ledger
stream holds one record per request id, and the spend never passes the budget by more than one
request's reservation.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time

import httpx
import pytest

from router.state import RedisStore, RequestRecord, StateUnavailable
from router.state.admission import Admit, Admitted, Settle
from router.state.budgets import BudgetScope, to_micros
from router.state.keys import new_key
from tests.conftest import make_config
from tests.redis_server import RedisServer

LIMIT, RESERVE, COST = 2.0, 0.5, 0.1
SCOPES = [BudgetScope("key:payer", LIMIT, "total")]
BUCKET = "moe:budget:key:payer:all"

# a script that keeps Redis busy for ARGV[1] microseconds (a slow command, a big KEYS, a fork...)
BUSY = """
local t = redis.call('TIME')
local start = tonumber(t[1]) * 1000000 + tonumber(t[2])
while true do
  local n = redis.call('TIME')
  if tonumber(n[1]) * 1000000 + tonumber(n[2]) - start > tonumber(ARGV[1]) then break end
end
return 1
"""


@pytest.fixture
def srv():
    s = RedisServer(persist=True).start()
    yield s
    s.stop()


def stall(srv: RedisServer, seconds: float = 1.5) -> None:
    srv.client().eval(BUSY, 0, int(seconds * 1e6))


def pause(srv: RedisServer, seconds: float = 1.5) -> None:
    srv.client().execute_command("CLIENT", "PAUSE", int(seconds * 1000), "ALL")
    time.sleep(seconds)


def stall_then_restart(srv: RedisServer, seconds: float = 1.5) -> None:
    """Redis stalls long enough for the replicas to give up asking and queue what they sent, runs
    what it had received once free, then restarts from its append-only file before the replicas
    replay their queues."""
    stall(srv, seconds)
    time.sleep(0.3)
    srv.stop()
    srv.start()


def ledger(srv: RedisServer) -> list[dict]:
    entries = srv.client().xrange("moe:ledger")
    return [json.loads(f[b"data"]) for _, f in entries if f[b"kind"] == b"request"]


def assert_books(srv: RedisServer, reservation: float) -> list[dict]:
    records = ledger(srv)
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)), "a request was booked twice in the ledger stream"
    spent = int(srv.client().get(BUCKET) or 0)
    assert spent == sum(to_micros(r["cost_usd"]) for r in records)
    assert spent <= to_micros(LIMIT + reservation)
    return records


async def back(store: RedisStore) -> None:
    """Until the store, with Redis answering again, has written everything it queued."""
    for _ in range(200):
        if await store.ping() and not store.degraded:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the store did not reconcile")


async def admit(store: RedisStore, rid: str) -> tuple[RedisStore, str, Admitted] | None:
    try:
        got = await store.money.admit(Admit(None, None, 0, SCOPES, RESERVE, {"id": rid, "usd": RESERVE}, rid))
    except StateUnavailable:  # 503: an outage left no allowance
        return None
    return (store, rid, got) if isinstance(got, Admitted) else None


async def book(held: tuple[RedisStore, str, Admitted]) -> None:
    store, rid, got = held
    rec = RequestRecord(id=rid, model="m", policy=None, prompt="p", cost_usd=COST, owner="payer")
    await store.money.settle(Settle(got.reservation, SCOPES, COST, record=rec, id=rid))


async def rounds(srv: RedisServer, fault, n: int = 4, **store_kw) -> list[RedisStore]:
    """Each round: both replicas settle what they hold and admit the next requests while the
    fault lasts; then both reconcile."""
    replicas = [RedisStore(srv.url, timeout_s=0.3, retry_every_s=0.1, **store_kw) for _ in range(2)]
    # Redis knows the scripts (as it does after a gateway's first requests): a script it does not
    # know is sent twice (EVALSHA, then EVAL) and a stalled EVALSHA would run as NOSCRIPT
    await book(await admit(replicas[0], "warm"))
    held = [h for h in [await admit(s, f"r0-{j}") for j, s in enumerate(replicas)] if h]
    assert len(held) == 2
    for i in range(1, n + 1):
        t = threading.Thread(target=fault, args=(srv,))
        t.start()
        await asyncio.sleep(0.3)  # the fault has begun
        work = [book(h) for h in held] + [admit(s, f"r{i}-{j}") for j, s in enumerate(replicas)]
        got = await asyncio.gather(*work)
        held = [h for h in got[len(held) :] if h]
        await asyncio.to_thread(t.join)
        for s in replicas:
            await back(s)
    await asyncio.gather(*(book(h) for h in held))
    for s in replicas:
        await back(s)
    return replicas


async def test_an_id_is_admitted_and_settled_once_however_often_it_is_sent(srv):
    s = RedisStore(srv.url)
    rec = RequestRecord(id="x", model="m", policy=None, prompt="p", cost_usd=COST, owner="payer")
    first, again = [await admit(s, "x") for _ in range(2)]
    assert first[2].reservation.epoch == again[2].reservation.epoch
    assert int(srv.client().get(BUCKET)) == to_micros(RESERVE)  # reserved once
    for _ in range(2):
        left = await s.money.settle(Settle(first[2].reservation, SCOPES, COST, record=rec, id="x"))
        assert left == (to_micros(LIMIT - COST),)  # what is left, either way
    assert int(srv.client().get(BUCKET)) == to_micros(COST)
    # the components' way (an outage's queue) finds it settled too
    assert await s.budgets.primary.settle(first[2].reservation, COST) is False
    await s.log.record_request(rec)
    assert len(assert_books(srv, RESERVE)) == 1
    await s.aclose()


async def test_a_stalled_redis_applies_each_settlement_once(srv):
    replicas = await rounds(srv, stall)
    records = assert_books(srv, RESERVE)
    assert len(records) >= 6  # (later rounds run into the budget)
    assert sum(s.money.primary.replays for s in replicas) > 0  # the stall was met, and asked through
    for s in replicas:
        await s.aclose()


async def test_client_pause_applies_each_settlement_once(srv):
    replicas = await rounds(srv, pause)
    records = assert_books(srv, RESERVE)
    assert len(records) >= 6  # (later rounds run into the budget)
    assert sum(s.money.primary.replays for s in replicas) > 0
    for s in replicas:
        await s.aclose()


async def test_a_restart_after_a_stall_replays_queued_money_once(srv):
    # the replicas stop asking after 0.5 s: what they sent is queued under its id, Redis runs the
    # originals once free, and the queue's replays (after the restart) find them applied
    replicas = await rounds(srv, stall_then_restart, n=3, replay_s=0.5)
    assert_books(srv, RESERVE)
    assert srv.client().get("moe:budget:epoch") is not None  # the restart kept the data
    for s in replicas:
        await s.aclose()


async def test_a_lost_admission_is_given_back(srv):
    # an admission sent into a frozen Redis, given up on: Redis runs it when it thaws; the replica
    # served the request from its outage allowance meanwhile, so Redis's reservation is returned
    s = RedisStore(srv.url, timeout_s=0.3, retry_every_s=0.1, replay_s=0.3)
    first = await admit(s, "before")
    await book(
        first
    )  # (and Redis knows the scripts)  # the replica now knows what is left (its outage allowance: 10% of 1.9)
    os.kill(srv.proc.pid, signal.SIGSTOP)
    try:
        lost = await admit(s, "lost")
    finally:
        os.kill(srv.proc.pid, signal.SIGCONT)
    assert lost is None  # 0.5 is more than the allowance: refused
    await asyncio.sleep(0.3)  # Redis has run the admission meanwhile
    await back(s)
    assert int(srv.client().get(BUCKET)) == to_micros(COST)
    assert_books(srv, RESERVE)
    # the admission, should it arrive only now, reserves nothing
    again = await s.money.admit(Admit(None, None, 0, SCOPES, RESERVE, None, "lost"))
    assert isinstance(again, Admitted)
    assert int(srv.client().get(BUCKET)) == to_micros(COST)
    # and what the request spent meanwhile is booked, once, under the same id
    await s.money.settle(Settle(again.reservation, SCOPES, COST, id="lost"))
    await s.money.settle(Settle(again.reservation, SCOPES, COST, id="lost"))
    assert int(srv.client().get(BUCKET)) == to_micros(2 * COST)
    await s.aclose()


def test_two_gateways_through_a_stall_book_each_request_once(srv, upstream, start_gateway):
    """The report's repro: a key with a small budget, requests on two replicas whose answers take
    1 s, Redis stalled 1.5 s while they settle, three rounds."""
    raw, rec = new_key("payer", budget_usd=0.07, budget_window="total")
    asyncio.run(_put(srv.url, rec))
    cfg = make_config(upstream.base_url, state=srv.url, outage={"timeout_s": 0.3, "retry_every_s": 0.1})
    gws = [start_gateway(cfg) for _ in range(2)]
    upstream.behave("big", delay=1.0)
    body = {"model": "big", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1000}
    headers = {"authorization": f"Bearer {raw}"}
    for _ in range(3):
        staller = threading.Timer(0.85, stall, args=(srv,))
        staller.start()
        with httpx.Client(timeout=30) as c:
            threads = [
                threading.Thread(
                    target=c.post,
                    args=(gw.url + "/v1/chat/completions",),
                    kwargs={"json": body, "headers": headers},
                )
                for gw in gws
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        staller.join()
        time.sleep(0.3)
    r = srv.client()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(gw.engine.store.degraded for gw in gws):
        time.sleep(0.1)
    records = [x for x in ledger(srv) if x["owner"] == rec.id]
    ids = [x["id"] for x in records]
    assert len(ids) == len(set(ids)) and len(ids) >= 2
    spent = sum(int(r.get(k)) for k in r.keys(f"moe:budget:key:{rec.id}:*"))
    assert spent == sum(to_micros(x["cost_usd"]) for x in records)
    assert spent <= to_micros(0.07) + max(to_micros(x["reserved_usd"]) for x in records)
    replays = httpx.get(gws[0].url + "/metrics").text + httpx.get(gws[1].url + "/metrics").text
    assert "moe_router_state_replays_total{" in replays  # the stall was met, and asked through


async def _put(url: str, rec) -> None:
    s = RedisStore(url)
    await s.keys.put(rec)
    await s.aclose()
