"""The `ensemble` policy (stacked base policies) and the prompt features it may add: fitted on
small data built here (real MiniLM encoder), its artifact, the auto feature choice and the CLI."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest

from policies.artifacts import load_policy, save_policy
from policies.base import PromptBatch
from policies.decision import choose
from policies.ensemble import EnsemblePolicy
from policies.features import MARKERS, category_centroids, category_proba, marker_features
from tests.support import CLI
from tests.training_fixtures import HELD_OUT, MODELS, planted, planted_dataset, write_jsonl, write_routerbench
from training.dataset import RoutingDataset
from training.jobs import train
from training.loaders import observations

FAST = {"bases": ["knn", "logistic", "cluster"], "calib_folds": 3}


pytestmark = pytest.mark.usefixtures("training_cache")


def marker(text: str, name: str, tokens: float = 10.0) -> float:
    return float(marker_features([text], np.array([tokens]))[0, MARKERS.index(name)])


def test_features_of_known_prompts(encoder):
    code = "Why does this fail?\n```python\ndef f(x):\n    return x.strip()\n```"
    math = "Solve 3x + 7 = 22 and check that 2 * 5 = 10."
    latex = r"Compute $\frac{1}{2} + \sqrt{x}$ for x = 4."
    plain = "Tell me about the history of tea in England."
    assert marker(code, "code_fence") == 1 and marker(code, "code_words") >= np.log1p(2)
    assert marker(plain, "code_fence") == 0 and marker(plain, "code_words") == 0
    assert marker(math, "equations") >= np.log1p(2) and marker(math, "digits") > 0.1
    assert marker(plain, "equations") == 0 and marker(plain, "digits") == 0
    assert marker(latex, "latex") == 1 and marker(math, "latex") == 0 and marker(plain, "latex") == 0
    assert marker(plain, "log_tokens", 99.0) == pytest.approx(np.log(100.0))
    assert marker(plain, "log_chars") == pytest.approx(np.log1p(len(plain)))
    names, cents = category_centroids(encoder)
    texts = [
        "Write a Python function that sorts a list of dicts by a key.",
        "What is the integral of x^2 dx?",
    ]
    p = category_proba(encoder.encode(texts), cents)
    assert p.shape == (2, len(names)) and np.allclose(p.sum(1), 1)
    assert [names[i] for i in p.argmax(1)] == ["code", "math"]


def routes(policy, encoder, texts):
    b = PromptBatch(list(texts), embeddings=encoder.encode(list(texts)))
    q = policy.predict_quality(b)
    assert q.shape == (len(texts), len(policy.models_)) and (q >= 0).all() and (q <= 1).all()
    return [policy.models_[j] for j in choose(q, np.ones_like(q), 0.0)], q


def test_ensemble_learns_the_split_and_round_trips(encoder, tmp_path):
    p = train("ensemble", planted_dataset(), encoder, FAST)
    got, q = routes(p, encoder, [t for t, _ in HELD_OUT])
    assert sum(g == want for g, (_, want) in zip(got, HELD_OUT, strict=True)) >= 5, got
    assert set(p.metrics_["combiner"]) == set(MODELS) and p.metrics_["calibration"]["method"] == "platt"
    assert set(p.metrics_["base_out_of_fold_brier"]) == {"knn", "logistic", "cluster"}
    # the combiner leans on the bases: their weights are not all zero
    assert np.abs(p.coef_[:, :3]).sum() > 0
    d = save_policy(p, tmp_path / "e", encoder=encoder, metrics=p.metrics_)
    meta = json.loads((d / "policy.json").read_text())
    assert meta["type"] == "ensemble" and meta["params"]["bases"] == FAST["bases"]
    assert {"knn.X_", "logistic.coef_", "cluster.centroids_", "coef_"} <= set(meta["arrays"])
    loaded = load_policy(d, encoder=encoder)
    _, q2 = routes(loaded, encoder, [t for t, _ in HELD_OUT])
    np.testing.assert_array_equal(q2, q)
    with pytest.raises(ValueError, match="cannot be an ensemble base"):
        EnsemblePolicy(bases=["knn", "cascade"])
    with pytest.raises(ValueError, match="unknown policy type"):
        EnsemblePolicy(bases=["knn", "nope"])


WORDS = [
    "river",
    "stone",
    "garden",
    "window",
    "paper",
    "music",
    "coffee",
    "lamp",
    "field",
    "story",
    "bridge",
    "cloud",
    "winter",
    "market",
    "letter",
    "forest",
    "table",
    "harbor",
    "candle",
    "mirror",
]


def length_split(n: int, seed: int, planted_length: bool) -> RoutingDataset:
    """Prompts of 80-600 random words, so the encoder (which reads the last 400 characters) cannot
    see their length. With `planted_length`, `short` answers prompts under 200 words and `long`
    the others; without, both answer at random (70% and 50% of the time)."""
    rng = np.random.default_rng(seed)
    lengths = np.exp(rng.uniform(np.log(80), np.log(600), n)).astype(int)
    texts = [" ".join(rng.choice(WORDS, k)) + f" ({i})" for i, k in enumerate(lengths)]
    if planted_length:
        short = (lengths < 200).astype(float)
        Q = np.stack([short, 1 - short], axis=1)
        flip = rng.random(Q.shape) < 0.05
        Q = np.where(flip, 1 - Q, Q)
    else:
        Q = (rng.random((n, 2)) < [0.7, 0.5]).astype(float)
    return RoutingDataset(texts, ["short", "long"], Q, np.ones_like(Q, bool))


def test_auto_features_are_chosen_on_training_folds_when_they_help(encoder):
    params = {"bases": ["knn", "logistic"], "calib_folds": 4}
    tr, te = length_split(400, 0, True), length_split(200, 1, True)
    auto = train("ensemble", tr, encoder, params)
    off = train("ensemble", tr, encoder, {**params, "features": "off"})
    assert auto.features_used_ == [True, True] and off.features_used_ == [False, False]
    for m in ("short", "long"):  # the choice follows the cross-fitted losses on the training data
        c = auto.metrics_["combiner"][m]
        assert c["cv_log_loss_with_features"] < c["cv_log_loss_without_features"]

    def accuracy(p):
        b = PromptBatch(te.texts, embeddings=encoder.encode(p.view(te.texts)), prompt_tokens=te.tokens())
        pick = choose(p.predict_quality(b), np.ones((len(te), 2)), 0.0)
        return te.quality[np.arange(len(te)), pick].mean()

    assert accuracy(auto) > accuracy(off) + 0.05
    assert accuracy(auto) > 0.85
    # no signal in length, markers or category: the features stay out
    noise = train("ensemble", length_split(400, 2, False), encoder, params)
    assert noise.features_used_ == [False, False]


def test_cli_trains_and_evaluates_an_ensemble(tmp_path, cli_cache):
    texts, _, Q, C = planted()
    ds = planted_dataset()
    trn = write_jsonl(tmp_path / "train.jsonl", list(observations(ds.subset(np.arange(0, len(ds), 2)))))
    tst = write_routerbench(tmp_path / "test.csv", texts[1::2], Q[1::2], C[1::2])
    env = {**os.environ, "MOE_ROUTER_CACHE_DIR": str(cli_cache)}

    def run(*args):
        return subprocess.run([CLI, *args], capture_output=True, text=True, env=env, timeout=300)

    out = tmp_path / "a"
    r = run(
        "train",
        *("--policy", "ensemble", "--data", str(trn), "--format", "jsonl", "--out", str(out)),
        *("--param", "bases=[knn,logistic]", "--param", "calib_folds=3"),
    )
    assert r.returncode == 0, r.stderr
    assert "trained ensemble on 60 prompts x 3 models" in r.stdout
    assert json.loads((out / "policy.json").read_text())["params"]["bases"] == ["knn", "logistic"]
    r = run(
        "eval",
        "--artifact",
        str(out),
        "--data",
        str(tst),
        "--format",
        "routerbench",
        "--report",
        str(tmp_path / "r.json"),
    )
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["scored_prompts"] == 60 and rep["max_quality"] > 0.9
    assert rep["aiq"] > rep["aiq_single_models"]
