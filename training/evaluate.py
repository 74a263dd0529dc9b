"""Offline evaluation: replay a test set through a policy and the gateway's own decision function.

For each cost weight `w` of a sweep, `policies.decision.choose` picks one model per prompt from
the policy's predicted quality and cost, exactly as the gateway would; the realised quality and
cost come from the test data. Metrics are computed on the prompts where every model's quality
and cost are known (others still get decisions; they are counted in the report).

The sweep: w = 0 (best predicted quality), w = lambda / (1 + lambda) for lambda log-spaced over
[1e-4, 1e4], and w = 1 (cheapest). The score is (1-w) q - w c / c_ref, so lambda is the price of
a whole c_ref in quality points; log spacing puts as many points at small w (where a little
quality buys a lot of cost) as elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from policies.base import PromptBatch
from policies.decision import choose
from policies.learned import brier, ece
from training import metrics as M
from training.dataset import RoutingDataset


def weight_grid(points: int = 61) -> np.ndarray:
    if points < 3:
        raise ValueError("a sweep needs at least 3 points")
    lam = np.logspace(-4, 4, points - 2)
    return np.concatenate([[0.0], lam / (1 + lam), [1.0]])


@dataclass
class Predictions:
    quality: np.ndarray  # (n, m) predicted
    cost: np.ndarray  # (n, m) predicted (ones when the policy and data know no cost)
    latency: np.ndarray | None = None


def predict(policy, ds: RoutingDataset, embeddings: np.ndarray | None = None) -> Predictions:
    """The policy's predictions for every test prompt, columns in the dataset's model order.

    `embeddings`: of each prompt as the policy views it (`policy.view`, e.g. from the disk cache);
    the batch then carries the viewed texts so the policy uses them as they are."""
    missing = [m for m in ds.models if m not in policy.models_]
    if missing:
        raise ValueError(f"the policy has no prediction for models in the test data: {missing}")
    cols = [policy.models_.index(m) for m in ds.models]
    texts = policy.view(list(ds.texts)) if hasattr(policy, "view") else list(ds.texts)
    batch = PromptBatch(texts, embeddings=embeddings, prompt_tokens=ds.tokens())
    q = np.asarray(policy.predict_quality(batch), dtype=float)[:, cols]
    c = policy.predict_cost(batch)
    c = np.ones_like(q) if c is None else np.asarray(c, dtype=float)[:, cols]
    lat = policy.predict_latency(batch)
    lat = None if lat is None else np.asarray(lat, dtype=float)[:, cols]
    return Predictions(q, c, lat)


@dataclass
class Evaluation:
    weights: np.ndarray
    choices: np.ndarray  # (points, n) column index per prompt
    report: dict[str, Any] = field(default_factory=dict)
    points: list[tuple[float, float]] = field(default_factory=list)
    singles: list[tuple[float, float]] = field(default_factory=list)
    oracle_point: tuple[float, float] | None = None


def evaluate(
    ds: RoutingDataset,
    pred: Predictions,
    weights: np.ndarray | None = None,
    progress: bool = False,
) -> Evaluation:
    from tqdm import tqdm

    weights = weight_grid() if weights is None else np.asarray(weights, dtype=float)
    choices = np.stack(
        [
            choose(pred.quality, pred.cost, float(w), latency=pred.latency)
            for w in tqdm(weights, desc="sweeping cost weight", unit="point", disable=not progress)
        ]
    )
    return score(ds, choices, weights, pred)


def score(
    ds: RoutingDataset, choices: np.ndarray, weights: np.ndarray, pred: Predictions | None = None
) -> Evaluation:
    """Metrics of given per-point choices on the test data (the realised quality and cost)."""
    ok = ds.complete
    if not ok.any():
        raise ValueError("no test prompt has every model's quality and cost known; nothing to score")
    Q = ds.quality[ok]
    C = ds.cost[ok] if ds.cost is not None else np.ones_like(Q)
    ch = choices[:, ok]
    rows = np.arange(Q.shape[0])
    pts = [(float(C[rows, c].mean()), float(Q[rows, c].mean())) for c in ch]
    mq, mc = Q.mean(0), C.mean(0)
    singles = [(float(mc[j]), float(mq[j])) for j in range(len(ds.models))]
    jbest = int(mq.argmax())
    orc = M.oracle(Q, C)
    oracle_pt = (float(C[rows, orc].mean()), float(Q[rows, orc].mean()))
    cmin, cmax = float(mc.min()), float(mc.max())
    reach = M.cost_to_reach(pts, float(mq[jbest]))
    equal_cost = bool(np.allclose(C, C.flat[0]))
    report: dict[str, Any] = {
        "prompts": len(ds),
        "scored_prompts": int(ok.sum()),
        "unscored_prompts": int((~ok).sum()),
        "points": len(pts),
        "distinct_points": len(set(pts)),
        "aiq": M.aiq(pts, cmin, cmax),
        "aiq_single_models": M.aiq(singles, cmin, cmax),
        "max_quality": max(p[1] for p in pts),
        "best_single": {"model": ds.models[jbest], "quality": float(mq[jbest]), "cost_usd": float(mc[jbest])},
        "cost_to_best_single_quality": {
            "cost_usd": reach,
            "ratio": None if reach is None or equal_cost else reach / float(mc[jbest]),
        },
        "oracle": {"quality": oracle_pt[1], "cost_usd": oracle_pt[0]},
        "single_models": {
            m: {"quality": float(mq[j]), "cost_usd": float(mc[j])} for j, m in enumerate(ds.models)
        },
        "sweep": [
            {
                "point": k,
                "cost_weight": float(w),
                "cost_usd": pts[k][0],
                "quality": pts[k][1],
                "share": {
                    ds.models[j]: round(float((ch[k] == j).mean()), 4)
                    for j in range(len(ds.models))
                    if (ch[k] == j).any()
                },
            }
            for k, w in enumerate(weights)
        ],
    }
    if equal_cost:
        report["note"] = "every model costs the same here: compare accuracy at cost weight 0"
        report["accuracy_at_w0"] = pts[0][1]
    if len(ds.models) == 2:
        s = int(mq.argmax())
        w_ = 1 - s
        shares = [float((c == s).mean()) for c in ch]
        qs = [p[1] for p in pts]
        report["two_model"] = {
            "strong": ds.models[s],
            "weak": ds.models[w_],
            "apgr": M.apgr(shares, qs, float(mq[w_]), float(mq[s])),
            "cpt_strong_share": {
                f"{int(t * 100)}%": M.cpt(shares, qs, float(mq[w_]), float(mq[s]), t)
                for t in (0.5, 0.8, 0.95)
            },
            # the other reading of "95%": 95% of the strong model's quality (not of the gap)
            "strong_share_for_95pct_of_strong_quality": M.share_for_quality(
                shares, qs, float(mq[w_]), float(mq[s]), 0.95 * float(mq[s])
            ),
        }
    if pred is not None:
        mask = ds.mask
        p, y = pred.quality[mask], ds.quality[mask]
        report["test_calibration"] = {"brier": round(brier(p, y), 5), "ece": round(ece(p, y), 5)}
    ev = Evaluation(weights, choices, report, pts, singles, oracle_pt)
    return ev


def write_decisions(ev: Evaluation, models: list[str], path) -> int:
    """One JSON line per (point, prompt): {"point", "prompt_id" (0-based row), "model"}."""
    import json

    n = 0
    with open(path, "w") as f:
        for k, row in enumerate(ev.choices):
            for i, j in enumerate(row):
                f.write(
                    json.dumps({"point": k, "prompt_id": i, "model": models[j] if j >= 0 else None}) + "\n"
                )
                n += 1
    return n


def plot(ev: Evaluation, models: list[str], path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    xs = [p[0] for p in ev.points]
    ys = [p[1] for p in ev.points]
    ax.scatter(xs, ys, s=12, color="tab:blue", alpha=0.6, label="policy (sweep points)")
    h = M.upper_hull(ev.points)
    ax.plot([p[0] for p in h], [p[1] for p in h], color="tab:blue", lw=2, label="policy (upper hull)")
    for (c, q), m in zip(ev.singles, models, strict=True):
        ax.scatter([c], [q], marker="s", color="tab:gray")
        ax.annotate(m.split("/")[-1], (c, q), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if ev.oracle_point:
        ax.scatter(
            [ev.oracle_point[0]], [ev.oracle_point[1]], marker="*", s=160, color="tab:red", label="oracle"
        )
    cmax = max(c for c, _ in ev.singles)
    cmin = min(c for c, _ in ev.singles)
    if cmax > 0 and cmin > 0 and cmax / cmin > 20:
        ax.set_xscale("log")
    ax.set_xlabel("mean cost per prompt (USD)" if cmax != 1 else "mean cost per prompt (calls)")
    ax.set_ylabel("mean quality")
    r = ev.report
    aiq = r.get("aiq")
    ax.set_title(title or f"AIQ {aiq:.4f}" if aiq is not None else title or "cost / quality")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
