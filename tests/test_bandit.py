"""Contextual bandits: they find the planted best arm, their propensities are exact, they learn
from the gateway's /v1/feedback, and replicas share one bandit through Redis."""

from __future__ import annotations

import numpy as np
import pytest
import redis.asyncio as aioredis

from policies.bandit import LinUCBPolicy, ThompsonPolicy
from policies.base import ModelInfo, PromptBatch
from router.state.bandit import MemoryBanditState, RedisBanditState
from router.state.degrade import Outage
from tests.conftest import make_config
from tests.promtext import sample

ARMS = [ModelInfo("a", quality={"default": 0.5}), ModelInfo("b", quality={"default": 0.5}),
        ModelInfo("c", quality={"default": 0.5})]  # fmt: skip
# topic t is answered well only by arm t
P_GOOD = np.array([[0.9, 0.2, 0.2], [0.2, 0.9, 0.2], [0.2, 0.2, 0.9]])


def topic_vectors(dim: int = 24, seed: int = 1) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((3, dim))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def run_stream(policy, steps: int = 600, seed: int = 0) -> tuple[list[int], list[int], list[float]]:
    rng = np.random.default_rng(seed)
    centres = topic_vectors()
    topics, arms, regret = [], [], []
    for _ in range(steps):
        t = int(rng.integers(3))
        e = centres[t] + 0.05 * rng.standard_normal(centres.shape[1])
        batch = PromptBatch([f"topic {t}"], embeddings=(e / np.linalg.norm(e))[None, :])
        probs = policy.action_probabilities(batch, np.zeros(3), np.ones(3, dtype=bool), 0.0)
        arm = policy.sample_arm(probs)
        policy.observe(batch, policy.models_[arm], float(rng.random() < P_GOOD[t, arm]))
        topics.append(t)
        arms.append(arm)
        regret.append(P_GOOD[t].max() - P_GOOD[t, arm])
    return topics, arms, regret


@pytest.mark.parametrize("cls", [LinUCBPolicy, ThompsonPolicy])
def test_bandit_converges_to_the_planted_arm_and_beats_random(cls):
    policy = cls(dim=16, epsilon=0.05).fit(ARMS)
    topics, arms, regret = run_stream(policy)
    late = slice(400, None)
    hits = np.mean(np.array(arms[late]) == np.array(topics[late]))
    assert hits > 0.85
    random_regret = np.mean(P_GOOD.max(axis=1) - P_GOOD.mean(axis=1)) * len(regret)  # uniform choice
    assert sum(regret) < 0.3 * random_regret
    assert policy.n_.sum() == 600


def test_loading_a_state_keeps_the_statistics_and_the_rng_stream():
    """A replica loading another's snapshot takes its statistics and nothing else: its exploration
    keeps its own random stream (reset() would restart it at the seed)."""
    learned = ThompsonPolicy(dim=8).fit(ARMS)
    run_stream(learned, steps=50)
    p, twin = ThompsonPolicy(dim=8).fit(ARMS), ThompsonPolicy(dim=8).fit(ARMS)
    uniform = np.ones(3) / 3
    first = [p.sample_arm(uniform) for _ in range(20)]
    p.load_state(learned.state())
    then = [p.sample_arm(uniform) for _ in range(20)]
    assert first + then == [twin.sample_arm(uniform) for _ in range(40)]
    assert all(np.array_equal(p.state()[k], learned.state()[k]) for k in ("A", "b", "n"))
    with pytest.raises(ValueError, match="does not fit"):
        ThompsonPolicy(dim=4).fit(ARMS).load_state(learned.state())


@pytest.mark.parametrize("cls", [LinUCBPolicy, ThompsonPolicy])
def test_propensities_are_a_distribution_over_eligible_arms(cls):
    policy = cls(dim=8, epsilon=0.1).fit(ARMS)
    batch = PromptBatch(["x"], embeddings=topic_vectors()[:1])
    eligible = np.array([True, False, True])
    probs = policy.action_probabilities(batch, np.array([1e-4, 2e-4, 3e-4]), eligible, 0.3)
    assert probs.sum() == pytest.approx(1.0)
    assert probs[1] == 0.0
    assert (probs[eligible] >= 0.1 / 2 - 1e-12).all()
    assert (policy.action_probabilities(batch, np.zeros(3), np.zeros(3, dtype=bool), 0.0) == 0).all()


