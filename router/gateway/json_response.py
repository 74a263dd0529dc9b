"""JSON out, with orjson: the response class of every route and error on the hot path.

Starlette's `JSONResponse` runs `json.dumps` in pure Python; orjson writes the same compact JSON
(`separators=(",", ":")`, UTF-8, no ASCII escaping) several times faster. Same content-type,
status and headers. Differences kept on purpose: numpy scalars and arrays serialize (as numbers and
lists) instead of raising, and a non-finite float becomes `null` — the edge refuses NaN coming in,
so none should reach an answer, and a `null` beats a 500 mid-response. What orjson refuses to
write (a lone UTF-16 surrogate an upstream sent escaped, a huge int) falls back to `json.dumps`.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from starlette.responses import JSONResponse as _StarletteJSON

OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def _default(obj: Any) -> Any:
    """What orjson does not know natively (numpy types it misses, sets), and numpy for `json`."""
    tolist = getattr(obj, "tolist", None)  # numpy scalars and arrays
    if callable(tolist):
        return tolist()
    if isinstance(obj, set | frozenset):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def dumps(content: Any) -> bytes:
    try:
        return orjson.dumps(content, default=_default, option=OPTIONS)
    except orjson.JSONEncodeError:
        # a lone surrogate from an upstream's `\ud800` escape (orjson refuses to write one), an
        # int past 64 bits: Python's json writes them, escaped to ASCII
        return json.dumps(content, default=_default, separators=(",", ":")).encode()


class JSONResponse(_StarletteJSON):
    """A drop-in for Starlette's `JSONResponse` (and FastAPI's default response class)."""

    def render(self, content: Any) -> bytes:
        return dumps(content)
