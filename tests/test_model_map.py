"""Model-name mapping: a policy trained on RouterBench names serves a pool with other names,
renamed at train time (`moe-router train --map FILE`) or at serve time (`model_map:` in the
policy's config entry); unknown names, two models onto one and unmapped models are reported."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from router.config import ConfigError
from router.policy_set import PolicyError
from tests.conftest import make_config
from tests.support import config_file, run
from tests.training_fixtures import COST, HELD_OUT, MODELS, planted, write_jsonl

# the planted data's models under RouterBench's names (cheap -> Mistral, coder -> Code Llama, big -> GPT-4)
RB = {
    "cheap": "mistralai/mistral-7b-chat",
    "coder": "meta/code-llama-instruct-34b-chat",
    "big": "gpt-4-1106-preview",
}
TO_POOL = {rb: ours for ours, rb in RB.items()}


pytestmark = pytest.mark.usefixtures("training_cache")


@pytest.fixture(scope="module")
def routerbench_named(tmp_path_factory):
    """The planted data as canonical JSONL with RouterBench's model names."""
    texts, _, Q, C = planted()
    rows = [
        {"prompt": t, "model": RB[m], "quality": float(Q[i, j]), "cost_usd": float(C[i, j])}
        for i, t in enumerate(texts)
        for j, m in enumerate(MODELS)
    ]
    assert set(COST) == set(RB)
    return write_jsonl(tmp_path_factory.mktemp("rb") / "rb.jsonl", rows)


def train(data, out, *extra):
    r = run(
        "train", "--policy", "knn", "--data", str(data), "--format", "jsonl", "--out", str(out),
        "--param", "k=5", "--param", "calib_folds=3", *extra, timeout=300,
    )  # fmt: skip
    return r


@pytest.fixture(scope="module")
def rb_artifact(routerbench_named, tmp_path_factory):
    """An artifact trained on RouterBench names, unmapped."""
    out = tmp_path_factory.mktemp("art") / "rb-knn"
    r = train(routerbench_named, out)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "policy.json").read_text())["models"] == [RB[m] for m in MODELS]
    return out


def routed(gw, policy: str, text: str) -> str:
    raw = gw.client.chat.completions.with_raw_response.create(
        model=f"router:{policy}", messages=[{"role": "user", "content": text}]
    )
    assert raw.parse().model == raw.headers["x-moe-router-model"]
    return raw.headers["x-moe-router-model"]


def right(gw, policy: str) -> int:
    return sum(routed(gw, policy, text) == want for text, want in HELD_OUT)


def test_train_with_map_writes_pool_names(routerbench_named, tmp_path, upstream, start_gateway):
    mapping = tmp_path / "map.yaml"
    mapping.write_text(yaml.safe_dump(TO_POOL))
    out = tmp_path / "mapped"
    r = train(routerbench_named, out, "--map", str(mapping))
    assert r.returncode == 0, r.stderr
    meta = json.loads((out / "policy.json").read_text())
    assert meta["models"] == MODELS and meta["data"]["model_map"] == TO_POOL
    assert set(meta["data"]["mean_quality"]) == set(MODELS)
    # the artifact speaks the pool's names: it serves without a model_map
    gw = start_gateway(
        make_config(
            upstream.base_url, routing={"policies": {"knn": {"artifact": str(out)}}, "cost_weight": 0.0}
        )
    )
    assert gw.engine.policies.warnings == []
    assert right(gw, "knn") >= 5


def test_train_map_errors_are_one_line(routerbench_named, tmp_path):
    cases = {
        "typo.yaml": (
            {"gpt-4-1106-previw": "big"},
            "model map names models not in the data: ['gpt-4-1106-previw']",
        ),
        "dup.json": ({RB["big"]: "big", RB["coder"]: "big"}, "sends both"),
        "clash.yaml": ({RB["big"]: RB["coder"]}, "two of the data's models the name"),
        "list.yaml": (["big"], "a model map is a mapping"),
    }
    for name, (content, msg) in cases.items():
        f = tmp_path / name
        f.write_text(json.dumps(content) if name.endswith(".json") else yaml.safe_dump(content))
        r = train(routerbench_named, tmp_path / "never", "--map", str(f))
        assert r.returncode == 1 and msg in r.stderr, (name, r.stderr)
        # the error is one line, after the data's load summary (the name is checked against the data)
        errors = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr
        assert not (tmp_path / "never").exists()


def test_model_map_serves_an_artifact_under_pool_names(rb_artifact, upstream, start_gateway):
    policies = {"rb": {"artifact": str(rb_artifact), "model_map": TO_POOL}}
    gw = start_gateway(make_config(upstream.base_url, routing={"policies": policies, "cost_weight": 0.0}))
    assert gw.engine.policies.warnings == []
    assert gw.engine.policies.get("rb").models_ == MODELS
    assert right(gw, "rb") >= 5


