"""`/admin/*`: the operator's JSON API (keys, spend, requests, policies, model health).

Only the master key reaches these routes: the edge (`middleware.Edge`, `admin_prefixes`) refuses
every other caller before a route runs, and refuses everyone when no master key is configured.
Key management calls `router.keys_admin`, the same functions as `moe-router keys`; spend,
requests and the overview are queries of the request ledger (`engine.ledger`), each called by its
name (typed), with its errors mapped by `answer`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, Literal, TypeVar

from fastapi import APIRouter, Query
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from policies.capabilities import OnlineRouter, implements
from router.engine import Engine
from router.errors import BadRequest, NotFound, RouterError, ServiceUnavailable
from router.gateway.strict_json import StrictJSONRoute
from router.keys_admin import (
    KeyAdminError,
    KeyNotFound,
    create_key,
    describe,
    list_keys,
    revoke_key,
    update_key,
)
from router.ledger import Ledger, LedgerUnavailable

EVAL_REPORT = "eval.json"  # `moe-router eval --report <artifact>/eval.json` puts it where the console looks
MAX_REPORT_BYTES = 5 << 20
MAX_BUCKETS = 2000
MAX_UNIX_TIME = 253402300799.0  # 9999-12-31T23:59:59Z
NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"

T = TypeVar("T")


class KeyUpdate(BaseModel):
    """A key's budget and limits. In a PATCH, fields left out stay as they are; `null` removes a
    limit."""

    model_config = ConfigDict(extra="forbid")

    budget_usd: float | None = Field(None, ge=0, allow_inf_nan=False)
    budget_window: Literal["daily", "monthly", "total"] = "monthly"
    rpm: int | None = Field(None, ge=1)
    tpm: int | None = Field(None, ge=1)
    models: list[str] | None = Field(None, max_length=1000)
    team: str | None = Field(None, min_length=1, max_length=64)


class KeyCreate(KeyUpdate):
    """A new key: its name and the same budget and limits as an update."""

    name: str = Field(min_length=1, max_length=64)


class KeyNotFoundError(NotFound):
    code = "key_not_found"


def unix_time(name: str, value: float | None) -> float | None:
    """A query's time bound, or a 400: finite, and a date a database can hold (`inf`, `nan` and
    `1e300` are not; they used to reach the ledger and come back as an outage)."""
    if value is not None and not (math.isfinite(value) and 0 <= value <= MAX_UNIX_TIME):
        raise BadRequest(
            f"{name} must be a unix time in seconds between 0 and {MAX_UNIX_TIME:.0f}, got {value!r}",
            param=name,
            code="invalid_query",
        )
    return value


def _key_error(e: KeyAdminError) -> RouterError:
    msg = str(e)
    if "already exists" in msg:
        return RouterError(msg, status=409, code="key_exists")
    return BadRequest(msg, code="invalid_key_request")


def _no_store(body: Any, status: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers={"cache-control": "no-store"})


def eval_report(artifact: str | None) -> tuple[dict | None, str | None]:
    """(the compact eval report next to a trained artifact, or why there is none)."""
    if not artifact:
        return None, None
    f = Path(artifact) / EVAL_REPORT
    if not f.is_file():
        return None, f"no {EVAL_REPORT} in the artifact (moe-router eval --report {f})"
    if f.stat().st_size > MAX_REPORT_BYTES:
        return None, f"{EVAL_REPORT} is larger than {MAX_REPORT_BYTES} bytes"
    try:
        r = json.loads(f.read_text())
        sweep = [
            {"cost_weight": p["cost_weight"], "cost_usd": p["cost_usd"], "quality": p["quality"]}
            for p in r.get("sweep", [])
        ]
        return {
            "aiq": r.get("aiq"),
            "aiq_single_models": r.get("aiq_single_models"),
            "max_quality": r.get("max_quality"),
            "prompts": r.get("prompts"),
            "data": r.get("data"),
            "best_single": r.get("best_single"),
            "oracle": r.get("oracle"),
            "single_models": r.get("single_models", {}),
            "frontier": sweep,
        }, None
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        return None, f"{EVAL_REPORT} cannot be read: {type(e).__name__}"


def admin_routes(engine: Engine) -> APIRouter:
    api = APIRouter(prefix="/admin", route_class=StrictJSONRoute)
    config = engine.config
    store = engine.store

    def ledger() -> Ledger:
        """The request ledger; 503 when it is off on this gateway."""
        if engine.ledger is None:
            raise ServiceUnavailable(
                "the request ledger is off on this gateway (config 'ledger')", code="ledger_off"
            )
        return engine.ledger

    async def answer(query: Awaitable[T]) -> T:
        """A ledger query's answer: 400 for a query it cannot run, 503 when its database cannot answer."""
        try:
            return await query
        except ValueError as e:
            raise BadRequest(str(e), code="invalid_query") from None
        except LedgerUnavailable as e:
            raise ServiceUnavailable(
                str(e), code="ledger_unavailable", headers={"retry-after": "5"}
            ) from None

    @api.get("/session")
    async def session():
        """Who is logged in and what the console can offer (policies and models to pick from)."""
        return _no_store(
            {
                "admin": True,
                "default_policy": engine.policies.default,
                "policies": engine.policies.names,
                "models": [m.name for m in config.chat_models() if m.name not in engine.unavailable],
                "state": store.kind,
                "ledger": engine.ledger is not None,
                # whose traffic the console shows: this gateway's config and where its ledger is
                "config": config.source,
                "ledger_at": engine.ledger.where if engine.ledger is not None else None,
            }
        )

    # ---- keys ----------------------------------------------------------------------------------
    @api.get("/keys")
    async def keys():
        return _no_store({"object": "list", "data": await list_keys(store, config)})

    @api.post("/keys")
    async def create(body: KeyCreate):
        try:
            raw, rec = await create_key(store, config, **body.model_dump())
        except KeyAdminError as e:
            raise _key_error(e) from None
        # the only time the raw key leaves the gateway; it is not stored or logged
        return _no_store({**await describe(store, config, rec), "key": raw}, status=201)

    @api.patch("/keys/{name}")
    async def update(body: KeyUpdate, name: str = PathParam(pattern=NAME)):
        changes = body.model_dump(include=body.model_fields_set)
        if not changes:
            raise BadRequest("nothing to change: send at least one field", code="invalid_key_request")
        try:
            rec = await update_key(store, config, name, changes)
        except KeyAdminError as e:
            raise _key_error(e) from None
        except KeyNotFound as e:
            raise KeyNotFoundError(str(e.args[0])) from None
        return _no_store(await describe(store, config, rec))

    @api.delete("/keys/{name}")
    async def revoke(name: str = PathParam(pattern=NAME)):
        try:
            rec = await revoke_key(store, name)
        except KeyNotFound as e:
            raise KeyNotFoundError(str(e.args[0])) from None
        return _no_store(rec.public())

    # ---- the ledger ----------------------------------------------------------------------------
    @api.get("/spend")
    async def spend(
        group_by: Literal["key", "model", "day"] = Query("key"),
        since: float | None = Query(None),
        until: float | None = Query(None),
    ):
        since, until = unix_time("since", since), unix_time("until", until)
        rows = await answer(ledger().spend(group_by=group_by, since=since, until=until))
        return _no_store({"object": "list", "group_by": group_by, "data": rows})

    @api.get("/requests")
    async def requests(
        key: str | None = Query(None, max_length=64),
        model: str | None = Query(None, max_length=256),
        policy: str | None = Query(None, max_length=256),
        status: str | None = Query(None, pattern=r"^[a-z_]{1,32}$"),
        limit: int = Query(50, ge=1, le=500),
        since: float | None = Query(None),
        before: float | None = Query(None),
        q: str | None = Query(None, max_length=200),
    ):
        since, before = unix_time("since", since), unix_time("before", before)
        rows = await answer(
            ledger().recent(
                prompt=q,
                limit=limit,
                key=key,
                model=model,
                policy=policy,
                status=status,
                since=since,
                before=before,
            )
        )
        return _no_store({"object": "list", "data": rows})

    @api.get("/requests/{request_id}")
    async def request_detail(request_id: str = PathParam(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")):
        row = await answer(ledger().get(request_id))
        if row is None:
            raise NotFound(f"no request {request_id!r} in the ledger", code="request_not_found")
        return _no_store(row)

    @api.get("/overview")
    async def overview(
        since: float | None = Query(None),
        bucket_s: int = Query(60, ge=1, le=86400),
    ):
        now = time.time()
        since = now - 3600 if since is None else unix_time("since", since)
        if (now - since) / bucket_s > MAX_BUCKETS:
            raise BadRequest(
                f"too many buckets: (now - since) / bucket_s must be at most {MAX_BUCKETS}",
                param="bucket_s",
                code="invalid_query",
            )
        return _no_store(
            {
                "since": since,
                "bucket_s": bucket_s,
                **await answer(ledger().overview(since=since, bucket_s=bucket_s)),
            }
        )

    # ---- policies and models -------------------------------------------------------------------
    @api.get("/policies")
    async def policies():
        specs = config.routing.policies
        out = []
        for name, p in engine.policies.items():
            spec = specs.get(name)
            artifact = spec.artifact if spec else None
            report, why = eval_report(artifact)
            out.append(
                {
                    "name": name,
                    "type": (spec.type if spec and spec.type else None) or getattr(p, "name", name),
                    "default": name == engine.policies.default,
                    "online": implements(p, OnlineRouter),
                    "trained": artifact is not None,
                    "artifact": artifact,
                    "models": list(getattr(p, "models_", None) or []),
                    "eval": report,
                    "eval_missing": why,
                }
            )
        return _no_store({"object": "list", "data": out})

    @api.get("/models")
    async def models():
        names = [m.name for m in config.models]
        health = await store.health.snapshot(names)
        irt = engine.policies.get("irt")  # where its quality comes from: trained, calibrated, ...
        sources = irt.sources() if irt is not None and hasattr(irt, "sources") else {}
        experts = engine.metrics.expert_load()  # this replica's, since it started
        out = []
        for spec in config.models:
            h = health.get(spec.name)
            out.append(
                {
                    "name": spec.name,
                    "kind": spec.kind,
                    "backend": spec.backend,
                    "available": spec.name not in engine.unavailable,
                    "unavailable_reason": engine.unavailable.get(spec.name),
                    "input_price_per_1m": spec.input_price_per_1m,
                    "output_price_per_1m": spec.output_price_per_1m,
                    "quality": spec.quality.get("default") if spec.quality else None,
                    "quality_source": sources.get(spec.name),
                    "context_window": spec.context_window,
                    "breaker": h.breaker if h else None,
                    "latency_ewma_ms": h.ewma_ms if h else None,
                    "latency_p95_ms": h.p95_ms if h else None,
                    "samples": h.samples if h else 0,
                    "experts": experts.get(spec.name),
                }
            )
        return _no_store({"object": "list", "data": out})

    return api
