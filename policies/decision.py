"""One rule turns a policy's predictions plus constraints into a choice.

Every policy goes through here, in the gateway (`decide`: one prompt, constraints, exclusions, the
full fallback order) and in offline evaluation (`choose`: a batch, one column per row) alike. Both
order candidates with the same function, `rank`, so they always pick the same model for the same
inputs, and constraints, the quality/cost trade-off and fallback order behave the same for all
policies.

Trade-off: each candidate scores

    score = (1 - w) * quality - w * cost / c_ref

with `w = cost_weight` in [0, 1] and `c_ref` the highest finite predicted cost among all candidates
for that prompt, eligible or not (so the cost term is relative and unit-free, and excluding one
model never changes the order of the others). w = 0 picks the best predicted quality, w = 1 the
cheapest.

Order (`rank`), best first; every step only breaks the ties left by the ones before it:

1. eligible candidates before ineligible ones;
2. candidates with a score before those without one (no predicted quality: `None`/NaN, e.g. a
   model named explicitly, which bypasses routing; or a NaN cost);
3. higher score, where scores equal after rounding to 12 decimals (`TIE_DECIMALS`) are ties; the
   rounding is what makes "tie" an equivalence, so the order is well defined and the same in
   both forms;
4. lower predicted cost (exact; NaN counts as +inf);
5. lower predicted latency (exact; unknown latency, `None` or NaN, counts as +inf: a model known
   to be fast wins a tie against one whose speed is unknown);
6. lower column index (the order of `models`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

# Why a candidate was left out. `REQUEST` reasons come from what the caller asked for (an empty
# result is the caller's 400); `SERVICE` reasons are the gateway's own state (an empty result is a 503);
# `BUDGET` means the caller's key cannot afford any candidate (429).
REQUEST, SERVICE, BUDGET = "request", "service", "budget"


@dataclass(frozen=True)
class Exclusion:
    code: str  # e.g. "max_cost_usd", "context_window", "circuit_open"
    message: str
    kind: str = REQUEST

    @property
    def param(self) -> str | None:
        if self.code in {
            "max_cost_usd",
            "max_latency_ms",
            "min_quality",
            "allowed_models",
            "excluded_models",
        }:
            return f"routing.{self.code}"
        if self.code == "context_window":
            return "messages"
        return None


@dataclass(frozen=True)
class Constraints:
    max_cost_usd: float | None = None
    max_latency_ms: float | None = None
    min_quality: float | None = None
    allowed_models: frozenset[str] | None = None
    excluded_models: frozenset[str] = frozenset()


def _finite(x: float | None, ndigits: int | None = None) -> float | None:
    """`x` as a JSON-safe float: None for None, NaN and infinities."""
    if x is None:
        return None
    x = float(x)
    if not math.isfinite(x):
        return None
    return x if ndigits is None else round(x, ndigits)


@dataclass
class Candidate:
    model: str
    quality: float | None  # None: no prediction (a named model, which bypasses routing)
    cost_usd: float
    latency_ms: float | None
    score: float | None = None  # None when excluded or when there is no predicted quality
    excluded: list[Exclusion] = field(default_factory=list)

    @property
    def eligible(self) -> bool:
        return not self.excluded

    def as_dict(self) -> dict:
        """JSON-safe (`json.dumps(..., allow_nan=False)`): unknown or non-finite numbers are null."""
        d = {
            "model": self.model,
            "predicted_quality": _finite(self.quality, 6),
            "predicted_cost_usd": _finite(self.cost_usd),
            "predicted_latency_ms": _finite(self.latency_ms, 3),
        }
        if self.eligible:
            d["score"] = _finite(self.score, 6)
        else:
            d["excluded"] = [{"reason": e.code, "message": e.message} for e in self.excluded]
        return d


@dataclass
class Decision:
    policy: str
    cost_weight: float
    ranked: list[Candidate]  # eligible, best first: the chosen model, then the fallback order
    excluded: list[Candidate]
    # what the gateway adds to the record: the vendor name an alias routed, a switch's lost cache
    notes: dict = field(default_factory=dict)
    # model -> where its predicted quality comes from (the irt policy: trained, calibrated,
    # benchmarks, feedback, or prior = its category priors); empty for other policies
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def chosen(self) -> Candidate | None:
        return self.ranked[0] if self.ranked else None

    def failure(self) -> tuple[str, str, str | None]:
        """When nothing is eligible: (kind, message, param) explaining why."""
        reasons: dict[str, list[Exclusion]] = {}
        for c in self.excluded:
            for e in c.excluded:
                reasons.setdefault(e.kind, []).append(e)
        for kind in (REQUEST, BUDGET, SERVICE):
            if kind in reasons:
                es = reasons[kind]
                codes = list(dict.fromkeys(e.code for e in es))
                detail = "; ".join(dict.fromkeys(e.message for e in es))
                head = {
                    REQUEST: "no candidate model satisfies the request's constraints",
                    BUDGET: "the key's remaining budget cannot cover any candidate model",
                    SERVICE: "no candidate model is available",
                }[kind]
                return kind, f"{head} ({', '.join(codes)}): {detail}", es[0].param
        return SERVICE, "no candidate models are configured", None

    def as_dict(self) -> dict:
        chosen = self.chosen
        return {
            "policy": self.policy,
            "cost_weight": _finite(self.cost_weight),
            "model": chosen.model if chosen else None,
            "candidates": [self._with_source(c.as_dict()) for c in self.ranked],
            "excluded": [self._with_source(c.as_dict()) for c in self.excluded],
        }

    def _with_source(self, d: dict) -> dict:
        if d["model"] in self.sources:
            d["quality_source"] = self.sources[d["model"]]
        return d

    def compact(self) -> dict:
        """What the ledger keeps of a decision: the ranking and why the others were left out,
        rounded (4 decimals for quality and score, 4 significant digits for cost and latency)."""

        def sig(x: float | None) -> float | None:
            x = _finite(x)
            return None if x is None else float(f"{x:.4g}")

        return {
            "ranked": [
                {
                    "model": c.model,
                    "quality": _finite(c.quality, 4),
                    "cost_usd": sig(c.cost_usd),
                    "latency_ms": sig(c.latency_ms),
                    "score": _finite(c.score, 4),
                }
                for c in self.ranked
            ],
            "excluded": [
                {"model": c.model, "reason": ",".join(dict.fromkeys(e.code for e in c.excluded))}
                for c in self.excluded
            ],
        } | ({"notes": dict(self.notes)} if self.notes else {})


# Scores equal after rounding to this many decimals are ties (then cost, latency, index decide).
TIE_DECIMALS = 12


def scores(quality: np.ndarray, cost: np.ndarray, cost_weight: float, eligible: np.ndarray) -> np.ndarray:
    """Vectorised trade-off score, shape (n_prompts, n_models); ineligible cells are -inf.

    NaN where there is no predicted quality (NaN) or cost (NaN)."""
    q = np.asarray(quality, dtype=float)
    c = np.asarray(cost, dtype=float)
    w = min(max(float(cost_weight), 0.0), 1.0)
    c_ref = np.where(np.isfinite(c), c, -np.inf).max(axis=-1, keepdims=True)
    c_ref = np.where(np.isfinite(c_ref) & (c_ref > 0), c_ref, 1.0)
    # w = 0 ignores cost entirely (no 0 * inf = NaN for an unbounded cost)
    s = (1.0 - w) * q - (w * c / c_ref if w > 0 else 0.0)
    return np.where(eligible, s, -np.inf)


def rank(
    quality: np.ndarray,
    cost: np.ndarray,
    cost_weight: float,
    eligible: np.ndarray | None = None,
    latency: np.ndarray | None = None,
) -> np.ndarray:
    """The rule: (n, m) column indices per row, best first (see the module docstring).

    `quality` is (n, m) (a 1-d row is read as one prompt); `cost`, `eligible` and `latency`
    broadcast to it. NaN quality means no prediction: eligible, but after every scored column.
    Ineligible columns come last (in the same order among themselves); use `eligible` to cut
    them off."""
    q = np.atleast_2d(np.asarray(quality, dtype=float))
    c = np.broadcast_to(np.asarray(cost, dtype=float), q.shape)
    elig = (
        np.ones(q.shape, dtype=bool)
        if eligible is None
        else np.broadcast_to(np.asarray(eligible, bool), q.shape)
    )
    lat = (
        np.full(q.shape, np.inf)
        if latency is None
        else np.broadcast_to(np.asarray(latency, dtype=float), q.shape)
    )
    # scored over every column: c_ref includes ineligible candidates
    return _order(scores(q, c, cost_weight, np.ones(q.shape, dtype=bool)), c, elig, lat)


def _order(s: np.ndarray, c: np.ndarray, elig: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """`rank` given the scores."""
    unscored = np.isnan(s)
    neg = -np.round(np.where(unscored, 0.0, s), TIE_DECIMALS) + 0.0  # + 0.0: no -0.0
    keys = (
        np.where(np.isnan(lat), np.inf, lat),  # least significant
        np.where(np.isnan(c), np.inf, c),
        neg,
        unscored,
        ~elig,  # most significant
    )
    # lexsort is stable, so full ties keep the column order
    return np.lexsort(keys, axis=-1)


def choose(
    quality: np.ndarray,
    cost: np.ndarray,
    cost_weight: float,
    eligible: np.ndarray | None = None,
    latency: np.ndarray | None = None,
) -> np.ndarray:
    """Batch form of `decide` for offline evaluation: `rank`'s first column per row (-1: none eligible)."""
    q = np.atleast_2d(np.asarray(quality, dtype=float))
    elig = (
        np.ones(q.shape, dtype=bool)
        if eligible is None
        else np.broadcast_to(np.asarray(eligible, bool), q.shape)
    )
    if q.shape[-1] == 0:
        return np.full(q.shape[0], -1)
    best = rank(q, cost, cost_weight, elig, latency)[:, 0]
    return np.where(elig.any(axis=-1), best, -1)


