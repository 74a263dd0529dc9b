"""The trust boundary applied at the edge: a parsed body checked by `router.params.screen`, what it
dropped counted, logged with the request id and named in the answer's headers."""

from __future__ import annotations

import logging

from pydantic import BaseModel

from router.errors import ForbiddenParameter, UnknownParameter
from router.gateway.engine_client import EngineClient
from router.gateway.openai_format import HEADER_PREFIX
from router.params import ParamError, screen

log = logging.getLogger("moe_router.gateway")

DROPPED_HEADER = HEADER_PREFIX + "dropped-params"
MAX_LISTED = 32  # names in the header (the log has them all)


def screened(
    engine: EngineClient, body: BaseModel, endpoint: str, operator_params: bool = False
) -> list[str]:
    """The client paths of the fields dropped from `body` (400 for a forbidden one, or for any
    unknown one under `params.unknown: reject`). `operator_params`: keep the top-level fields an
    operator allows on some model (`allow_params`; OpenAI chat only)."""
    allowed = {p for m in engine.config.models for p in m.allow_params} if operator_params else ()
    try:
        dropped = screen(body, allowed=allowed, reject=engine.config.params.unknown == "reject")
    except ParamError as e:
        cls = ForbiddenParameter if e.forbidden else UnknownParameter
        raise cls(str(e), param=e.name) from None
    if dropped:
        engine.metrics.dropped_params.labels(endpoint).inc(len(dropped))
    return dropped


def report(dropped: list[str], request_id: str, headers: dict[str, str]) -> dict[str, str]:
    """Log what was dropped under the request's id; `headers` plus the dropped-params header."""
    if not dropped:
        return headers
    log.info("request %s: dropped unknown parameters %s", request_id, ", ".join(dropped))
    listed = [_printable(d) for d in dropped[:MAX_LISTED]]
    if len(dropped) > MAX_LISTED:
        listed.append(f"...{len(dropped) - MAX_LISTED} more")
    return headers | {DROPPED_HEADER: ",".join(listed)}


def _printable(name: str) -> str:
    """A client's field name, safe in a header (printable ASCII, at most 128 characters)."""
    return "".join(c if " " <= c <= "~" and c != "," else "?" for c in name[:128])
