"""The SQL ledger: real gateways, the `openai` client, real SQLite, PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
import time

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from router.ledger import Ledger
from router.ledger.schema import upgrade
from router.state.log import RedisLog
from router.state.records import FeedbackRecord, RequestRecord
from tests import postgres_server
from tests.conftest import make_config, pool
from tests.test_cli import config_file, run

SHARED_PG = "postgresql+asyncpg://postgres@127.0.0.1:5432"


def query(url: str, sql: str, **params) -> list[tuple]:
    async def go():
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                return [tuple(r) for r in await conn.execute(text(sql), params)]
        finally:
            await engine.dispose()

    return asyncio.run(go())


def count(url: str, table: str = "requests") -> int:
    try:
        return query(url, f"SELECT count(*) FROM {table}")[0][0]
    except Exception:  # noqa: BLE001 - not migrated yet, or the database is down
        return -1


def wait_for(cond, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/ledger.db"


@pytest.fixture
def pg_url():
    """A scratch database on the shared PostgreSQL, dropped afterwards."""
    name = "moe_ledger_" + secrets.token_hex(6)

    async def admin(sql: str):
        engine = create_async_engine(f"{SHARED_PG}/postgres", isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as conn:
                await conn.execute(text(sql))
        finally:
            await engine.dispose()

    try:
        asyncio.run(admin(f"CREATE DATABASE {name}"))
    except OSError as e:
        pytest.skip(f"the shared PostgreSQL on 127.0.0.1:5432 is not reachable: {e}")
    yield f"{SHARED_PG}/{name}"
    asyncio.run(admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
def private_pg():
    why = postgres_server.available()
    if why:
        pytest.skip(why)
    srv = postgres_server.PostgresServer().init()
    yield srv
    srv.destroy()


def record(i: int, **kw) -> RequestRecord:
    base = dict(
        id=f"chatcmpl-{i:04d}",
        model="cheap",
        policy="cheapest",
        prompt=f"prompt {i}",
        prompt_tokens=10,
        completion_tokens=20,
        cost_usd=0.001,
        latency_ms=100.0,
        key="alice",
        owner="k1",
        created=1_700_000_000.0 + i,
    )
    return RequestRecord(**(base | kw))


# ---- a gateway with in-memory state writes SQLite ---------------------------------------------------
def test_gateway_requests_and_ratings_reach_sqlite_and_export(tmp_path, upstream, start_gateway, sqlite_url):
    gw = start_gateway(make_config(upstream.base_url, ledger=sqlite_url))
    routed = gw.client.chat.completions.create(
        model="router:cheapest", messages=[{"role": "user", "content": "one two three"}]
    )
    named = gw.client.chat.completions.create(
        model="big", messages=[{"role": "user", "content": "four five"}]
    )
    stream = gw.client.chat.completions.create(
        model="coder",
        messages=[{"role": "user", "content": "six"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    streamed_id = chunks[0].id
    # a rating, then the same caller changes its mind: one row, the newer rating
    assert gw.post("/v1/feedback", json={"id": routed.id, "rating": 0.2}).status_code == 200
    assert gw.post("/v1/feedback", json={"id": routed.id, "rating": 0.9}).status_code == 200
    assert gw.post("/v1/feedback", json={"id": named.id, "rating": 0.5}).status_code == 200

    wait_for(lambda: count(sqlite_url) == 3 and count(sqlite_url, "feedback") == 2, what="3 rows + 2 ratings")
    rows = {
        r[0]: r
        for r in query(
            sqlite_url,
            "SELECT id, model, policy, prompt_tokens, completion_tokens, cost_usd, status, decision, owner "
            "FROM requests",
        )
    }
    prices = {m["name"]: (m.get("input_price_per_1m"), m.get("output_price_per_1m")) for m in pool("x")}
    for resp, model, policy in ((routed, "cheap", "cheapest"), (named, "big", None)):
        rid, m, pol, ptok, ctok, cost, status, decision, owner = rows[resp.id]
        assert (m, pol, status, owner) == (model, policy, "ok", "anonymous")
        assert (ptok, ctok) == (resp.usage.prompt_tokens, resp.usage.completion_tokens)
        pin, pout = prices[model]
        assert cost == pytest.approx((ptok * pin + ctok * pout) / 1e6)
    decision = json.loads(rows[routed.id][7])
    assert decision["ranked"][0]["model"] == "cheap"
    assert decision["ranked"][0]["cost_usd"] > 0 and "keyless" in [e["model"] for e in decision["excluded"]]
    assert rows[named.id][7] is None  # named models bypass routing: no decision
    assert rows[streamed_id][1] == "coder" and rows[streamed_id][4] == chunks[-1].usage.completion_tokens

    ratings = query(
        sqlite_url, "SELECT request_id, rater, rating, source, model FROM feedback ORDER BY rating"
    )
    assert ratings == [
        (named.id, "anonymous", 0.5, "user", "big"),
        (routed.id, "anonymous", 0.9, "user", "cheap"),
    ]

    # export reads the SQL ledger (the gateway's state was in memory)
    out = tmp_path / "export.jsonl"
    r = run(
        "export",
        "--out",
        str(out),
        "--config",
        str(config_file(tmp_path, upstream.base_url)),
        env={"MOE_ROUTER_LEDGER": sqlite_url},
    )
    assert r.returncode == 0, r.stderr
    assert "from the ledger sqlite+aiosqlite" in r.stdout
    exported = {row["request_id"]: row for row in map(json.loads, out.read_text().splitlines())}
    assert set(exported) == {routed.id, named.id, streamed_id}
    assert exported[routed.id]["quality"] == 0.9 and exported[streamed_id]["quality"] is None
    assert exported[routed.id]["policy"] == "cheapest" and exported[routed.id]["model"] == "cheap"
    r = run(
        "export",
        "--out",
        str(out),
        "--only-rated",
        "--config",
        str(config_file(tmp_path, upstream.base_url)),
        env={"MOE_ROUTER_LEDGER": sqlite_url},
    )
    assert r.returncode == 0 and len(out.read_text().splitlines()) == 2


def test_export_without_a_ledger_or_redis_is_a_one_line_error(tmp_path, upstream):
    r = run(
        "export",
        "--out",
        str(tmp_path / "x.jsonl"),
        "--config",
        str(config_file(tmp_path, upstream.base_url)),
    )
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "MOE_ROUTER_LEDGER" in r.stderr


# ---- Redis state: a consumer group, each record written once ----------------------------------------
def test_two_replicas_on_redis_write_each_record_exactly_once(upstream, start_gateway, redis_url, pg_url):
    cfg = make_config(upstream.base_url, state=redis_url, ledger=pg_url)
    gws = [start_gateway(cfg), start_gateway(cfg)]
    ids = []
    for i in range(30):
        resp = gws[i % 2].client.chat.completions.create(
            model="router:cheapest", messages=[{"role": "user", "content": f"request {i}"}]
        )
        ids.append(resp.id)
    for rid in ids[:5]:
        assert gws[1].post("/v1/feedback", json={"id": rid, "rating": 1.0}).status_code == 200

    wait_for(lambda: count(pg_url) == 30 and count(pg_url, "feedback") == 5, what="30 rows + 5 ratings")
    assert sorted(r[0] for r in query(pg_url, "SELECT id FROM requests")) == sorted(ids)
    # exactly once: the two writers together wrote 35 items, so no entry went to both (the upsert
    # would hide a double write in the table; the counters do not)
    wait_for(lambda: sum(g.engine.ledger.writer.written for g in gws) >= 35, what="writer counters")
    time.sleep(1.0)
    assert sum(g.engine.ledger.writer.written for g in gws) == 35
    for stream in ("moe:ledger", "moe:feedback"):  # every entry acknowledged
        assert asyncio.run(_pending(redis_url, stream)) == 0, stream


async def _pending(redis_url: str, stream: str) -> int:
    import redis.asyncio as aioredis

    r = aioredis.from_url(redis_url)
    try:
        return (await r.xpending(stream, "ledger-writers"))["pending"]
    finally:
        await r.aclose()


def test_entries_a_dead_replica_took_are_claimed_and_written(redis_url, sqlite_url):
    async def go():
        import redis.asyncio as aioredis

        r = aioredis.from_url(redis_url)
        log = RedisLog(r)
        await r.xgroup_create("moe:ledger", "ledger-writers", id="0", mkstream=True)
        await r.xgroup_create("moe:feedback", "ledger-writers", id="0", mkstream=True)
        for i in range(3):
            await log.record_request(record(i))
        # a replica reads them and dies before writing (never acknowledges)
        got = await r.xreadgroup("ledger-writers", "dead", {"moe:ledger": ">"}, count=10)
        assert len(got[0][1]) == 3
        ledger = Ledger(sqlite_url, redis_url=redis_url, claim_idle_s=0.3, interval_s=0.1)
        await ledger.start()
        try:
            for _ in range(100):
                await asyncio.sleep(0.1)
                if ledger.writer.written == 3:
                    break
            rows = await ledger.recent()
            pending = (await r.xpending("moe:ledger", "ledger-writers"))["pending"]
        finally:
            await ledger.aclose()
            await r.aclose()
        return rows, pending

    rows, pending = asyncio.run(go())
    assert sorted(row["id"] for row in rows) == [f"chatcmpl-{i:04d}" for i in range(3)]
    assert pending == 0


def test_the_redis_feed_gathers_records_that_trickle_in_into_one_batch(redis_url):
    """At low traffic the writer takes what arrived over an interval in one batch (one transaction),
    not one per request, like the in-memory buffer feed."""
    from router.ledger.writer import StreamFeed

    async def go():
        import redis.asyncio as aioredis

        r = aioredis.from_url(redis_url)
        log = RedisLog(r)
        feed = StreamFeed(redis_url, "moe:", batch=100, interval_s=0.5, claim_idle_s=60)
        try:
            await log.record_request(record(0))
            first = await feed.take(False)

            async def trickle():
                for i in range(1, 4):
                    await asyncio.sleep(0.02)
                    await log.record_request(record(i))

            writing = asyncio.create_task(trickle())
            second = await feed.take(False)  # without gathering: only record 1, alone
            await writing
        finally:
            await feed.aclose()
            await r.aclose()
        return [x.id for x in first.records], [x.id for x in second.records]

    first, second = asyncio.run(go())
    assert first == ["chatcmpl-0000"]
    assert second == [f"chatcmpl-{i:04d}" for i in (1, 2, 3)]


def test_one_stream_entry_and_one_batch_record_per_request_id(redis_url):
    """A record written twice (a settlement replayed after its answer was lost) is appended once;
    entries of one id that reach a batch anyway (an older gateway's) are written once and counted."""
    from router.ledger.writer import StreamFeed

    async def go():
        import redis.asyncio as aioredis

        r = aioredis.from_url(redis_url)
        log = RedisLog(r)
        feed = StreamFeed(redis_url, "moe:", batch=100, interval_s=0.1, claim_idle_s=60)
        try:
            await log.record_request(record(0))
            await log.record_request(record(0, cost_usd=9.0))
            appended = await r.xlen("moe:ledger")
            data = json.dumps(record(1).to_dict())
            for _ in range(2):
                await r.xadd("moe:ledger", {"kind": "request", "data": data})
            b = await feed.take(False)
        finally:
            await feed.aclose()
            await r.aclose()
        return appended, b

    appended, b = asyncio.run(go())
    assert appended == 1
    assert [x.id for x in b.records] == ["chatcmpl-0000", "chatcmpl-0001"]
    assert b.records[0].cost_usd != 9.0 and b.duplicates == 1 and b.size == 3


# ---- the database goes down mid-load: nothing is lost, every request is answered -----------------------
@pytest.mark.parametrize("state", ["memory", "redis"])
def test_postgres_outage_mid_load_loses_nothing(
    upstream, start_gateway, redis_server, private_pg, state, caplog
):
    caplog.set_level(logging.WARNING, logger="moe_router.ledger")
    if state == "redis":
        redis_server.client().flushdb()
    cfg = make_config(
        upstream.base_url, state=redis_server.url if state == "redis" else "memory", ledger=private_pg.url
    )
    gw = start_gateway(cfg)
    ids: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def load():
        client = gw.client
        i = 0
        while not stop.is_set():
            try:
                resp = client.chat.completions.create(
                    model="router:cheapest", messages=[{"role": "user", "content": f"load {i}"}]
                )
                ids.append(resp.id)
            except Exception as e:  # noqa: BLE001 - counted: the test asserts there are none
                failures.append(repr(e))
            i += 1

    t = threading.Thread(target=load)
    t.start()
    try:
        wait_for(lambda: count(private_pg.url) >= 10, what="rows before the outage")
        private_pg.stop("immediate")
        during = len(ids)
        wait_for(lambda: len(ids) >= during + 20, what="requests answered during the outage")
        # keep the database down until the writer has tried it (its flush may come after 20 fast answers)
        wait_for(
            lambda: any("unreachable" in r.getMessage() for r in caplog.records),
            what="the writer meets the outage",
        )
        private_pg.start()
        after = len(ids)
        wait_for(lambda: len(ids) >= after + 10, what="requests after the outage")
    finally:
        stop.set()
        t.join(60)
    assert failures == []
    wait_for(lambda: count(private_pg.url) == len(ids), timeout=60, what="every request written")
    dup = query(private_pg.url, "SELECT id, count(*) FROM requests GROUP BY id HAVING count(*) > 1")
    assert dup == []
    assert sorted(r[0] for r in query(private_pg.url, "SELECT id FROM requests")) == sorted(ids)
    # the writer did meet the outage, and came back
    logged = [r.getMessage() for r in caplog.records if r.name == "moe_router.ledger"]
    assert any("unreachable" in m for m in logged) and any("reachable again" in m for m in logged)


# ---- migrations ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_migrations_create_both_tables_and_rerun_is_a_noop(db, request):
    url = request.getfixturevalue("sqlite_url" if db == "sqlite" else "pg_url")

    async def go():
        from sqlalchemy import inspect

        from router.ledger.schema import connect

        engine = connect(url)
        try:
            await upgrade(engine)
            async with engine.connect() as conn:
                first = await conn.run_sync(lambda c: sorted(inspect(c).get_table_names()))
                cols = await conn.run_sync(lambda c: [x["name"] for x in inspect(c).get_columns("requests")])
            await upgrade(engine)  # again: nothing to do
            async with engine.connect() as conn:
                second = await conn.run_sync(lambda c: sorted(inspect(c).get_table_names()))
                version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).all()
        finally:
            await engine.dispose()
        return first, second, cols, version

    first, second, cols, version = asyncio.run(go())
    assert first == second == ["alembic_version", "feedback", "requests"]
    assert version == [("0001",)]
    assert {
        "id",
        "created",
        "key",
        "model",
        "cost_usd",
        "decision",
        "propensity",
        "predicted_quality",
    } <= set(cols)
    assert "learn" not in cols


