"""One round trip to admit, one to settle: counted on real Redis, atomic across two processes.

Round trips are counted at the client: every write of a command (or of a whole pipeline) to the
socket is one round trip, so the store's connections are made with a class that records what it
sends.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import re
import time

import pytest
import redis.asyncio.connection as rc

from router.access import Replan
from router.account import SNAPSHOT_TTL_S
from router.engine import REPLANS, Engine
from router.errors import BudgetExceeded, RateLimited, Unauthorized
from router.schemas import ChatCompletionRequest
from router.state import RedisStore
from router.state.admission import Admit, Admitted, Refused
from router.state.budgets import BudgetScope
from router.state.degrade import StateFault
from router.state.keys import new_key
from tests.conftest import make_config
from tests.upstream import Fail

MSG = [{"role": "user", "content": "hello there"}]
COMMAND = re.compile(rb"\*\d+\r\n\$\d+\r\n([A-Za-z]+)\r\n")


class Trips:
    """The round trips a store makes: each is the list of command names written at once."""

    def __init__(self) -> None:
        self.sent: list[list[str]] = []

    def install(self, store: RedisStore) -> Trips:
        sent = self.sent

        class Counting(rc.Connection):
            async def send_packed_command(self, command, check_health=True):
                data = command if isinstance(command, bytes | str) else b"".join(bytes(c) for c in command)
                data = data.encode() if isinstance(data, str) else data
                sent.append([c.decode().upper() for c in COMMAND.findall(data)])
                return await super().send_packed_command(command, check_health)

        store.redis.connection_pool.connection_class = Counting
        return self

    def during(self, obj, name: str) -> list[list[list[str]]]:
        """Wrap `obj.name` (a coroutine method): the round trips of each call, in order."""
        calls: list[list[list[str]]] = []
        inner = getattr(obj, name)

        async def counted(*a, **kw):
            start = len(self.sent)
            try:
                return await inner(*a, **kw)
            finally:
                calls.append(self.sent[start:])

        setattr(obj, name, counted)
        return calls


def ask(model: str = "cheap", **kw) -> ChatCompletionRequest:
    return ChatCompletionRequest(model=model, messages=MSG, max_tokens=16, **kw)


@pytest.fixture
async def engine(redis_url, upstream, encoder):
    made: list[Engine] = []

    def make(**sections) -> Engine:
        e = Engine(make_config(upstream.base_url, state=redis_url, **sections), encoder=encoder)
        made.append(e)
        return e

    yield make
    for e in made:
        await e.aclose()


async def test_a_keyed_request_admits_in_one_round_trip_and_settles_in_one(engine):
    e = engine()
    trips = Trips().install(e.store)
    raw, rec = new_key("counted", budget_usd=10.0, rpm=1000, tpm=1_000_000)
    await e.store.keys.put(rec)
    for _ in range(2):  # connections made, scripts loaded, the key read once and cached
        await e.chat(ask(), await e.authenticate(raw))
    admits, settles = trips.during(e.store.money, "admit"), trips.during(e.store.money, "settle")
    trips.sent.clear()

    result, outcome = await e.chat(ask(), await e.authenticate(raw))

    assert result.text and outcome.budget_left_usd is not None
    assert admits == [[["EVALSHA"]]] and settles == [[["EVALSHA"]]]
    # the whole request: admission and settlement; the plan read model health from this replica's
    # snapshot, less than SNAPSHOT_TTL_S old (its closed breaker is the go-ahead)
    assert trips.sent == [["EVALSHA"], ["EVALSHA"]]
    # and what the two scripts did is all there: reservation settled, record, tokens, health
    spent = (await e.store.budgets.spent([BudgetScope(f"key:{rec.id}", 10.0)]))[0]
    assert spent == pytest.approx(3 * outcome.cost_usd, abs=1e-6)
    assert outcome.budget_left_usd == pytest.approx(10.0 - spent, abs=1e-6)
    assert (await e.store.log.get_request(outcome.request_id)).cost_usd == outcome.cost_usd
    assert (await e.store.health.snapshot(["cheap"]))["cheap"].samples == 3
    events = [x["kind"] async for x in e.store.log.iter_events()]
    assert events == ["reserve", "request"] * 3

    await asyncio.sleep(SNAPSHOT_TTL_S)  # an older snapshot is read again: one more round trip
    trips.sent.clear()
    await e.chat(ask(), await e.authenticate(raw))
    assert trips.sent == [["HMGET", "EXISTS"], ["EVALSHA"], ["EVALSHA"]]


async def test_revocation_and_limit_changes_take_effect_on_the_next_request(engine, redis_url):
    e = engine()
    raw, rec = new_key("changing", budget_usd=10.0)
    await e.store.keys.put(rec)
    await e.chat(ask(), await e.authenticate(raw))
    admin = RedisStore(redis_url)
    await admin.keys.update("changing", {"rpm": 1})
    caller = await e.authenticate(raw)
    assert not caller.checked and caller.key.rpm is None  # this replica's copy, from before
    await e.chat(ask(), caller)  # admission saw the change, the request was planned again
    assert caller.key.rpm == 1
    with pytest.raises(RateLimited):
        await e.chat(ask(), await e.authenticate(raw))
    await admin.keys.update("changing", {"rpm": None})
    await admin.keys.revoke("changing")
    caller = await e.authenticate(raw)
    assert not caller.checked  # still cached: the admission script refuses it
    with pytest.raises(Unauthorized):
        await e.chat(ask(), caller)
    with pytest.raises(Unauthorized):  # and the cache forgot it
        await e.authenticate(raw)
    await admin.aclose()


async def test_admission_works_again_after_script_flush(engine, redis_server):
    e = engine()
    trips = Trips().install(e.store)
    raw, rec = new_key("flushed", budget_usd=10.0, rpm=100)
    await e.store.keys.put(rec)
    await e.chat(ask(), await e.authenticate(raw))
    redis_server.client().script_flush()
    trips.sent.clear()
    _, outcome = await e.chat(ask(), await e.authenticate(raw))
    sent = [c for trip in trips.sent for c in trip]
    assert sent.count("SCRIPT") >= 2  # NOSCRIPT answered: admission and settlement reloaded theirs
    assert (await e.store.log.get_request(outcome.request_id)) is not None
    spent = (await e.store.budgets.spent([BudgetScope(f"key:{rec.id}", 10.0)]))[0]
    assert spent > 0


async def test_a_plan_beyond_the_budget_is_made_again_within_it(engine, redis_url):
    e = engine()
    raw, rec = new_key("tight", budget_usd=0.0005, budget_window="total")  # big may cost $0.00087
    await e.store.keys.put(rec)
    caller = await e.authenticate(raw)
    assert await e.access.room(caller) is None  # nothing known yet: planned without a bound
    admits = Trips().install(e.store).during(e.store.money, "admit")
    _, outcome = await e.chat(ask("router:strongest"), caller)
    assert outcome.model != "big"  # big's worst case does not fit: refused, planned again
    assert len(admits) == 2
    assert await e.access.room(caller) == pytest.approx(0.0005 - outcome.cost_usd, abs=1e-6)


async def test_a_budget_that_refuses_every_admission_ends_in_429_not_503(engine, redis_url, monkeypatch):
    """Replicas racing a budget to zero: each admission is refused with a different amount left,
    so the request is planned again; once the re-plans are spent it gets the budget's 429 (a 503
    'retry' was what it got, seen once in a two-process test)."""
    e = engine()
    raw, rec = new_key("racing", budget_usd=10.0)
    await e.store.keys.put(rec)
    caller = await e.authenticate(raw)
    tries: list[float | None] = []

    async def refused(caller, tokens, usd, event=None, id=""):
        tries.append(usd)
        raise Replan(BudgetExceeded("budget key:racing cannot cover this request"))

    monkeypatch.setattr(e.access, "open", refused)
    with pytest.raises(BudgetExceeded, match="cannot cover"):
        await e.chat(ask(), caller)
    assert len(tries) == REPLANS + 1


# ---- two processes, one Redis ----------------------------------------------------------------


def _admit_many(url: str, rec_fields: dict, n: int, usd: float, start_at: float) -> int:
    from router.state.keys import KeyRecord

    async def run() -> int:
        store = RedisStore(url, timeout_s=5)
        rec = KeyRecord.from_fields(rec_fields)
        scopes = [BudgetScope(f"key:{rec.id}", rec.budget_usd, rec.budget_window)]
        await asyncio.sleep(max(0.0, start_at - time.time()))
        got = await asyncio.gather(*(store.money.admit(Admit(rec, None, 10, scopes, usd)) for _ in range(n)))
        degraded = store.degraded
        await store.aclose()
        assert not degraded  # every answer came from Redis (no timeout fell back to the replica's own)
        assert all(isinstance(x, Admitted | Refused) for x in got)
        return sum(isinstance(x, Admitted) for x in got)

    return asyncio.run(run())


def _race(url: str, rec, n: int, usd: float) -> list[int]:
    ctx = multiprocessing.get_context("spawn")
    start_at = time.time() + 5.0  # both processes started and connected by then
    if start_at % 60 > 45:  # all in one rate-limit minute: the sliding window is exact within it
        start_at += 62 - start_at % 60
    with ctx.Pool(2) as pool:
        return pool.starmap(_admit_many, [(url, rec.to_fields(), n, usd, start_at)] * 2)


async def test_two_processes_never_admit_more_than_the_rpm_limit(redis_url):
    admin = RedisStore(redis_url)
    _, rec = new_key("rpm", rpm=25, budget_usd=100.0)
    await admin.keys.put(rec)
    counts = await asyncio.to_thread(_race, redis_url, rec, 40, 0.01)
    assert sum(counts) == 25
    (spent,) = await admin.budgets.spent([BudgetScope(f"key:{rec.id}", 100.0)])
    assert spent == pytest.approx(25 * 0.01)  # a request refused by the limit reserved nothing
    await admin.aclose()


async def test_two_processes_never_reserve_more_than_the_budget(redis_url):
    admin = RedisStore(redis_url)
    _, rec = new_key("budget", budget_usd=0.3, budget_window="total", rpm=1000)
    await admin.keys.put(rec)
    counts = await asyncio.to_thread(_race, redis_url, rec, 40, 0.01)
    assert sum(counts) == 30
    (spent,) = await admin.budgets.spent([BudgetScope(f"key:{rec.id}", 0.3, "total")])
    assert spent == pytest.approx(0.3)
    r = admin.redis
    requests = sum([int(await r.get(k)) for k in await r.keys(f"moe:rate:{rec.id}:r:*")])
    assert requests == 30  # a request refused by the budget was not counted against the rpm
    await admin.aclose()


async def test_an_error_from_the_script_is_a_fault_not_an_outage(engine, redis_server):
    e = engine()
    raw, rec = new_key("broken", budget_usd=1.0)
    await e.store.keys.put(rec)
    bucket = BudgetScope(f"key:{rec.id}", 1.0).bucket()
    redis_server.client().rpush(f"moe:budget:{bucket}", "not a counter")  # WRONGTYPE for INCRBY/GET
    with pytest.raises(StateFault):
        await e.chat(ask(), await e.authenticate(raw))
    assert not e.store.degraded  # budgets did not switch to their outage behaviour
    assert e.metrics.state_faults.labels("admission")._value.get() == 1


async def test_the_plans_closed_breaker_is_the_first_go_ahead_and_a_retry_asks_redis(engine, upstream):
    e = engine(dispatch={"retries": 1, "backoff_s": 0.01})
    raw, rec = new_key("retried", budget_usd=1.0)
    await e.store.keys.put(rec)
    upstream.script("cheap", Fail(500))  # the first call fails, the retry answers
    asks = Trips().install(e.store).during(e.store.health, "acquire")
    _, outcome = await e.chat(ask(), await e.authenticate(raw))
    assert outcome.model == "cheap" and len(upstream.calls("cheap")) == 2
    assert len(asks) == 1  # the retry's go-ahead came from Redis; the first from the plan
    status = (await e.store.health.snapshot(["cheap"]))["cheap"]
    assert status.samples == 1 and status.breaker == "closed"  # the success, booked at settlement