def _quality(x: float | None) -> float | None:
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def _score_one(cand: Candidate, cost_weight: float) -> float:
    """`scores` for a lone candidate, in plain floats (its own cost is the reference)."""
    q = math.nan if cand.quality is None else cand.quality
    c = cand.cost_usd
    w = min(max(float(cost_weight), 0.0), 1.0)
    c_ref = c if math.isfinite(c) and c > 0 else 1.0
    return (1.0 - w) * q - (w * c / c_ref if w > 0 else 0.0)


def decide(
    models: Sequence[str],
    quality: Sequence[float | None],
    cost: Sequence[float],
    latency: Sequence[float | None],
    constraints: Constraints = Constraints(),
    cost_weight: float = 0.0,
    blocked: Mapping[str, Sequence[Exclusion]] | None = None,
    policy: str = "",
) -> Decision:
    """Apply constraints, score every candidate, and rank the survivors with `rank`
    (best first = fallback order).

    A quality of None (or NaN) means no prediction (a named model): the candidate has no score,
    is ranked after the scored ones by cost then latency, and fails any `min_quality`.
    `blocked` carries exclusions decided outside the predictions (availability, circuit
    breakers, context window, capabilities, key permissions, budgets)."""
    blocked = blocked or {}
    cands: list[Candidate] = []
    for i, m in enumerate(models):
        lat = None if latency[i] is None or math.isnan(float(latency[i])) else float(latency[i])
        cand = Candidate(m, _quality(quality[i]), float(cost[i]), lat)
        cand.excluded.extend(blocked.get(m, ()))
        k = constraints
        if k.allowed_models is not None and m not in k.allowed_models:
            cand.excluded.append(Exclusion("allowed_models", f"{m} is not in allowed_models"))
        if m in k.excluded_models:
            cand.excluded.append(Exclusion("excluded_models", f"{m} is in excluded_models"))
        if k.min_quality is not None:
            if cand.quality is None:
                cand.excluded.append(
                    Exclusion("min_quality", f"{m} has no predicted quality; min_quality {k.min_quality:g}")
                )
            elif cand.quality < k.min_quality:
                cand.excluded.append(
                    Exclusion(
                        "min_quality",
                        f"{m} predicted quality {cand.quality:.3f} < min_quality {k.min_quality:g}",
                    )
                )
        if k.max_cost_usd is not None and cand.cost_usd > k.max_cost_usd:
            cand.excluded.append(
                Exclusion(
                    "max_cost_usd",
                    f"{m} predicted cost ${cand.cost_usd:.6g} > max_cost_usd {k.max_cost_usd:g}",
                )
            )
        if (
            k.max_latency_ms is not None
            and cand.latency_ms is not None
            and cand.latency_ms > k.max_latency_ms
        ):
            cand.excluded.append(
                Exclusion(
                    "max_latency_ms",
                    f"{m} predicted latency {cand.latency_ms:.0f} ms > max_latency_ms {k.max_latency_ms:g}",
                )
            )
        cands.append(cand)

    ranked: list[Candidate] = []
    if len(cands) == 1:  # a named model: nothing to order, and numpy costs more than the rule
        cand = cands[0]
        if cand.eligible:
            cand.score = _finite(_score_one(cand, cost_weight))
            ranked = [cand]
    elif cands:
        q = np.array([[np.nan if c.quality is None else c.quality for c in cands]])
        c = np.array([[c.cost_usd for c in cands]])
        lat = np.array([[np.nan if c.latency_ms is None else c.latency_ms for c in cands]])
        elig = np.array([[c.eligible for c in cands]])
        s = scores(q, c, cost_weight, np.ones_like(elig))
        for cand, sc in zip(cands, s[0], strict=True):
            cand.score = _finite(sc) if cand.eligible else None
        ranked = [cands[j] for j in _order(s, c, elig, lat)[0] if cands[j].eligible]
    return Decision(
        policy=policy,
        cost_weight=float(cost_weight),
        ranked=ranked,
        excluded=[c for c in cands if not c.eligible],
    )
