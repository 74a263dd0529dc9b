"""Reading the ledger: recent requests, one request with its ratings, spend, and an overview.

Every function takes an `AsyncConnection` and returns plain JSON-able values. Counting rules:
`errors` counts status `error` (a client that went away, `client_closed`, is not an error);
`refused` counts status `refused` (router.refusals: turned away before any model), and those are
not in `requests`; latency percentiles are over requests a model answered (status ok, not from a
cache).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Integer, cast, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from router.config import ModelSpec
from router.ledger.rows import request_dict
from router.ledger.tables import feedback, requests

MAX_RECENT = 500
MAX_BUCKETS = 10_000
GROUPS = ("key", "model", "day")
REFUSED = "refused"  # router.refusals


async def _ratings(conn: AsyncConnection, ids: Sequence[str]) -> dict[str, float]:
    """Mean of each rater's latest rating (the table keeps only the latest), per request."""
    if not ids:
        return {}
    q = (
        select(feedback.c.request_id, func.avg(feedback.c.rating))
        .where(feedback.c.request_id.in_(list(ids)))
        .group_by(feedback.c.request_id)
    )
    return {rid: float(avg) for rid, avg in await conn.execute(q)}


async def recent(
    conn: AsyncConnection,
    *,
    limit: int = 50,
    key: str | None = None,
    model: str | None = None,
    policy: str | None = None,
    status: str | None = None,
    since: float | None = None,
    before: float | None = None,
    prompt: str | None = None,
) -> list[dict[str, Any]]:
    """`prompt`: rows whose kept prompt contains it, case-insensitively (`%` and `_` are literal)."""
    q = select(requests)
    for col, value in (
        (requests.c.key, key),
        (requests.c.model, model),
        (requests.c.policy, policy),
        (requests.c.status, status),
    ):
        if value is not None:
            q = q.where(col == value)
    if prompt:
        q = q.where(requests.c.prompt.icontains(prompt, autoescape=True))
    if since is not None:
        q = q.where(requests.c.created >= since)
    if before is not None:
        q = q.where(requests.c.created < before)
    limit = max(0, min(int(limit), MAX_RECENT))
    q = q.order_by(requests.c.created.desc(), requests.c.id.desc()).limit(limit)
    rows = [request_dict(r) for r in await conn.execute(q)]
    ratings = await _ratings(conn, [r["id"] for r in rows])
    for r in rows:
        r["rating"] = ratings.get(r["id"])
    return rows


async def get(conn: AsyncConnection, request_id: str) -> dict[str, Any] | None:
    row = (await conn.execute(select(requests).where(requests.c.id == request_id))).first()
    if row is None:
        return None
    d = request_dict(row)
    fb = await conn.execute(
        select(feedback).where(feedback.c.request_id == request_id).order_by(feedback.c.created)
    )
    d["feedback"] = [
        {"rater": f.rater, "rating": f.rating, "source": f.source, "comment": f.comment, "created": f.created}
        for f in fb
    ]
    d["rating"] = sum(f["rating"] for f in d["feedback"]) / len(d["feedback"]) if d["feedback"] else None
    return d


def _day_number(conn: AsyncConnection):
    # whole days since the epoch (created >= 0): SQLite's cast truncates, PostgreSQL's rounds
    days = requests.c.created / 86400
    return func.floor(days) if conn.dialect.name == "postgresql" else cast(days, Integer)


async def spend(
    conn: AsyncConnection, *, group_by: str, since: float | None = None, until: float | None = None
) -> list[dict[str, Any]]:
    """Per key (None -> "anonymous"), model (None: every model failed -> "none") or UTC day."""
    if group_by not in GROUPS:
        raise ValueError(f"group_by must be one of {', '.join(GROUPS)}, got {group_by!r}")
    group = {"key": requests.c.key, "model": requests.c.model, "day": _day_number(conn)}[group_by]
    q = select(
        group.label("g"),
        func.count(),
        func.sum(cast(requests.c.status == "error", Integer)),
        func.sum(cast(requests.c.status == REFUSED, Integer)),
        func.sum(requests.c.cost_usd),
        func.sum(requests.c.prompt_tokens),
        func.sum(requests.c.completion_tokens),
    ).group_by(group)
    if since is not None:
        q = q.where(requests.c.created >= since)
    if until is not None:
        q = q.where(requests.c.created < until)
    merged: dict[str, dict[str, Any]] = {}
    for g, n, errors, refused, cost, ptok, ctok in await conn.execute(q):
        if group_by == "day":
            name = (dt.date(1970, 1, 1) + dt.timedelta(days=int(g))).isoformat()
        else:
            name = g if g is not None else ("anonymous" if group_by == "key" else "none")
        row = merged.setdefault(
            name,
            {
                "group": name,
                "requests": 0,
                "errors": 0,
                "refused": 0,
                "cost_usd": 0.0,
                "prompt_tokens": 0,
                "completion_tokens": 0,
            },
        )
        row["requests"] += int(n) - int(refused or 0)
        row["errors"] += int(errors or 0)
        row["refused"] += int(refused or 0)
        row["cost_usd"] += float(cost or 0.0)
        row["prompt_tokens"] += int(ptok or 0)
        row["completion_tokens"] += int(ctok or 0)
    rows = list(merged.values())
    if group_by == "day":
        return sorted(rows, key=lambda r: r["group"])
    return sorted(rows, key=lambda r: (-r["cost_usd"], r["group"]))


