"""Reservation -> dispatch -> settlement on real Redis: settled exactly once on every path.

Each test ends with the same invariant: what the budget counter holds is exactly the sum of the
ledger records' costs (nothing still reserved, nothing booked twice), and the key's
tokens-per-minute counter holds the tokens really used.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest
import redis as redis_sync

from router.engine import Engine
from router.gateway import create_app
from router.state import RedisStore
from router.state.keys import new_key
from tests.conftest import make_config
from tests.servers import ServerThread

MSG = [{"role": "user", "content": "Write a Python function that reverses a string."}]
WORDS = " ".join(f"w{i}" for i in range(300))


class Wallet:
    """A key with a budget and a TPM limit, and what Redis says about it."""

    def __init__(self, redis_url: str):
        self.redis_url = redis_url
        self.raw, self.rec = new_key("payer", budget_usd=10.0, tpm=10_000_000)
        asyncio.run(self._put())
        self.r = redis_sync.Redis.from_url(redis_url)

    async def _put(self):
        s = RedisStore(self.redis_url)
        await s.keys.put(self.rec)
        await s.aclose()

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.raw}"}

    def record(self, rid: str, wait_s: float = 10.0) -> dict:
        deadline = time.monotonic() + wait_s
        while (raw := self.r.get(f"moe:req:{rid}")) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert raw is not None, f"no ledger record for {rid}"
        return json.loads(raw)

    def spent(self) -> float:
        keys = self.r.keys(f"moe:budget:key:{self.rec.id}:*")
        return sum(int(self.r.get(k)) for k in keys) / 1e6

    def tokens_counted(self) -> int:
        return sum(int(self.r.get(k)) for k in self.r.keys(f"moe:rate:{self.rec.id}:t:*"))

    def assert_settled(self) -> None:
        recs = [json.loads(self.r.get(k)) for k in self.r.keys("moe:req:*")]
        mine = [x for x in recs if x["owner"] == self.rec.id]
        assert self.spent() == pytest.approx(sum(x["cost_usd"] for x in mine), abs=1e-6)
        used = sum(x["prompt_tokens"] + x["completion_tokens"] for x in mine if x["model"] is not None)
        failed = sum(x["prompt_tokens"] for x in mine if x["model"] is None)
        assert self.tokens_counted() == used + failed


@pytest.fixture
def wallet(redis_url) -> Wallet:
    return Wallet(redis_url)


@pytest.fixture
def gw(upstream, start_gateway, redis_url):
    return start_gateway(
        make_config(upstream.base_url, state=redis_url, dispatch={"timeout_s": 2, "retries": 0})
    )


def test_success_books_the_real_cost(gw, wallet):
    r = gw.post("/v1/chat/completions", json={"model": "big", "messages": MSG}, headers=wallet.headers)
    assert r.status_code == 200
    rec = wallet.record(r.json()["id"])
    assert rec["status"] == "ok" and 0 < rec["cost_usd"] <= rec["reserved_usd"]
    assert float(r.headers["x-moe-router-budget-remaining-usd"]) == pytest.approx(
        10.0 - rec["cost_usd"], abs=1e-6
    )
    wallet.assert_settled()


def test_a_failure_refunds_and_is_logged(gw, wallet, upstream):
    upstream.behave("big", fail_status=500)
    r = gw.post("/v1/chat/completions", json={"model": "big", "messages": MSG}, headers=wallet.headers)
    assert r.status_code == 502
    (rid,) = [k.decode().removeprefix("moe:req:") for k in wallet.r.keys("moe:req:*")]
    rec = wallet.record(rid)
    assert rec["status"] == "error" and rec["cost_usd"] == 0 and rec["reserved_usd"] > 0
    wallet.assert_settled()


def test_a_timeout_refunds_and_is_logged(gw, wallet, upstream):
    upstream.behave("big", delay=30)
    r = httpx.post(
        gw.url + "/v1/chat/completions",
        json={"model": "big", "messages": MSG},
        headers=wallet.headers,
        timeout=20,
    )
    assert r.status_code == 504
    (rid,) = [k.decode().removeprefix("moe:req:") for k in wallet.r.keys("moe:req:*")]
    assert wallet.record(rid)["status"] == "error"
    wallet.assert_settled()


def test_a_stream_that_breaks_is_charged_for_what_it_produced(gw, wallet, upstream):
    upstream.behave("big", reply=WORDS, break_stream_after=5)
    body = {"model": "big", "messages": MSG, "stream": True}
    with httpx.stream(
        "POST", gw.url + "/v1/chat/completions", json=body, headers=wallet.headers, timeout=20
    ) as r:
        rid = r.headers["x-moe-router-request-id"]
        text = "".join(r.iter_lines())
    assert "failed mid-stream" in text
    rec = wallet.record(rid)
    assert rec["status"] == "error" and rec["completion_tokens"] > 0 and rec["cost_usd"] > 0
    wallet.assert_settled()


def test_a_stream_cut_by_server_shutdown_is_settled(upstream, encoder, redis_url, wallet):
    cfg = make_config(upstream.base_url, state=redis_url)
    server = ServerThread(create_app(engine=Engine(cfg, encoder=encoder)), graceful_s=0.5).start()
    upstream.behave("big", reply=WORDS, chunk_delay=0.05)
    got: dict[str, object] = {}
    reading = threading.Event()

    def client():
        body = {"model": "big", "messages": MSG, "stream": True}
        try:
            with httpx.stream(
                "POST", server.url + "/v1/chat/completions", json=body, headers=wallet.headers
            ) as r:
                got["rid"] = r.headers["x-moe-router-request-id"]
                for i, _ in enumerate(r.iter_lines()):
                    if i == 5:
                        reading.set()
        except httpx.HTTPError:
            pass

    t = threading.Thread(target=client, daemon=True)
    t.start()
    assert reading.wait(20)
    server.stop()  # graceful period 0.5 s, then the stream's task is cancelled; lifespan closes the engine
    t.join(20)
    rec = wallet.record(got["rid"])
    assert rec["status"] == "client_closed" and 0 < rec["completion_tokens"] < 300
    wallet.assert_settled()


def test_settlement_runs_once_even_if_asked_twice(redis_url, upstream, encoder):
    from router.account import Charge
    from router.state import RequestRecord

    async def run():
        engine = Engine(make_config(upstream.base_url, state=redis_url), encoder=encoder)
        raw, rec = new_key("twice", budget_usd=1.0)
        await engine.store.keys.put(rec)
        caller = await engine.authenticate(raw)
        ticket = await engine.account.open(caller, 10, 0.5, "chatcmpl-x")
        charge = Charge(
            RequestRecord(id="chatcmpl-x", model="big", policy=None, prompt="p", cost_usd=0.2), 10
        )
        first, second = engine.account.settle(ticket, charge), engine.account.settle(ticket, charge)
        assert first is second
        await asyncio.gather(first, second)
        spent = await engine.access.room(caller)
        await engine.aclose()
        return spent

    assert asyncio.run(run()) == pytest.approx(0.8)
