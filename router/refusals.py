"""Refused requests are records: an operator sees why a key fails.

A request refused for its credentials (401), its permissions or origin (403, 421), its size or
shape (413, 415) or its limits (429: rate limit, budget) reaches no model and costs nothing, but
the operator needs to see it: a ledger record with status `refused`, the refusal's code and
message as its `error`, the key's name and id when the gateway knows them (a revoked key or a
wrong secret for a known key id: yes; a key that is not ours: no), no model and no cost. They show
on the console's Requests page and as the Overview's refusals series, and are counted in
`moe_router_refusals_total{code}`. (Refusals on the operator's own routes, `/admin` and `/ui`, are
only counted.)

Writing a record costs a Redis write: so an attacker cannot turn refusals into ledger growth,
records are written at most `RATE` per second per caller (a key id; anonymous and unknown-key
callers share one allowance), with bursts of `BURST`; refusals past that are counted, not recorded.
"""

from __future__ import annotations

import logging
import time

from router.access import Caller
from router.errors import RouterError
from router.metrics import Metrics
from router.planner import new_request_id
from router.state.records import RequestRecord

log = logging.getLogger("moe_router.refusals")

RECORDED_STATUSES = frozenset({401, 403, 413, 415, 421, 429})
RATE, BURST = 2.0, 20.0
MAX_CALLERS = 10_000
OPERATOR_PREFIXES = ("/admin", "/ui")  # allowances kept; the oldest are forgotten past this


class Refusals:
    def __init__(self, log_store, metrics: Metrics, spawn, rate: float = RATE, burst: float = BURST):
        self.log = log_store
        self.metrics = metrics
        self.spawn = spawn  # runs the write on its own (Account.spawn: waited for at shutdown)
        self.rate, self.burst = rate, burst
        self._allowance: dict[str, tuple[float, float]] = {}  # scope -> (tokens, last refill)

    def note(self, err: RouterError, caller: Caller | None = None, path: str = "") -> None:
        """Count a refusal and, within the caller's allowance, record it in the ledger."""
        if err.status not in RECORDED_STATUSES:
            return
        self.metrics.refusals.labels(err.code or "none").inc()
        if path.startswith(OPERATOR_PREFIXES):  # the console's own login: counted, not a key's record
            return
        who = caller if caller is not None else getattr(err, "caller", None)
        scope = who.scope if who is not None else "anonymous"
        if not self._allowed(scope):
            return
        record = RequestRecord(
            id=new_request_id(),
            model=None,
            policy=None,
            prompt="",
            status="refused",
            error=f"{err.code or err.status}: {err.message}"[:500] + (f" ({path})" if path else ""),
            key=who.name if who is not None else None,
            owner=scope,
        )
        self.spawn(self._write(record))

    async def _write(self, record: RequestRecord) -> None:
        try:
            await self.log.record_request(record)
        except Exception as e:  # noqa: BLE001 - a refusal's record is best effort; the answer is sent
            log.warning("a refusal could not be recorded: %s", type(e).__name__)

    def _allowed(self, scope: str) -> bool:
        now = time.monotonic()
        tokens, last = self._allowance.get(scope, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1:
            self._allowance[scope] = (tokens, now)
            return False
        if len(self._allowance) >= MAX_CALLERS and scope not in self._allowance:
            self._allowance.pop(next(iter(self._allowance)))
        self._allowance[scope] = (tokens - 1, now)
        return True
