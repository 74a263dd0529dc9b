"""The jobs behind `moe-router train / eval / compare`, callable from Python too."""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from policies.cascade import CascadePolicy
from policies.learned import LearnedPolicy
from policies.registry import policy_class
from training.dataset import RoutingDataset
from training.embed_cache import embed_for
from training.evaluate import Evaluation, evaluate, predict, weight_grid
from training.loaders import load_dataset
from training.prices import DEFAULT_PRICES, apply_prices, load_price_table


def load(
    path: str | Path,
    format: str | None = None,
    *,
    allow_pickle: bool = False,
    contamination_filter: bool = True,
    prices: str | Path | None = None,
    models: list[str] | None = None,
) -> RoutingDataset:
    """Load a data file; give it costs from a price table when it has none (or `prices` is set)."""
    ds = load_dataset(path, format, allow_pickle=allow_pickle, contamination_filter=contamination_filter)
    if models:
        ds = ds.select_models(models)
    if prices is not None:
        apply_prices(ds, load_price_table(prices), overwrite=True)
    elif ds.cost is None and all(m in DEFAULT_PRICES for m in ds.models):
        apply_prices(ds)
    # no cost and no known prices (RouterDC's equal-cost models): evaluated as equal cost
    return ds


def make_policy(name: str, params: dict[str, Any], encoder) -> LearnedPolicy:
    cls = policy_class(name)
    if not issubclass(cls, LearnedPolicy):
        raise ValueError(
            f"policy {name!r} does not learn from data (it is configured by 'type:', not trained)"
        )
    known = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "encoder")]
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"unknown parameters for policy {name!r}: {unknown}; known: {', '.join(known)}")
    return cls(encoder=encoder, **params)


def train(
    name: str,
    ds: RoutingDataset,
    encoder,
    params: dict[str, Any] | None = None,
    *,
    cache: bool = True,
    progress: bool = False,
) -> LearnedPolicy:
    policy = make_policy(name, params or {}, encoder)
    # a policy with an encoder of its own (routerdc) reads no shared embeddings
    X = (
        embed_for(policy, ds.texts, encoder, cache=cache, progress=progress)
        if policy.needs_embeddings
        else None
    )
    t0 = time.perf_counter()
    if isinstance(policy, CascadePolicy):
        from training.cascade import answer_embeddings

        policy.fit(ds, embeddings=X, answer_embeddings=answer_embeddings(policy, ds, cache, progress))
    else:
        policy.fit(ds, embeddings=X)
    policy.metrics_["fit_seconds"] = round(time.perf_counter() - t0, 3)
    return policy


def run_eval(
    policy,
    ds: RoutingDataset,
    encoder,
    *,
    points: int = 61,
    cache: bool = True,
    progress: bool = False,
) -> Evaluation:
    X = (
        embed_for(policy, ds.texts, encoder, cache=cache, progress=progress)
        if policy.needs_embeddings
        else None
    )
    pred = predict(policy, ds, X)
    if isinstance(policy, CascadePolicy):
        from training.cascade import evaluate_cascade

        return evaluate_cascade(policy, ds, pred, points, cache=cache)
    return evaluate(ds, pred, weight_grid(points), progress=progress)


@dataclass
class CompareRow:
    policy: str
    report: dict[str, Any]
    fit_seconds: float


def compare(
    names: list[str],
    train_ds: RoutingDataset,
    test_ds: RoutingDataset,
    encoder,
    *,
    params: dict[str, dict[str, Any]] | None = None,
    points: int = 61,
    progress: bool = False,
) -> list[CompareRow]:
    from tqdm import tqdm

    rows = []
    for name in tqdm(names, desc="policies", unit="policy", disable=not progress):
        p = train(name, train_ds, encoder, (params or {}).get(name), progress=progress)
        ev = run_eval(p, test_ds, encoder, points=points)
        rows.append(CompareRow(name, ev.report, p.metrics_.get("fit_seconds", float("nan"))))
    return rows


def fmt(x: Any, nd: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if not np.isfinite(x):
            return "-"
        return f"{x:.{nd}g}" if abs(x) < 1e-2 and x != 0 else f"{x:.{nd}f}"
    return str(x)


def table(rows: list[CompareRow]) -> str:
    """A plain-text table of the headline metrics (policies, then single models and the oracle)."""
    if not rows:
        return ""
    head = ["policy", "AIQ", "max quality", "cost to best single (x its cost)", "fit s"]
    two = "two_model" in rows[0].report
    if two:
        head += ["APGR", "CPT50", "CPT80", "CPT95"]
    lines = [head]
    for r in rows:
        rep = r.report
        line = [
            r.policy,
            fmt(rep["aiq"]),
            fmt(rep["max_quality"]),
            fmt(rep["cost_to_best_single_quality"]["ratio"], 3),
            f"{r.fit_seconds:.1f}",
        ]
        if two:
            t = rep["two_model"]
            line += [fmt(t["apgr"])] + [fmt(t["cpt_strong_share"][k], 3) for k in ("50%", "80%", "95%")]
        lines.append(line)
    rep = rows[0].report
    for m, s in rep["single_models"].items():
        mark = " (best)" if m == rep["best_single"]["model"] else ""
        lines.append(
            [f"single: {m}{mark}", "-", fmt(s["quality"]), fmt(s["cost_usd"], 3), ""] + [""] * (4 * two)
        )
    lines.append(
        ["oracle", "-", fmt(rep["oracle"]["quality"]), fmt(rep["oracle"]["cost_usd"], 3), ""]
        + [""] * (4 * two)
    )
    lines.append(["single models (AIQ)", fmt(rep["aiq_single_models"]), "", "", ""] + [""] * (4 * two))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    return "\n".join(
        "  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )
