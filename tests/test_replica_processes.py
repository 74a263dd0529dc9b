"""Two `moe-router serve` processes on one Redis: budgets, keys and outages as operators meet them."""

from __future__ import annotations

import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import yaml

from router.state import RedisStore
from router.state.budgets import BudgetScope
from tests.conftest import pool
from tests.support import CLI, Replica

ASK = {
    "model": "coder",
    "messages": [{"role": "user", "content": "Reverse a string in Python."}],
    "max_tokens": 100,
}


@pytest.fixture
def cluster(tmp_path, upstream, private_redis):
    """cluster(n, budgets_on_outage) -> (replicas, env); the replicas share the private Redis."""
    started: list[Replica] = []

    def make(
        n: int = 2, outage: str = "open", timeout_s: float = 0.3
    ) -> tuple[list[Replica], dict[str, str]]:
        cfg = tmp_path / f"gateway-{outage}.yaml"
        body = {
            "models": pool(upstream.base_url),
            "routing": {"default_policy": "cheapest"},
            "dispatch": {"retries": 0},
            "outage": {"budgets": outage, "timeout_s": timeout_s, "retry_every_s": 0.2},
            "ledger": "none",
        }
        cfg.write_text(yaml.safe_dump(body))
        env = {
            **os.environ,
            "MOE_ROUTER_STATE": private_redis.url,
            "MOE_ROUTER_REQUIRE_KEYS": "1",
            "HF_HUB_OFFLINE": "1",
        }
        reps = [Replica(cfg, env, tmp_path / f"replica-{outage}-{i}.log") for i in range(n)]
        started.extend(reps)
        return [r.wait_up() for r in reps], {**env, "MOE_ROUTER_CONFIG": str(cfg)}

    yield make
    for r in started:
        r.stop()


