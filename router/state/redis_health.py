"""Model health shared by all replicas through Redis: latency EWMA + p95 and the circuit breaker.

Same semantics as `router.health.MemoryHealth` (see there), made atomic with Lua: when one
replica's failures open a model's circuit, every replica stops sending to it; after
`reset_after_s` exactly one replica wins the half-open probe (a `SET NX` with a TTL, so a
replica that dies while probing does not hold the probe forever).

Keys: `moe:health:<model>` hash {ewma, n, p95, failures, opened_at}, `moe:lat:<model>` list of
recent latencies, `moe:probe:<model>` the probe claim. Times are wall-clock seconds from the
replicas (they are assumed NTP-synchronised to well under `reset_after_s`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from router.health import CLOSED, HALF_OPEN, OPEN, ModelStatus

# KEYS: hash, probe. ARGV: now, reset_after_s, probe_ttl_ms. Returns 1 if the caller may send.
_ACQUIRE = """
local opened = redis.call('HGET', KEYS[1], 'opened_at')
if not opened then return 1 end
if tonumber(ARGV[1]) - tonumber(opened) < tonumber(ARGV[2]) then return 0 end
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[3]) then return 1 end
return 0
"""

# KEYS: hash, probe. ARGV: now, failure_threshold
_FAILURE = """
local f = redis.call('HINCRBY', KEYS[1], 'failures', 1)
local probing = redis.call('DEL', KEYS[2])
if probing == 1 or f >= tonumber(ARGV[2]) or redis.call('HEXISTS', KEYS[1], 'opened_at') == 1 then
  redis.call('HSET', KEYS[1], 'opened_at', ARGV[1])
end
return f
"""

# A success, as a Lua function (the settlement script, router.state.admission, calls it too):
# hash, probe, latencies keys; latency_ms, alpha, window.
SUCCESS_FN = """
local function success(h, probe, lat, latency, alpha, window)
  redis.call('HSET', h, 'failures', 0)
  redis.call('HDEL', h, 'opened_at')
  redis.call('DEL', probe)
  local x, a = tonumber(latency), tonumber(alpha)
  local e = redis.call('HGET', h, 'ewma')
  if e then e = a * x + (1 - a) * tonumber(e) else e = x end
  redis.call('HSET', h, 'ewma', tostring(e))
  redis.call('LPUSH', lat, latency)
  redis.call('LTRIM', lat, 0, tonumber(window) - 1)
  local xs = redis.call('LRANGE', lat, 0, -1)
  for i = 1, #xs do xs[i] = tonumber(xs[i]) end
  table.sort(xs)
  local k = math.max(1, math.ceil(0.95 * #xs))
  redis.call('HSET', h, 'p95', tostring(xs[k]), 'n', #xs)
end
"""

# KEYS: hash, probe, latencies. ARGV: latency_ms, alpha, window
_SUCCESS = (
    SUCCESS_FN
    + """
success(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3])
return 1
"""
)


class RedisHealth:
    def __init__(
        self,
        redis,
        failure_threshold: int = 5,
        reset_after_s: float = 30.0,
        ewma_alpha: float = 0.2,
        window: int = 200,
        probe_ttl_s: float = 120.0,
        prefix: str = "moe:",
        clock=time.time,
    ):
        self.redis = redis
        self.failure_threshold = failure_threshold
        self.reset_after_s = reset_after_s
        self.ewma_alpha = ewma_alpha
        self.window = window
        self.probe_ttl_ms = int(probe_ttl_s * 1000)
        self.p = prefix
        self._clock = clock
        self._acquire = redis.register_script(_ACQUIRE)
        self._failure = redis.register_script(_FAILURE)
        self._success = redis.register_script(_SUCCESS)

    def keys_of(self, model: str) -> list[str]:
        """Key layout: the model's health hash, its half-open probe, its latencies."""
        return [f"{self.p}health:{model}", f"{self.p}probe:{model}", f"{self.p}lat:{model}"]

    async def snapshot(self, models: Sequence[str]) -> dict[str, ModelStatus]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for m in models:
                h, probe, _ = self.keys_of(m)
                pipe.hmget(h, "ewma", "p95", "n", "opened_at")
                pipe.exists(probe)
            res = await pipe.execute()
        now = self._clock()
        out = {}
        for i, m in enumerate(models):
            (ewma, p95, n, opened), probe_out = res[2 * i], res[2 * i + 1]
            state = CLOSED
            if opened is not None:
                state = OPEN if now - float(opened) < self.reset_after_s or probe_out else HALF_OPEN
            out[m] = ModelStatus(
                ewma_ms=float(ewma) if ewma is not None else None,
                p95_ms=float(p95) if p95 is not None else None,
                samples=int(n or 0),
                breaker=state,
            )
        return out

    async def acquire(self, model: str) -> bool:
        h, probe, _ = self.keys_of(model)
        return bool(
            await self._acquire(keys=[h, probe], args=[self._clock(), self.reset_after_s, self.probe_ttl_ms])
        )

    async def record_success(self, model: str, latency_ms: float) -> None:
        await self._success(keys=self.keys_of(model), args=[latency_ms, self.ewma_alpha, self.window])

    async def record_failure(self, model: str) -> None:
        h, probe, _ = self.keys_of(model)
        await self._failure(keys=[h, probe], args=[self._clock(), self.failure_threshold])

    async def release(self, model: str) -> None:
        await self.redis.delete(self.keys_of(model)[1])
