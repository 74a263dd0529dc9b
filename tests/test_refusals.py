"""Refused requests are ledger records, and the admin API's time bounds are validated (issue 24).

A real gateway with a SQLite ledger: keys refused for auth, permissions, rate limit and budget
show in `/admin/requests` (status `refused`, the reason, the key, no cost), in the overview's
refusals and in spend; `since=inf` is a 400, not an outage."""

from __future__ import annotations

import json

import httpx
import pytest

from router.errors import RateLimited
from router.metrics import Metrics
from router.refusals import BURST, Refusals
from router.state.log import MemoryLog
from tests.test_admin import ADMIN, ASK, _key, admin_config, bearer, wait_for


@pytest.fixture
def gw(upstream, start_gateway, tmp_path):
    return start_gateway(
        admin_config(
            upstream, tmp_path, auth={"master_key": ADMIN["authorization"][7:], "require_keys": True}
        )
    )


def _refused(gw) -> list[dict]:
    r = gw.get("/admin/requests?status=refused&limit=500", headers=ADMIN)
    return r.json()["data"] if r.status_code == 200 else []  # 503 while the ledger migrates


@pytest.mark.parametrize(
    "query",
    [
        "/admin/overview?since=inf",
        "/admin/overview?since=nan",
        "/admin/overview?since=-inf",
        "/admin/overview?since=1e300",
        "/admin/spend?since=inf",
        "/admin/spend?until=nan",
        "/admin/spend?until=Infinity",
        "/admin/requests?since=nan",
        "/admin/requests?before=inf",
    ],
)
def test_non_finite_time_bounds_are_400(gw, query):
    r = gw.get(query, headers=ADMIN)
    assert r.status_code == 400, (query, r.text)
    err = r.json()["error"]
    assert err["code"] == "invalid_query" and err["param"] in ("since", "until", "before")
    assert "unix time" in err["message"]


def test_finite_bounds_still_answer(gw):
    # the ledger migrates its database in the background at start: 503 until then
    assert wait_for(lambda: gw.get("/admin/requests", headers=ADMIN).status_code == 200)
    for q in (
        "/admin/overview?since=1750000000&bucket_s=86400",
        "/admin/spend?since=0&until=4102444800",
        "/admin/requests?before=4102444800",
    ):
        r = gw.get(q, headers=ADMIN)
        assert r.status_code == 200, (q, r.text)


def test_refusals_are_recorded_with_the_key_and_the_reason(gw, upstream):
    _, limited = _key(gw, "limited", rpm=1)
    _, broke = _key(gw, "broke", budget_usd=0.0000001)
    _, narrow = _key(gw, "narrow", models=["cheap"])
    _, gone = _key(gw, "gone")
    assert gw.post("/v1/chat/completions", json=ASK, headers=bearer(limited)).status_code == 200
    assert gw.post("/v1/chat/completions", json=ASK, headers=bearer(limited)).status_code == 429
    r = gw.post("/v1/chat/completions", json={**ASK, "model": "big"}, headers=bearer(broke))
    assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded"
    r = gw.post("/v1/chat/completions", json={**ASK, "model": "big"}, headers=bearer(narrow))
    assert r.status_code == 403
    assert httpx.delete(gw.url + "/admin/keys/gone", headers=ADMIN).status_code == 200
    assert gw.post("/v1/chat/completions", json=ASK, headers=bearer(gone)).status_code == 401
    assert gw.post("/v1/chat/completions", json=ASK, headers=bearer("sk-not-ours")).status_code == 401
    assert gw.post("/v1/chat/completions", json=ASK).status_code == 401  # no key, keys required
    # a browser page of another site, refused at the edge
    r = gw.post(
        "/v1/chat/completions",
        content=json.dumps(ASK),
        headers={"origin": "https://evil.example", "sec-fetch-site": "cross-site"},
    )
    assert r.status_code == 403
    assert len(upstream.calls()) == 1  # only the first request reached a model

    rows = wait_for(lambda: (got := _refused(gw)) and len(got) >= 7 and got)
    by_key: dict[str | None, list[dict]] = {}
    for row in rows:
        by_key.setdefault(row["key"], []).append(row)
        assert row["status"] == "refused" and row["cost_usd"] == 0 and row["model"] is None
        assert row["prompt_tokens"] == 0 and row["completion_tokens"] == 0
    assert by_key["limited"][0]["error"].startswith("rate_limit_exceeded:")
    assert by_key["broke"][0]["error"].startswith("budget_exceeded:")
    assert by_key["narrow"][0]["error"].startswith("model_not_allowed:")
    assert by_key["gone"][0]["error"].startswith("invalid_api_key:")  # the revoked key is named
    anonymous = sorted(r["error"].split(":")[0] for r in by_key[None])
    assert anonymous == ["cross_site_request", "invalid_api_key", "invalid_api_key"]
    assert all(r["owner"] == "anonymous" for r in by_key[None])

    # the overview counts them apart from served requests, in every bucket and in total
    ov = gw.get("/admin/overview?bucket_s=3600", headers=ADMIN).json()
    assert ov["totals"]["refused"] == 7 and ov["totals"]["requests"] == 1
    assert sum(b["refused"] for b in ov["buckets"]) == 7
    spend = {r["group"]: r for r in gw.get("/admin/spend?group_by=key", headers=ADMIN).json()["data"]}
    assert spend["limited"]["requests"] == 1 and spend["limited"]["refused"] == 1
    assert (
        spend["broke"]["requests"] == 0 and spend["broke"]["refused"] == 1 and spend["broke"]["cost_usd"] == 0
    )
    # and metrics count every refusal by its code
    metrics = gw.get("/metrics", headers=ADMIN).text
    assert 'moe_router_refusals_total{code="rate_limit_exceeded"} 1.0' in metrics
    assert 'moe_router_refusals_total{code="invalid_api_key"} 3.0' in metrics


def test_a_flood_of_refusals_writes_a_bounded_number_of_records():
    async def run():
        import asyncio

        log, metrics = MemoryLog(), Metrics()
        tasks: list[asyncio.Task] = []
        refusals = Refusals(log, metrics, lambda c: tasks.append(asyncio.ensure_future(c)))
        for _ in range(500):
            refusals.note(RateLimited("slow down"), None, "/v1/chat/completions")
        refusals.note(RateLimited("too"), None, "/admin/keys")  # the operator's routes: counted only
        await asyncio.gather(*tasks)
        return [r async for r in log.iter_requests()], metrics

    import asyncio

    records, metrics = asyncio.run(run())
    assert len(records) == int(BURST)  # the burst, then at most RATE a second
    assert metrics.refusals.labels("rate_limit_exceeded")._value.get() == 501