def create_key(env: dict[str, str], *args: str) -> str:
    out = subprocess.run([CLI, "keys", "create", *args], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def post(url: str, key: str, body: dict | None = None) -> httpx.Response:
    return httpx.post(
        url + "/v1/chat/completions", json=body or ASK, headers={"authorization": f"Bearer {key}"}, timeout=30
    )


async def test_concurrent_spend_from_two_processes_never_exceeds_the_budget(cluster, upstream, private_redis):
    # a generous Redis timeout: a slow moment on a loaded machine must not look like an outage
    (a, b), env = cluster(2, timeout_s=5)
    upstream.behave("coder", reply=" ".join(["word"] * 95))  # ~$0.0002 a call
    key = create_key(env, "--name", "shared", "--budget-usd", "0.002", "--budget-window", "total")
    with ThreadPoolExecutor(32) as pool_:
        responses = list(pool_.map(lambda i: post((a, b)[i % 2].url, key), range(200)))
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert {r.status_code for r in refused} == {429}
    assert {r.json()["error"]["code"] for r in refused} == {"budget_exceeded"}
    assert {r.headers["x-moe-router-model"] for r in ok} == {"coder"}
    paid = sum(float(r.headers["x-moe-router-cost-usd"]) for r in ok)
    admin = RedisStore(private_redis.url)
    rec = await admin.keys.find("shared")
    (spent,) = await admin.budgets.spent([BudgetScope(f"key:{rec.id}", 0.002, "total")])
    assert spent <= 0.002
    assert spent == pytest.approx(paid, abs=len(ok) * 1e-6)  # budgets count whole micro-dollars
    assert len(ok) >= 8  # one worst-case reservation ($0.000212) short of the budget at most
    await admin.aclose()


async def test_a_key_revoked_through_one_is_refused_by_both(cluster):
    (a, b), env = cluster(2)
    key = create_key(env, "--name", "temp")
    assert post(a.url, key).status_code == 200 and post(b.url, key).status_code == 200
    subprocess.run([CLI, "keys", "revoke", "temp"], env=env, check=True, capture_output=True)
    for r in (a, b):
        res = post(r.url, key)
        assert res.status_code == 401 and res.json()["error"]["code"] == "invalid_api_key"
    assert post(a.url, "sk-mr-000000000000-nope").status_code == 401
    assert httpx.post(a.url + "/v1/chat/completions", json=ASK).status_code == 401


async def test_redis_dies_under_load_fail_open_keeps_serving_and_reconciles(cluster, private_redis):
    (a, b), env = cluster(2, outage="open")
    key = create_key(env, "--name", "busy", "--budget-usd", "5")
    admin = RedisStore(private_redis.url, timeout_s=0.3, retry_every_s=0.1)
    rec = await admin.keys.find("busy")
    statuses: list[int] = []

    def burst(n: int) -> None:
        with ThreadPoolExecutor(8) as pool_:
            statuses.extend(
                r.status_code for r in pool_.map(lambda i: post((a, b)[i % 2].url, key), range(n))
            )

    burst(20)
    with ThreadPoolExecutor(1) as bg:
        during = bg.submit(burst, 60)  # load keeps coming while Redis goes away
        time.sleep(0.2)
        private_redis.stop()
        during.result()
    assert all(r.json()["status"] == "degraded" for r in (httpx.get(x.url + "/ready") for x in (a, b)))
    private_redis.start()  # back, empty (this test server keeps nothing on disk)
    await admin.keys.put(rec)  # a production Redis would have kept the key
    burst(10)
    assert set(statuses) == {200}  # no request failed because of the store
    scope = [BudgetScope(f"key:{rec.id}", 5.0, "monthly")]
    for _ in range(100):  # replicas reconcile what they buffered on their next store call
        ledger = [r async for r in admin.log.iter_requests() if r.key == "busy"]
        (spent,) = await admin.budgets.spent(scope)
        if spent > 0 and spent == pytest.approx(sum(r.cost_usd for r in ledger), abs=len(ledger) * 1e-6):
            break
        burst(2)
    assert len(ledger) >= 12  # the records made during the outage reached the ledger
    assert spent == pytest.approx(sum(r.cost_usd for r in ledger), abs=len(ledger) * 1e-6)
    await admin.aclose()


async def test_redis_dies_fail_closed_refuses_budgeted_work_with_503(cluster, private_redis):
    (a,), env = cluster(1, outage="closed")
    key = create_key(env, "--name", "careful", "--budget-usd", "5")
    assert post(a.url, key).status_code == 200
    private_redis.stop()
    res = post(a.url, key)
    assert res.status_code == 503 and res.json()["error"]["code"] == "state_unavailable"
    assert res.headers["retry-after"]
    assert httpx.get(a.url + "/health").status_code == 200  # alive, never crashed
    private_redis.start()


async def test_two_processes_update_one_bandit_through_redis(cluster):
    (a, b), env = cluster(2)
    key = create_key(env, "--name", "learner")
    ask = {"model": "router:thompson", "messages": [{"role": "user", "content": "Name a prime number."}]}

    def quality(replica: Replica) -> dict[str, float]:
        r = httpx.post(
            replica.url + "/v1/route", json=ask, headers={"authorization": f"Bearer {key}"}, timeout=30
        )
        return {c["model"]: c["predicted_quality"] for c in r.json()["candidates"]}

    assert quality(a) == quality(b) == {"cheap": 0.5, "coder": 0.6, "big": 0.9}  # the config's priors
    for i in range(8):  # answers and ratings go to either replica
        via = (a, b)[i % 2]
        resp = post(via.url, key, ask).json()
        rated = httpx.post(
            via.url + "/v1/feedback",
            json={"id": resp["id"], "rating": 1.0 if resp["model"] == "cheap" else 0.0},
            headers={"authorization": f"Bearer {key}"},
            timeout=30,
        )
        assert rated.status_code == 200
    time.sleep(1.1)  # replicas read the shared bandit at most once a second before routing
    qa, qb = quality(a), quality(b)
    assert qa == qb  # one bandit: both replicas learned all eight ratings
    assert qa != {"cheap": 0.5, "coder": 0.6, "big": 0.9}
