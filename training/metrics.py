"""Routing metrics on (mean cost, mean quality) points, as the field reports them.

- AIQ (RouterBench): the non-decreasing upper convex hull of the points, integrated over the cost
  range spanned by the single models, divided by that range (0 left of the cheapest point).
- Cost to reach a quality: the cheapest cost on that hull at which the quality is reached.
- APGR / CPT (RouteLLM, two models): with x the share of calls sent to the strong model and
  PGR = (quality - weak) / (strong - weak), APGR is the area under PGR(x) over x in [0, 1] and
  CPT(p) the smallest x at which PGR reaches p.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def upper_hull(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Upper convex hull of (cost, quality) points, left to right, made non-decreasing."""
    pts = sorted((float(x), float(y)) for x, y in points)
    hull: list[tuple[float, float]] = []
    for p in pts:
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) >= 0:
                hull.pop()
            else:
                break
        hull.append(p)
    out, best = [], -np.inf
    for x, y in hull:
        best = max(best, y)
        out.append((x, best))
    return out


def aiq(points: Sequence[tuple[float, float]], cmin: float, cmax: float, grid: int = 4001) -> float | None:
    if not points or not cmax > cmin:
        return None
    h = upper_hull(points)
    xs = np.array([p[0] for p in h])
    ys = np.array([p[1] for p in h])
    g = np.linspace(cmin, cmax, grid)
    vals = np.interp(g, xs, ys, left=np.nan, right=ys[-1])
    vals = np.where(np.isnan(vals), 0.0, vals)
    return float(np.trapezoid(vals, g) / (cmax - cmin))


def cost_to_reach(points: Sequence[tuple[float, float]], q: float) -> float | None:
    """Cheapest cost on the upper hull at which quality >= q (None if never reached)."""
    h = upper_hull(points)
    if not h:
        return None
    if h[0][1] >= q:
        return h[0][0]
    for (x1, y1), (x2, y2) in zip(h, h[1:], strict=False):
        if y1 < q <= y2:
            return x1 + (x2 - x1) * (q - y1) / (y2 - y1)
    return None


def pgr_curve(
    shares: Sequence[float], qualities: Sequence[float], q_weak: float, q_strong: float
) -> tuple[np.ndarray, np.ndarray]:
    """(strong-call share, PGR) sorted by share, with the all-weak and all-strong end points."""
    gap = q_strong - q_weak
    x = np.concatenate([[0.0], np.asarray(shares, float), [1.0]])
    y = np.concatenate([[q_weak], np.asarray(qualities, float), [q_strong]])
    pgr = (y - q_weak) / gap if gap else np.zeros_like(y)
    order = np.lexsort((pgr, x))
    x, pgr = x[order], pgr[order]
    # several points at one share: keep the best (the router can always pick that threshold)
    ux = np.unique(x)
    best = np.array([pgr[x == u].max() for u in ux])
    return ux, best


def apgr(shares, qualities, q_weak, q_strong) -> float | None:
    if q_strong == q_weak:
        return None
    x, y = pgr_curve(shares, qualities, q_weak, q_strong)
    return float(np.trapezoid(y, x))


def cpt(shares, qualities, q_weak, q_strong, target: float) -> float | None:
    """Smallest strong-call share at which PGR >= target (linear between measured points)."""
    if q_strong == q_weak:
        return None
    x, y = pgr_curve(shares, qualities, q_weak, q_strong)
    hit = np.flatnonzero(y >= target)
    if not len(hit):
        return None
    i = int(hit[0])
    if i == 0:
        return float(x[0])
    # every point before i is below target, so the crossing lies between i-1 and i
    return float(x[i - 1] + (x[i] - x[i - 1]) * (target - y[i - 1]) / (y[i] - y[i - 1]))


def share_for_quality(shares, qualities, q_weak: float, q_strong: float, quality: float) -> float | None:
    """Smallest strong-call share at which the routed quality reaches `quality`."""
    if quality <= q_weak:
        return 0.0
    if q_strong == q_weak:
        return None
    return cpt(shares, qualities, q_weak, q_strong, (quality - q_weak) / (q_strong - q_weak))


def oracle(quality: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Per prompt, the cheapest model among those with the best quality (the upper bound)."""
    best = quality.max(axis=1, keepdims=True)
    c = np.where(quality >= best - 1e-12, cost, np.inf)
    return c.argmin(axis=1)
