"""RouterDC: the dual contrastive losses, fitting on planted data with the real MiniLM, its
artifact (fine-tuned encoder in safetensors + ONNX) and the CLI train/eval jobs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from policies.artifacts import load_policy, save_policy
from policies.base import PromptBatch
from policies.encoders import PromptEncoder
from policies.routerdc import RouterDCPolicy, _sample_llm_loss, _sample_sample_loss
from tests.conftest import make_config
from tests.training_fixtures import TOPICS, planted, write_routerbench
from training.dataset import RoutingDataset

# two topics, two models (named like the test gateway's pool): "coder" answers code prompts
# well, "cheap" cooking prompts
HELD_OUT = [
    ("Write a Python function that flattens a nested list.", "coder"),
    ("Implement in Rust a routine that hashes a password.", "coder"),
    ("Give me a simple recipe for carrot cake.", "cheap"),
    ("What spices go well with mushroom soup?", "cheap"),
]
FIT = {"epochs": 3, "batch_size": 16, "lr": 3e-4, "calib_folds": 4}


pytestmark = pytest.mark.usefixtures("training_cache")


def two_topics() -> RoutingDataset:
    texts, Q = [], []
    for topic, row in (("code", [1.0, 0.0]), ("cooking", [0.0, 1.0])):
        _, templates, fills = TOPICS[topic]
        for t in templates:
            for x in fills[:6]:
                texts.append(t.format(x=x))
                Q.append(row)
    Q = np.array(Q)
    return RoutingDataset(texts=texts, models=["coder", "cheap"], quality=Q, mask=np.ones_like(Q, bool))


@pytest.fixture(scope="module")
def fitted():
    return RouterDCPolicy(**FIT).fit(two_topics())


@pytest.fixture(scope="module")
def artifact(fitted, tmp_path_factory):
    return save_policy(fitted, tmp_path_factory.mktemp("routerdc") / "a")


def test_pairs_take_top_and_bottom_k_and_skip_ties():
    p = RouterDCPolicy(top_k=2, bottom_k=2)
    Y = np.array([[1.0, 0.0, 1.0, 0.5, np.nan]])
    M = ~np.isnan(Y)
    pairs = p._pairs(Y, M, np.random.default_rng(0))[0]
    # positives: the two 1.0 models; negatives: 0.0 and 0.5; the unobserved model is in no pair
    want = np.zeros((5, 5), bool)
    want[np.ix_([0, 2], [1, 3])] = True
    assert (pairs == want).all()
    tied = p._pairs(np.ones((1, 4)), np.ones((1, 4), bool), np.random.default_rng(0))
    assert not tied.any()  # every model scored the same: nothing to contrast


def test_losses_match_their_definitions():
    import torch

    logits = torch.tensor([[2.0, 0.0, 1.0]])
    pairs = torch.zeros(1, 3, 3, dtype=torch.bool)
    pairs[0, 0, 1] = pairs[0, 0, 2] = True  # model 0 positive against 1 and 2
    want = -np.log(np.exp(2) / (np.exp(2) + np.exp(0) + np.exp(1)))
    assert float(_sample_llm_loss(logits, pairs)) == pytest.approx(want, rel=1e-5)
    z = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]), dim=-1)
    same = float(_sample_sample_loss(z, torch.tensor([0, 0, 1]), 0.1))
    swapped = float(_sample_sample_loss(z, torch.tensor([0, 1, 0]), 0.1))
    assert same < 0.1 < 2.0 < swapped  # the loss rewards clusters that match the geometry


def test_fit_learns_the_split_and_tunes_the_encoder(fitted):
    p = fitted
    assert p.models_ == ["coder", "cheap"] and not p.needs_embeddings
    q = p.predict_quality(PromptBatch([t for t, _ in HELD_OUT]))
    assert q.shape == (4, 2) and (q >= 0).all() and (q <= 1).all()
    assert [p.models_[j] for j in q.argmax(1)] == [w for _, w in HELD_OUT]
    win = q[np.arange(4), [p.models_.index(w) for _, w in HELD_OUT]]
    assert win.min() > 0.7 and (q.sum(1) - win).max() < 0.3  # calibrated: winner likely, loser not
    cal = p.metrics_["calibration"]
    assert cal["method"] == "platt" and cal["held_out_prompts"] == 12
    assert p.metrics_["routerdc"] == {"train_layers": 1, "clusters": 8, "held_out": 12}
    # the encoder moved away from the bundled MiniLM (only its top layer was trained)
    base = PromptEncoder("all-MiniLM-L6-v2").encode([HELD_OUT[0][0]])[0]
    tuned = p.encoder.encode([HELD_OUT[0][0]])[0]
    assert 0.5 < float(base @ tuned) < 0.9999
    assert np.linalg.norm(tuned) == pytest.approx(1.0, abs=1e-5)


def test_artifact_round_trip_serves_its_own_encoder(fitted, artifact, tmp_path):
    texts = [t for t, _ in HELD_OUT]
    before = fitted.predict_quality(PromptBatch(texts))
    d = artifact
    for f in ("model.safetensors", "model.onnx", "tokenizer.json", "config.json"):
        assert (d / "encoder" / f).is_file()
    meta = json.loads((d / "policy.json").read_text())
    assert meta["type"] == "routerdc" and meta["encoder"]["name"] == "moe-router/routerdc-minilm"
    assert set(meta["state"]["encoder_sha256_"]) == {"model.safetensors", "model.onnx"}
    # a gateway with another encoder (the static one) still serves it: its own encoder embeds
    loaded = load_policy(d, encoder=PromptEncoder("minilm-static"))
    assert loaded.encoder.onnx is not None and loaded.models_ == fitted.models_
    after = loaded.predict_quality(PromptBatch(texts))
    np.testing.assert_allclose(after, before, atol=2e-3)
    # embeddings from another encoder in the batch are ignored
    junk = np.ones((4, 384), np.float32) / np.sqrt(384)
    np.testing.assert_allclose(loaded.predict_quality(PromptBatch(texts, embeddings=junk)), after)
    # saved again (from the loaded copy) elsewhere: the same files
    d2 = save_policy(loaded, tmp_path / "b")
    assert json.loads((d2 / "policy.json").read_text())["state"] == meta["state"]
    d = Path(shutil.copytree(d, tmp_path / "corrupt"))
    with (d / "encoder" / "model.onnx").open("r+b") as f:
        f.seek(1000)
        f.write(b"\xde\xad\xbe\xef")
    with pytest.raises(ValueError, match="corrupt: the encoder"):
        load_policy(d)


def test_gateway_routes_with_the_artifact_encoder(artifact, upstream, start_gateway):
    cfg = make_config(
        upstream.base_url, routing={"policies": {"dc": {"artifact": str(artifact)}}, "cost_weight": 0.0}
    )
    gw = start_gateway(cfg)
    dc = gw.engine.policies.get("dc")
    assert dc.encoder.name == "moe-router/routerdc-minilm" and dc.encoder is not gw.engine.encoder
    for text, want in HELD_OUT:
        r = gw.client.chat.completions.create(model="router:dc", messages=[{"role": "user", "content": text}])
        assert r.model == want, text


def test_cli_train_and_eval_with_defaults(tmp_path):
    texts, _, Q, C = planted()
    trn = write_routerbench(tmp_path / "train.csv", texts[::2], Q[::2], C[::2])
    tst = write_routerbench(tmp_path / "test.csv", texts[1::2], Q[1::2], C[1::2])
    env = {**os.environ, "MOE_ROUTER_CACHE_DIR": str(tmp_path / "cache")}
    cli = str(Path(sys.executable).parent / "moe-router")

    def run(*args):
        return subprocess.run([cli, *args], capture_output=True, text=True, env=env, timeout=300)

    # the shared encoder given here (torch MiniLM) only embeds for the cache: routerdc uses its own
    art = tmp_path / "art"
    r = run(
        "train",
        *("--policy", "routerdc", "--data", str(trn), "--format", "routerbench", "--out", str(art)),
        *("--encoder", "all-MiniLM-L6-v2"),
    )
    assert r.returncode == 0, r.stderr
    assert "trained routerdc on 60 prompts x 3 models" in r.stdout
    assert json.loads((art / "policy.json").read_text())["params"]["epochs"] == 2
    rep = tmp_path / "r.json"
    r = run(
        "eval", "--artifact", str(art), "--data", str(tst), "--format", "routerbench", "--report", str(rep)
    )
    assert r.returncode == 0, r.stderr
    report = json.loads(rep.read_text())
    assert report["scored_prompts"] == 60 and report["max_quality"] > 0.9
    assert report["aiq"] > report["aiq_single_models"]
