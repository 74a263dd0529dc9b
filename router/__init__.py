"""moe-router: an OpenAI-compatible gateway that routes each request to the model that answers it
well for the least money and time. `from router import Router` for the in-process SDK.

The names below are imported on first use (PEP 562), so `import router.<module>` — every CLI
command starts with one — does not load the engine, the ledger and their libraries."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["Router", "RouterConfig", "RouterResponse", "load_config"]

_HOME = {
    "Router": "router.sdk",
    "RouterResponse": "router.sdk",
    "RouterConfig": "router.config",
    "load_config": "router.config",
}

if TYPE_CHECKING:
    from router.config import RouterConfig, load_config
    from router.sdk import Router, RouterResponse


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'router' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_HOME[name]), name)
    globals()[name] = value
    return value
