"""One function turns a policy's predictions plus constraints into a choice.

Every policy goes through here, in the gateway and in offline evaluation alike, so constraints,
the quality/cost trade-off and fallback order behave the same for all of them.

Trade-off: each eligible candidate scores

    score = (1 - w) * quality - w * cost / c_ref

with `w = cost_weight` in [0, 1] and `c_ref` the highest predicted cost among all candidates for
that prompt, eligible or not (so the cost term is relative and unit-free, and excluding one model
never changes the order of the others). w = 0 picks the best
predicted quality, w = 1 the cheapest; ties go to the cheaper, then the faster model.
"""

from __future__ import annotations

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


@dataclass
class Candidate:
    model: str
    quality: float
    cost_usd: float
    latency_ms: float | None
    score: float | None = None
    excluded: list[Exclusion] = field(default_factory=list)

    @property
    def eligible(self) -> bool:
        return not self.excluded

    def as_dict(self) -> dict:
        d = {
            "model": self.model,
            "predicted_quality": round(float(self.quality), 6),
            "predicted_cost_usd": float(self.cost_usd),
            "predicted_latency_ms": None if self.latency_ms is None else round(float(self.latency_ms), 3),
        }
        if self.eligible:
            d["score"] = None if self.score is None else round(float(self.score), 6)
        else:
            d["excluded"] = [{"reason": e.code, "message": e.message} for e in self.excluded]
        return d


@dataclass
class Decision:
    policy: str
    cost_weight: float
    ranked: list[Candidate]  # eligible, best first: the chosen model, then the fallback order
    excluded: list[Candidate]

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
            "cost_weight": self.cost_weight,
            "model": chosen.model if chosen else None,
            "candidates": [c.as_dict() for c in self.ranked],
            "excluded": [c.as_dict() for c in self.excluded],
        }


def scores(quality: np.ndarray, cost: np.ndarray, cost_weight: float, eligible: np.ndarray) -> np.ndarray:
    """Vectorised trade-off score, shape (n_prompts, n_models); ineligible cells are -inf."""
    q = np.asarray(quality, dtype=float)
    c = np.asarray(cost, dtype=float)
    w = float(np.clip(cost_weight, 0.0, 1.0))
    c_ref = np.where(np.isfinite(c), c, -np.inf).max(axis=-1, keepdims=True)
    c_ref = np.where(np.isfinite(c_ref) & (c_ref > 0), c_ref, 1.0)
    s = (1.0 - w) * q - w * c / c_ref
    return np.where(eligible, s, -np.inf)


def choose(
    quality: np.ndarray,
    cost: np.ndarray,
    cost_weight: float,
    eligible: np.ndarray | None = None,
    latency: np.ndarray | None = None,
) -> np.ndarray:
    """Batch form of `decide` for offline evaluation: the chosen column per row (-1: none eligible)."""
    q = np.asarray(quality, dtype=float)
    c = np.broadcast_to(np.asarray(cost, dtype=float), q.shape)
    elig = np.ones_like(q, dtype=bool) if eligible is None else np.asarray(eligible, dtype=bool)
    s = scores(q, c, cost_weight, elig)
    best = s.max(axis=1, keepdims=True)
    # ties (within float noise) go to the cheaper, then the faster model
    tie = np.isfinite(s) & (s >= best - 1e-12)
    ct = np.where(tie, c, np.inf)
    tie &= ct <= ct.min(axis=1, keepdims=True)
    if latency is not None:
        lt = np.where(tie, np.broadcast_to(np.asarray(latency, dtype=float), q.shape), np.inf)
        out = lt.argmin(axis=1)
    else:
        out = tie.argmax(axis=1)
    return np.where(np.isfinite(best[:, 0]), out, -1)


def decide(
    models: Sequence[str],
    quality: Sequence[float],
    cost: Sequence[float],
    latency: Sequence[float | None],
    constraints: Constraints = Constraints(),
    cost_weight: float = 0.0,
    blocked: Mapping[str, Sequence[Exclusion]] | None = None,
    policy: str = "",
) -> Decision:
    """Apply constraints, score the survivors, and rank them (best first = fallback order).

    `blocked` carries exclusions decided outside the predictions (availability, circuit
    breakers, context window, capabilities, key permissions, budgets)."""
    blocked = blocked or {}
    cands: list[Candidate] = []
    for i, m in enumerate(models):
        cand = Candidate(
            m, float(quality[i]), float(cost[i]), None if latency[i] is None else float(latency[i])
        )
        cand.excluded.extend(blocked.get(m, ()))
        k = constraints
        if k.allowed_models is not None and m not in k.allowed_models:
            cand.excluded.append(Exclusion("allowed_models", f"{m} is not in allowed_models"))
        if m in k.excluded_models:
            cand.excluded.append(Exclusion("excluded_models", f"{m} is in excluded_models"))
        if k.min_quality is not None and cand.quality < k.min_quality:
            cand.excluded.append(
                Exclusion(
                    "min_quality", f"{m} predicted quality {cand.quality:.3f} < min_quality {k.min_quality:g}"
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

    if cands:
        q = np.array([[c.quality for c in cands]])
        s = scores(q, np.array([[c.cost_usd for c in cands]]), cost_weight, np.ones_like(q, dtype=bool))[0]
        for cand, sc in zip(cands, s, strict=True):
            cand.score = float(sc) if cand.eligible else None
    eligible = [c for c in cands if c.eligible]
    if eligible:
        eligible.sort(key=lambda c: (-c.score, c.cost_usd, c.latency_ms if c.latency_ms is not None else 0.0))
    return Decision(
        policy=policy,
        cost_weight=float(cost_weight),
        ranked=eligible,
        excluded=[c for c in cands if not c.eligible],
    )
