"""Baseline policies: prior-based, rules, zero-shot categories (with the real MiniLM encoder)."""

from __future__ import annotations

import numpy as np
import pytest

from policies import ModelInfo, PromptBatch
from policies.baselines import CheapestPolicy, RandomPolicy, StrongestPolicy
from policies.category import CategoryPolicy, default_categories
from policies.decision import choose
from policies.rules import RulesPolicy

CATALOG = [
    ModelInfo("tiny", 0.1, 0.1, {"default": 0.3, "chat": 0.8, "code": 0.1, "math": 0.1}),
    ModelInfo("coder", 1, 2, {"default": 0.6, "code": 0.95, "chat": 0.4, "math": 0.5}),
    ModelInfo("mathy", 1, 2, {"default": 0.6, "code": 0.5, "chat": 0.4, "math": 0.95}),
    ModelInfo("big", 10, 30, {"default": 0.9}),
]
COST = np.array([[0.1, 1.0, 1.0, 10.0]])


def batch(*texts, encoder=None):
    b = PromptBatch(list(texts))
    if encoder is not None:
        b.embeddings = encoder.encode(list(texts))
    return b


def test_cheapest_and_strongest():
    b = batch("anything")
    cheap = CheapestPolicy().fit(CATALOG)
    strong = StrongestPolicy().fit(CATALOG)
    assert choose(cheap.predict_quality(b), COST, 0.0)[0] == 0
    assert choose(strong.predict_quality(b), COST, 0.0)[0] == 3
    assert strong.models_ == ["tiny", "coder", "mathy", "big"]


def test_random_is_seeded_and_pure():
    b = batch("a", "b", "c")
    p1 = RandomPolicy(seed=7).fit(CATALOG).predict_quality(b)
    p2 = RandomPolicy(seed=7).fit(CATALOG).predict_quality(b)
    p3 = RandomPolicy(seed=8).fit(CATALOG).predict_quality(b)
    assert p1.shape == (3, 4) and np.array_equal(p1, p2) and not np.array_equal(p1, p3)
    # the same prompt gets the same preferences alone or in a batch
    assert np.array_equal(RandomPolicy(seed=7).fit(CATALOG).predict_quality(batch("b"))[0], p1[1])


def test_unfitted_policy_refuses():
    with pytest.raises(RuntimeError, match="not fitted"):
        StrongestPolicy().predict_quality(batch("x"))


def test_rules_raise_the_named_model():
    rules = [
        {"name": "code", "keywords": ["python", "function"], "model": "coder"},
        {"name": "sql", "regex": r"(?i)\bselect\b.+\bfrom\b", "model": "mathy", "quality": 0.97},
        {"name": "short", "max_tokens": 3, "model": "tiny"},
    ]
    p = RulesPolicy(rules).fit(CATALOG)
    b = batch(
        "Write a python function to add numbers please",
        "SELECT name FROM users WHERE id = 3 -- explain this",
        "hi",
        "Tell me about the history of Rome in some detail",
    )
    picks = choose(p.predict_quality(b), np.repeat(COST, 4, 0), 0.0)
    assert [p.models_[i] for i in picks] == ["coder", "mathy", "tiny", "big"]


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"keywords": ["x"]}, "'model' is required"),
        ({"model": "coder"}, "matches nothing"),
        ({"model": "coder", "regex": "("}, "bad regex"),
        ({"model": "coder", "keywords": ["x"], "colour": "red"}, "unknown field"),
        ({"model": "nope", "keywords": ["x"]}, "unknown model"),
    ],
)
def test_bad_rules_are_clear_errors(rule, message):
    with pytest.raises(ValueError, match=message):
        RulesPolicy([rule]).fit(CATALOG)


def test_category_policy_routes_by_content(encoder):
    p = CategoryPolicy(encoder=encoder).fit(CATALOG)
    assert set(p.categories_) == set(default_categories())
    b = batch(
        "Implement a binary search tree in Java with insert and delete.",
        "Solve the equation 2x^2 - 8 = 0 and show your steps.",
        "Hey, how's it going?",
        encoder=encoder,
    )
    assert p.predict_category(b) == ["code", "math", "chat"]
    proba = p.predict_proba(b)
    assert np.allclose(proba.sum(1), 1.0)
    picks = choose(p.predict_quality(b), np.repeat(COST, 3, 0), 0.2)
    assert [p.models_[i] for i in picks] == ["coder", "mathy", "tiny"]


def test_category_policy_needs_embeddings(encoder):
    p = CategoryPolicy(encoder=encoder).fit(CATALOG)
    with pytest.raises(ValueError, match="embeddings"):
        p.predict_quality(batch("no vectors"))
