"""The shared decision function: constraints, trade-off, tie-breaks, failure explanations."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.decision import (
    BUDGET,
    REQUEST,
    SERVICE,
    Constraints,
    Exclusion,
    choose,
    decide,
    rank,
    scores,
)

MODELS = ["small", "mid", "large"]
Q = [0.5, 0.7, 0.9]
COST = [0.001, 0.01, 0.1]
LAT = [100.0, 300.0, 900.0]


def test_cost_weight_sweeps_from_best_to_cheapest():
    assert decide(MODELS, Q, COST, LAT, cost_weight=0.0).chosen.model == "large"
    assert decide(MODELS, Q, COST, LAT, cost_weight=1.0).chosen.model == "small"
    # w=0.3: large 0.63-0.3=0.33, mid 0.49-0.03=0.46, small 0.35-0.003=0.347
    d = decide(MODELS, Q, COST, LAT, cost_weight=0.3)
    assert [c.model for c in d.ranked] == ["mid", "small", "large"]
    assert d.ranked[0].score == pytest.approx(0.7 * 0.7 - 0.3 * 0.1)


def test_constraints_exclude_with_reasons():
    k = Constraints(max_cost_usd=0.05, max_latency_ms=500, min_quality=0.6)
    d = decide(MODELS, Q, COST, LAT, constraints=k)
    assert [c.model for c in d.ranked] == ["mid"]
    why = {c.model: [e.code for e in c.excluded] for c in d.excluded}
    assert why == {"small": ["min_quality"], "large": ["max_cost_usd", "max_latency_ms"]}


def test_allowed_and_excluded_models():
    d = decide(MODELS, Q, COST, LAT, constraints=Constraints(allowed_models=frozenset({"small", "mid"})))
    assert d.chosen.model == "mid"
    d = decide(MODELS, Q, COST, LAT, constraints=Constraints(excluded_models=frozenset({"large"})))
    assert d.chosen.model == "mid"


def test_excluding_a_model_never_reorders_the_others():
    full = decide(MODELS, Q, COST, LAT, cost_weight=0.2)
    without = decide(
        MODELS, Q, COST, LAT, cost_weight=0.2, constraints=Constraints(excluded_models=frozenset({"large"}))
    )
    order = [c.model for c in full.ranked if c.model != "large"]
    assert [c.model for c in without.ranked] == order


def test_ties_go_to_cheaper_then_faster():
    d = decide(["a", "b", "c"], [0.8, 0.8, 0.8], [0.02, 0.01, 0.01], [50, 300, 100])
    assert [c.model for c in d.ranked] == ["c", "b", "a"]


def test_unknown_latency_is_not_excluded_by_latency_slo():
    d = decide(["a", "b"], [0.9, 0.5], [0.1, 0.1], [None, 2000], constraints=Constraints(max_latency_ms=1000))
    assert d.chosen.model == "a" and [c.model for c in d.excluded] == ["b"]


def test_failure_explains_the_request_constraint_first():
    blocked = {"large": [Exclusion("circuit_open", "large is failing", SERVICE)]}
    d = decide(MODELS, Q, COST, LAT, constraints=Constraints(max_cost_usd=1e-6), blocked=blocked)
    assert d.chosen is None
    kind, message, param = d.failure()
    assert kind == REQUEST and param == "routing.max_cost_usd" and "max_cost_usd" in message


def test_failure_kinds_for_service_and_budget():
    d = decide(["a"], [0.5], [0.1], [None], blocked={"a": [Exclusion("unavailable", "a down", SERVICE)]})
    assert d.failure()[0] == SERVICE
    d = decide(["a"], [0.5], [0.1], [None], blocked={"a": [Exclusion("budget", "too dear", BUDGET)]})
    assert d.failure()[0] == BUDGET
    assert decide([], [], [], []).failure()[0] == SERVICE


def test_batch_choose_matches_single_decide():
    rng = np.random.default_rng(0)
    q = rng.random((200, 4))
    c = rng.random((200, 4)) * np.array([1, 2, 5, 10])
    for w in (0.0, 0.1, 0.5, 1.0):
        picked = choose(q, c, w)
        for i in range(0, 200, 17):
            d = decide(["a", "b", "c", "d"], q[i], c[i], [None] * 4, cost_weight=w)
            assert "abcd"[picked[i]] == d.chosen.model


def test_choose_respects_eligibility_and_reports_none():
    q = np.array([[0.9, 0.1], [0.9, 0.1]])
    c = np.array([[1.0, 1.0], [1.0, 1.0]])
    elig = np.array([[False, True], [False, False]])
    assert choose(q, c, 0.0, elig).tolist() == [1, -1]


def test_scores_are_unit_free():
    s1 = scores(np.array([[0.5, 0.9]]), np.array([[1.0, 10.0]]), 0.5, np.ones((1, 2), bool))
    s2 = scores(np.array([[0.5, 0.9]]), np.array([[1e-6, 1e-5]]), 0.5, np.ones((1, 2), bool))
    assert np.allclose(s1, s2)


# ---- one rule: `choose` (offline) and `decide` (gateway) both order by `rank` -------------------

QUALITIES = [0.0, 0.3, 0.1 + 0.2, 0.5, 0.7, 0.9, 1.0, float("nan")]  # 0.1 + 0.2 != 0.3: a near-tie
COSTS = [0.0, 0.001, 0.002, 0.01, 0.1]
LATENCIES = [float("nan"), 50.0, 100.0, 300.0]
WEIGHTS = [0.0, 0.1, 0.25, 0.5, 0.9, 1.0]


@st.composite
def problems(draw):
    n = draw(st.integers(1, 4))
    m = draw(st.integers(1, 6))

    def matrix(values):
        return np.array([[draw(st.sampled_from(values)) for _ in range(m)] for _ in range(n)], dtype=float)

    q, c, lat = matrix(QUALITIES), matrix(COSTS), matrix(LATENCIES)
    elig = np.array([[draw(st.booleans()) for _ in range(m)] for _ in range(n)])
    w = draw(st.one_of(st.sampled_from(WEIGHTS), st.floats(0.0, 1.0)))
    with_latency = draw(st.booleans())
    return q, c, (lat if with_latency else None), elig, w


def _decide_row(q, c, lat, elig, w, i):
    models = [f"m{j}" for j in range(q.shape[1])]
    blocked = {
        models[j]: [Exclusion("unavailable", f"{models[j]} is down", SERVICE)]
        for j in range(len(models))
        if not elig[i, j]
    }
    # the gateway passes None for no prediction / unknown latency; NaN must behave the same
    quality = [None if np.isnan(x) and j % 2 else float(x) for j, x in enumerate(q[i])]
    latency = [None] * len(models) if lat is None else [None if np.isnan(x) else float(x) for x in lat[i]]
    return models, decide(models, quality, list(c[i]), latency, cost_weight=w, blocked=blocked)


@settings(max_examples=300, deadline=None)
@given(problems())
def test_choose_and_decide_follow_one_rule(problem):
    q, c, lat, elig, w = problem
    picked = choose(q, c, w, elig, lat)
    order = rank(q, c, w, elig, lat)
    assert order.shape == q.shape
    for i in range(q.shape[0]):
        models, d = _decide_row(q, c, lat, elig, w, i)
        if d.chosen is None:
            assert picked[i] == -1 and not elig[i].any()
        else:
            assert picked[i] >= 0 and models[picked[i]] == d.chosen.model
        assert [c.model for c in d.ranked] == [models[j] for j in order[i] if elig[i, j]]
        # ineligible columns come last
        assert elig[i, order[i]].tolist() == sorted(elig[i].tolist(), reverse=True)
        json.dumps(d.as_dict(), allow_nan=False)


@pytest.mark.parametrize("w", WEIGHTS)
def test_a_lone_candidate_scores_as_the_vectorised_rule_does(w):
    """`decide` scores one candidate (a named model) in plain floats: the same number as `scores`."""
    for q in [*QUALITIES, None]:
        for c in [*COSTS, -0.5, float("inf"), float("nan")]:
            d = decide(["m"], [q], [c], [None], cost_weight=w)
            qv = np.nan if q is None else q
            want = scores(np.array([[qv]]), np.array([[c]]), w, np.ones((1, 1), bool))[0, 0]
            assert d.chosen.model == "m"
            assert d.chosen.score == (float(want) if np.isfinite(want) else None), (q, c)
    blocked = {"m": [Exclusion("unavailable", "m is down", SERVICE)]}
    d = decide(["m"], [0.5], [0.1], [None], cost_weight=w, blocked=blocked)
    assert d.chosen is None and d.excluded[0].score is None


def test_near_equal_scores_are_ties_then_cheaper_then_faster_then_first():
    q = np.array([[0.3, 0.1 + 0.2, 0.3, 0.3]])  # 0.1 + 0.2 = 0.30000000000000004
    c = np.array([[0.02, 0.01, 0.01, 0.01]])
    lat = np.array([[10.0, 200.0, 100.0, 100.0]])
    assert rank(q, c, 0.0, latency=lat).tolist() == [[2, 3, 1, 0]]
    assert choose(q, c, 0.0, latency=lat).tolist() == [2]
    d = decide(list("abcd"), q[0], c[0], lat[0])
    assert [x.model for x in d.ranked] == ["c", "d", "b", "a"]


def test_unknown_latency_loses_a_tie_to_a_known_one():
    d = decide(["a", "b"], [0.8, 0.8], [0.01, 0.01], [None, 900.0])
    assert [c.model for c in d.ranked] == ["b", "a"]
    assert (
        choose(np.array([[0.8, 0.8]]), np.array([[0.01, 0.01]]), 0.0, latency=np.array([[np.nan, 900.0]]))[0]
        == 1
    )


def test_offline_evaluation_picks_what_the_gateway_picks():
    from training.dataset import RoutingDataset
    from training.evaluate import Predictions, evaluate

    models = ["small", "mid", "large", "other"]
    # ties on purpose: equal (or float-noise-equal) quality, equal cost, latency decides
    pq = np.array(
        [
            [0.5, 0.7, 0.7, 0.1 + 0.2],
            [0.3, 0.3, 0.3, 0.1 + 0.2],
            [0.9, 0.9, 0.2, 0.9],
            [0.6, 0.2, 0.8, 0.4],
        ]
    )
    pc = np.array([[0.001, 0.01, 0.01, 0.001]] * 4)
    pl = np.array([[300.0, 200.0, 100.0, np.nan]] * 4)
    ds = RoutingDataset(
        texts=[f"prompt {i}" for i in range(4)],
        models=models,
        quality=np.full((4, 4), 0.5),
        mask=np.ones((4, 4), dtype=bool),
        cost=pc,
    )
    weights = np.array([0.0, 0.05, 0.5, 1.0])
    ev = evaluate(ds, Predictions(pq, pc, pl), weights=weights)
    for k, w in enumerate(weights):
        for i in range(4):
            d = decide(
                models, list(pq[i]), list(pc[i]), [None if np.isnan(x) else x for x in pl[i]], cost_weight=w
            )
            assert models[ev.choices[k, i]] == d.chosen.model, (w, i)


# ---- no predicted quality (a model named explicitly: routing bypassed) --------------------------


@pytest.mark.parametrize("missing", [None, float("nan")])
def test_no_predicted_quality_is_json_safe_and_ranked_by_cost(missing):
    d = decide(["a", "b", "c"], [missing] * 3, [0.02, 0.01, 0.01], [100.0, 300.0, None])
    assert [c.model for c in d.ranked] == ["b", "c", "a"]
    assert all(c.quality is None and c.score is None for c in d.ranked)
    out = json.loads(json.dumps(d.as_dict(), allow_nan=False))
    assert out["model"] == "b"
    assert [c["predicted_quality"] for c in out["candidates"]] == [None, None, None]
    assert [c["score"] for c in out["candidates"]] == [None, None, None]


def test_named_model_as_the_gateway_calls_it():
    d = decide(["gpt"], [float("nan")], [0.003], [250.0])
    assert d.chosen.model == "gpt"
    assert json.loads(json.dumps(d.as_dict(), allow_nan=False))["candidates"] == [
        {
            "model": "gpt",
            "predicted_quality": None,
            "predicted_cost_usd": 0.003,
            "predicted_latency_ms": 250.0,
            "score": None,
        }
    ]


def test_min_quality_excludes_a_candidate_without_prediction():
    d = decide(["a", "b"], [None, 0.8], [0.001, 0.01], [None, None], constraints=Constraints(min_quality=0.5))
    assert [c.model for c in d.ranked] == ["b"]
    (ex,) = d.excluded
    assert ex.model == "a" and [e.code for e in ex.excluded] == ["min_quality"]
    assert "no predicted quality" in ex.excluded[0].message
    d = decide(["a"], [None], [0.001], [None], constraints=Constraints(min_quality=0.5))
    kind, message, param = d.failure()
    assert kind == REQUEST and param == "routing.min_quality" and "no predicted quality" in message
    json.dumps(d.as_dict(), allow_nan=False)


def test_scored_candidates_rank_before_unscored_ones():
    d = decide(["a", "b", "c"], [None, 0.1, 0.8], [0.0, 0.5, 1.0], [None, None, None], cost_weight=0.5)
    assert [c.model for c in d.ranked] == ["c", "b", "a"]
    assert choose(np.array([[np.nan, 0.1, 0.8]]), np.array([[0.0, 0.5, 1.0]]), 0.5).tolist() == [2]
    # a row of predictions without any quality still picks the cheapest (never -1)
    assert choose(np.array([[np.nan, np.nan]]), np.array([[0.2, 0.1]]), 0.3).tolist() == [1]


def test_non_finite_numbers_never_reach_json():
    d = decide(["a", "b"], [float("inf"), 0.5], [float("nan"), float("inf")], [float("nan"), 10.0])
    json.dumps(d.as_dict(), allow_nan=False)
    assert all(c.latency_ms is None or np.isfinite(c.latency_ms) for c in d.ranked)
