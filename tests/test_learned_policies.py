"""Learned policies on planted data (real MiniLM encoder), their artifacts, the CLI jobs and the
gateway serving a trained artifact end to end."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest

from policies.artifacts import load_policy, save_policy
from policies.base import PromptBatch
from policies.decision import choose
from tests.conftest import make_config
from tests.support import CLI
from tests.training_fixtures import HELD_OUT, MODELS, planted, planted_dataset, write_routerbench
from training.jobs import run_eval, train

LEARNED = ["knn", "logistic", "mlp", "mf", "bt", "cluster", "pg"]
FAST = {"calib_folds": 3}  # keep the suite quick; calibration still runs


pytestmark = pytest.mark.usefixtures("training_cache")


@pytest.fixture(scope="module")
def data():
    return planted_dataset()


@pytest.fixture(scope="module")
def fitted(data, encoder):
    return {name: train(name, data, encoder, FAST) for name in LEARNED}


def routes(policy, encoder, texts):
    b = PromptBatch(list(texts), embeddings=encoder.encode(list(texts)))
    q = policy.predict_quality(b)
    assert q.shape == (len(texts), 3) and (q >= 0).all() and (q <= 1).all()
    return [policy.models_[j] for j in choose(q, np.ones_like(q), 0.0)]


@pytest.mark.parametrize("name", LEARNED)
def test_policy_learns_the_planted_pattern(name, fitted, encoder):
    p = fitted[name]
    assert p.models_ == MODELS and p.needs_embeddings
    got = routes(p, encoder, [t for t, _ in HELD_OUT])
    right = sum(g == want for g, (_, want) in zip(got, HELD_OUT, strict=True))
    assert right >= 5, f"{name} routed {got}"
    cal = p.metrics_["calibration"]
    assert cal["method"] == "platt" and 0 <= cal["out_of_fold_calibrated"]["ece"] <= 1
    cost = p.predict_cost(PromptBatch(["x" * 400]))
    assert cost.shape == (1, 3) and cost[0, 0] < cost[0, 1] < cost[0, 2]  # learned from the data


@pytest.mark.parametrize("name", ["knn", "mlp"])
def test_artifact_round_trip_and_refusals(name, fitted, encoder, tmp_path):
    p = fitted[name]
    d = save_policy(p, tmp_path / name, encoder=encoder, metrics=p.metrics_, data={"prompts": 120})
    meta = json.loads((d / "policy.json").read_text())
    assert meta["type"] == name and meta["models"] == MODELS
    assert meta["encoder"] == {
        "name": encoder.name,
        "version": encoder.version,
        "build": encoder.build,
        "model": encoder.model,
    }
    assert "calibration" in meta["metrics"] and not list(d.glob("*.pkl"))
    q = load_policy(d, encoder=encoder)
    texts = [t for t, _ in HELD_OUT]
    b = PromptBatch(texts, embeddings=encoder.encode(texts))
    np.testing.assert_allclose(q.predict_quality(b), p.predict_quality(b), rtol=1e-5, atol=1e-6)
    # a policy fitted with another encoder version is refused
    meta["encoder"]["version"] = "0.0.0-other"
    (d / "policy.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="trained with encoder .* retrain"):
        load_policy(d, encoder=encoder)
    meta["encoder"]["version"] = encoder.version
    meta["type"] = "telepathy"
    (d / "policy.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="unknown policy type"):
        load_policy(d, encoder=encoder)
    meta["type"] = name
    (d / "policy.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="unknown parameters"):
        load_policy(d, encoder=encoder, bogus=1)
    (d / "arrays.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt"):
        load_policy(d, encoder=encoder)
    (d / "policy.json").write_text("{")
    with pytest.raises(ValueError, match="corrupt"):
        load_policy(d, encoder=encoder)


def test_cascade_escalates_weak_answers(encoder, tmp_path):
    texts, _, Q, C = planted()
    Q[:, 2] = 1.0  # the strong model is always right: escalating pays when cheap is wrong
    # the cheap model says "I am not sure" exactly when it is wrong
    responses = [
        [("Here is the answer." if Q[i, 0] else "I am not sure, sorry."), "ok", "ok"]
        for i in range(len(texts))
    ]
    from training.loaders import load_dataset

    ds = load_dataset(write_routerbench(tmp_path / "rb.csv", texts, Q, C, responses=responses))
    p = train("cascade", ds, encoder, {"first": "cheap", "escalate_to": "big", "tolerance": 0.0, **FAST})
    plan = p.cascade_plan(PromptBatch(["anything"]))[0]
    assert (plan.first, plan.escalate_to) == ("cheap", "big") and 0 <= plan.threshold <= 1
    assert p.should_escalate("How long should I bake scones?", "I am not sure, sorry.")
    assert not p.should_escalate("How long should I bake scones?", "Here is the answer.")
    assert p.metrics_["cascade"]["scorer_auc"] > 0.9
    ev = run_eval(p, ds, encoder, points=21)
    assert ev.report["points"] == 21 and ev.report["cascade"]["first"] == "cheap"
    d = save_policy(p, tmp_path / "cascade", encoder=encoder)
    assert load_policy(d, encoder=encoder).should_escalate("Bake?", "I am not sure, sorry.")


def test_cli_train_eval_and_errors(tmp_path, cli_cache, data):
    texts, _, Q, C = planted()
    trn = write_routerbench(tmp_path / "train.csv", texts[::2], Q[::2], C[::2])
    tst = write_routerbench(tmp_path / "test.csv", texts[1::2], Q[1::2], C[1::2], blank={(0, "big")})
    env = {**os.environ, "MOE_ROUTER_CACHE_DIR": str(cli_cache)}

    def run(*args):
        return subprocess.run([CLI, *args], capture_output=True, text=True, env=env, timeout=300)

    r = run(
        "train",
        "--policy",
        "knn",
        "--data",
        str(trn),
        "--format",
        "routerbench",
        "--out",
        str(tmp_path / "a"),
        "--param",
        "k=5",
        "--param",
        "calib_folds=3",
    )
    assert r.returncode == 0, r.stderr
    assert "trained knn on 60 prompts x 3 models" in r.stdout
    assert json.loads((tmp_path / "a" / "policy.json").read_text())["params"]["k"] == 5
    r = run(
        "eval",
        "--artifact",
        str(tmp_path / "a"),
        "--data",
        str(tst),
        "--format",
        "routerbench",
        "--decisions",
        str(tmp_path / "d.jsonl"),
        "--report",
        str(tmp_path / "r.json"),
        "--plot",
        str(tmp_path / "p.png"),
    )
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert len(lines) == 61 * 60 and lines[0] == {"point": 0, "prompt_id": 0, "model": lines[0]["model"]}
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["scored_prompts"] == 59 and rep["max_quality"] > 0.9
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    # user errors: one line on stderr, exit 1
    for args, msg in [
        (
            ("train", "--policy", "nope", "--data", str(trn), "--out", str(tmp_path / "b")),
            "unknown policy type",
        ),
        (
            ("train", "--policy", "knn", "--data", str(tmp_path / "none.csv"), "--out", str(tmp_path / "b")),
            "no such data file",
        ),
        (
            (
                "train",
                "--policy",
                "knn",
                "--data",
                str(trn),
                "--format",
                "routellm",
                "--out",
                str(tmp_path / "b"),
            ),
            "not a RouteLLM file",
        ),
        (
            ("train", "--policy", "knn", "--data", str(trn), "--param", "kk=3", "--out", str(tmp_path / "b")),
            "unknown parameters",
        ),
        (("eval", "--artifact", str(tmp_path), "--data", str(tst)), "not a policy artifact"),
    ]:
        r = run(*args)
        assert r.returncode == 1 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, (
            args,
            r.stderr,
        )


def test_gateway_serves_a_trained_artifact(fitted, encoder, upstream, start_gateway, tmp_path):
    d = save_policy(fitted["logistic"], tmp_path / "learned", encoder=encoder)
    cfg = make_config(
        upstream.base_url, routing={"policies": {"learned": {"artifact": str(d)}}, "cost_weight": 0.0}
    )
    gw = start_gateway(cfg)
    for text, want in HELD_OUT[::2]:
        r = gw.client.chat.completions.with_raw_response.create(
            model="router:learned", messages=[{"role": "user", "content": text}]
        )
        assert r.parse().model == want, text
    # an artifact scoring models this pool lacks serves the ones it has, and says which it lacks
    # (tests/test_model_map.py); one scoring none of the pool's models is refused, with the reason
    p = fitted["knn"]
    p2 = load_policy(save_policy(p, tmp_path / "k", encoder=encoder), encoder=encoder)
    p2.models_ = ["cheap", "coder", "gpt-9"]
    partial = save_policy(p2, tmp_path / "partial", encoder=encoder)
    gw = start_gateway(
        make_config(upstream.base_url, routing={"policies": {"x": {"artifact": str(partial)}}})
    )
    assert gw.engine.policies.warnings == [
        "policy 'x': artifact models ['gpt-9'] have no pool model (add them to model_map); "
        "it routes among ['cheap', 'coder']"
    ]
    p2.models_ = ["gpt-7", "gpt-8", "gpt-9"]
    bad = save_policy(p2, tmp_path / "bad", encoder=encoder)
    from router.policy_set import PolicyError

    with pytest.raises(PolicyError, match="not in this gateway's pool"):
        start_gateway(make_config(upstream.base_url, routing={"policies": {"x": {"artifact": str(bad)}}}))


def test_static_encoder_fast_path_is_a_different_encoder(encoder):
    from policies.encoder_files import bundled_model_path
    from policies.encoders import PromptEncoder
    from policies.static_encoder import StaticModel

    fast = PromptEncoder("minilm-static")
    assert fast.name != encoder.name and fast.version != encoder.version  # artifacts tell them apart
    from policies.static_encoder import tokenizer

    tok = tokenizer(bundled_model_path())
    vecs = np.random.default_rng(0).normal(size=(tok.get_vocab_size(), 8)).astype(np.float32)
    m = StaticModel(tok, vecs)
    out = m.encode(["hello world", "", "hello world"])
    assert out.shape == (3, 8) and m.get_embedding_dimension() == 8
    np.testing.assert_allclose(np.linalg.norm(out[0]), 1.0, rtol=1e-5)
    np.testing.assert_allclose(out[0], out[2])
    assert not out[1].any()  # no tokens: a zero vector, not NaN
    # the event loop encodes with it only once it is loaded (loading may distill for a minute)
    assert not fast.inline
    fast._st = m
    assert fast.inline and not encoder.inline


def test_the_zero_shot_default_on_the_static_encoder_is_warned_about():
    """router:category matches prompts to example descriptions, which the static encoder's vectors
    do poorly: start-up and `config validate` say so when it is the default policy."""
    from policies.encoder_files import bundled_model_path
    from policies.encoders import PromptEncoder
    from policies.static_encoder import StaticModel, tokenizer
    from router.policy_set import STATIC_CATEGORY, PolicySet

    fast = PromptEncoder("minilm-static")
    tok = tokenizer(bundled_model_path())  # random token vectors: no minute-long distillation here
    fast._st = StaticModel(tok, np.random.default_rng(0).normal(size=(tok.get_vocab_size(), 8)))
    upstream = "http://127.0.0.1:9/v1"
    static = make_config(upstream, encoder={"model": "minilm-static"})
    # the default irt needs the encoder its artifact was fitted with: it falls back to category
    irt, category = PolicySet(static, fast).warnings
    assert "falls back to category" in irt and category == STATIC_CATEGORY
    assert PolicySet(static, fast).default == "category"
    explicit = make_config(
        upstream, encoder={"model": "minilm-static"}, routing={"default_policy": "category"}
    )
    assert PolicySet(explicit, fast).warnings == [STATIC_CATEGORY]
    fitted_default = make_config(
        upstream, encoder={"model": "minilm-static"}, routing={"default_policy": "cheapest"}
    )
    assert PolicySet(fitted_default, fast).warnings == []


def test_config_validate_builds_policies_without_loading_the_encoder(tmp_path, monkeypatch):
    """`config validate` checks artifacts against the encoder's identity and looks for its files,
    but loads no model (an ONNX session cost seconds a call): the same policies, default and
    warnings as with the real encoder, and a missing model file is still an error."""
    from policies import encoders
    from router.policy_set import STATIC_CATEGORY, PolicyError, PolicySet, build_encoder

    for model in ("minilm-onnx-int8", "minilm-onnx-int8-r3", "minilm-onnx", "minilm", "minilm-static"):
        real, unloaded = encoders.PromptEncoder(model), encoders.UnloadedEncoder(model)
        assert (unloaded.name, unloaded.version, unloaded.build) == (real.name, real.version, real.build)
    upstream = "http://127.0.0.1:9/v1"
    default = make_config(upstream)
    policies = PolicySet(default, build_encoder(default, unloaded=True))
    assert policies.default == "irt" and policies.warnings == []
    assert isinstance(policies.get("irt").encoder.load(), encoders._FixedVectors)
    static = make_config(upstream, encoder={"model": "minilm-static"})
    irt, category = PolicySet(static, build_encoder(static, unloaded=True)).warnings
    assert "falls back to category" in irt and category == STATIC_CATEGORY

    monkeypatch.setattr(encoders, "bundled_model_path", lambda: str(tmp_path))  # a broken install
    with pytest.raises(PolicyError, match="no tokenizer.json"):
        PolicySet(default, build_encoder(default, unloaded=True))


def test_static_encoder_tokenizes_like_transformers_without_importing_it():
    """The static encoder's vectors were distilled per token id: its fast tokenizer must give the
    ids transformers' tokenizer gives, on every kind of text."""
    from transformers import AutoTokenizer

    from policies.encoder_files import bundled_model_path
    from policies.static_encoder import tokenizer

    texts = [
        "How do I reverse a linked list in O(1) space?",
        "Ünïcödé façade — naïve café, 東京で寿司を食べたい 🍣",
        "   spaces\tand\nnewlines   ",
        "word " * 300,  # past tokenizer.json's 128 and the model's 256: no truncation
        "",
        "SELECT * FROM users WHERE id = 1; -- [CLS] [SEP] [PAD]",
    ]
    want = AutoTokenizer.from_pretrained(bundled_model_path())(
        texts, add_special_tokens=False, truncation=False
    )
    got = [e.ids for e in tokenizer(bundled_model_path()).encode_batch(texts, add_special_tokens=False)]
    assert got == want["input_ids"]
    assert len(got[3]) > 256


