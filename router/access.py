"""Who may send what: API keys, per-key rate limits, and spend budgets (key, team, global)."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from router.config import ModelSpec, RouterConfig
from router.errors import BudgetExceeded, Forbidden, RateLimited, Unauthorized
from router.state.budgets import BudgetScope, Reservation, remaining
from router.state.keys import KeyRecord, parse_key
from router.state.store import Store


@dataclass
class Caller:
    """The authenticated caller of one request: an API key, the operator (master key), or
    anonymous (when keys are not required)."""

    key: KeyRecord | None = None
    admin: bool = False

    @property
    def name(self) -> str | None:
        return self.key.name if self.key else "admin" if self.admin else None

    @property
    def scope(self) -> str:
        """Whose requests, caches and ratings these are."""
        return self.key.id if self.key else "admin" if self.admin else "anonymous"

    @property
    def models(self) -> frozenset[str] | None:
        return frozenset(self.key.models) if self.key and self.key.models else None


class Access:
    def __init__(self, config: RouterConfig, store: Store):
        self.config = config
        self.store = store

    async def authenticate(self, raw: str | None, operator: bool = False) -> Caller:
        """401 unless `raw` is a valid key — when keys are required, or when the caller sent one of ours.

        The master key (`auth.master_key`) is accepted everywhere; `operator` routes accept only
        it when one is configured (403 for an API key)."""
        master = self.config.auth.master()
        if raw and master and hmac.compare_digest(raw.encode(), master.encode()):
            return Caller(admin=True)
        if operator and master:
            if not raw:
                raise Unauthorized(
                    "this endpoint needs the master key: send it as 'Authorization: Bearer <key>'"
                )
            raise Forbidden("this endpoint needs the master key", code="master_key_required")
        required = self.config.auth.require_keys
        if not raw:
            if required:
                raise Unauthorized("an API key is required: send it as 'Authorization: Bearer <key>'")
            return Caller()
        parsed = parse_key(raw)
        if parsed is None:
            if required:
                raise Unauthorized("invalid API key")
            return Caller()  # keys are optional and this is not one of ours (e.g. a placeholder)
        key_id, secret = parsed
        rec = await self.store.keys.get(key_id)
        if rec is None or not rec.verify(secret):
            raise Unauthorized("invalid or revoked API key")
        return Caller(rec)

    async def admit(self, caller: Caller, tokens: int) -> int | None:
        """Count the request against the key's rpm/tpm; 429 with Retry-After when over.

        Returns the minute window the tokens were counted in (None: the key has no limits)."""
        k = caller.key
        if k is None or (k.rpm is None and k.tpm is None):
            return None
        if k.tpm is not None and tokens > k.tpm:
            raise RateLimited(
                f"this request needs ~{tokens} tokens, more than the key's limit of {k.tpm} tokens per minute",
                code="tokens_exceed_limit",
            )
        d = await self.store.limits.hit(k.id, k.rpm, k.tpm, tokens)
        if not d.allowed:
            limit = f"{k.rpm} requests" if d.limit == "rpm" else f"{k.tpm} tokens"
            raise RateLimited(
                f"rate limit reached for key {k.name!r}: {limit} per minute; retry after {d.retry_after_s:g} s",
                headers={"retry-after": str(int(d.retry_after_s))},
            )
        return d.window

    async def settle_tokens(self, caller: Caller, admitted: int, actual: int, window: int | None) -> None:
        k = caller.key
        if k is not None and k.tpm is not None and window is not None and actual != admitted:
            await self.store.limits.adjust_tokens(k.id, actual - admitted, window)

    async def admit_feedback(self, caller: Caller) -> None:
        """Ratings per minute per caller (config `feedback.rpm`): they train shared policies."""
        rpm = self.config.feedback.rpm
        d = await self.store.limits.hit(f"feedback:{caller.scope}", rpm, None, 0)
        if not d.allowed:
            raise RateLimited(
                f"feedback rate limit reached: {rpm} ratings per minute; retry after {d.retry_after_s:g} s",
                headers={"retry-after": str(int(d.retry_after_s))},
            )

    def scopes(self, caller: Caller) -> list[BudgetScope]:
        out = []
        k = caller.key
        b = self.config.budgets
        if k is not None and k.budget_usd is not None:
            out.append(BudgetScope(f"key:{k.id}", k.budget_usd, k.budget_window))
        if k is not None and k.team and k.team in b.teams:
            t = b.teams[k.team]
            out.append(BudgetScope(f"team:{k.team}", t.usd, t.window))
        if b.global_ is not None:
            out.append(BudgetScope("global", b.global_.usd, b.global_.window))
        return out

    async def room(self, caller: Caller) -> float | None:
        """USD the caller can still spend in its tightest scope (None: unlimited)."""
        return await remaining(self.store.budgets, self.scopes(caller))

    def output_cap(self, spec: ModelSpec, out_tokens: int | None) -> int:
        """The most output tokens one answer from `spec` may have: sent upstream as `max_tokens`."""
        cap = out_tokens or spec.max_output_tokens or self.config.budgets.default_max_output_tokens
        return min(cap, spec.max_output_tokens) if spec.max_output_tokens else cap

    def max_cost(self, spec: ModelSpec, prompt_bound: int, images: int, out_tokens: int | None) -> float:
        """The most one request to `spec` may cost: what a budget reserves. `prompt_bound` is an
        upper bound on the prompt's tokens (`constraints.prompt_bytes`), images count
        `max_image_tokens` each, and the output is capped at `output_cap` upstream."""
        prompt = prompt_bound + images * spec.max_image_tokens
        return spec.info().cost_usd(prompt, self.output_cap(spec, out_tokens))

    async def reserve(self, caller: Caller, usd: float) -> Reservation | None:
        scopes = self.scopes(caller)
        if not scopes:
            return None
        got = await self.store.budgets.reserve(scopes, usd)
        if isinstance(got, BudgetScope):
            raise BudgetExceeded(
                f"budget {got.id} ({got.limit_usd:g} USD {got.window}) cannot cover this request "
                f"(up to {usd:.6g} USD)"
            )
        return got

    async def settle(self, reservation: Reservation | None, actual_usd: float) -> None:
        if reservation is not None:
            await self.store.budgets.settle(reservation, actual_usd)
