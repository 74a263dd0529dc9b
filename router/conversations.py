"""Stored conversations of the Responses API, as a small service the routes use.

It owns the policy (config `responses`): a response is stored as an entry of a chain — the turns
its request added, its own Response object, its parent — and read back as the whole chain; every
entry belongs to the caller's key scope and is invisible to any other (a 404 that reveals
nothing); one key keeps at most `max_stored_bytes_per_key` stored at once, and a request that
would go past it is refused before any model runs. What the entries hold is the format's
business (router.gateway.responses_format); where they live is the store's (router.state.responses).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from router.access import Caller
from router.config import ResponsesSettings
from router.errors import BadRequest, NotFound
from router.state.responses import Entry, StoredResponses, encode, entry_size

log = logging.getLogger("moe_router.conversations")


class Conversations:
    def __init__(self, store: StoredResponses, settings: ResponsesSettings):
        self.store = store
        self.settings = settings

    def stores(self, requested: bool) -> bool:
        """Does a request with `store: requested` get stored?"""
        return requested and self.settings.store

    async def chain(self, response_id: str, caller: Caller, param: str | None = None) -> list[Entry]:
        """The stored chain that ends at `response_id`, oldest first: 404 unless it is the caller's
        and whole (an ancestor that expired or was deleted breaks it)."""
        chain = await self.store.chain(response_id) if self.settings.store else []
        if not chain or chain[0].parent is not None or any(e.owner != caller.scope for e in chain):
            raise NotFound(f"response {response_id!r} is not known", param=param, code="response_not_found")
        return chain

    async def find(self, response_id: str, caller: Caller) -> Entry:
        return (await self.chain(response_id, caller))[-1]

    async def delete(self, response_id: str, caller: Caller) -> None:
        if not (self.settings.store and await self.store.delete(response_id, caller.scope)):
            raise NotFound(f"response {response_id!r} is not known", code="response_not_found")

    async def make_room(self, caller: Caller, adding: Any) -> None:
        """Refuse (400) a request whose new turns (`adding`) alone would take the caller's stored
        bytes past the bound, before it costs anything."""
        limit = self.settings.max_stored_bytes_per_key
        if not limit:
            return
        need = len(encode(adding).encode())
        used = await self.store.used(caller.scope)
        if used + need > limit:
            raise BadRequest(
                f"this key's stored responses use {used} of its {limit} bytes; send store: false, "
                "delete stored responses (DELETE /v1/responses/{id}) or wait for them to expire",
                param="store",
                code="storage_limit_exceeded",
            )

    async def keep(self, caller: Caller, response_id: str, parent: str | None, body: dict[str, Any]) -> None:
        """Store one response (its entry `body`); past the bound it is answered but not stored.
        Shielded: a client that leaves while it is written does not cut the write."""
        raw = encode(body)
        entry = Entry(response_id, caller.scope, parent, entry_size(caller.scope, parent, raw), body)
        limit = self.settings.max_stored_bytes_per_key
        got = await asyncio.shield(self.store.put(entry, self.settings.ttl_s, limit))
        if not got.ok:
            log.warning(
                "response %s not stored: its key has %d of %d stored bytes in use",
                response_id,
                got.used,
                limit,
            )
