"""Request bodies are strict JSON: parsed with orjson, which refuses what Python's `json` lets in.

`NaN`, `Infinity` and lone UTF-16 surrogates (`"\\ud800"`) are valid for `json.loads`, but a NaN
poisons every score it touches and a lone surrogate makes tokenizers raise. orjson refuses both,
so they are a 400 `invalid_json` at the edge and never reach the engine.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Coroutine, Sequence
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.routing import APIRoute

from router.errors import ForbiddenParameter, RouterError, UnknownParameter

_UNPARSED = object()


class StrictJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            parsed = self.scope.get("state", {}).get(
                "json", _UNPARSED
            )  # the edge parsed it (middleware.Edge)
            if parsed is _UNPARSED:
                parsed = orjson.loads(await self.body())
            self._json = parsed  # orjson.JSONDecodeError is a json.JSONDecodeError
        return self._json


class StrictJSONRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))

        return strict


def unknown_field_error(errors: Sequence[dict], destination_fields: Collection[str]) -> RouterError | None:
    """A 400 naming the first unknown nested field (messages, tools, ...), if that is what failed."""
    for e in errors:
        if e.get("type") == "extra_forbidden":
            loc = [str(x) for x in e.get("loc", ()) if x != "body"]
            name = loc[-1] if loc else "body"
            param = ".".join(loc) or None
            if name in destination_fields:
                return ForbiddenParameter(
                    f"parameter {param!r} is not accepted: a request cannot choose the destination, "
                    "credentials or headers of a backend",
                    param=param,
                )
            return UnknownParameter(f"unknown parameter {param!r}", param=param)
    return None