# ---- queries: the contract's shapes and numbers --------------------------------------------------------
@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
def test_queries_return_the_contract_shapes(db, request, upstream):
    url = request.getfixturevalue("sqlite_url" if db == "sqlite" else "pg_url")
    cfg = make_config(upstream.base_url)  # baseline: "big" (highest default quality), $10 / $30 per 1M
    now = time.time()
    day0 = 86400 * 19_700  # 2023-12-09 00:00 UTC

    async def go():
        ledger = Ledger(url, models=cfg.models, interval_s=0.05)
        await ledger.start()
        try:
            recs = [
                record(1, created=day0 + 10, latency_ms=100.0),
                record(2, created=day0 + 20, latency_ms=300.0, model="coder", cost_usd=0.01, key=None),
                record(3, created=day0 + 86400 + 5, status="error", model=None, cost_usd=0.0, error="boom"),
                record(4, created=now - 30, latency_ms=200.0, cost_usd=0.002),
                record(5, created=now - 20, latency_ms=400.0, model="big", cost_usd=0.02),
                record(6, created=now - 10, status="error", model=None, cost_usd=0.0),
            ]
            for r in recs:
                ledger.offer(r)
            ledger.offer(FeedbackRecord(recs[0].id, 1.0, rater="a", created=1.0))
            ledger.offer(FeedbackRecord(recs[0].id, 0.0, rater="b", created=2.0))
            ledger.offer(FeedbackRecord(recs[0].id, 0.5, rater="b", created=3.0))  # b replaces its own
            for _ in range(100):
                if ledger.backlog == 0 and ledger.writer.written >= 9:
                    break
                await asyncio.sleep(0.05)
            return (
                await ledger.recent(limit=3),
                await ledger.recent(key="alice", status="ok", before=now - 25),
                await ledger.recent(limit=10_000),
                await ledger.get(recs[0].id),
                await ledger.get("nope"),
                await ledger.spend(group_by="key"),
                await ledger.spend(group_by="model", since=day0, until=day0 + 86400),
                await ledger.spend(group_by="day", until=day0 + 2 * 86400),
                await ledger.overview(since=now - 120, bucket_s=60),
            )
        finally:
            await ledger.aclose()

    recent3, filtered, everything, one, missing, by_key, by_model, by_day, ov = asyncio.run(go())
    assert [r["id"] for r in recent3] == ["chatcmpl-0006", "chatcmpl-0005", "chatcmpl-0004"]
    assert set(recent3[0]) >= {
        "id",
        "created",
        "key",
        "owner",
        "model",
        "policy",
        "prompt",
        "prompt_tokens",
        "completion_tokens",
        "cached_tokens",
        "cost_usd",
        "latency_ms",
        "status",
        "error",
        "fallbacks",
        "predicted",
        "cost_weight",
        "propensity",
        "reserved_usd",
        "cache",
        "decision",
        "rating",
    }
    assert "learn" not in recent3[0] and set(recent3[0]["predicted"]) == {"quality", "cost_usd", "latency_ms"}
    assert [r["id"] for r in filtered] == ["chatcmpl-0004", "chatcmpl-0001"]
    assert len(everything) == 6 and everything[-1]["rating"] == pytest.approx(0.75)  # mean of 1.0 and 0.5
    assert one["rating"] == pytest.approx(0.75)
    assert sorted((f["rater"], f["rating"]) for f in one["feedback"]) == [("a", 1.0), ("b", 0.5)]
    assert set(one["feedback"][0]) == {"rater", "rating", "source", "comment", "created"}
    assert missing is None

    assert [r["group"] for r in by_key] == ["alice", "anonymous"]  # by cost, descending
    alice = by_key[0]
    assert alice == {
        "group": "alice",
        "requests": 5,
        "errors": 2,
        "refused": 0,
        "cost_usd": pytest.approx(0.023),
        "prompt_tokens": 50,
        "completion_tokens": 100,
    }
    assert by_model == [
        {
            "group": "coder",
            "requests": 1,
            "errors": 0,
            "refused": 0,
            "cost_usd": pytest.approx(0.01),
            "prompt_tokens": 10,
            "completion_tokens": 20,
        },
        {
            "group": "cheap",
            "requests": 1,
            "errors": 0,
            "refused": 0,
            "cost_usd": pytest.approx(0.001),
            "prompt_tokens": 10,
            "completion_tokens": 20,
        },
    ]
    assert [(d["group"], d["requests"], d["errors"]) for d in by_day] == [
        ("2023-12-09", 2, 0),
        ("2023-12-10", 1, 1),
    ]

    totals = ov["totals"]
    assert (totals["requests"], totals["errors"]) == (3, 1)
    assert totals["cost_usd"] == pytest.approx(0.022)
    assert (totals["p50_ms"], totals["p95_ms"]) == (200.0, 400.0)
    assert totals["baseline_model"] == "big"
    baseline = 2 * (10 * 10.0 + 20 * 30.0) / 1e6  # the two answered requests at big's prices
    assert totals["baseline_cost_usd"] == pytest.approx(baseline)
    assert totals["savings_usd"] == pytest.approx(baseline - 0.022)
    buckets = ov["buckets"]
    assert [b["t"] for b in buckets] == sorted(b["t"] for b in buckets) and all(
        b["t"] % 60 == 0 for b in buckets
    )
    assert sum(b["requests"] for b in buckets) == 3
    assert {m: n for b in buckets for m, n in b["by_model"].items()} == {"cheap": 1, "big": 1}
    assert set(buckets[0]) == {
        "t",
        "requests",
        "errors",
        "refused",
        "p50_ms",
        "p95_ms",
        "cost_usd",
        "by_model",
        "cost_by_model",
    }
    assert {m for b in buckets for m in b["cost_by_model"]} == {"cheap", "big"}
    with pytest.raises(ValueError):
        asyncio.run(_bad_overview(url))


async def _bad_overview(url: str):
    ledger = Ledger(url)
    try:
        await ledger.overview(since=0, bucket_s=1)  # far too many buckets
    finally:
        await ledger.aclose()


def test_ledger_url_is_validated_and_its_password_never_shown(upstream):
    from router.config import ConfigError, load_config

    cfg = make_config(upstream.base_url, ledger="postgresql://u:hunter2@db.example/ledger")
    assert cfg.ledger.startswith("postgresql://") and "hunter2" not in json.dumps(cfg.model_dump(mode="json"))
    assert Ledger(cfg.ledger).where == "postgresql+asyncpg://u:***@db.example/ledger"
    for bad in ("mysql://u:hunter2@h/db", "postgresql+psycopg2://u:hunter2@h/db", "::nonsense::"):
        with pytest.raises(ConfigError) as e:
            load_config(None, models=pool(upstream.base_url), ledger=bad)
        assert "hunter2" not in str(e.value)
    assert make_config(upstream.base_url, ledger="off").ledger_enabled is False
