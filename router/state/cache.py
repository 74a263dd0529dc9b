"""Response caches: exact (hash of the request) and semantic (embedding similarity).

Both are scoped (the caller passes a scope per API key and requested model, so keys never see
each other's answers) and expire after a TTL. The semantic cache compares a prompt with the
`max_entries` most recent prompts of its scope (int8-quantised unit vectors, cosine similarity)
and returns the best match above the threshold.
"""

from __future__ import annotations

import hashlib
import json
import struct
import time
from collections import OrderedDict, deque
from typing import Any, Protocol

import numpy as np


def exact_key(scope: str, payload: dict[str, Any]) -> str:
    canon = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(f"{scope}\n{canon}".encode()).hexdigest()


def quantize(vec: np.ndarray) -> bytes:
    return np.clip(np.round(np.asarray(vec, dtype=np.float32) * 127), -127, 127).astype(np.int8).tobytes()


def _best(
    vec: np.ndarray, entries: list[tuple[float, bytes, dict]], threshold: float, now: float, ttl: float
):
    live = [(q, v) for t, q, v in entries if now - t <= ttl]
    if not live:
        return None
    mat = np.frombuffer(b"".join(q for q, _ in live), dtype=np.int8).reshape(len(live), -1).astype(np.float32)
    sims = mat @ (np.asarray(vec, dtype=np.float32) * 127) / (127 * 127)
    i = int(sims.argmax())
    if sims[i] < threshold:
        return None
    return {**live[i][1], "similarity": float(sims[i])}


class ResponseCache(Protocol):
    async def get(self, key: str) -> dict | None: ...
    async def put(self, key: str, value: dict, ttl_s: float) -> None: ...
    async def similar(self, scope: str, vec: np.ndarray, threshold: float, ttl_s: float) -> dict | None: ...
    async def add(self, scope: str, vec: np.ndarray, value: dict, ttl_s: float, max_entries: int) -> None: ...


class MemoryCache:
    def __init__(self, max_items: int = 10_000, clock=time.time):
        self._exact: OrderedDict[str, tuple[float, dict]] = OrderedDict()
        self._semantic: dict[str, deque] = {}
        self.max_items = max_items
        self._clock = clock

    async def get(self, key: str) -> dict | None:
        hit = self._exact.get(key)
        if hit is None:
            return None
        if hit[0] < self._clock():
            del self._exact[key]
            return None
        return hit[1]

    async def put(self, key: str, value: dict, ttl_s: float) -> None:
        self._exact[key] = (self._clock() + ttl_s, value)
        self._exact.move_to_end(key)
        while len(self._exact) > self.max_items:
            self._exact.popitem(last=False)

    async def similar(self, scope: str, vec: np.ndarray, threshold: float, ttl_s: float) -> dict | None:
        return _best(vec, list(self._semantic.get(scope, ())), threshold, self._clock(), ttl_s)

    async def add(self, scope: str, vec: np.ndarray, value: dict, ttl_s: float, max_entries: int) -> None:
        dq = self._semantic.setdefault(scope, deque(maxlen=max_entries))
        dq.appendleft((self._clock(), quantize(vec), value))


_HEAD = struct.Struct("<dI")  # timestamp, length of the JSON value


class RedisCache:
    def __init__(self, redis, prefix: str = "moe:cache:", clock=time.time):
        self.redis = redis
        self.p = prefix
        self._clock = clock

    async def get(self, key: str) -> dict | None:
        raw = await self.redis.get(f"{self.p}x:{key}")
        return json.loads(raw) if raw else None

    async def put(self, key: str, value: dict, ttl_s: float) -> None:
        await self.redis.set(f"{self.p}x:{key}", json.dumps(value), px=max(1, int(ttl_s * 1000)))

    async def similar(self, scope: str, vec: np.ndarray, threshold: float, ttl_s: float) -> dict | None:
        raw = await self.redis.lrange(f"{self.p}s:{scope}", 0, -1)
        entries = []
        for r in raw:
            t, n = _HEAD.unpack_from(r)
            value = json.loads(r[_HEAD.size : _HEAD.size + n])
            entries.append((t, r[_HEAD.size + n :], value))
        return _best(vec, entries, threshold, self._clock(), ttl_s)

    async def add(self, scope: str, vec: np.ndarray, value: dict, ttl_s: float, max_entries: int) -> None:
        body = json.dumps(value).encode()
        entry = _HEAD.pack(self._clock(), len(body)) + body + quantize(vec)
        key = f"{self.p}s:{scope}"
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lpush(key, entry)
            pipe.ltrim(key, 0, max_entries - 1)
            pipe.pexpire(key, max(1, int(ttl_s * 1000)))
            await pipe.execute()
