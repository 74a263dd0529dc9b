"""Training-side helpers of the cascade policy: answer embeddings and the two-step evaluation."""

from __future__ import annotations

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
) -> np.ndarray | None:
    """Embeddings of the first model's recorded answers (None when the data has none)."""
    first = policy.pick_models(ds)[0]
    if not ds.responses or first not in ds.responses:
        return None
    return _embed(policy, policy.answer_view(ds.responses[first]), cache, progress)


def evaluate_cascade(
    policy: CascadePolicy, ds: RoutingDataset, pred: Predictions, points: int, cache: bool = True
) -> Evaluation:
    """Sweep the escalation threshold over [0, 1] on test data with the first model's recorded
    answers. Each point pays the first call on every prompt plus the escalations."""
    answers = (ds.responses or {}).get(policy.first_)
    if answers is None:
        raise ValueError(
            f"evaluating a cascade needs the first model's answers ({policy.first_}) in the data"
        )
    jf, js = ds.models.index(policy.first_), ds.models.index(policy.escalate_to_)
    P = _embed(policy, policy.view(list(ds.texts)), cache)
    A = _embed(policy, policy.answer_view(answers), cache)
    s = policy.scorer(P, A, answers)
    thresholds = np.linspace(0.0, 1.0, points)
    choices = np.stack([np.where(s < t, js, jf) for t in thresholds])
    ev = score(ds, choices, thresholds, pred)
    ok = ds.complete
    C = ds.cost[ok] if ds.cost is not None else np.ones((int(ok.sum()), len(ds.models)))
    Q = ds.quality[ok]
    pts = []
    for k, ch in enumerate(choices[:, ok]):
        esc = ch == js
        cost = float((C[:, jf] + esc * C[:, js]).mean())
        pts.append((cost, float(np.where(esc, Q[:, js], Q[:, jf]).mean())))
        ev.report["sweep"][k]["cost_usd"] = cost
        ev.report["sweep"][k]["quality"] = pts[-1][1]
        ev.report["sweep"][k]["escalation_rate"] = round(float(esc.mean()), 4)
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
        cascade={"first": policy.first_, "escalate_to": policy.escalate_to_, "threshold": policy.threshold_},
        sweep_parameter="escalation threshold (in the cost_weight field); decisions name the final model",
    )
    return ev
