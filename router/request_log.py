"""One log line per settled request on the `moe_router.requests` logger (config `log.requests`).

What is in it: id, key name, policy, model, status, tokens, cost, latency, cache, fallbacks and
the error message. What is never in it: prompt or answer text, or any key material.

    text: request id=chatcmpl-… key=alice policy=category model=gpt-4o-mini status=ok tokens=12+40 cost_usd=0.000026 latency_ms=812 cache=-
    json: {"event": "request", "id": "chatcmpl-…", "key": "alice", ...}
"""

from __future__ import annotations

import json
import logging

from router.state import RequestRecord

log = logging.getLogger("moe_router.requests")


def fields(rec: RequestRecord) -> dict:
    return {
        "id": rec.id,
        "key": rec.key,
        "policy": rec.policy,
        "model": rec.model,
        "status": rec.status,
        "prompt_tokens": rec.prompt_tokens,
        "completion_tokens": rec.completion_tokens,
        "cost_usd": round(rec.cost_usd, 8),
        "latency_ms": round(rec.latency_ms, 1),
        "cache": rec.cache,
        "fallbacks": list(rec.fallbacks),
        "error": rec.error,
    }


def log_request(rec: RequestRecord, mode: str) -> None:
    if mode == "off" or not log.isEnabledFor(logging.INFO):
        return
    f = fields(rec)
    if mode == "json":
        log.info("%s", json.dumps({"event": "request", **f}, separators=(",", ":")))
        return
    line = (
        f"request id={f['id']} key={f['key'] or '-'} policy={f['policy'] or '-'} model={f['model'] or '-'} "
        f"status={f['status']} tokens={f['prompt_tokens']}+{f['completion_tokens']} "
        f"cost_usd={f['cost_usd']:.6f} latency_ms={f['latency_ms']:.0f} cache={f['cache'] or '-'}"
    )
    if f["fallbacks"]:
        line += f" fallbacks={','.join(f['fallbacks'])}"
    if f["error"]:
        line += f" error={json.dumps(f['error'])}"
    log.info("%s", line)
