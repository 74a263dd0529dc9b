"""Small per-conversation state with a TTL, shared across replicas on Redis.

Conversation affinity (`aff:<conversation>` -> the model it runs on); stored Responses-API
responses have their own store (router.state.responses). Values are JSON objects; each key expires `ttl_s` after it was last written.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from typing import Any, Protocol


class Sessions(Protocol):
    async def get(self, key: str) -> dict[str, Any] | None: ...
    async def put(self, key: str, value: dict[str, Any], ttl_s: float) -> None: ...


class MemorySessions:
    def __init__(self, max_items: int = 100_000, clock=time.monotonic):
        self._items: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()
        self.max_items = max_items
        self._clock = clock

    async def get(self, key: str) -> dict[str, Any] | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item[0] < self._clock():
            del self._items[key]
            return None
        return item[1]

    async def put(self, key: str, value: dict[str, Any], ttl_s: float) -> None:
        self._items[key] = (self._clock() + ttl_s, value)
        self._items.move_to_end(key)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)


class RedisSessions:
    def __init__(self, redis, prefix: str = "moe:sess:"):
        self.redis = redis
        self.p = prefix

    async def get(self, key: str) -> dict[str, Any] | None:
        raw = await self.redis.get(self.p + key)
        return json.loads(raw) if raw else None

    async def put(self, key: str, value: dict[str, Any], ttl_s: float) -> None:
        await self.redis.set(self.p + key, json.dumps(value), px=max(1, int(ttl_s * 1000)))