def test_untrained_bandit_predicts_its_prior_and_updates_are_exactly_reversible():
    arms = [ModelInfo("a", quality={"default": 0.3}), ModelInfo("b", quality={"default": 0.8})]
    policy = ThompsonPolicy(dim=8).fit(arms)
    batch = PromptBatch(["x"], embeddings=topic_vectors()[:1])
    assert policy.predict_quality(batch)[0] == pytest.approx([0.3, 0.8])
    x, y = policy.observation(batch, "a", 1.0)
    assert y == pytest.approx(0.7)  # the residual over the prior is what is learned
    before = policy.A_.copy(), policy.b_.copy()
    policy.update("a", x, y)
    assert policy.predict_quality(batch)[0, 0] > 0.3
    policy.update("a", x, y, sign=-1.0)
    assert np.allclose(policy.A_, before[0]) and np.allclose(policy.b_, before[1])


def test_bandit_refuses_bad_parameters():
    with pytest.raises(ValueError, match="epsilon"):
        LinUCBPolicy(epsilon=2.0)


def test_gateway_bandit_learns_from_feedback_and_logs_propensity(upstream, start_gateway):
    gw = start_gateway(make_config(upstream.base_url, routing={"cost_weight": 0.0}))
    ask = [{"role": "user", "content": "Summarise the plot of Hamlet in one line."}]
    rating = {"cheap": 1.0, "coder": 0.0, "big": 0.0}  # the cheapest model is the one users like
    before = gw.post("/v1/route", json={"model": "router:thompson", "messages": ask}).json()
    prior = {c["model"]: c["predicted_quality"] for c in before["candidates"]}
    assert prior == {"cheap": 0.5, "coder": 0.6, "big": 0.9}  # untrained: the config's prior quality
    chosen = []
    for _ in range(40):
        raw = gw.client.chat.completions.with_raw_response.create(model="router:thompson", messages=ask)
        resp = raw.parse()
        assert raw.headers["x-moe-router-policy"] == "thompson"
        chosen.append(resp.model)
        r = gw.post("/v1/feedback", json={"id": resp.id, "rating": rating[resp.model]})
        assert r.status_code == 200
    assert chosen[-10:].count("cheap") >= 8  # feedback moved it to the model users rate well
    rec = gw.engine.store.log._requests[resp.id]
    assert 0.0 < rec.propensity <= 1.0
    updates = sum(
        sample(gw.get("/metrics").text, "moe_router_policy_updates_total", policy="thompson", model=m) or 0
        for m in ("cheap", "coder", "big")
    )
    assert updates == 40
    route = gw.post("/v1/route", json={"model": "router:thompson", "messages": ask}).json()
    quality = {c["model"]: c["predicted_quality"] for c in route["candidates"]}
    assert quality["cheap"] > 0.8 > 0.4 > quality["big"]


def test_a_feedback_on_a_deterministic_policy_does_not_touch_bandits(gateway):
    resp = gateway.client.chat.completions.create(
        model="router:cheapest", messages=[{"role": "user", "content": "hi"}]
    )
    assert gateway.post("/v1/feedback", json={"id": resp.id, "rating": 1.0}).status_code == 200
    assert gateway.engine.store.log._requests[resp.id].propensity == 1.0
    assert gateway.engine.policies.get("thompson").n_.sum() == 0


def _observations(n: int, seed: int = 3):
    rng = np.random.default_rng(seed)
    return [(ARMS[i % 3].name, rng.standard_normal(9), float(rng.random())) for i in range(n)]


