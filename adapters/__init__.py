"""Model backends. Each is a transport implementing `adapters.base.Adapter`.

Backends are looked up by the name used in config (`backend: openai`) and imported lazily,
so a gateway without local models never imports torch/transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

from adapters.base import Adapter, ChatChunk, ChatRequest, ChatResult, EmbedResult, Usage
from adapters.errors import (
    BackendError,
    BackendNotConfigured,
    BackendRateLimited,
    BackendRejected,
    BackendTimeout,
    BackendUnavailable,
)

BACKENDS: dict[str, str] = {
    "openai": "adapters.openai_compat:OpenAICompatAdapter",
    "litellm": "adapters.litellm_adapter:LiteLLMAdapter",
    "transformers": "adapters.local_transformers:TransformersAdapter",
    "sentence-transformers": "adapters.local_embeddings:SentenceTransformersAdapter",
}


def adapter_class(backend: str) -> type:
    try:
        target = BACKENDS[backend]
    except KeyError:
        raise ValueError(f"unknown backend {backend!r}; known: {', '.join(sorted(BACKENDS))}") from None
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def build_adapter(backend: str, params: dict[str, Any]) -> Adapter:
    """Instantiate the adapter for `backend` from its config params (no I/O happens here)."""
    return adapter_class(backend)(**params)


__all__ = [
    "Adapter",
    "BACKENDS",
    "BackendError",
    "BackendNotConfigured",
    "BackendRateLimited",
    "BackendRejected",
    "BackendTimeout",
    "BackendUnavailable",
    "ChatChunk",
    "ChatRequest",
    "ChatResult",
    "EmbedResult",
    "Usage",
    "adapter_class",
    "build_adapter",
]
