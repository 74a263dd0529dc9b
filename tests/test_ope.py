"""Off-policy evaluation: the estimators recover known policy values on synthetic logs, and
`moe-router ope` scores policies on an exported gateway log."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import make_config
from tests.support import config_file, run
from training.ope import effective_sample_size, estimate, reward_model


def synthetic(n: int = 6000, k: int = 3, seed: int = 0):
    """Contexts, a known reward probability per (context, arm), and a stochastic logging policy."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 4))
    p_reward = 1 / (1 + np.exp(-(X[:, :k] * 1.5 + np.array([0.0, 0.3, -0.3]))))
    logits = X[:, [1, 2, 0]]
    logging = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    logging = 0.8 * logging + 0.2 / k  # every arm has some chance, as a bandit's epsilon gives
    actions = np.array([rng.choice(k, p=p) for p in logging])
    rewards = (rng.random(n) < p_reward[np.arange(n), actions]).astype(float)
    return X, p_reward, logging, actions, rewards


def test_estimators_recover_the_logging_policys_own_value():
    X, p_reward, logging, actions, rewards = synthetic()
    truth = float((logging * p_reward).sum(axis=1).mean())
    prop = logging[np.arange(len(actions)), actions]
    est = estimate(rewards, actions, prop, logging, reward_model(X, actions, rewards, 3))
    for name in ("ips", "snips", "dr"):
        e = est[name]
        assert e.low <= truth <= e.high, (name, e, truth)
        assert e.high - e.low < 0.06
    assert effective_sample_size(prop, prop) == pytest.approx(len(rewards))


def test_estimators_recover_a_different_deterministic_policys_value():
    X, p_reward, logging, actions, rewards = synthetic(seed=1)
    greedy = p_reward.argmax(axis=1)  # the best arm per context: far from the logging policy
    target = np.eye(3)[greedy]
    truth = float(p_reward.max(axis=1).mean())
    logged_value = float(rewards.mean())
    assert truth - logged_value > 0.1  # the target is much better than what was logged
    prop = logging[np.arange(len(actions)), actions]
    est = estimate(rewards, actions, prop, target, reward_model(X, actions, rewards, 3))
    for name in ("ips", "snips", "dr"):
        assert est[name].low <= truth <= est[name].high, (name, est[name], truth)
    width = {n: est[n].high - est[n].low for n in ("ips", "dr")}
    assert width["dr"] < width["ips"]  # the reward model removes variance


def test_estimate_refuses_bad_propensities():
    with pytest.raises(ValueError, match="propensities"):
        estimate(np.ones(2), np.zeros(2, dtype=int), np.array([0.5, 0.0]), np.ones((2, 1)))


def write_log(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def uniform_log(n: int = 60) -> list[dict]:
    """Uniform logging over three models; each model's rating is fixed, so every value is known."""
    rating = {"cheap": 0.2, "coder": 0.5, "big": 0.9}
    models = list(rating)
    return [
        {
            "prompt": f"question number {i} about topic {i % 5}",
            "model": models[i % 3],
            "quality": rating[models[i % 3]],
            "propensity": 1 / 3,
            "cost_weight": 0.2,
            "prompt_tokens": 12,
        }
        for i in range(n)
    ]


@pytest.mark.parametrize(("policy", "value"), [("cheapest", 0.2), ("strongest", 0.9)])
def test_ope_command_scores_a_policy_on_a_logged_export(tmp_path, upstream, policy, value):
    cfg = config_file(tmp_path, upstream.base_url)
    log = tmp_path / "log.jsonl"
    write_log(
        log, [*uniform_log(), {"prompt": "not rated", "model": "big", "quality": None, "propensity": 1}]
    )
    out = tmp_path / "ope.json"
    r = run("ope", "--log", str(log), "--policy", policy, "--config", str(cfg), "--json", str(out))
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())
    assert report["rows"] == 60 and report["skipped"]["unrated"] == 1
    assert report["logged_value"] == pytest.approx((0.2 + 0.5 + 0.9) / 3)
    for name in ("ips", "snips", "dm", "dr"):
        assert report["estimates"][name]["value"] == pytest.approx(value, abs=1e-6), name
    assert report["agreement"] == pytest.approx(1 / 3)
    assert "snips" in r.stdout


def test_ope_command_without_propensities_is_one_line_error(tmp_path, upstream):
    cfg = config_file(tmp_path, upstream.base_url)
    log = tmp_path / "log.jsonl"
    write_log(log, [{**row, "propensity": None} for row in uniform_log(6)])
    r = run("ope", "--log", str(log), "--policy", "cheapest", "--config", str(cfg))
    assert r.returncode == 1
    assert r.stderr.startswith("error:") and len(r.stderr.strip().splitlines()) == 1
    assert "no_propensity" in r.stderr


def test_live_bandit_traffic_exports_with_propensities_and_is_evaluated(
    tmp_path, upstream, start_gateway, redis_url
):
    gw = start_gateway(make_config(upstream.base_url, state=redis_url))
    for i in range(12):
        resp = gw.client.chat.completions.create(
            model="router:thompson", messages=[{"role": "user", "content": f"Tell me fact number {i}."}]
        )
        rating = 1.0 if resp.model == "cheap" else 0.0
        assert gw.post("/v1/feedback", json={"id": resp.id, "rating": rating}).status_code == 200
    # the caller changes its mind about the last answer: the export carries the new rating only
    assert gw.post("/v1/feedback", json={"id": resp.id, "rating": 1.0 - rating}).status_code == 200
    cfg = config_file(tmp_path, upstream.base_url)
    env = {"MOE_ROUTER_STATE": redis_url}
    log = tmp_path / "traffic.jsonl"
    r = run("export", "--out", str(log), "--only-rated", "--config", str(cfg), env=env)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(rows) == 12
    assert all(row["policy"] == "thompson" and 0 < row["propensity"] <= 1 for row in rows)
    assert all(row["cost_weight"] == 0.2 and row["quality"] in (0.0, 1.0) for row in rows)
    assert next(row["quality"] for row in rows if row["request_id"] == resp.id) == 1.0 - rating
    out = tmp_path / "ope.json"
    r = run("ope", "--log", str(log), "--policy", "cheapest", "--config", str(cfg), "--json", str(out))
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())
    assert report["rows"] == 12
    ips = report["estimates"]["ips"]
    assert ips["low"] <= ips["value"] <= ips["high"]
