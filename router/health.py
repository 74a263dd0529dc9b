"""Per-model health: measured latency (EWMA + p95) and a circuit breaker.

`ModelHealth` is the interface the engine uses; `MemoryHealth` keeps it in process. The Redis
implementation (router/state) shares it across replicas, so all of them stop sending to a
failing model together. Methods are async so both implementations fit.

Breaker: `failure_threshold` consecutive failures open the circuit; after `reset_after_s` one
probe request is let through (half-open); its success closes the circuit, its failure re-opens it.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


@dataclass
class ModelStatus:
    ewma_ms: float | None = None
    p95_ms: float | None = None
    samples: int = 0
    breaker: str = CLOSED

    @property
    def routable(self) -> bool:
        """Open circuits are skipped; a half-open one may take its probe."""
        return self.breaker != OPEN


class ModelHealth(Protocol):
    async def snapshot(self, models: Sequence[str]) -> dict[str, ModelStatus]: ...

    async def acquire(self, model: str) -> bool:
        """May a request be sent to `model` now? (False while open, or while a half-open probe is out.)"""

    async def record_success(self, model: str, latency_ms: float) -> None: ...

    async def record_failure(self, model: str) -> None: ...

    async def release(self, model: str) -> None:
        """The acquired attempt ended without a verdict on the model (e.g. the client went away)."""


@dataclass
class _Entry:
    ewma: float | None = None
    window: deque = field(default_factory=deque)
    failures: int = 0
    opened_at: float | None = None
    probe_out: bool = False
    p95: float | None = None  # cached percentile of `window`, recomputed after it changes
    p95_stale: bool = False


class MemoryHealth:
    def __init__(
        self,
        failure_threshold: int = 5,
        reset_after_s: float = 30.0,
        ewma_alpha: float = 0.2,
        window: int = 200,
        clock=time.monotonic,
    ):
        self.failure_threshold = failure_threshold
        self.reset_after_s = reset_after_s
        self.ewma_alpha = ewma_alpha
        self.window = window
        self._clock = clock
        self._entries: dict[str, _Entry] = {}

    def _entry(self, model: str) -> _Entry:
        e = self._entries.get(model)
        if e is None:
            e = self._entries[model] = _Entry(window=deque(maxlen=self.window))
        return e

    def _state(self, e: _Entry) -> str:
        if e.opened_at is None:
            return CLOSED
        if self._clock() - e.opened_at >= self.reset_after_s:
            return HALF_OPEN
        return OPEN

    def _status(self, e: _Entry) -> ModelStatus:
        state = self._state(e)
        if state == HALF_OPEN and e.probe_out:
            state = OPEN
        if e.p95_stale:  # nearest rank, as the Redis implementation computes it
            xs = sorted(e.window)
            e.p95, e.p95_stale = float(xs[max(0, math.ceil(0.95 * len(xs)) - 1)]), False
        return ModelStatus(ewma_ms=e.ewma, p95_ms=e.p95, samples=len(e.window), breaker=state)

    async def snapshot(self, models: Sequence[str]) -> dict[str, ModelStatus]:
        return {m: self._status(self._entry(m)) for m in models}

    async def acquire(self, model: str) -> bool:
        e = self._entry(model)
        state = self._state(e)
        if state == CLOSED:
            return True
        if state == HALF_OPEN and not e.probe_out:
            e.probe_out = True
            return True
        return False

    async def record_success(self, model: str, latency_ms: float) -> None:
        e = self._entry(model)
        e.failures, e.opened_at, e.probe_out = 0, None, False
        e.window.append(latency_ms)
        e.p95_stale = True
        e.ewma = (
            latency_ms if e.ewma is None else self.ewma_alpha * latency_ms + (1 - self.ewma_alpha) * e.ewma
        )

    async def record_failure(self, model: str) -> None:
        e = self._entry(model)
        e.failures += 1
        if e.probe_out or e.failures >= self.failure_threshold:
            e.opened_at = self._clock()
        e.probe_out = False

    async def release(self, model: str) -> None:
        self._entry(model).probe_out = False
