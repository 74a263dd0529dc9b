"""Check a pool without serving it: are each model's params valid, and is its endpoint there?

Used by `moe-router config validate [--check]` and `moe-router models`. A probe is free: an
OpenAI-compatible server is asked `GET /models`, a local model's files are looked for on disk,
and a provider that only a paid call could check (litellm by provider name) is "not probed".
"""

from __future__ import annotations

import asyncio
import inspect
from dataclasses import dataclass

from adapters import BACKENDS, Adapter, adapter_class
from router.config import ConfigError, ModelSpec

REACHABLE, UNREACHABLE, NOT_PROBED, UNAVAILABLE, INVALID = (
    "reachable",
    "unreachable",
    "not probed",
    "unavailable",
    "invalid",
)


@dataclass
class ModelProbe:
    name: str
    backend: str
    status: str  # reachable | unreachable | not probed | unavailable (env unset) | invalid (params)
    detail: str = ""

    @property
    def usable(self) -> bool:
        """Could serve now, as far as a free check can tell."""
        return self.status in (REACHABLE, NOT_PROBED)


def check_backends(specs: list[ModelSpec]) -> None:
    """ConfigError naming the first model whose backend no adapter registers (`adapters.BACKENDS`,
    read now: tests and plugins may register more)."""
    for i, spec in enumerate(specs):
        if spec.backend not in BACKENDS:
            known = ", ".join(sorted(BACKENDS))
            raise ConfigError(f"models.{i}.backend: unknown backend {spec.backend!r}; known: {known}")


def build(spec: ModelSpec) -> Adapter:
    """The model's adapter, or ValueError naming the bad params (no I/O happens here)."""
    cls = adapter_class(spec.backend)
    params = spec.resolved_params()
    try:
        inspect.signature(cls).bind(**params)
        return cls(**params)
    except (TypeError, ValueError) as e:
        raise ValueError(f"model {spec.name!r}: invalid params for backend {spec.backend!r}: {e}") from None


def check_params(specs: list[ModelSpec]) -> list[str]:
    """Problems with models' params, one message per model (empty: all can be built)."""
    problems = []
    for spec in specs:
        try:
            build(spec)
        except (ValueError, ImportError) as e:
            problems.append(str(e))
    return problems


async def probe_model(spec: ModelSpec, timeout_s: float = 3.0) -> ModelProbe:
    hint = spec.missing_env_hint()
    if hint:
        return ModelProbe(spec.name, spec.backend, UNAVAILABLE, hint)
    try:
        adapter = build(spec)
    except (ValueError, ImportError) as e:
        return ModelProbe(spec.name, spec.backend, INVALID, str(e))
    probe = getattr(adapter, "probe", None)
    try:
        ok, detail = (None, "this backend has no probe") if probe is None else await probe(timeout_s)
    finally:
        await adapter.aclose()
    status = NOT_PROBED if ok is None else REACHABLE if ok else UNREACHABLE
    return ModelProbe(spec.name, spec.backend, status, detail)


async def probe_models(specs: list[ModelSpec], timeout_s: float = 3.0) -> list[ModelProbe]:
    """All at once (a pool of unreachable servers takes one timeout, not one each)."""
    return list(await asyncio.gather(*(probe_model(s, timeout_s) for s in specs)))