def test_gateway_runs_a_cascade_as_a_two_step_dispatch(encoder, upstream, start_gateway, tmp_path):
    texts, _, Q, C = planted()
    Q[:, 2] = 1.0
    responses = [
        [("Here is the answer." if Q[i, 0] else "I am not sure, sorry."), "ok", "ok"]
        for i in range(len(texts))
    ]
    from training.loaders import load_dataset

    ds = load_dataset(write_routerbench(tmp_path / "rb.csv", texts, Q, C, responses=responses))
    p = train("cascade", ds, encoder, {"first": "cheap", "escalate_to": "big", "tolerance": 0.0, **FAST})
    d = save_policy(p, tmp_path / "cascade", encoder=encoder)
    gw = start_gateway(make_config(upstream.base_url, routing={"policies": {"cc": {"artifact": str(d)}}}))
    ask = [{"role": "user", "content": "How long should I bake scones?"}]

    upstream.behave("cheap", reply="Here is the answer.")
    kept = gw.client.chat.completions.with_raw_response.create(model="router:cc", messages=ask)
    assert kept.headers["x-moe-router-model"] == "cheap"
    assert kept.headers["x-moe-router-cascade"] == "accepted:cheap"
    assert len(upstream.calls("big")) == 0

    upstream.behave("cheap", reply="I am not sure, sorry.")
    raw = gw.client.chat.completions.with_raw_response.create(model="router:cc", messages=ask)
    assert raw.headers["x-moe-router-model"] == "big"
    assert raw.headers["x-moe-router-cascade"] == "escalated:cheap"
    assert raw.parse().choices[0].message.content == "big: How long should I bake scones?"
    assert len(upstream.calls("big")) == 1 and len(upstream.calls("cheap")) == 2
    # the response's cost covers both calls
    specs = gw.engine.specs
    first = specs["cheap"].cost_usd(*_usage_of(upstream, "cheap", -1))
    second = specs["big"].cost_usd(*_usage_of(upstream, "big", -1))
    assert float(raw.headers["x-moe-router-cost-usd"]) == pytest.approx(first + second, rel=1e-3)


def _usage_of(upstream, model: str, i: int) -> tuple[int, int]:
    """(prompt, completion) tokens the mock upstream reports for call i of `model` (as it counts them)."""
    from tests.upstream import Behaviour, _words

    body = upstream.calls(model)[i]
    reply = upstream._behaviour.get(model, Behaviour()).reply
    text = reply if reply is not None else f"{model}: {body['messages'][-1]['content']}"
    return _words(body["messages"]), len(text.split(" "))
