"""Requests- and tokens-per-minute limits per key: sliding-window counters, checked atomically.

The estimate for the last 60 s is `current_minute + previous_minute * (1 - elapsed_fraction)`
(the usual sliding-window counter: O(1) memory per key, accurate to within the previous
window's unevenness). A request is admitted only if both its request and its tokens fit, and
then both are counted in the same step (one Lua script on Redis).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Protocol

WINDOW_S = 60


@dataclass
class RateDecision:
    allowed: bool
    limit: str | None = None  # "rpm" | "tpm" when refused
    retry_after_s: float = 0.0
    window: int | None = None  # the minute the request was counted in (its tokens are corrected there)


def minute_window(now: float) -> tuple[int, float]:
    """The minute `now` falls in, and how far into it (0..1)."""
    w = int(now // WINDOW_S)
    return w, (now - w * WINDOW_S) / WINDOW_S


def retry_after(cur: float, prev: float, frac: float, need: float, limit: float) -> float:
    """Seconds until `need` more fits under `limit` as the windows slide (at least 1)."""
    if need > limit:
        return WINDOW_S  # never fits in one minute; the caller says so
    if cur + need <= limit and prev > 0:
        # est(f) = prev * (1 - f) + cur <= limit - need   =>   f >= 1 - (limit - need - cur) / prev
        f = 1 - (limit - need - cur) / prev
        return max(1.0, (f - frac) * WINDOW_S)
    # the current window alone is too full: wait for the next one, where it weighs (1 - f)
    f_next = 1 - (limit - need) / cur if cur > 0 else 0.0
    return max(1.0, ((1 - frac) + f_next) * WINDOW_S)


def check(
    cur_r: float,
    prev_r: float,
    cur_t: float,
    prev_t: float,
    frac: float,
    rpm: int | None,
    tpm: int | None,
    tokens: int,
) -> RateDecision:
    if rpm is not None:
        est = prev_r * (1 - frac) + cur_r
        if est + 1 > rpm:
            return RateDecision(False, "rpm", math.ceil(retry_after(cur_r, prev_r, frac, 1, rpm)))
    if tpm is not None:
        est = prev_t * (1 - frac) + cur_t
        if est + tokens > tpm:
            return RateDecision(False, "tpm", math.ceil(retry_after(cur_t, prev_t, frac, tokens, tpm)))
    return RateDecision(True)


class RateLimiter(Protocol):
    async def hit(self, key_id: str, rpm: int | None, tpm: int | None, tokens: int) -> RateDecision: ...

    async def adjust_tokens(self, key_id: str, delta: int, window: int) -> None:
        """Correct the tokens counted at admission, in the window that counted them, by the real
        usage once known (a window no longer in the sliding estimate is left alone)."""


class MemoryRateLimiter:
    def __init__(self, clock=time.time):
        self._clock = clock
        self._counts: dict[tuple[str, str, int], float] = {}

    async def hit(self, key_id: str, rpm: int | None, tpm: int | None, tokens: int) -> RateDecision:
        w, frac = minute_window(self._clock())
        c = self._counts
        d = check(
            c.get((key_id, "r", w), 0),
            c.get((key_id, "r", w - 1), 0),
            c.get((key_id, "t", w), 0),
            c.get((key_id, "t", w - 1), 0),
            frac,
            rpm,
            tpm,
            tokens,
        )
        if d.allowed:
            c[(key_id, "r", w)] = c.get((key_id, "r", w), 0) + 1
            c[(key_id, "t", w)] = c.get((key_id, "t", w), 0) + tokens
            for k in [k for k in c if k[2] < w - 1]:
                del c[k]
            d.window = w
        return d

    async def adjust_tokens(self, key_id: str, delta: int, window: int) -> None:
        w, _ = minute_window(self._clock())
        if delta and window >= w - 1:
            self._counts[(key_id, "t", window)] = self._counts.get((key_id, "t", window), 0) + delta


# KEYS: req cur, req prev, tok cur, tok prev. ARGV: rpm (-1 none), tpm (-1 none), tokens, frac.
# Returns {0} admitted, or {1|2, cur, prev} refused by rpm|tpm with the counts for Retry-After.
_HIT = """
local rpm, tpm, tokens, frac = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local rc, rp = tonumber(redis.call('GET', KEYS[1]) or '0'), tonumber(redis.call('GET', KEYS[2]) or '0')
local tc, tp = tonumber(redis.call('GET', KEYS[3]) or '0'), tonumber(redis.call('GET', KEYS[4]) or '0')
if rpm >= 0 and rp * (1 - frac) + rc + 1 > rpm then return {1, rc, rp} end
if tpm >= 0 and tp * (1 - frac) + tc + tokens > tpm then return {2, tc, tp} end
redis.call('INCR', KEYS[1]); redis.call('EXPIRE', KEYS[1], 150)
redis.call('INCRBY', KEYS[3], tokens); redis.call('EXPIRE', KEYS[3], 150)
return {0}
"""


class RedisRateLimiter:
    def __init__(self, redis, prefix: str = "moe:rate:", clock=time.time):
        self.redis = redis
        self.prefix = prefix
        self._clock = clock
        self._hit = redis.register_script(_HIT)

    def window(self) -> tuple[int, float]:
        """The current minute and how far into it, by this limiter's clock."""
        return minute_window(self._clock())

    def counter_keys(self, key_id: str, w: int) -> list[str]:
        """Key layout: requests in minute `w` and `w - 1`, then tokens in `w` and `w - 1`."""
        p = f"{self.prefix}{key_id}:"
        return [f"{p}r:{w}", f"{p}r:{w - 1}", f"{p}t:{w}", f"{p}t:{w - 1}"]

    async def hit(self, key_id: str, rpm: int | None, tpm: int | None, tokens: int) -> RateDecision:
        w, frac = minute_window(self._clock())
        res = await self._hit(
            keys=self.counter_keys(key_id, w),
            args=[-1 if rpm is None else rpm, -1 if tpm is None else tpm, tokens, frac],
        )
        if int(res[0]) == 0:
            return RateDecision(True, window=w)
        which, cur, prev = int(res[0]), float(res[1]), float(res[2])
        limit, need = (rpm, 1) if which == 1 else (tpm, tokens)
        return RateDecision(
            False, "rpm" if which == 1 else "tpm", math.ceil(retry_after(cur, prev, frac, need, limit))
        )

    async def adjust_tokens(self, key_id: str, delta: int, window: int) -> None:
        w, _ = minute_window(self._clock())
        if not delta or window < w - 1:  # that minute no longer counts
            return
        key = self.counter_keys(key_id, window)[2]
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incrby(key, delta)
            pipe.expire(key, 150)
            await pipe.execute()
