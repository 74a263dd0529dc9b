"""Wiring: an engine's parts built from a config, in dependency order, and nothing else.

The engine (router.engine) is these parts plus the request path over them; tests and the SDK
pass their own `store`, `encoder` or `tracing`, everything else comes from the config.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from urllib.parse import urlsplit

from adapters import Adapter, build_adapter
from adapters.redact import secret_values
from policies.encoders import PromptEncoder
from router.access import Access
from router.account import Account, RequestHealth
from router.caching import ResponseCaching
from router.capacity import Capacity
from router.config import ModelSpec, RouterConfig
from router.conversations import Conversations
from router.dispatch import Dispatcher
from router.embed_batcher import EmbedBatcher
from router.executor import Executor
from router.feedback import Feedback
from router.ledger import Ledger, build_ledger
from router.metrics import Metrics
from router.planner import Planner
from router.policy_set import PolicySet, build_encoder
from router.probe import check_backends
from router.refusals import Refusals
from router.state import HealthOptions, MemoryStore, RedisStore, Store
from router.tracing import Tracing

log = logging.getLogger("moe_router")


def config_secrets(config: RouterConfig) -> frozenset[str]:
    """Every credential `config` holds, resolved: what the log must never show (adapters.redact).
    Models' secret-named params and headers, every `os.environ/NAME` a model reads, the master
    key, the passwords in the state and ledger URLs."""
    out: set[str] = set()
    for m in config.models:
        out |= secret_values(m.resolved_params())
        out |= {os.environ[n] for n in m.env_refs() if os.environ.get(n)}
    if master := config.auth.master():
        out.add(master)
    for url in (config.state, config.ledger or ""):
        with contextlib.suppress(ValueError):
            if password := urlsplit(url).password:
                out.add(password)
    return frozenset(out)


def build_store(config: RouterConfig, metrics: Metrics) -> Store:
    h = HealthOptions(
        config.breaker.failure_threshold,
        config.breaker.reset_after_s,
        config.health.ewma_alpha,
        config.health.window,
    )
    if config.state == "memory":
        return MemoryStore(h)
    o = config.outage
    return RedisStore(
        config.state,
        h,
        metrics=metrics,
        timeout_s=o.timeout_s,
        budgets=o.budgets,
        allowance=o.allowance,
        retry_every_s=o.retry_every_s,
        spill_path=o.spill_path,
        max_entries=config.log.max_entries,
        request_ttl_s=config.log.request_ttl_s,
        capacity_outage_share=config.capacity.outage_share,
        replay_s=o.replay_s,
        applied_ttl_s=o.applied_ttl_s,
    )


def build_adapters(config: RouterConfig) -> tuple[dict[str, Adapter], dict[str, str]]:
    """(adapters by model, why each model that has none cannot serve)."""
    adapters: dict[str, Adapter] = {}
    unavailable: dict[str, str] = {}
    for spec in config.models:
        hint = spec.missing_env_hint()
        if hint:
            unavailable[spec.name] = f"{hint} to enable it"
            continue
        try:
            adapters[spec.name] = build_adapter(spec.backend, spec.resolved_params())
        except (TypeError, ValueError, ImportError) as e:
            unavailable[spec.name] = f"backend {spec.backend!r} cannot be built: {e}"
    return adapters, unavailable


@dataclass(eq=False, repr=False)
class Parts:
    """An engine's parts (see router.engine for what each does on a request's way)."""

    config: RouterConfig
    tracing: Tracing
    specs: dict[str, ModelSpec]
    metrics: Metrics
    encoder: PromptEncoder
    policies: PolicySet
    embedder: EmbedBatcher
    store: Store
    ledger: Ledger | None  # None: `ledger: none`
    access: Access
    caching: ResponseCaching
    conversations: Conversations
    adapters: dict[str, Adapter]
    unavailable: dict[str, str]
    capacity: Capacity
    dispatcher: Dispatcher
    planner: Planner
    account: Account
    refusals: Refusals  # refused requests as ledger records
    executor: Executor
    feedbacks: Feedback
    warmup: bool  # local models load at start and /ready waits for them


def wire(
    config: RouterConfig,
    *,
    store: Store | None = None,
    encoder: PromptEncoder | None = None,
    tracing: Tracing | None = None,
) -> Parts:
    check_backends(config.models)  # a typo'd backend is an error, not an unavailable model
    metrics = Metrics()
    enc = config.encoder
    encoder = encoder or build_encoder(config)
    policies = PolicySet(config, encoder)
    embedder = EmbedBatcher(encoder, window_ms=enc.batch_window_ms)
    store = store or build_store(config, metrics)
    access = Access(config, store)
    specs = {m.name: m for m in config.models}
    adapters, unavailable = build_adapters(config)
    lease_ttl = config.capacity.lease_ttl_s or config.dispatch.timeout_s + 30
    capacity = Capacity(specs, store.capacity, metrics, lease_ttl)
    health = RequestHealth(store.health)  # the planner's view of breakers is the dispatcher's
    dispatcher = Dispatcher(adapters, health, metrics, config.dispatch, capacity=capacity)
    planner = Planner(
        config, policies, embedder, health, access, store.bandits, store.sessions, metrics, unavailable
    )
    account = Account(access, store, metrics, config.log)
    # warm-up: by default when there are local models
    warmup = config.server.warmup
    if warmup is None:
        warmup = any(specs[n].local for n in adapters)
    return Parts(
        config=config,
        tracing=tracing or Tracing(config.tracing),
        specs=specs,
        metrics=metrics,
        encoder=encoder,
        policies=policies,
        embedder=embedder,
        store=store,
        ledger=build_ledger(config, store),
        access=access,
        caching=ResponseCaching(config.cache, store.cache, encoder),
        conversations=Conversations(store.responses, config.responses),
        adapters=adapters,
        unavailable=unavailable,
        capacity=capacity,
        dispatcher=dispatcher,
        planner=planner,
        account=account,
        refusals=Refusals(store.log, metrics, account.spawn),
        executor=Executor(config, dispatcher, policies, metrics),
        feedbacks=Feedback(config, store, policies, access, account, dispatcher, metrics),
        warmup=warmup,
    )
