"""Latency tracking and the circuit breaker's state machine (with a controllable clock)."""

from __future__ import annotations

import pytest

from router.health import CLOSED, HALF_OPEN, OPEN, MemoryHealth


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


async def test_ewma_and_p95():
    h = MemoryHealth(ewma_alpha=0.5, window=100)
    for ms in (100, 200, 300):
        await h.record_success("m", ms)
    s = (await h.snapshot(["m"]))["m"]
    assert s.ewma_ms == pytest.approx(0.5 * 300 + 0.25 * 200 + 0.25 * 100)
    assert s.samples == 3 and 280 <= s.p95_ms <= 300


async def test_breaker_opens_probes_and_closes():
    clock = Clock()
    h = MemoryHealth(failure_threshold=2, reset_after_s=10, clock=clock)
    assert await h.acquire("m")
    await h.record_failure("m")
    assert (await h.snapshot(["m"]))["m"].breaker == CLOSED
    await h.record_failure("m")
    assert (await h.snapshot(["m"]))["m"].breaker == OPEN
    assert not await h.acquire("m")
    clock.t += 10
    assert (await h.snapshot(["m"]))["m"].breaker == HALF_OPEN
    assert await h.acquire("m")  # the probe
    assert not await h.acquire("m")  # only one probe at a time
    assert (await h.snapshot(["m"]))["m"].routable is False
    await h.record_success("m", 50)
    assert (await h.snapshot(["m"]))["m"].breaker == CLOSED
    assert await h.acquire("m")


async def test_failed_probe_reopens():
    clock = Clock()
    h = MemoryHealth(failure_threshold=3, reset_after_s=5, clock=clock)
    for _ in range(3):
        await h.record_failure("m")
    clock.t += 5
    assert await h.acquire("m")
    await h.record_failure("m")
    assert (await h.snapshot(["m"]))["m"].breaker == OPEN
    clock.t += 4.9
    assert not await h.acquire("m")


async def test_released_probe_can_be_retaken():
    clock = Clock()
    h = MemoryHealth(failure_threshold=1, reset_after_s=1, clock=clock)
    await h.record_failure("m")
    clock.t += 1
    assert await h.acquire("m")
    await h.release("m")
    assert await h.acquire("m")
