"""The GRPO-trained LLM router: real trl, a real (tiny, random) causal LM, served by the gateway.

The base LM (`tests.tiny_router_lm`) knows the answer format, naming both models equally often;
GRPO has to learn *which* model to name: on the planted task only `big` answers correctly,
though it costs twice as much.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from policies.artifacts import load_policy
from policies.base import PromptBatch
from policies.decision import decide
from tests.conftest import make_config
from tests.tiny_router_lm import build_tiny_router_lm
from training.dataset import RoutingDataset

MODELS = ["cheap", "big"]  # two of the test gateway's pool
ROSTER = {
    "cheap": {"input": 0.1, "output": 0.2, "description": "small and fast"},
    "big": {"input": 10, "output": 30, "description": "large"},
}
WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "paper",
    "music",
    "green",
    "orange",
    "table",
    "window",
    "bread",
    "garden",
]
STEPS = 40


def texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, 6)) for _ in range(n)]


def planted(n: int = 32, seed: int = 1) -> RoutingDataset:
    q = np.tile([0.0, 1.0], (n, 1))  # only `big` is right
    cost = np.tile([1e-4, 2e-4], (n, 1))
    return RoutingDataset(texts(n, seed), list(MODELS), q, np.ones_like(q, dtype=bool), cost=cost)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # a tiny model on a shared 2-core box: thread hand-offs cost more than they save
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    from training.llm_router import build_roster

    ds = planted()
    return build_tiny_router_lm(tmp_path_factory.mktemp("tiny-router-lm"), ds.texts, build_roster(ds, ROSTER))


@pytest.fixture(scope="module")
def trained(base, tmp_path_factory):
    from training.llm_router import train_llm_router

    out = tmp_path_factory.mktemp("llm-artifact")
    res = train_llm_router(
        str(base),
        planted(),
        out,
        STEPS,
        num_generations=4,
        prompts_per_step=2,
        max_completion_length=8,
        learning_rate=1e-3,
        max_prompt_chars=80,
        roster=ROSTER,
        seed=0,
        warm_start_steps=0,  # the base knows the format; GRPO alone must find `big`
    )
    return out, res


def test_grpo_raises_the_reward_on_the_planted_task(trained):
    out, res = trained
    curve = res.curve
    assert [p["step"] for p in curve] == list(range(1, STEPS + 1))
    first = np.mean([p["reward"] for p in curve[:10]])
    last = np.mean([p["reward"] for p in curve[-10:]])
    # format 1 + outcome (big: 1, cheap: 0) - 0.1 x relative cost: 1.9 for `big`, 0.95 for `cheap`
    assert last > first + 0.15, (first, last)
    assert last > 1.7
    outcome = [p["outcome"] for p in curve]
    assert np.mean(outcome[-10:]) > np.mean(outcome[:10]) + 0.15
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["training_curve"] == curve
    assert saved["curve_summary"]["reward_last"] == pytest.approx(last, abs=1e-5)
    meta = json.loads((out / "policy.json").read_text())
    assert meta["type"] == "llm" and meta["models"] == MODELS
    assert [r["name"] for r in meta["roster"]] == MODELS and meta["roster"][1]["input_price_per_1m"] == 10
    assert meta["params"] == {
        "fallback": "strongest",
        "max_new_tokens": 8,
        "max_prompt_chars": 80,
        "constrain": True,
    }
    assert meta["metrics"]["training_curve"] == curve
    assert (out / "model" / "model.safetensors").exists() and (out / "model" / "tokenizer.json").exists()


def test_artifact_loads_and_the_gateway_routes_with_it(trained, upstream, start_gateway):
    out, _ = trained
    policy = load_policy(out)
    held_out = texts(6, seed=99)
    assert policy.route(held_out) == ["big"] * 6
    q = policy.predict_quality(PromptBatch(held_out[:2]))
    # the LM's choice is 1.0; the others are half the fallback prior (mean training quality: cheap 0)
    assert q.tolist() == [[0.0, 1.0], [0.0, 1.0]]
    assert (policy.route_count, policy.fallback_count) == (2, 0)

    cfg = make_config(
        upstream.base_url,
        routing={"policies": {"llm": {"artifact": str(out)}}, "cost_weight": 0.0},
    )
    gw = start_gateway(cfg)
    r = gw.post(
        "/v1/route", json={"model": "router:llm", "messages": [{"role": "user", "content": held_out[0]}]}
    )
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["model"] == "big" and d["policy"] == "llm"
    # models of the pool the LM was not trained on are not scored (never chosen by it)
    assert {c["model"] for c in d["candidates"]} == {"cheap", "big"}
    resp = gw.client.chat.completions.create(
        model="router:llm", messages=[{"role": "user", "content": held_out[1]}], max_tokens=8
    )
    assert resp.model == "big"


def test_unparseable_output_falls_back_to_the_catalogue_policy(trained):
    out, _ = trained
    # one new token cannot hold a whole <route>..</route>: nothing parseable, every time
    policy = load_policy(out, max_new_tokens=1, fallback="cheapest")
    prompts = texts(3, seed=7)
    assert policy.route(prompts) == [None] * 3
    q = policy.predict_quality(PromptBatch(prompts))
    assert q.tolist() == [[1.0, 1.0]] * 3  # the cheapest baseline's row: equal, so the cheaper wins
    assert (policy.route_count, policy.fallback_count) == (3, 3)
    d = decide(MODELS, q[0], [1e-4, 2e-4], [None, None], cost_weight=0.0)
    assert d.chosen.model == "cheap"


def test_corrupt_or_misconfigured_artifacts_are_refused(trained, tmp_path):
    import shutil

    out, _ = trained
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    with open(bad / "model" / "model.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\0\0\0\0")
    with pytest.raises(ValueError, match="do not match policy.json"):
        load_policy(bad)
    with pytest.raises(ValueError, match="unknown parameters"):
        load_policy(out, temperature=0.5)
    with pytest.raises(ValueError, match="catalogue policy"):
        load_policy(out, fallback="knn")


def test_cli_trains_as_a_module_and_reports_errors_in_one_line(base, tmp_path):
    from training.loaders import save_jsonl

    data = tmp_path / "planted.jsonl"
    save_jsonl(planted(8), data)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

    def run(*args: str) -> subprocess.CompletedProcess:
        cmd = [
            sys.executable,
            "-m",
            "router.cli",
            "train-llm-router",
            "--base",
            str(base),
            "--data",
            str(data),
        ]
        return subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, timeout=300)

    out = tmp_path / "art"
    r = run("--out", str(out), "--steps", "2", "--max-completion-length", "8", "--max-prompt-chars", "80")
    assert r.returncode == 0, r.stderr
    assert "trained llm router on 8 prompts x 2 models, 2 steps" in r.stdout
    assert "step 2/2: reward" in r.stderr
    assert len(json.loads((out / "metrics.json").read_text())["training_curve"]) == 2
    assert load_policy(out).models_ == MODELS
    for args, msg in [
        (("--out", str(tmp_path / "x"), "--fallback", "knn"), "must be a catalogue policy"),
        (("--out", str(tmp_path / "x"), "--models", "cheap"), "at least two models"),
        (("--out", str(tmp_path / "x"), "--rounds", "2"), "needs the models' recorded answers"),
    ]:
        r = run(*args)
        last = r.stderr.strip().splitlines()[-1]  # after the data summary line, when data was read
        assert r.returncode == 1 and last.startswith("error: ") and msg in last, r.stderr
        assert "Traceback" not in r.stderr


# ---- decoding constraint, non-finite guard, warm start ------------------------------------------
@pytest.fixture(scope="module")
def random_lm(tmp_path_factory):
    """The tiny LM *without* its format warm-up: left alone it samples junk."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.llm_router import build_roster

    ds = planted()
    d = build_tiny_router_lm(
        tmp_path_factory.mktemp("random-lm"), ds.texts, build_roster(ds, ROSTER), warm_steps=0
    )
    return AutoModelForCausalLM.from_pretrained(d), AutoTokenizer.from_pretrained(d)


