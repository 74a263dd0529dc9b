"""Who may send what: API keys, per-key rate limits, and spend budgets (key, team, global)."""

from __future__ import annotations

from dataclasses import dataclass

from router.config import ModelSpec, RouterConfig
from router.errors import BudgetExceeded, Forbidden, RateLimited, Unauthorized
from router.state.budgets import BudgetScope, Reservation, remaining
from router.state.keys import KeyRecord, parse_key
from router.state.store import Store


@dataclass
class Caller:
    """The authenticated caller of one request (anonymous when keys are not in use)."""

    key: KeyRecord | None = None

    @property
    def name(self) -> str | None:
        return self.key.name if self.key else None

    @property
    def scope(self) -> str:
        return self.key.id if self.key else "anonymous"

    @property
    def models(self) -> frozenset[str] | None:
        return frozenset(self.key.models) if self.key and self.key.models else None


class Access:
    def __init__(self, config: RouterConfig, store: Store):
        self.config = config
        self.store = store

    async def authenticate(self, raw: str | None) -> Caller:
        """401 unless `raw` is a valid key — when keys are required, or when the caller sent one of ours."""
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

    def check_model(self, caller: Caller, model: str) -> None:
        allowed = caller.models
        if allowed is not None and model in self.config_models() and model not in allowed:
            raise Forbidden(f"this API key may not use {model!r}; allowed: {', '.join(sorted(allowed))}")

    def config_models(self) -> set[str]:
        return {m.name for m in self.config.models}

    async def admit(self, caller: Caller, tokens: int) -> None:
        """Count the request against the key's rpm/tpm; 429 with Retry-After when over."""
        k = caller.key
        if k is None or (k.rpm is None and k.tpm is None):
            return
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

    async def settle_tokens(self, caller: Caller, admitted: int, actual: int) -> None:
        k = caller.key
        if k is not None and k.tpm is not None and actual != admitted:
            await self.store.limits.adjust_tokens(k.id, actual - admitted)

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

    def max_cost(self, spec: ModelSpec, prompt_tokens: int, out_tokens: int | None) -> float:
        """The most one request to `spec` may cost: what a budget reserves."""
        out = out_tokens or spec.max_output_tokens or self.config.budgets.default_max_output_tokens
        return spec.info().cost_usd(prompt_tokens, out)

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
