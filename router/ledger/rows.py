"""Records to table rows and back, and the idempotent upserts that write them."""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from router.ledger.tables import feedback, requests
from router.state.records import FeedbackRecord, RequestRecord


def _text(s: str | None) -> str | None:
    # PostgreSQL text cannot hold NUL; a prompt may
    return None if s is None else s.replace("\x00", "\ufffd")


def _num(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _json_safe(obj: Any) -> Any:
    """NaN and infinities are not JSON (PostgreSQL refuses them): null."""
    if isinstance(obj, float):
        return _num(obj)
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


def request_row(r: RequestRecord) -> dict[str, Any]:
    p = r.predicted or {}
    return {
        "id": r.id,
        "created": float(r.created),
        "key": r.key,
        "owner": r.owner,
        "model": r.model,
        "policy": r.policy,
        "prompt": _text(r.prompt) or "",
        "prompt_tokens": int(r.prompt_tokens),
        "completion_tokens": int(r.completion_tokens),
        "cached_tokens": int(r.cached_tokens),
        "cost_usd": _num(r.cost_usd) or 0.0,
        "latency_ms": _num(r.latency_ms) or 0.0,
        "status": r.status,
        "error": _text(r.error),
        "fallbacks": list(r.fallbacks or []),
        "predicted_quality": _num(p.get("quality")),
        "predicted_cost_usd": _num(p.get("cost_usd")),
        "predicted_latency_ms": _num(p.get("latency_ms")),
        "cost_weight": _num(r.cost_weight),
        "propensity": _num(r.propensity),
        "reserved_usd": _num(r.reserved_usd),
        "cache": r.cache,
        "decision": _json_safe(r.decision),
    }


def feedback_row(f: FeedbackRecord) -> dict[str, Any]:
    return {
        "request_id": f.request_id,
        "rater": f.rater,
        "rating": float(f.rating),
        "source": f.source,
        "model": f.model,
        "comment": _text(f.comment),
        "created": float(f.created),
    }


def request_dict(row: Any) -> dict[str, Any]:
    """A `requests` row as the contract's dict: the RequestRecord fields except `learn`."""
    m = row._mapping
    d = {c.name: m[c.name] for c in requests.columns if not c.name.startswith("predicted_")}
    d["fallbacks"] = list(d["fallbacks"] or [])
    d["predicted"] = {
        "quality": m["predicted_quality"],
        "cost_usd": m["predicted_cost_usd"],
        "latency_ms": m["predicted_latency_ms"],
    }
    return d


def request_record(row: Any) -> RequestRecord:
    return RequestRecord.from_dict(request_dict(row))


def _insert(conn: AsyncConnection, table):
    return (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(table)


async def upsert(conn: AsyncConnection, records: list[RequestRecord], ratings: list[FeedbackRecord]) -> None:
    """Write `records` (by id: a second write of one id replaces the row with the same values) and
    `ratings` (by (request, rater): the newest by `created` wins, whatever the arrival order)."""
    if records:
        # one statement may not touch a row twice: the last record of an id wins
        rows = list({r.id: request_row(r) for r in records}.values())
        stmt = _insert(conn, requests)
        cols = {c.name: stmt.excluded[c.name] for c in requests.columns if c.name != "id"}
        await conn.execute(stmt.on_conflict_do_update(index_elements=["id"], set_=cols), rows)
    if ratings:
        newest: dict[tuple[str, str], dict[str, Any]] = {}
        for f in ratings:
            row = feedback_row(f)
            k = (f.request_id, f.rater)
            if k not in newest or newest[k]["created"] <= row["created"]:
                newest[k] = row
        stmt = _insert(conn, feedback)
        cols = {c.name: stmt.excluded[c.name] for c in feedback.columns if not c.primary_key}
        await conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["request_id", "rater"],
                set_=cols,
                where=feedback.c.created <= stmt.excluded.created,
            ),
            list(newest.values()),
        )