def _sample(model, tok, processors, n: int = 64, seed: int = 0) -> list[str]:
    import torch

    from policies.llm_router import render_prompt
    from training.llm_router import build_roster

    torch.manual_seed(seed)
    prompt = render_prompt(tok, texts(1, seed=3)[0], build_roster(planted(), ROSTER), 80)
    enc = tok([prompt] * n, return_tensors="pt")
    out = model.generate(
        **enc,
        do_sample=True,
        temperature=1.0,
        top_k=0,
        max_new_tokens=8,
        pad_token_id=tok.pad_token_id,
        logits_processor=processors,
    )
    return tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)


def test_constrained_sampling_only_ever_names_a_roster_model(random_lm):
    from policies.route_constraint import RouteTrie, logits_processors
    from training.rewards import format_reward, parse_route

    model, tok = random_lm
    free = _sample(model, tok, None)
    # without the constraint the random LM's samples name no model: the check below can fail
    assert sum(parse_route(a, MODELS) is not None for a in free) < len(free) // 2
    trie = RouteTrie(tok, MODELS)
    answers = _sample(model, tok, logits_processors(trie))
    assert all(parse_route(a, MODELS) in MODELS for a in answers), answers
    assert format_reward(answers, models=MODELS) == [1.0] * len(answers)
    assert {parse_route(a, MODELS) for a in answers} == set(MODELS)  # sampling still chooses


def test_trie_allows_exactly_the_roster_answers():
    from policies.route_constraint import RouteTrie

    class CharTok:  # one token per character: names that share a prefix share trie nodes
        eos_token_id = 0

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) for c in text]}

    trie = RouteTrie(CharTok(), ["gpt-4", "gpt-4o"])
    head = [ord(c) for c in "<route>gpt-4"]
    assert trie.allowed([]) == [ord("<")]
    assert sorted(trie.allowed(head)) == [ord("<"), ord("o")]  # "</route>" or "o"
    done = [ord(c) for c in "<route>gpt-4</route>"]
    assert trie.allowed(done) == [0]  # then only EOS
    assert trie.allowed([ord("x")]) == [0]  # a row off the trie can only end
    assert trie.max_len == len("<route>gpt-4o</route>") + 1
    CharTok.eos_token_id = None
    with pytest.raises(ValueError, match="no EOS"):
        RouteTrie(CharTok(), ["a"])


