"""Answer-aware cascades on recorded answers the tests write themselves: answer extraction, the
agreement plan (two cheap models), the threshold from training folds, boosted trees served by
numpy, and the CLI's train + eval."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest

from policies.answers import FEATURES, answer_features, calc_errors, extract_answer
from policies.artifacts import load_policy, save_policy
from policies.base import PromptBatch
from policies.cascade import _fit_boosting, _pick_threshold, _trees
from tests.support import CLI
from tests.training_fixtures import MODELS, planted, write_routerbench
from training.jobs import run_eval, train
from training.loaders import load_dataset

FAST = {"calib_folds": 3}


pytestmark = pytest.mark.usefixtures("training_cache")


@pytest.mark.parametrize(
    "text, want",
    [
        ("D\n", "D"),
        ("(C)", "C"),
        ("B) The atmosphere will be supplied with oxygen.", "B"),
        ("The answer is c.", "C"),
        ("She sells 9 * $2 = $<<9*2=18>>18.\n#### 18", "18"),
        ("#### 1,200", "1200"),
        ("So the total is $18.00 dollars.", "18"),
        ("The answer is -3.5", "-3.5"),
        ("A robe takes 2 bolts of blue and 1 of white, so 3 in total.", "3"),  # "A" is a word here
        ("Okay, let me think.", None),
        ("", None),
        (None, None),
    ],
)
def test_extract_answer(text, want):
    assert extract_answer(text) == want


def test_answer_features_read_arithmetic_and_agreement():
    assert calc_errors("16 - 3 = <<16-3=13>>13 and <<13*2=27>>27, <<__import__('os')=1>>") == (2, 3)
    # a model's text is not trusted: what would exhaust the parser, or is too long to be a
    # calculator's, is a wrong annotation, not an exception on the request path
    for hostile in (
        "-" * 100_000 + "1",
        "lambda:" * 5000 + "1",
        "(" * 150 + "1" + ")" * 150,
        "1+" * 150 + "1",
    ):
        assert calc_errors(f"<<{hostile}=1>> then <<2*3=6>>") == (1, 2)
    prompt = "Janet has 16 eggs and eats 3 of them."
    good = answer_features(prompt, "16 - 3 = <<16-3=13>>13 eggs.\n#### 13", "She has 13 left.")
    bad = answer_features(prompt, "16 + 3 = <<16+3=20>>20. However, I am not sure.", "She has 13 left.")
    f_good, f_bad = dict(zip(FEATURES, good, strict=True)), dict(zip(FEATURES, bad, strict=True))
    assert f_good["marker"] == 1 and f_bad["marker"] == 0
    assert f_good["calc_errors"] == 0 and f_bad["calc_errors"] == 1
    assert f_good["agree"] == 1 and f_bad["agree"] == 0 and f_good["second_answered"] == 1
    assert f_bad["hedges"] == 2 and f_good["prompt_numbers_used"] == 1.0


def letter_data(seed: int = 0, n_right=(0.75, 0.6)):
    """Planted prompts as multiple-choice questions: `big` always right; `cheap` and `coder`
    right by chance, and when wrong each names its own wrong letter (so they never agree then)."""
    rng = np.random.default_rng(seed)
    texts, _, _, C = planted(seed)
    n = len(texts)
    truth = rng.choice(list("ABCD"), n)
    Q = np.stack([rng.random(n) < n_right[0], rng.random(n) < n_right[1], np.ones(n, bool)], 1).astype(float)

    def wrong(t, k):
        return "ABCD"[("ABCD".index(t) + 1 + k) % 4]

    responses = [
        [truth[i] if Q[i, 0] else wrong(truth[i], 0), truth[i] if Q[i, 1] else wrong(truth[i], 1), truth[i]]
        for i in range(n)
    ]
    return texts, Q, C, responses


def test_agreement_plan_accepts_agreement_and_pays_both_cheap_calls(encoder, tmp_path):
    texts, Q, C, responses = letter_data()
    ds = load_dataset(write_routerbench(tmp_path / "rb.csv", texts, Q, C, responses=responses))
    p = train("cascade", ds, encoder, {"tolerance": 0.0, **FAST})  # second="auto": picked here
    plan = p.cascade_plan(PromptBatch(["q"]))[0]
    assert (plan.first, plan.second, plan.escalate_to) == ("cheap", "coder", "big")
    compared = p.metrics_["cascade"]["plans_compared"]
    assert compared[0]["second"] == "coder" and any(c["second"] is None for c in compared)
    q = "What spices go well with tofu?"
    assert p.should_escalate(q, "B", "C")  # they disagree: ask the strong model
    assert not p.should_escalate(q, "B", "B")  # they agree: accept
    with pytest.raises(ValueError, match="reads the answers of cheap and coder"):
        p.should_escalate(q, "B")
    # out of fold, escalating the disagreements recovers the strong model's quality
    m = p.metrics_["cascade"]
    disagree = np.mean([r[0] != r[1] for r in responses])
    assert m["out_of_fold_quality"] == 1.0 and m["out_of_fold_escalation_rate"] == pytest.approx(
        disagree, abs=0.05
    )
    ev = run_eval(p, ds, encoder, points=21)
    sweep = ev.report["sweep"]
    cheap, coder, big = (C[:, MODELS.index(x)] for x in ("cheap", "coder", "big"))
    assert sweep[0]["escalation_rate"] == 0 and sweep[-1]["escalation_rate"] == 1
    assert sweep[0]["cost_usd"] == pytest.approx((cheap + coder).mean())  # both cheap calls
    assert sweep[-1]["cost_usd"] == pytest.approx((cheap + coder + big).mean())  # and the strong one
    assert ev.report["max_quality"] == 1.0 and ev.report["cascade"]["second"] == "coder"
    # the cheapest point at full quality escalates at least every prompt the cheap model gets
    # wrong, and hardly more than the disagreements (the sweep steps by 5% of the prompts)
    full = min(s["cost_usd"] for s in sweep if s["quality"] == 1.0)
    at_most = (cheap + coder + np.array([r[0] != r[1] for r in responses]) * big).mean()
    assert (cheap + coder + (Q[:, 0] == 0) * big).mean() - 1e-12 <= full <= at_most + 0.05 * big.mean()
    # the artifact round-trips (the boosted trees or the logistic weights, whichever CV chose)
    d = save_policy(p, tmp_path / "cc", encoder=encoder)
    back = load_policy(d, encoder=encoder)
    assert back.second_ == "coder" and back.scorer_kind_ == p.scorer_kind_
    assert back.should_escalate(q, "B", "C") and not back.should_escalate(q, "A", "A")
    # the gateway runs the single form only: an agreement plan routes in one step there
    from policies.decision import Candidate, Decision
    from router.planner import Planner

    every = [Candidate(m, 0.5, 0.001, None) for m in MODELS]
    assert Planner._cascade_plan(back, PromptBatch([q]), Decision("cc", 0.0, every, [])) is None
    single = train("cascade", ds, encoder, {"second": "none", **FAST})
    cp = Planner._cascade_plan(single, PromptBatch([q]), Decision("cc", 0.0, every, []))
    assert (cp.first, cp.second, cp.escalate_to) == ("cheap", None, "big")


def test_threshold_comes_from_out_of_fold_scores(encoder, tmp_path):
    # the cheap model's answers carry no signal: a scorer scored on its own training rows would
    # look sure of itself; out of fold it is not, so reaching the strong model's quality with no
    # tolerance means escalating nearly everything
    rng = np.random.default_rng(3)
    texts, _, _, C = planted(3)
    n = len(texts)
    Q = np.stack([rng.random(n) < 0.6, np.zeros(n), np.ones(n)], 1).astype(float)
    responses = [[rng.choice(list("ABCD")), "x", "A"] for _ in range(n)]
    ds = load_dataset(write_routerbench(tmp_path / "rb.csv", texts, Q, C, responses=responses))
    p = train("cascade", ds, encoder, {"first": "cheap", "second": "none", "tolerance": 0.0, **FAST})
    m = p.metrics_["cascade"]
    assert m["second"] is None and m["out_of_fold_quality"] == 1.0
    assert m["out_of_fold_escalation_rate"] > 0.8 and m["scorer_auc"] < 0.75
    # the rule itself: the fewest escalations that reach the target, cut between two scores
    oof = np.array([0.1, 0.2, 0.3, 0.9])
    qf, qs = np.array([0.0, 1.0, 0.0, 1.0]), np.ones(4)
    assert _pick_threshold(oof, qf, qs, 1.0) == pytest.approx(0.6)  # escalate 0.1, 0.2, 0.3
    assert _pick_threshold(oof, qf, qs, 0.5) == 0.0  # the cheap model alone reaches 0.5
    assert _pick_threshold(oof, qf, np.zeros(4), 0.9) == 1.0  # never reached: escalate all


def test_boosted_trees_served_by_numpy_match_scikit_learn():
    from sklearn.ensemble import GradientBoostingClassifier

    rng = np.random.default_rng(0)
    H = rng.normal(size=(300, 6)).astype(np.float32)
    y = (H[:, 0] + H[:, 1] * H[:, 2] + 0.3 * rng.normal(size=300)) > 0
    gb = GradientBoostingClassifier(
        init="zero",
        n_estimators=100,
        max_depth=3,
        min_samples_leaf=20,
        learning_rate=0.1,
        subsample=0.8,
        random_state=7,
    ).fit(H, y)
    np.testing.assert_allclose(
        _trees(_fit_boosting(H, y, 7), H), gb.decision_function(H), rtol=1e-6, atol=1e-9
    )


def test_cli_trains_and_evaluates_a_cascade(tmp_path, cli_cache):
    texts, Q, C, responses = letter_data(1)
    trn = write_routerbench(tmp_path / "train.csv", texts[::2], Q[::2], C[::2], responses=responses[::2])
    tst = write_routerbench(tmp_path / "test.csv", texts[1::2], Q[1::2], C[1::2], responses=responses[1::2])
    env = {**os.environ, "MOE_ROUTER_CACHE_DIR": str(cli_cache)}

    def run(*args):
        return subprocess.run([CLI, *args], capture_output=True, text=True, env=env, timeout=300)

    a = tmp_path / "a"
    r = run(
        "train",
        "--policy",
        "cascade",
        "--data",
        str(trn),
        "--format",
        "routerbench",
        "--out",
        str(a),
        "--param",
        "calib_folds=3",
    )
    assert r.returncode == 0, r.stderr
    meta = json.loads((a / "policy.json").read_text())
    assert meta["state"]["second_"] == "coder" and meta["params"]["second"] == "auto"
    r = run(
        "eval",
        "--artifact",
        str(a),
        "--data",
        str(tst),
        "--format",
        "routerbench",
        "--report",
        str(tmp_path / "r.json"),
    )
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["cascade"]["second"] == "coder" and rep["points"] == 61
    assert rep["max_quality"] == 1.0 and rep["cost_to_best_single_quality"]["ratio"] < 0.8


def test_artifact_from_before_the_answer_features_still_serves(encoder, tmp_path):
    # an old cascade artifact: no scorer kind, no second model, a scorer on [prompt emb, answer
    # emb, their product, log length, empty]; here it says "escalate exactly the empty answers"
    from safetensors.numpy import load_file, save_file

    texts, Q, C, responses = letter_data(2)
    ds = load_dataset(write_routerbench(tmp_path / "rb.csv", texts, Q, C, responses=responses))
    p = train("cascade", ds, encoder, {"first": "cheap", "second": "none", **FAST})
    d = save_policy(p, tmp_path / "old", encoder=encoder)
    meta = json.loads((d / "policy.json").read_text())
    arrays = {k: v for k, v in load_file(str(d / "arrays.safetensors")).items() if not k.startswith("gb_")}
    dim = encoder.encode(["x"]).shape[1]
    coef = np.zeros(3 * dim + 2, np.float32)
    coef[-1] = -20.0
    arrays["scorer_coef_"] = coef
    save_file(arrays, str(d / "arrays.safetensors"))
    for k in ("scorer_kind_", "second_"):
        meta["state"].pop(k, None)
    meta["state"].update(scorer_intercept_=5.0, threshold_=0.5)
    meta["params"] = {k: v for k, v in meta["params"].items() if k not in ("second", "scorer")}
    meta.update(arrays=sorted(arrays), arrays_sha256=None)
    (d / "policy.json").write_text(json.dumps(meta))
    old = load_policy(d, encoder=encoder)
    assert old.scorer_kind_ == "embedding" and old.cascade_plan(PromptBatch(["q"]))[0].second is None
    assert old.should_escalate("What caused the French Revolution?", "")
    assert not old.should_escalate("What caused the French Revolution?", "C")