async def test_replicas_share_one_bandit_through_redis_with_snapshots(redis_url):
    clients = [aioredis.from_url(redis_url) for _ in range(3)]
    states = [RedisBanditState(c, Outage(None), snapshot_every=5) for c in clients]
    replicas = [ThompsonPolicy(dim=8).fit(ARMS) for _ in range(3)]
    reference = ThompsonPolicy(dim=8).fit(ARMS)
    mem = MemoryBanditState()
    obs = _observations(13)
    for i, (m, x, y) in enumerate(obs):  # feedback lands on replica 0 or 1, alternately
        await states[i % 2].record("ts", replicas[i % 2], m, x, y)
        await mem.record("ts", reference, m, x, y)
    for s, p in zip(states[:2], replicas[:2], strict=True):
        await s.refresh("ts", p, force=True)
        assert np.allclose(p.A_, reference.A_) and np.allclose(p.b_, reference.b_)
        assert p.n_.sum() == 13
    stream = next(k for k in await clients[0].keys("moe:bandit:ts:*") if k.endswith(b":stream"))
    assert await clients[0].xlen(stream) < 13  # snapshots trimmed what they cover
    # a replica that starts now loads the snapshot and reads the rest: the same state
    await states[2].refresh("ts", replicas[2], force=True)
    assert np.allclose(replicas[2].A_, reference.A_) and replicas[2].n_.sum() == 13
    for c in clients:
        await c.aclose()


async def test_concurrent_feedback_and_refreshes_count_each_observation_once(redis_url):
    import asyncio

    client = aioredis.from_url(redis_url)
    state = RedisBanditState(client, Outage(None), refresh_s=0.0)
    policy = ThompsonPolicy(dim=8).fit(ARMS)
    obs = _observations(30)
    await asyncio.gather(
        *(state.record("ts", policy, m, x, y) for m, x, y in obs),
        *(state.refresh("ts", policy) for _ in range(30)),
    )
    assert policy.n_.sum() == 30
    await client.aclose()


async def test_feedback_during_a_redis_outage_is_counted_once_when_it_returns():
    from tests.redis_server import RedisServer

    srv = RedisServer().start()
    client = aioredis.from_url(srv.url, socket_timeout=0.3, socket_connect_timeout=0.3)
    state = RedisBanditState(client, Outage(None, retry_every_s=0.0))
    policy, reference = ThompsonPolicy(dim=8).fit(ARMS), ThompsonPolicy(dim=8).fit(ARMS)
    obs = _observations(6)
    try:
        for m, x, y in obs[:2]:
            await state.record("ts", policy, m, x, y)
        srv.stop()
        for m, x, y in obs[2:4]:  # Redis is down: learned locally, kept for later
            await state.record("ts", policy, m, x, y)
        assert policy.n_.sum() == 4
        srv.start()  # back, empty: what this replica kept is appended once
        for m, x, y in obs[4:]:
            await state.record("ts", policy, m, x, y)
        for m, x, y in obs:
            reference.update(m, x, y)
        assert policy.n_.sum() == 6  # each observation counted once in this replica
        assert np.allclose(policy.A_, reference.A_) and np.allclose(policy.b_, reference.b_)
        fresh = ThompsonPolicy(dim=8).fit(ARMS)  # a replica starting now reads the restarted Redis:
        await RedisBanditState(client, Outage(None)).refresh("ts", fresh, force=True)
        assert fresh.n_.sum() == 4  # the two kept ones arrived once (the first two died with it)
    finally:
        await client.aclose()
        srv.stop()


def test_warm_start_routes_like_the_trained_artifact_before_any_feedback(tmp_path, encoder):
    from policies.artifacts import save_policy
    from policies.knn import KNNPolicy
    from tests.training_fixtures import MODELS, planted_dataset

    trained = KNNPolicy(encoder=encoder).fit(planted_dataset())
    art = save_policy(trained, tmp_path / "knn", encoder=encoder)
    bandit = ThompsonPolicy(warm_start=str(art), encoder=encoder).fit([ModelInfo(m) for m in MODELS])
    batch = PromptBatch(["Give me a simple recipe for carrot cake."])
    assert bandit.predict_quality(batch)[0] == pytest.approx(trained.predict_quality(batch)[0], abs=1e-6)
    probs = bandit.action_probabilities(batch, np.zeros(3), np.ones(3, dtype=bool), 0.0)
    assert MODELS[int(probs.argmax())] == "cheap"  # cooking goes to the model that answers it
