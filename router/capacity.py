"""Capacity-aware dispatch: take a slot on a model before sending it a request, give it back after.

The MoE idea of expert capacity applied to models: a model with `max_concurrency` or `tpm_limit`
admits a request only while it has room (counted across replicas in the state store); a full
model is skipped for the next candidate of the plan (a spill) instead of queuing the request.

`release` is synchronous and idempotent: it marks the lease released and hands the state update
to a task of its own, so it is safe in any `finally` and on a cancelled request's path (an await
there would be cancelled with the request and leak the slot). Leases still held are renewed in
the background, so a long stream keeps its slot while a crashed replica's slots expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping

from router.config import ModelSpec
from router.metrics import Metrics
from router.state.capacity import CapacityState, Full, Lease, Limits

log = logging.getLogger("moe_router.capacity")


class Capacity:
    def __init__(self, specs: Mapping[str, ModelSpec], state: CapacityState, metrics: Metrics, ttl_s: float):
        self.limits = {
            n: Limits(s.max_concurrency, s.tpm_limit)
            for n, s in specs.items()
            if s.max_concurrency is not None or s.tpm_limit is not None
        }
        self.expected_output = {n: s.expected_output_tokens for n, s in specs.items()}
        self.state = state
        self.metrics = metrics
        self.ttl_s = ttl_s
        self._held: set[Lease] = set()  # this replica's leases, renewed while held
        self._tasks: set[asyncio.Task] = set()
        self._renewer: asyncio.Task | None = None

    def need(self, model: str, prompt_tokens: int, output_cap: int | None) -> int:
        """Tokens a request is counted for when dispatched: its prompt and expected output."""
        expected = self.expected_output.get(model, 0)
        return prompt_tokens + (min(output_cap, expected) if output_cap is not None else expected)

    async def acquire(self, model: str, tokens: int) -> Lease | Full | None:
        """A lease on `model`, `Full` when it has no room, None when it has no limits."""
        limits = self.limits.get(model)
        if limits is None:
            return None
        # shielded: a request cancelled while the store admits it must not leave the slot taken
        taking = asyncio.ensure_future(self.state.try_acquire(model, limits, tokens, self.ttl_s))
        try:
            got = await asyncio.shield(taking)
        except asyncio.CancelledError:
            taking.add_done_callback(self._give_back_unused)
            raise
        if isinstance(got, Full):
            self.metrics.spillover.labels(model, got.reason).inc()
            return got
        self._held.add(got)
        self._gauge(model)
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew_forever())
        return got

    def release(self, lease: Lease | None, actual_tokens: int | None = None) -> None:
        """Give the slot back (once; later calls do nothing). `actual_tokens`: the request's real
        token count, which replaces the estimate in its minute (None: keep the estimate)."""
        if lease is None or lease not in self._held:
            return
        self._held.discard(lease)
        self._gauge(lease.model)
        task = asyncio.get_running_loop().create_task(self._release(lease, actual_tokens))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _give_back_unused(self, taking: asyncio.Future) -> None:
        if not taking.cancelled() and taking.exception() is None and isinstance(taking.result(), Lease):
            self._held.add(taking.result())
            self.release(taking.result())

    async def _release(self, lease: Lease, actual_tokens: int | None) -> None:
        try:
            await self.state.release(lease, actual_tokens)
        except Exception as e:  # noqa: BLE001 - the lease then expires on its own after its TTL
            log.error("releasing a %s capacity slot failed (%s); it expires after its lease", lease.model, e)

    def _gauge(self, model: str) -> None:
        self.metrics.in_flight.labels(model).set(sum(1 for x in self._held if x.model == model))

    async def _renew_forever(self) -> None:
        while self._held:
            await asyncio.sleep(self.ttl_s / 3)
            try:
                await self.state.renew(list(self._held), self.ttl_s)
            except Exception as e:  # noqa: BLE001 - retried on the next round
                log.warning("renewing capacity leases failed: %s", e)

    async def in_flight(self) -> dict[str, int]:
        """Requests in flight on each limited model (all replicas, as the state store counts them)."""
        return await self.state.in_flight(list(self.limits))

    async def status(self) -> dict[str, dict]:
        """Per limited model: its limits, requests in flight and whether it is full now (what a
        request dispatched now would find; `/v1/route` shows it)."""
        counts = await self.in_flight()
        return {
            m: {
                "max_concurrency": lim.max_concurrency,
                "tpm_limit": lim.tpm,
                "in_flight": counts[m],
                "full": lim.max_concurrency is not None and counts[m] >= lim.max_concurrency,
            }
            for m, lim in self.limits.items()
        }

    async def aclose(self) -> None:
        """Shutdown: the releases still running finish (the renewal stops)."""
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=10)
