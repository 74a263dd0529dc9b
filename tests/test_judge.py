"""Automatic judges rate routed answers, and their ratings teach the online policies."""

from __future__ import annotations

import time

import pytest

from router.config import ConfigError, load_config
from router.judge import contains, exact, normalize, parse_grade
from tests.conftest import make_config, pool
from tests.promtext import sample

ASK = [{"role": "user", "content": "What is the capital of France?"}]


def test_normalisation_and_matchers():
    assert normalize("  The Eiffel-Tower!  ") == "eiffeltower"
    assert exact("Paris.", "paris") == 1.0 and exact("It is Paris", "Paris") == 0.0
    assert contains("It is Paris, of course.", "paris") == 1.0
    assert contains("Parisian food", "Paris") == 0.0  # whole words only
    assert contains("anything", "") == 0.0


@pytest.mark.parametrize(
    ("reply", "grade"),
    [
        ("8", 0.8),
        ("Grade: 10", 1.0),
        ("7/10 - good", 0.7),
        ("8.5", 0.85),
        ("0", 0.0),
        ("100", None),
        ("great", None),
        ("10.5", 1.0),  # clamped: a rating never leaves 0..1
        ("7 or 8", None),  # not one grade
        ("Grade: 7/10", 0.7),
    ],
)
def test_llm_grade_parsing(reply, grade):
    assert parse_grade(reply) == grade


def judged(gw, request_id: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = [f for f in gw.engine.store.log._feedback if f.request_id == request_id and f.source == "judge"]
        if got:
            return got
        time.sleep(0.05)
    return []


def test_contains_judge_rates_answers_with_a_reference_and_the_bandit_learns(upstream, start_gateway):
    for m in ("cheap", "coder", "big"):
        upstream.behave(m, reply="The capital of France is Paris.")
    gw = start_gateway(make_config(upstream.base_url, judge={"mode": "contains"}))
    resp = gw.client.chat.completions.create(
        model="router:thompson", messages=ASK, extra_body={"routing": {"reference": "Paris"}}
    )
    (fb,) = judged(gw, resp.id)
    assert fb.rating == 1.0 and fb.model == resp.model
    bandit = gw.engine.policies.get("thompson")
    deadline = time.monotonic() + 10
    while bandit.n_.sum() < 1 and time.monotonic() < deadline:  # learning follows the stored rating
        time.sleep(0.05)
    assert bandit.n_.sum() == 1
    wrong = gw.client.chat.completions.create(
        model="router:thompson", messages=ASK, extra_body={"routing": {"reference": "Lyon"}}
    )
    assert judged(gw, wrong.id)[0].rating == 0.0
    unjudged = gw.client.chat.completions.create(model="router:thompson", messages=ASK)  # no reference
    named = gw.client.chat.completions.create(  # a named model is not routed: nothing to learn
        model="cheap", messages=ASK, extra_body={"routing": {"reference": "Paris"}}
    )
    assert judged(gw, unjudged.id, timeout=0.5) == [] and judged(gw, named.id, timeout=0.5) == []


def test_llm_judge_grades_with_a_pool_model_and_books_its_spend(upstream, start_gateway):
    upstream.behave("big", reply="Grade: 7")
    gw = start_gateway(make_config(upstream.base_url, judge={"mode": "llm", "model": "big"}))
    resp = gw.client.chat.completions.create(
        model="router:cheapest", messages=ASK, extra_body={"routing": {"cost_weight": 1.0}}
    )
    assert resp.model == "cheap"
    (fb,) = judged(gw, resp.id)
    assert fb.rating == pytest.approx(0.7)
    (call,) = upstream.calls("big")
    assert "What is the capital of France?" in call["messages"][0]["content"]
    spend = gw.engine.store.log._requests[f"judge-{resp.id}"]
    assert spend.model == "big" and spend.cost_usd > 0
    upstream.behave("big", reply="A fine answer.")
    silent = gw.client.chat.completions.create(model="router:cheapest", messages=ASK)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(upstream.calls("big")) < 2:
        time.sleep(0.05)
    time.sleep(0.2)
    assert judged(gw, silent.id, timeout=0.5) == []
    assert sample(gw.get("/metrics").text, "moe_router_judge_failures_total", reason="llm_unparsable") == 1.0


def test_llm_judge_needs_a_pool_model():
    with pytest.raises((ConfigError, ValueError), match="judge.model"):
        load_config(None, models=pool("http://127.0.0.1:9"), judge={"mode": "llm", "model": "nope"})