def test_nan_and_inf_logits_cannot_crash_sampling(random_lm):
    import torch

    from policies.route_constraint import RouteConstraint, RouteTrie

    model, tok = random_lm

    class Poison:  # what an overflowing bf16 forward pass hands the sampler
        def __call__(self, input_ids, scores):
            scores = scores.clone()
            scores[0] = float("nan")
            scores[1, :5] = float("inf")
            scores[2] = float("-inf")
            return scores

    with pytest.raises(RuntimeError):  # the failure the guard exists for (a device-side assert on CUDA)
        _sample(model, tok, [Poison()], n=4)
    trie = RouteTrie(tok, MODELS)
    answers = _sample(model, tok, [Poison(), RouteConstraint(trie)], n=4)
    assert all(_parse(a) in MODELS for a in answers), answers
    # the processor alone: finite where allowed, -inf elsewhere, NaN rows uniform over the allowed
    scores = torch.full((2, len(tok)), float("nan"))
    scores[1] = float("inf")
    got = RouteConstraint(trie)(torch.zeros((2, 3), dtype=torch.long), scores)
    p = torch.softmax(got, dim=-1)
    assert torch.isfinite(p).all() and torch.allclose(p.sum(-1), torch.ones(2))
    first = tok.convert_tokens_to_ids("<route>")
    assert p[:, first].tolist() == [1.0, 1.0]


def _parse(answer: str) -> str | None:
    from training.rewards import parse_route

    return parse_route(answer, MODELS)


def test_warm_start_targets_and_a_warm_started_lm_routes(random_lm, tmp_path):
    from training.llm_router import build_roster, train_llm_router, warm_start_answers

    q = np.array([[1.0, 1.0], [0.0, 1.0], [0.0, 1.0], [np.nan, 1.0], [np.nan, np.nan]])
    mask = np.isfinite(q)
    cost = np.tile([1e-4, 2e-4], (5, 1))
    ds = RoutingDataset(texts(5, seed=4), list(MODELS), np.nan_to_num(q), mask, cost=cost)
    roster = build_roster(ds, ROSTER)
    # ties go to the cheaper model; a masked model is never the target; no-quality rows are dropped
    assert warm_start_answers(ds, roster, "best") == ["cheap", "big", "big", "big"]
    assert warm_start_answers(ds, roster, "best", cost_lambda=0.0) == ["cheap", "big", "big", "big"]
    assert warm_start_answers(ds, roster, "format") == ["cheap", "big", "cheap", "big"]
    with pytest.raises(ValueError, match="warm-start target"):
        warm_start_answers(ds, roster, "oracle")

    # a random LM, supervised on the planted task's best model (`big`) for a few steps, then
    # one GRPO step: it routes held-out prompts to `big` unconstrained too (it learnt the format)
    base = build_tiny_router_lm(
        tmp_path / "base", planted().texts, build_roster(planted(), ROSTER), warm_steps=0
    )
    out = tmp_path / "art"
    res = train_llm_router(
        str(base),
        planted(),
        out,
        1,
        num_generations=2,
        max_prompt_chars=80,
        roster=ROSTER,
        warm_start_steps=30,
        warm_start_lr=1e-2,
        warm_start_target="best",
        learning_rate=0.0,
    )
    ws = res.metrics["warm_start"]
    assert ws["target"] == "best" and ws["loss_last"] < ws["loss_first"] / 4
    assert load_policy(out, constrain=False).route(texts(4, seed=99)) == ["big"] * 4


def test_second_round_rows_show_the_first_answer(base):
    from transformers import AutoTokenizer

    from training.llm_router import build_grpo_dataset, build_roster

    ds = planted(3)
    tok = AutoTokenizer.from_pretrained(base)
    roster = build_roster(ds, ROSTER)
    with pytest.raises(ValueError, match="recorded answers"):
        build_grpo_dataset(ds, roster, tok, 80, rounds=2)
    ds.responses = {"cheap": ["A", None, "B"], "big": ["C", "D", "E"]}
    rows = build_grpo_dataset(ds, roster, tok, 80, rounds=2)
    # 3 first rounds, then one second round per recorded answer (cheap's second one is missing)
    assert rows["first"] == [None, None, None, "cheap", "big", "big", "cheap", "big"]
    assert rows["prompt"][:3] == build_grpo_dataset(ds, roster, tok, 80)["prompt"]
    assert "big answered:\nD\n" in rows["prompt"][5] and "<route>big</route> to keep" in rows["prompt"][5]
    assert rows["quality"][5] == [0.0, 1.0]