def test_a_mapped_cascade_plans_with_pool_names(encoder, tmp_path):
    from policies.base import PromptBatch
    from router.mapped_policy import mapped
    from tests.training_fixtures import write_routerbench
    from training.jobs import train as fit
    from training.loaders import load_dataset

    texts, _, Q, C = planted()
    Q[:, 2] = 1.0
    responses = [[("Here." if Q[i, 0] else "Not sure."), "ok", "ok"] for i in range(len(texts))]
    ds = load_dataset(write_routerbench(tmp_path / "rb.csv", texts, Q, C, responses=responses))
    p = fit("cascade", ds, encoder, {"first": "cheap", "escalate_to": "big", "calib_folds": 3})
    m = mapped(p, {"cheap": "small", "big": "large"})
    plan = m.cascade_plan(PromptBatch(["anything"]))[0]
    assert (plan.first, plan.escalate_to) == ("small", "large") and m.models_ == ["small", "coder", "large"]
    assert plan.threshold == p.cascade_plan(PromptBatch(["anything"]))[0].threshold
    # the data's costs are not the pool's: the gateway prices mapped models itself
    assert p.predict_cost(PromptBatch(["x"])) is not None and m.predict_cost(PromptBatch(["x"])) is None
    assert m.should_escalate("How long should I bake scones?", "Not sure.") == p.should_escalate(
        "How long should I bake scones?", "Not sure."
    )


def test_unmapped_artifact_models_are_reported_and_left_out(rb_artifact, tmp_path, upstream, start_gateway):
    # Mistral (the cooking model) has no pool model: reported, and cooking prompts go elsewhere
    partial = {RB["coder"]: "coder", RB["big"]: "big"}
    policies = {"rb": {"artifact": str(rb_artifact), "model_map": partial}}
    gw = start_gateway(make_config(upstream.base_url, routing={"policies": policies, "cost_weight": 0.0}))
    (warning,) = gw.engine.policies.warnings
    assert "'mistralai/mistral-7b-chat'" in warning and "routes among ['coder', 'big']" in warning
    got = {text: routed(gw, "rb", text) for text, _ in HELD_OUT}
    assert set(got.values()) <= {"coder", "big"}
    assert [got[t] for t, want in HELD_OUT if want != "cheap"] == [w for _, w in HELD_OUT if w != "cheap"]

    from router.cli.summary import summary_lines

    lines = summary_lines(gw.engine, None, gw.url)
    assert any(ln.startswith("  warning: ") and "mistral-7b-chat" in ln for ln in lines)
    # `config validate` says it too (and still passes)
    cfg = config_file(tmp_path, upstream.base_url, routing={"policies": policies})
    r = run("config", "validate", str(cfg))
    assert r.returncode == 0, r.stderr
    assert (
        "warning: policy 'rb': artifact models ['mistralai/mistral-7b-chat'] have no pool model" in r.stdout
    )


def test_model_map_errors(rb_artifact, tmp_path, upstream, start_gateway):
    art = str(rb_artifact)
    for policy, msg in [
        (
            {"artifact": art, "model_map": {RB["big"]: "gpt-5"}},
            "routing.policies.rb.model_map maps onto ['gpt-5'], not chat models of the pool",
        ),
        ({"artifact": art, "model_map": {RB["big"]: "big", RB["coder"]: "big"}}, "sends both"),
        ({"type": "cheapest", "model_map": {"a": "big"}}, "has no 'artifact'"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(msg)):
            make_config(upstream.base_url, routing={"policies": {"rb": policy}})
    # the CLI says the same in one line
    cfg = config_file(
        tmp_path,
        upstream.base_url,
        routing={"policies": {"rb": {"artifact": art, "model_map": {RB["big"]: "gpt-5"}}}},
    )
    r = run("config", "validate", str(cfg))
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "gpt-5" in r.stderr
    # names the artifact does not score, or a target another artifact model already has
    for mapping, msg in [
        ({"gpt-4-0613": "big"}, r"model map names models not in the artifact: \['gpt-4-0613'\]"),
        ({RB["big"]: "big", RB["cheap"]: "coder", RB["coder"]: "cheap"}, None),
    ]:
        cfg = make_config(
            upstream.base_url, routing={"policies": {"rb": {"artifact": art, "model_map": mapping}}}
        )
        if msg is None:  # a permutation is fine: every name once
            assert start_gateway(cfg).engine.policies.get("rb").models_ == ["coder", "cheap", "big"]
        else:
            with pytest.raises(PolicyError, match=msg):
                start_gateway(cfg)
    # an artifact none of whose models is in the pool is refused
    with pytest.raises(PolicyError, match="scores models not in this gateway's pool.*model_map"):
        start_gateway(make_config(upstream.base_url, routing={"policies": {"rb": {"artifact": art}}}))
