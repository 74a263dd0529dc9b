"""Training-side helpers of the cascade policy: answer embeddings and the two-step evaluation.

A cascade is evaluated on recorded answers: its scorer reads the cheap model's answer (and the
second cheap model's, for an agreement plan) of each test prompt; sweeping the escalation
threshold traces cost/quality points, each paying every cheap call on every prompt plus the
escalations; AIQ and the cost to reach the best single model's quality come from the same hull
as `training.evaluate`. With two models (RouteLLM) the share of escalations is the share of calls
to the strong model, so APGR / CPT read as for one-step routing.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from policies.cascade import CascadePolicy
from training import metrics as M
from training.dataset import RoutingDataset
from training.embed_cache import EmbeddingCache
from training.evaluate import Evaluation, Predictions, score


def _embed(policy: CascadePolicy, texts: list[str], cache: bool, progress: bool = False) -> np.ndarray:
    if cache:
        return EmbeddingCache(policy.encoder).encode(texts, progress=progress)
    return np.asarray(policy.encoder.encode(texts), dtype=np.float32)


def answer_embeddings(
    policy: CascadePolicy, ds: RoutingDataset, cache: bool = True, progress: bool = False
) -> Callable[[str], np.ndarray] | None:
    """model -> embeddings of its recorded answers (None when the data has no answers); the
    policy asks only for the model its plan calls first."""
    if not ds.responses:
        return None
    return lambda model: _embed(policy, policy.answer_view(ds.responses[model]), cache, progress)


def cascade_scores(policy: CascadePolicy, ds: RoutingDataset, cache: bool = True) -> np.ndarray:
    """P(the first model's recorded answer is good) for every prompt of `ds`."""
    need = [policy.first_] + ([policy.second_] if policy.second_ else [])
    missing = [m for m in need if m not in (ds.responses or {})]
    if missing:
        raise ValueError(f"evaluating a cascade needs the recorded answers of {missing} in the data")
    answers = ds.responses[policy.first_]
    seconds = ds.responses[policy.second_] if policy.second_ else None
    texts = list(ds.texts)
    P = _embed(policy, policy.view(texts), cache)
    if policy.scorer_kind_ == "boosting":
        return policy.score(texts, answers, seconds, P)
    A = _embed(policy, policy.answer_view(answers), cache)
    return policy.score(texts, answers, seconds, P, A)


def sweep_cascade(
    ds: RoutingDataset,
    s: np.ndarray,
    first: str,
    escalate_to: str,
    second: str | None = None,
    points: int = 61,
    pred: Predictions | None = None,
) -> Evaluation:
    """Cost/quality points of a cascade whose scorer gave `s`: thresholds at `points - 1`
    quantiles of `s` (escalate when s < threshold) and one above them all (escalate every prompt)."""
    jf, js = ds.models.index(first), ds.models.index(escalate_to)
    top = np.nextafter(s.max(), np.inf)
    thresholds = np.concatenate([np.quantile(s, np.linspace(0, 1, points - 1)), [top]])
    choices = np.stack([np.where(s < t, js, jf) for t in thresholds])
    ev = score(ds, choices, thresholds, pred)
    ok = ds.complete
    C = ds.cost[ok] if ds.cost is not None else np.ones((int(ok.sum()), len(ds.models)))
    Q = ds.quality[ok]
    base = C[:, jf] + (C[:, ds.models.index(second)] if second else 0.0)
    pts = []
    for k, ch in enumerate(choices[:, ok]):
        esc = ch == js
        pts.append((float((base + esc * C[:, js]).mean()), float(np.where(esc, Q[:, js], Q[:, jf]).mean())))
        ev.report["sweep"][k].update(
            cost_usd=pts[-1][0], quality=pts[-1][1], escalation_rate=round(float(esc.mean()), 4)
        )
    mc = C.mean(0)
    best = ev.report["best_single"]
    reach = M.cost_to_reach(pts, best["quality"])
    ev.points = pts
    ev.report.update(
        aiq=M.aiq(pts, float(mc.min()), float(mc.max())),
        max_quality=max(p[1] for p in pts),
        cost_to_best_single_quality={
            "cost_usd": reach,
            "ratio": None if reach is None else reach / best["cost_usd"],
        },
        cascade={"first": first, "second": second, "escalate_to": escalate_to},
        sweep_parameter="escalation threshold (in the cost_weight field); decisions name the final model",
    )
    q95 = 0.95 * ev.report["single_models"][escalate_to]["quality"]
    ev.report["cascade"]["cost_usd_for_95pct_of_strong_quality"] = M.cost_to_reach(pts, q95)
    return ev


def evaluate_cascade(
    policy: CascadePolicy, ds: RoutingDataset, pred: Predictions, points: int, cache: bool = True
) -> Evaluation:
    """Sweep the escalation threshold on test data with the cheap models' recorded answers."""
    s = cascade_scores(policy, ds, cache)
    ev = sweep_cascade(ds, s, policy.first_, policy.escalate_to_, policy.second_, points, pred)
    ev.report["cascade"].update(threshold=policy.threshold_, scorer=policy.scorer_kind_)
    return ev