def baseline_model(models: Sequence[ModelSpec]) -> ModelSpec | None:
    """The strongest chat model: highest prior `quality["default"]`, ties to the higher output price."""
    chat = [m for m in models if m.kind == "chat"]
    if not chat:
        return None
    return max(chat, key=lambda m: (m.quality.get("default", 0.0), m.output_price_per_1m))


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (`p` in 0..100) of `values`, None when empty."""
    if not values:
        return None
    s = sorted(values)
    return round(s[max(0, math.ceil(p / 100 * len(s)) - 1)], 3)


def _bucket(t: int) -> dict[str, Any]:
    # by_model: requests per answering model; cost_by_model: their spend (USD)
    return {
        "t": t,
        "requests": 0,
        "errors": 0,
        "refused": 0,
        "cost_usd": 0.0,
        "by_model": {},
        "cost_by_model": {},
        "_lat": [],
    }


async def overview(
    conn: AsyncConnection, models: Sequence[ModelSpec], *, since: float, bucket_s: int = 60, now: float
) -> dict[str, Any]:
    """Requests since `since` in `bucket_s` buckets (every bucket up to `now`, empty ones too),
    and totals with what the same tokens would have cost at the strongest model (`baseline`).
    The baseline prices requests a chat model of the pool answered (status ok)."""
    bucket_s = int(bucket_s)
    if bucket_s <= 0:
        raise ValueError("bucket_s must be positive")
    first, last = math.floor(since / bucket_s) * bucket_s, math.floor(now / bucket_s) * bucket_s
    if (last - first) // bucket_s + 1 > MAX_BUCKETS:
        raise ValueError(f"too many buckets (more than {MAX_BUCKETS}): widen bucket_s or narrow the window")
    base = baseline_model(models)
    chat = {m.name for m in models if m.kind == "chat"}
    buckets = {t: _bucket(t) for t in range(first, last + 1, bucket_s)}
    totals = {"requests": 0, "errors": 0, "refused": 0, "cost_usd": 0.0}
    latencies: list[float] = []
    baseline_cost = priced_cost = 0.0
    r = requests.c
    q = select(
        r.created, r.model, r.status, r.cache, r.latency_ms, r.cost_usd, r.prompt_tokens, r.completion_tokens
    ).where(r.created >= since)
    async for created, model, status, cache, latency, cost, ptok, ctok in await conn.stream(q):
        t = math.floor(created / bucket_s) * bucket_s
        b = buckets.get(t)
        if b is None:  # written after `now` was read
            b = buckets[t] = _bucket(t)
        if status == REFUSED:
            b["refused"] += 1
            continue
        b["requests"] += 1
        b["cost_usd"] += cost
        if status == "error":
            b["errors"] += 1
        if model is not None:
            b["by_model"][model] = b["by_model"].get(model, 0) + 1
            b["cost_by_model"][model] = b["cost_by_model"].get(model, 0.0) + cost
        if status == "ok" and cache is None and model is not None:
            b["_lat"].append(latency)
            latencies.append(latency)
        if base is not None and status == "ok" and model in chat:
            baseline_cost += base.info().cost_usd(ptok, ctok)
            priced_cost += cost
    out = []
    for t in sorted(buckets):
        b = buckets[t]
        lat = b.pop("_lat")
        totals["requests"] += b["requests"]
        totals["errors"] += b["errors"]
        totals["refused"] += b["refused"]
        totals["cost_usd"] += b["cost_usd"]
        out.append({**b, "p50_ms": percentile(lat, 50), "p95_ms": percentile(lat, 95)})
    totals |= {
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "baseline_cost_usd": baseline_cost,
        "savings_usd": baseline_cost - priced_cost,
        "baseline_model": base.name if base is not None else None,
    }
    return {"buckets": out, "totals": totals}


async def answered(conn: AsyncConnection):
    """For `moe-router export`: requests a model answered (status ok, not from a cache), oldest
    first, each with its ratings' mean (None when unrated)."""
    from router.ledger.rows import request_record

    r = requests.c
    rated = (
        select(feedback.c.request_id, func.avg(feedback.c.rating).label("q"))
        .group_by(feedback.c.request_id)
        .subquery()
    )
    q = (
        select(requests, rated.c.q)
        .outerjoin(rated, rated.c.request_id == r.id)
        .where(r.status == "ok", r.model.is_not(None), r.cache.is_(None))
        .order_by(r.created, r.id)
    )
    async for row in await conn.stream(q):
        yield request_record(row), (float(row.q) if row.q is not None else None)
