"""Who may send what: API keys, per-key rate limits, and spend budgets (key, team, global).

With shared state a request's admission is one round trip (router.state.admission), so two
things this replica knows are used before it, and checked by it:

- the key's record, cached per replica for `KEY_CACHE_S`: the admission script refuses a key that
  is gone or revoked, and one whose limits changed since it was read (the request is then planned
  again with the record as it is now), so revocation and changes still take effect at once;
- each budget's remaining amount, as the last admission or settlement of this replica left it:
  the planner excludes the models it cannot cover; if the script finds less left than that, it
  refuses with what is left and the request is planned again (`Replan`).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Sequence
from dataclasses import dataclass

from router.config import ModelSpec, RouterConfig
from router.errors import BudgetExceeded, Forbidden, RateLimited, Unauthorized
from router.state.admission import Admit, Admitted, key_fields
from router.state.budgets import MICROS, BudgetScope, Reservation, remaining
from router.state.keys import KeyRecord, parse_key
from router.state.store import Store

KEY_CACHE_S = 5.0  # a key read from shared state is reused this long (routes that spend recheck it)
MAX_CACHED = 10_000  # keys and budget buckets remembered per replica


class Replan(Exception):
    """The plan was made on what this replica knew, and shared state knows better (the key changed,
    or a budget has less left): plan the request again. `refusal`: for a budget, the 429 the
    request gets if planning again cannot end it (budgets racing to zero under concurrent spend)."""

    def __init__(self, refusal: Exception | None = None):
        super().__init__()
        self.refusal = refusal


@dataclass
class Caller:
    """The authenticated caller of one request: an API key, the operator (master key), or
    anonymous (when keys are not required). `checked` is False while `key` is this replica's cached
    copy, not yet checked against shared state for this request (`Access.check`, or admission)."""

    key: KeyRecord | None = None
    admin: bool = False
    checked: bool = True

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
        self.shared = store.kind != "memory"  # in memory, the store itself is as fast as a cache
        # key id -> (cached until, record, its MUTABLE fields as stored)
        self._keys: dict[str, tuple[float, KeyRecord, dict[str, str]]] = {}
        self._left: dict[str, int] = {}  # budget bucket -> micro-USD left when last seen

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
        cached = self._keys.get(key_id) if self.shared else None
        if cached is not None and cached[0] > time.monotonic():
            rec, checked = cached[1], False
        else:
            rec, checked = await self.store.keys.get(key_id), True
            self._remember_key(rec, key_id)
        if rec is None or not rec.verify(secret):
            err = Unauthorized("invalid or revoked API key")
            if rec is not None:  # a key of ours (revoked, or a wrong secret): its refusal names it
                err.caller = Caller(rec)
            raise err
        return Caller(rec, checked=checked)

    async def check(self, caller: Caller) -> None:
        """Check a cached key against shared state now (routes that do not go through admission)."""
        if caller.key is None or caller.checked:
            return
        rec = await self.store.keys.get(caller.key.id)
        self._remember_key(rec, caller.key.id)
        if rec is None or rec.revoked:
            raise Unauthorized("invalid or revoked API key")
        caller.key, caller.checked = rec, True

    def _remember_key(self, rec: KeyRecord | None, key_id: str, fields: dict[str, str] | None = None) -> None:
        if not self.shared:
            return
        self._keys.pop(key_id, None)
        if rec is not None and not rec.revoked:
            self._keys[key_id] = (time.monotonic() + KEY_CACHE_S, rec, fields or key_fields(rec))
            if len(self._keys) > MAX_CACHED:
                self._keys.pop(next(iter(self._keys)))

    async def open(
        self, caller: Caller, tokens: int, usd: float | None, event: dict | None = None, id: str = ""
    ) -> Admitted:
        """Admission in one step: the key still valid, rate limits, and `usd` reserved in every
        budget scope (None: reserve nothing) — all or nothing. 401/429 when refused; `Replan`
        when the request was planned on stale knowledge (then nothing was counted)."""
        k = caller.key
        self._fits_tpm(caller, tokens)
        scopes = self.scopes(caller) if usd is not None else []
        fields = self._keys.get(k.id, (0, None, None))[2] if k is not None else None
        got = await self.store.money.admit(Admit(k, fields, tokens, scopes, usd or 0.0, event, id))
        if isinstance(got, Admitted):
            if got.reservation is not None:
                self._learn(scopes, got.reservation.left)
            caller.checked = True
            return got
        if got.reason == "key":
            self._remember_key(None, k.id)
            raise Unauthorized("invalid or revoked API key")
        if got.reason == "changed":
            self._remember_key(got.record, k.id, got.fields)
            caller.key, caller.checked = got.record, True
            raise Replan()
        if got.reason in ("rpm", "tpm"):
            raise self._limited(caller, got.reason, got.retry_after_s)
        known = self._hint(scopes)
        self._learn(scopes, got.left)
        refusal = self._over_budget(got.scope, usd)
        if known != self._hint(scopes):
            raise Replan(refusal)
        raise refusal

    def settled(self, scopes: Sequence[BudgetScope], left: Sequence[int]) -> float | None:
        """Learn what a settlement left in each budget; the remaining budget (None: unlimited)."""
        self._learn(scopes, left)
        return min(x / MICROS for x in left) if left else None

    def _learn(self, scopes: Sequence[BudgetScope], left: Sequence[int]) -> None:
        for s, x in zip(scopes, left, strict=False):
            self._left.pop(s.bucket(), None)
            self._left[s.bucket()] = x
        while len(self._left) > MAX_CACHED:
            self._left.pop(next(iter(self._left)))

    def _hint(self, scopes: Sequence[BudgetScope]) -> float | None:
        known = [self._left[b] for b in (s.bucket() for s in scopes) if b in self._left]
        return min(known) / MICROS if known else None

    async def refresh(self, caller: Caller) -> bool:
        """Read the caller's budgets from shared state; did this replica know less than that?"""
        scopes = self.scopes(caller)
        if not self.shared or not scopes:
            return False
        known = self._hint(scopes)
        spent = await self.store.budgets.spent(scopes)
        self._learn(scopes, [round((s.limit_usd - x) * MICROS) for s, x in zip(scopes, spent, strict=True)])
        return known != self._hint(scopes)

    def _fits_tpm(self, caller: Caller, tokens: int) -> None:
        k = caller.key
        if k is not None and k.tpm is not None and tokens > k.tpm:
            raise RateLimited(
                f"this request needs ~{tokens} tokens, more than the key's limit of {k.tpm} tokens per minute",
                code="tokens_exceed_limit",
            )

    def _limited(self, caller: Caller, limit: str, retry_after_s: float) -> RateLimited:
        k = caller.key
        what = f"{k.rpm} requests" if limit == "rpm" else f"{k.tpm} tokens"
        return RateLimited(
            f"rate limit reached for key {k.name!r}: {what} per minute; retry after {retry_after_s:g} s",
            headers={"retry-after": str(int(retry_after_s))},
        )

    def _over_budget(self, scope: BudgetScope, usd: float) -> BudgetExceeded:
        return BudgetExceeded(
            f"budget {scope.id} ({scope.limit_usd:g} USD {scope.window}) cannot cover this request "
            f"(up to {usd:.6g} USD)"
        )

    async def admit(self, caller: Caller, tokens: int) -> int | None:
        """Count the request against the key's rpm/tpm; 429 with Retry-After when over.

        Returns the minute window the tokens were counted in (None: the key has no limits)."""
        k = caller.key
        if k is None or (k.rpm is None and k.tpm is None):
            return None
        self._fits_tpm(caller, tokens)
        d = await self.store.limits.hit(k.id, k.rpm, k.tpm, tokens)
        if not d.allowed:
            raise self._limited(caller, d.limit, d.retry_after_s)
        return d.window

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
        """USD the caller can still spend in its tightest scope (None: unlimited). With shared
        state: as far as this replica knows (no round trip; admission checks it, see above)."""
        if self.shared:
            return self._hint(self.scopes(caller))
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

    async def reserve(self, caller: Caller, usd: float, id: str = "") -> Reservation | None:
        scopes = self.scopes(caller)
        if not scopes:
            return None
        got = await self.store.budgets.reserve(scopes, usd, id)
        if isinstance(got, BudgetScope):
            raise self._over_budget(got, usd)
        self._learn(scopes, got.left)
        return got
