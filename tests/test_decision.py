"""The shared decision function: constraints, trade-off, tie-breaks, failure explanations."""

from __future__ import annotations

import numpy as np
import pytest

from policies.decision import BUDGET, REQUEST, SERVICE, Constraints, Exclusion, choose, decide, scores

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
