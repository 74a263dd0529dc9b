"""`server.metrics_port`: the Prometheus metrics alone, without auth, on an internal port.

The main port's `/metrics` needs the master key once keys are required, and a scraper that
follows `prometheus.io/*` pod annotations holds no key. This listener serves only the engine's
registry (prometheus_client's own exposition server, on a thread): nothing else is reachable
through it, so it is safe to leave open to the cluster network and never route publicly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import start_http_server

from router.metrics import Metrics

log = logging.getLogger("moe_router.gateway")


def serve_metrics(metrics: Metrics, host: str, port: int) -> Callable[[], None]:
    """Start the listener; returns the function that stops it. OSError when the port is taken."""
    server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    log.info("metrics (no auth) on http://%s:%d/metrics", host, server.server_port)

    def close() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return close
