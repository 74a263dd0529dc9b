"""Gateway state: keys, budgets, rate limits, ledger, caches, model health — in process or on Redis."""

from router.state.degrade import StateUnavailable
from router.state.records import FeedbackRecord, RequestRecord
from router.state.store import HealthOptions, MemoryStore, RedisStore, Store

__all__ = [
    "FeedbackRecord",
    "HealthOptions",
    "MemoryStore",
    "RedisStore",
    "RequestRecord",
    "StateUnavailable",
    "Store",
]
