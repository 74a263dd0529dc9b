"""Local MoE expert load, end to end: a tiny random Mixtral behind the gateway, its expert
selections on `/metrics` (counter and per-layer balance gauge) and in `/admin/models`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from router.config import load_config
from tests.promtext import sample
from tests.tiny_moe import LAYERS, NUM_EXPERTS

MASTER = "mk-experts-test"
ADMIN = {"authorization": f"Bearer {MASTER}"}
CLI = str(Path(sys.executable).parent / "moe-router")


@pytest.fixture
def moe_gateway(tmp_path, start_gateway):
    """The model and config `moe-router tiny-moe --out DIR` builds, served as a user would."""
    out = tmp_path / "tiny"
    r = subprocess.run([CLI, "tiny-moe", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "%|" not in r.stderr and "it/s" not in r.stderr  # no progress bars
    config_path = out / "tiny-moe.yaml"
    assert f"moe-router serve --config {config_path}" in r.stdout
    assert (out / "model" / "config.json").is_file()
    again = subprocess.run([CLI, "tiny-moe", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert again.returncode == 1 and "is not empty" in again.stderr  # never overwrites a model
    return start_gateway(load_config(config_path, auth={"master_key": MASTER}, ledger="none"))


def selections(metrics: str, layer: str) -> list[float]:
    name = "moe_router_expert_selections_total"
    return [
        sample(metrics, name, model="tiny-moe", layer=layer, expert=str(e)) or 0 for e in range(NUM_EXPERTS)
    ]


def test_plain_and_streamed_answers_count_expert_selections_on_metrics(moe_gateway):
    gw = moe_gateway
    ask = [{"role": "user", "content": "name a colour"}]
    raw = gw.client.chat.completions.with_raw_response.create(model="tiny-moe", messages=ask, max_tokens=4)
    plain = json.loads(raw.headers["x-moe-router-experts"])
    assert sorted(plain) == [f"layer.{i}" for i in range(LAYERS)]
    metrics = gw.get("/metrics", headers=ADMIN).text
    for layer, counts in plain.items():
        assert selections(metrics, layer) == counts  # exactly this answer's selections
        gauge = sample(metrics, "moe_router_expert_load_imbalance", model="tiny-moe", layer=layer)
        assert gauge == pytest.approx(max(counts) / (sum(counts) / NUM_EXPERTS))
        assert 1.0 <= gauge <= NUM_EXPERTS

    stream = gw.client.chat.completions.create(
        model="tiny-moe", messages=ask, max_tokens=4, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[-1].usage.completion_tokens == 4
    # the stream's outcome is taken when its end is relayed: wait for the metric to move
    for _ in range(200):
        after = gw.get("/metrics", headers=ADMIN).text
        if sum(selections(after, "layer.0")) > sum(plain["layer.0"]):
            break
        time.sleep(0.02)
    tokens = chunks[-1].usage.prompt_tokens + chunks[-1].usage.completion_tokens - 1
    for layer in plain:
        # top-2 routing: two selections per token fed through the layer
        assert sum(selections(after, layer)) == sum(plain[layer]) + 2 * tokens

    models = {m["name"]: m for m in gw.get("/admin/models", headers=ADMIN).json()["data"]}
    load = models["tiny-moe"]["experts"]
    assert sorted(load) == sorted(plain)
    for layer, got in load.items():
        assert got["selections"] == selections(after, layer)
        assert got["imbalance"] == pytest.approx(
            sample(after, "moe_router_expert_load_imbalance", model="tiny-moe", layer=layer)
        )
