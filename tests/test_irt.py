"""The pool-agnostic `irt` policy: fitting, abilities of new models (offline and online
calibration, public benchmark numbers), and the order in which a pool model's quality is found."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from policies.base import PromptBatch
from policies.calibration import grade, load_items, pick
from policies.irt import IRTPolicy, pack_residual, read_abilities, unpack_residual, write_ability
from router.cli import app
from tests.conftest import make_config, priced_model
from tests.training_fixtures import HELD_OUT, planted, write_routerbench
from training.dataset import RoutingDataset

pytestmark = pytest.mark.usefixtures("training_cache")


# ---- fitting on synthetic IRT data ----------------------------------------------------------------
def synthetic(n=800, d=12, k=2, m=6, seed=0):
    """Prompts (unit vectors) and models drawn from the model itself; the truth P is returned."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    S, w = rng.normal(size=(d, k)) * 2, rng.normal(size=d) * 2
    A, b = rng.normal(size=(m, k)), rng.normal(size=m)
    P = 1 / (1 + np.exp(-(X @ S @ A.T + b - (X @ w)[:, None])))
    Y = (rng.random((n, m)) < P).astype(float)
    return X, Y, P


@pytest.fixture(scope="module")
def fitted_synthetic():
    X, Y, P = synthetic()
    mask = np.ones_like(Y, bool)
    mask[:, -1] = False  # the last model's labels are withheld: it is the "new" model
    ds = RoutingDataset(
        texts=[f"p{i}" for i in range(len(X))],
        models=[f"m{j}" for j in range(Y.shape[1])],
        quality=Y,
        mask=mask,
        meta={"task": list(np.where(X[:, 0] > 0, "mmlu", "gsm8k"))},
    )
    policy = IRTPolicy(dim=3, hidden=16, epochs=60, lr=1e-2).fit(ds, embeddings=X)
    return policy, X, Y, P


def test_fit_learns_the_trained_models_and_holds_out_the_unlabelled_one(fitted_synthetic):
    policy, X, _, P = fitted_synthetic
    S = policy._scores(X)
    for j in range(P.shape[1] - 1):
        assert np.corrcoef(S[:, j], P[:, j])[0, 1] > 0.85
    assert policy.source_ == ["trained"] * 5 + ["prior"]
    # the unlabelled model sits at the trained models' mean ability
    assert np.allclose(policy.ability_[-1], policy.ability_mean_[:-1], atol=1e-5)
    assert policy.probe_tasks_ == ["mmlu", "gsm8k"]


def test_an_ensemble_is_one_irt_model_whose_logit_is_the_members_mean(fitted_synthetic):
    _, X, Y, _ = fitted_synthetic
    ds = RoutingDataset(
        texts=[f"p{i}" for i in range(len(X))],
        models=[f"m{j}" for j in range(Y.shape[1])],
        quality=Y,
        mask=np.ones_like(Y, bool),
    )
    kw = dict(dim=3, hidden=16, epochs=5, lr=1e-2)
    members = [IRTPolicy(seed=s, ensemble=1, **kw).fit(ds, embeddings=X) for s in (4, 5, 6)]
    ens = IRTPolicy(seed=4, ensemble=3, **kw).fit(ds, embeddings=X)
    logit = lambda p: np.log(p) - np.log1p(-p)  # noqa: E731
    want = np.mean([logit(m._scores(X)) for m in members], axis=0)
    assert np.allclose(logit(ens._scores(X)), want, atol=1e-3)
    s, d = ens.prompt_side(X)
    assert s.shape == (len(X), 9) and ens.ability_.shape == (Y.shape[1], 9)
    a, b = ens.fit_ability(X[:50], Y[:50, 0])  # a new model: abilities for every member at once
    assert a.shape == (9,) and np.isfinite(b)


def test_refit_brings_each_models_level_to_its_labels_after_an_early_stop(fitted_synthetic):
    _, X, Y, _ = fitted_synthetic
    Y = Y.copy()
    Y[:, 0] = Y[:, 0] * (np.random.default_rng(3).random(len(Y)) < 0.5)  # model 0 far below its init
    ds = RoutingDataset(
        texts=[f"p{i}" for i in range(len(X))],
        models=[f"m{j}" for j in range(Y.shape[1])],
        quality=Y,
        mask=np.ones_like(Y, bool),
    )
    kw = dict(dim=3, hidden=16, epochs=1, lr=1e-3, ensemble=1)  # one epoch: abilities far from converged
    plain = IRTPolicy(refit=0, **kw).fit(ds, embeddings=X)._scores(X).mean(0)
    refit = IRTPolicy(refit=1e-6, **kw).fit(ds, embeddings=X)._scores(X).mean(0)
    # at the likelihood's optimum with an intercept, mean prediction = mean label, per model
    assert np.abs(refit - Y.mean(0)).max() < 0.01
    assert np.abs(plain - Y.mean(0)).max() > 0.03


def test_fit_ability_with_the_prompt_side_frozen_improves_with_k(fitted_synthetic):
    policy, X, Y, P = fitted_synthetic
    prompt_side = policy.prompt_side(X)
    rng = np.random.default_rng(1)
    corr = {}
    for k in (10, 300):
        idx = rng.choice(len(X), k, replace=False)
        a, b = policy.fit_ability(X[idx], Y[idx, -1])
        s, d = prompt_side
        corr[k] = np.corrcoef(s @ a + b - d, P[:, -1])[0, 1]
    assert corr[300] > 0.85 and corr[300] > corr[10]
    assert all(np.array_equal(u, v) for u, v in zip(prompt_side, policy.prompt_side(X), strict=True))


def test_ability_from_benchmarks_matches_the_scores_it_is_given(fitted_synthetic):
    policy, X, _, P = fitted_synthetic
    # the withheld model's true accuracy per task, as a public leaderboard would report it
    mmlu, gsm8k = P[X[:, 0] > 0, -1].mean(), P[X[:, 0] <= 0, -1].mean()
    a, b = policy.ability_from_benchmarks({"MMLU": 100 * mmlu, "GSM8K": gsm8k, "arena_elo": 1200})
    acc = policy.predicted_accuracy(a, b)
    assert acc["mmlu"] == pytest.approx(mmlu, abs=0.04) and acc["gsm8k"] == pytest.approx(gsm8k, abs=0.04)
    assert policy.ability_from_benchmarks({"arena_elo": 1200}) is None  # no task it probes


def _calibrated_copy(policy, X, y, residual=True):
    import copy

    p = copy.copy(policy)
    p.models_, p.source_ = list(policy.models_), list(policy.source_)
    p.ability_, p.bias_ = policy.ability_.copy(), policy.bias_.copy()
    p.cal_a_, p.cal_b_ = policy.cal_a_.copy(), policy.cal_b_.copy()
    a, b, r = p.fit_model(X, y)
    p.set_ability("new", a, b, "calibrated", residual=(X, r) if residual else None)
    return p, r


def test_calibration_residual_corrects_a_blind_spot_the_prompt_side_cannot_see(fitted_synthetic):
    """The new model fails every prompt of one region that the trained models do not single out:
    its K graded items there pull its predictions near them down, and only there."""
    policy, X, Y, P = fitted_synthetic
    blind = X[:, 1] > 0.3
    y = Y[:, -1] * ~blind
    idx = np.random.default_rng(5).choice(len(X), 300, replace=False)
    rest = np.setdiff1d(np.arange(len(X)), idx)
    plain, _ = _calibrated_copy(policy, X[idx], y[idx], residual=False)
    local, r = _calibrated_copy(policy, X[idx], y[idx])
    assert np.any(r) and local.residual_of("new")[0].shape == (300, X.shape[1])
    j = local.models_.index("new")
    before, after = plain._scores(X[rest])[:, j], local._scores(X[rest])[:, j]
    inside = blind[rest]
    assert after[inside].mean() < before[inside].mean() - 0.05  # truth there: 0
    assert abs(after[~inside].mean() - before[~inside].mean()) < 0.03
    assert np.array_equal(
        plain._scores(X[rest])[:, :j], local._scores(X[rest])[:, :j]
    )  # the others untouched


def test_calibration_residual_has_no_weight_without_local_structure(fitted_synthetic):
    """Labels drawn from the fitted model itself: the neighbours' residuals do not predict an
    item's (leave-one-out), so the correction's weight is ~0 and nothing is stored."""
    policy, X, _, _ = fitted_synthetic
    idx = np.random.default_rng(5).choice(len(X), 300, replace=False)
    s, d = policy.prompt_side(X)
    a, b = policy.ability_[0], policy.bias_[0]
    p = 1 / (1 + np.exp(-(s @ a + b - d)))
    weights = []
    for seed in range(8):
        y = (np.random.default_rng(seed).random(len(X)) < p).astype(float)
        a2, b2 = policy.fit_ability(X[idx], y[idx])
        weights.append(policy.residual_weight(X[idx], policy.residuals(X[idx], y[idx], a2, b2)))
    assert np.mean(weights) < 0.15 and sum(w == 0 for w in weights) >= 4
    y = (np.random.default_rng(int(np.argmin(weights))).random(len(X)) < p).astype(float)
    cal, r = _calibrated_copy(policy, X[idx], y[idx])
    assert not np.any(r) and cal.residual_of("new") is None
    assert IRTPolicy(residual_k=0).residual_weight(X[idx], np.ones(300)) == 0.0
    # too few items for local neighbourhoods (< 5 * residual_k): no weight, whatever the residuals
    blind = (X[idx, 1] > 0.3).astype(float)
    assert policy.residual_weight(X[idx], -blind) > 0.5
    assert policy.residual_weight(X[idx][:99], -blind[:99]) == 0.0


def test_calibration_residual_survives_the_artifact_and_the_abilities_file(
    fitted_synthetic, tmp_path, encoder
):
    from policies.artifacts import load_policy, save_policy

    policy, X, Y, _ = fitted_synthetic
    idx = np.random.default_rng(5).choice(len(X), 300, replace=False)
    cal, r = _calibrated_copy(policy, X[idx], Y[idx, -1] * (X[idx, 1] <= 0.3))
    save_policy(cal, tmp_path / "a", encoder=encoder)
    back = load_policy(tmp_path / "a", encoder=encoder)
    assert back.resid_of_ == ["new"] * 300
    assert np.allclose(back._scores(X), cal._scores(X), atol=1e-6)
    x, res = unpack_residual(json.loads(json.dumps(pack_residual(X[idx], r))))
    assert np.allclose(res, r, atol=1e-5) and np.allclose(x, cal.residual_of("new")[0], atol=1e-3)
    assert unpack_residual({"dim": 5, "embeddings_f16": "", "residuals": [0.1]}) is None


def test_concurrent_calibrations_of_different_models_all_land_in_the_abilities_file(tmp_path):
    """Two `moe-router calibrate` runs (processes) write the one file: each write is a
    read-modify-replace, so without a lock one run's models could vanish."""
    import multiprocessing

    path = tmp_path / "abilities.json"
    ctx = multiprocessing.get_context("spawn")
    runs = [ctx.Process(target=_write_models, args=(str(path), f"run{i}", 25)) for i in range(4)]
    for r in runs:
        r.start()
    for r in runs:
        r.join(120)
    assert [r.exitcode for r in runs] == [0] * 4
    stored = read_abilities(path)
    assert sorted(stored) == sorted(f"run{i}-m{j}" for i in range(4) for j in range(25))
    assert not list(tmp_path.glob("*.tmp"))


def _write_models(path: str, prefix: str, n: int) -> None:
    for j in range(n):
        write_ability(path, f"{prefix}-m{j}", {"ability": [float(j)], "bias": 0.0})


# ---- calibration items ----------------------------------------------------------------------------
def test_shipped_calibration_items_are_checkable_and_balanced():
    items = load_items()
    assert 0 < len(items) <= 500 and all(it.license and it.answer for it in items)
    k = pick(items, 10)
    assert len(k) == 10 and {it.task for it in k} == {"arc_challenge", "gsm8k"}
    assert pick(items, 10) == k  # every model gets the same K
    arc = next(it for it in items if it.task == "arc_challenge")
    gsm = next(it for it in items if it.task == "gsm8k")
    assert grade(arc, f"The answer is {arc.answer}.") == 1.0
    assert grade(arc, "The answer is " + ("B" if arc.answer != "B" else "C")) == 0.0
    assert grade(gsm, f"so she makes {gsm.answer}.\n#### {gsm.answer}") == 1.0
    assert grade(gsm, "#### 123456789") == 0.0 and grade(gsm, None) == 0.0


# ---- offline: train without a model, calibrate it from K labelled prompts ------------------------
def invoke(*args: str):
    r = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return r.stdout


def test_cli_train_exclude_model_then_offline_calibrate_then_eval(tmp_path, encoder):
    texts, _, Q, C = planted()
    trn = write_routerbench(tmp_path / "train.csv", texts[::2], Q[::2], C[::2])
    tst = write_routerbench(tmp_path / "test.csv", texts[1::2], Q[1::2], C[1::2])
    common = ["--data", str(trn), "--format", "routerbench"]
    # one member, no refit: with two training models on 60 near-separable prompts the refitted
    # abilities are large, and their mean (big's, uncalibrated) is not the "knows nothing" this checks
    out = invoke("train", "--policy", "irt", *common, "--exclude-model", "big", "--out", str(tmp_path / "a"),
                 "--param", "epochs=80", "--param", "hidden=32", "--param", "dim=4",
                 "--param", "ensemble=1", "--param", "refit=0")  # fmt: skip
    assert "trained irt on 60 prompts x 3 models" in out
    meta = json.loads((tmp_path / "a" / "policy.json").read_text())
    assert meta["state"]["source_"] == ["trained", "trained", "prior"]
    out = invoke("calibrate", "--artifact", str(tmp_path / "a"), "--model", "big", *common,
                 "--limit", "40", "--out", str(tmp_path / "b"))  # fmt: skip
    assert "calibrated big from 40 prompts" in out
    from policies.artifacts import load_policy

    before, after = load_policy(tmp_path / "a"), load_policy(tmp_path / "b")
    assert after.source_ == ["trained", "trained", "calibrated"]
    history = [t for t, m in HELD_OUT if m == "big"]
    other = [t for t, m in HELD_OUT if m != "big"]

    def big(p, ts):
        return p.predict_quality(PromptBatch(ts, embeddings=encoder.encode(ts)))[:, 2].mean()

    # calibrated: big is the model for history and not for the rest; uncalibrated it knew neither
    assert big(after, history) > big(after, other) + 0.2
    assert abs(big(before, history) - big(before, other)) < big(after, history) - big(after, other)
    out = invoke("eval", "--artifact", str(tmp_path / "b"), "--data", str(tst), "--format", "routerbench")
    assert "AIQ" in out


# ---- serving: the fallback order -----------------------------------------------------------------
def pool_config(base_url: str, abilities: Path, **routing):
    models = [
        # a model the pretrained artifact was trained on, under its own name
        priced_model(base_url, "gpt-4-1106-preview", 10, 30, quality={"default": 0.2}),
        priced_model(base_url, "cal", 0.5, 1.5, quality={"default": 0.2}),
        priced_model(
            base_url, "bench", 0.5, 1.5, quality={"default": 0.2}, benchmarks={"mmlu": 70, "gsm8k": 60}
        ),
        priced_model(base_url, "plain", 0.1, 0.2, quality={"default": 0.3, "math": 0.7}),
    ]
    return make_config(
        base_url,
        models=models,
        routing={"abilities_file": str(abilities), "default_policy": "irt", **routing},
    )


def test_fallback_order_and_route_says_which_applies(upstream, encoder, tmp_path):
    from router.policy_set import PolicySet

    abilities = tmp_path / "abilities.json"
    policy = PolicySet(pool_config(upstream.base_url, abilities), encoder).get("irt")
    assert policy.sources() == {
        "gpt-4-1106-preview": "trained",
        "cal": "prior",
        "bench": "benchmarks",
        "plain": "prior",
    }
    prompt = ["What is 17 times 23? Answer with a number."]
    batch = PromptBatch(prompt, embeddings=encoder.encode(prompt))
    q = policy.predict_quality(batch)[0]
    # a model with no ability is scored by its category priors (0.2 / 0.7 per category)
    assert 0.2 <= q[1] <= 0.7 and 0.3 <= q[3] <= 0.7
    assert policy.predicted_accuracy(policy.ability_[2], policy.bias_[2])["mmlu"] == pytest.approx(
        0.7, abs=0.03
    )
    # a calibration written while serving is picked up (the file is re-read within a second)
    write_ability(abilities, "cal", {"ability": policy.ability_[0].tolist(), "bias": float(policy.bias_[0])})
    policy._checked = 0.0
    assert policy.sources()["cal"] == "calibrated"
    assert policy.predict_quality(batch)[0][1] == pytest.approx(policy.predict_quality(batch)[0][0], abs=1e-5)
    # with its calibration items' residuals (online calibration writes them): the mean of the
    # nearest ones (here: 5 items at this very prompt, -0.25 each) is added near them
    items = np.repeat(batch.embeddings, 5, axis=0)
    entry = {"ability": policy.ability_[0].tolist(), "bias": float(policy.bias_[0])}
    write_ability(abilities, "cal", {**entry, "residual": pack_residual(items, np.full(5, -0.25))})
    policy._checked = 0.0
    q = policy.predict_quality(batch)[0]
    assert q[1] == pytest.approx(q[0] - 0.25, abs=1e-3)
    # an ability of the wrong size (another artifact's) is not used
    write_ability(abilities, "plain", {"ability": [1.0], "bias": 0.0})
    policy._checked = 0.0
    assert policy.sources()["plain"] == "prior"


def test_a_hand_edited_abilities_file_never_breaks_the_policy(upstream, encoder, tmp_path, caplog):
    """Bad entries (not numbers, NaN, 1e308, no bias, a broken residual) are logged and served as
    uncalibrated; good ones beside them still serve, at start-up and when the file is rewritten."""
    from router.policy_set import PolicySet

    abilities = tmp_path / "abilities.json"
    good = [0.1] * 24
    bad = {
        "cal": {"ability": "x" * 24, "bias": 0.0},
        "plain": {"ability": [0.0] * 23 + [float("nan")], "bias": 0.0},
        "bench": {"ability": good, "bias": None},
    }
    abilities.write_text(json.dumps({"models": bad}))
    config = pool_config(upstream.base_url, abilities)
    policies = PolicySet(config, encoder)
    assert policies.default == "irt"
    policy = policies.get("irt")
    assert policy.sources() == {
        "gpt-4-1106-preview": "trained",
        "cal": "prior",
        "plain": "prior",
        "bench": "benchmarks",  # its config's benchmark numbers, next in the fallback order
    }
    assert "'plain' is left out: 'ability' must be a list of numbers" in caplog.text
    prompt = ["What is 17 times 23?"]
    batch = PromptBatch(prompt, embeddings=encoder.encode(prompt))
    assert np.isfinite(policy.predict_quality(batch)).all()
    # rewritten while serving: one huge ability, one good entry with a malformed residual, one good
    broken_residual = {"dim": 384, "embeddings_f16": "AAAA", "residuals": [1.0]}
    nan_residual = pack_residual(batch.embeddings, np.array([np.nan]))
    abilities.write_text(
        json.dumps(
            {
                "models": {
                    "cal": {"ability": [1e308] * 24, "bias": 0.0},
                    "plain": {"ability": good, "bias": 0.5, "residual": broken_residual},
                    "bench": {"ability": good, "bias": 0.5, "residual": nan_residual},
                }
            }
        )
    )
    policy._checked = 0.0
    assert policy.sources() == {
        "gpt-4-1106-preview": "trained",
        "cal": "prior",
        "plain": "calibrated",
        "bench": "calibrated",
    }
    q = policy.predict_quality(batch)[0]
    assert np.isfinite(q).all() and q[2] == pytest.approx(q[3], abs=1e-6)  # no residual served
    abilities.write_text("{not json")
    policy._checked = 0.0
    assert policy.sources()["plain"] == "prior" and "is unreadable" in caplog.text


def test_route_cli_shows_the_quality_source(upstream, tmp_path):
    cfg = tmp_path / "config.yaml"
    conf = pool_config(upstream.base_url, tmp_path / "ab.json")
    cfg.write_text(json.dumps(conf.model_dump(mode="json", exclude_none=True)))
    out = json.loads(invoke("route", "What is 2+2?", "--config", str(cfg), "--json"))
    assert out["policy"] == "irt"
    src = {c["model"]: c["quality_source"] for c in out["candidates"]}
    assert src["bench"] == "benchmarks" and src["plain"] == "prior" and src["gpt-4-1106-preview"] == "trained"
    rows = json.loads(invoke("models", "--config", str(cfg), "--no-check", "--json"))
    assert {r["name"]: r["quality_source"] for r in rows} == src


# ---- online: K calls through the gateway's dispatch, graded, fitted, served -----------------------
def test_online_calibration_grades_real_calls_and_stores_the_ability(upstream, tmp_path):
    abilities = tmp_path / "abilities.json"
    cfg = tmp_path / "config.yaml"
    conf = pool_config(upstream.base_url, abilities)
    cfg.write_text(json.dumps(conf.model_dump(mode="json", exclude_none=True)))
    items = pick(load_items(), 12)
    # the scripted upstream answers "A" to everything: right on the ARC items whose answer is A
    upstream.behave("cal", reply="The answer is A")
    expected = np.mean([it.answer == "A" for it in items])
    assert 0 < expected < 1
    out = invoke("calibrate", "--config", str(cfg), "--model", "cal", "--limit", "12", "--dry-run")
    assert "at most $" in out and "dry run: nothing sent" in out
    assert not upstream.calls("cal") and not abilities.exists()
    out = invoke("calibrate", "--config", str(cfg), "--model", "cal", "--limit", "12", "--yes")
    assert len(upstream.calls("cal")) == 12
    entry = read_abilities(abilities)["cal"]
    assert entry["items"] == 12 and entry["accuracy"] == pytest.approx(expected, abs=1e-4)
    assert f"cal: {expected:.3f} right on 12 items" in out
    # the next gateway (or the running one, within a second) serves it
    route = json.loads(invoke("route", "Which gas do plants take in?", "--config", str(cfg), "--json"))
    assert {c["model"]: c["quality_source"] for c in route["candidates"]}["cal"] == "calibrated"


def test_online_calibration_skips_models_whose_credentials_are_not_set(upstream, tmp_path):
    """Unnamed, a model that cannot be called is listed as skipped and not priced; named, it is a
    one-line error (nothing sent either way)."""
    cfg = tmp_path / "config.yaml"
    conf = pool_config(upstream.base_url, tmp_path / "abilities.json")
    data = conf.model_dump(mode="json", exclude_none=True)
    keyless = priced_model(upstream.base_url, "keyless", 100.0, 100.0)
    keyless["params"]["api_key"] = "os.environ/MOE_TEST_NEVER_SET_KEY"
    data["models"].append(keyless)
    cfg.write_text(json.dumps(data))
    out = invoke("calibrate", "--config", str(cfg), "--limit", "4", "--dry-run")
    assert "calibrating 4 model(s)" in out
    assert "keyless                      skipped: set MOE_TEST_NEVER_SET_KEY to enable it" in out
    r = CliRunner().invoke(
        app, ["calibrate", "--config", str(cfg), "--model", "keyless", "--limit", "4", "--yes"]
    )
    # the CLI's entry point prints a UserError as one "error: ..." line, exit code 1
    assert (
        r.exit_code != 0
        and str(r.exception) == "keyless is unavailable: set MOE_TEST_NEVER_SET_KEY to enable it"
    )
    assert not upstream.calls("keyless")


def test_interrupted_calibration_keeps_the_models_it_finished(upstream, tmp_path):
    """Each model's ability is stored when its calls are done: Ctrl-C while the second model is
    being asked keeps the first one's paid-for grades."""
    import signal
    import subprocess
    import time

    from tests.support import CLI

    abilities = tmp_path / "abilities.json"
    cfg = tmp_path / "config.yaml"
    conf = pool_config(upstream.base_url, abilities)
    cfg.write_text(json.dumps(conf.model_dump(mode="json", exclude_none=True)))
    upstream.behave("cal", reply="The answer is A").behave("plain", delay=60.0)
    args = ["calibrate", "--config", str(cfg), "--model", "cal", "--model", "plain", "--limit", "4", "--yes"]
    proc = subprocess.Popen([CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not upstream.in_flight("plain") and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert upstream.in_flight("plain"), proc.communicate(timeout=5)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "cal: 0.000 right on 4 items" in out  # 130: interrupted
    stored = read_abilities(abilities)
    assert set(stored) == {"cal"} and stored["cal"]["items"] == 4


def test_online_calibration_spends_through_the_callers_key_and_the_ledger(upstream, tmp_path, redis_url):
    """The calls are a client's: each answered one is a ledger record; with keys required a key
    must be given, and its budget refuses what it cannot pay (left ungraded, never over budget)."""
    import sqlite3

    import redis

    ledger = tmp_path / "ledger.db"
    conf = pool_config(upstream.base_url, tmp_path / "abilities.json")
    data = {**conf.model_dump(mode="json", exclude_none=True), "ledger": f"sqlite+aiosqlite:///{ledger}"}
    upstream.behave("cal", reply="The answer is A")
    in_memory = tmp_path / "memory.yaml"
    in_memory.write_text(json.dumps(data))
    invoke("calibrate", "--config", str(in_memory), "--model", "cal", "--limit", "4", "--yes")
    with sqlite3.connect(ledger) as db:  # written before the command returns
        assert db.execute("select count(*) from requests where model = 'cal'").fetchone()[0] == 4

    upstream.reset()
    upstream.behave("cal", reply="The answer is A")
    cfg = tmp_path / "shared.yaml"
    cfg.write_text(json.dumps({**data, "state": redis_url}))
    env = {"MOE_ROUTER_REQUIRE_KEYS": "1"}
    args = ["calibrate", "--config", str(cfg), "--model", "cal", "--limit", "12", "--yes"]
    r = CliRunner().invoke(app, args, env=env)
    assert r.exit_code != 0 and str(r.exception) == "this gateway requires API keys: pass one with --api-key"
    assert not upstream.calls("cal")
    # each call reserves its worst case (512 tokens out at $1.5/1M ~ $0.0008): $0.004 pays some of 12
    made = CliRunner().invoke(
        app, ["keys", "create", "--config", str(cfg), "--name", "calib", "--budget-usd", "0.004"], env=env
    )
    key = made.stdout.strip().splitlines()[-1]
    r = CliRunner().invoke(app, [*args, "--api-key", key], env=env, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    answered = len(upstream.calls("cal"))
    assert 0 < answered < 12 and "calls failed" in r.stdout
    entry = read_abilities(tmp_path / "abilities.json")["cal"]
    assert entry["items"] == answered  # the refused ones are ungraded, not wrong
    listed = CliRunner().invoke(app, ["keys", "list", "--config", str(cfg), "--json"], env=env)
    spent = json.loads(listed.stdout)[0]["spent_usd"]
    assert 0 < spent <= 0.004 and spent == pytest.approx(entry["cost_usd"], abs=2e-6)  # both rounded
    # on shared state the records wait in the ledger stream every replica's writer imports
    # (beside reservation events and the refused calls' records, with their error)
    entries = redis.Redis.from_url(redis_url).xrange("moe:ledger")
    records = [json.loads(f[b"data"]) for _, f in entries if f[b"kind"] == b"request"]
    ok = [x for x in records if x["model"] == "cal" and x["status"] == "ok"]
    assert len(ok) == answered and sum(x["cost_usd"] for x in ok) == pytest.approx(spent, abs=2e-6)


def test_online_calibration_counts_a_failed_call_as_ungraded(upstream, tmp_path):
    abilities = tmp_path / "abilities.json"
    cfg = tmp_path / "config.yaml"
    conf = pool_config(upstream.base_url, abilities)
    cfg.write_text(json.dumps(conf.model_dump(mode="json", exclude_none=True)))
    upstream.behave("plain", fail_status=400)
    out = invoke("calibrate", "--config", str(cfg), "--model", "plain", "--limit", "3", "--yes")
    assert "plain: no answer graded" in out and "not calibrated" in out
    assert "plain" not in read_abilities(abilities)


def test_bandit_prior_is_the_calibrated_ability(upstream, encoder, tmp_path):
    """Online refinement: a bandit warm-started from irt learns residuals over each model's
    calibrated ability (the file's), its benchmarks, or its category priors."""
    from policies.artifacts import load_policy
    from policies.irt import shipped_artifact
    from router.policy_set import PolicySet

    pretrained = load_policy(shipped_artifact(), encoder=encoder)
    a, b, _ = pretrained.ability_of("zero-one-ai/Yi-34B-Chat")
    abilities = tmp_path / "abilities.json"
    write_ability(abilities, "cal", {"ability": a.tolist(), "bias": b})
    spec = {"ts": {"type": "thompson", "params": {"warm_start": "irt"}}}
    policies = PolicySet(pool_config(upstream.base_url, abilities, policies=spec), encoder)
    ts, irt = policies.get("ts"), policies.get("irt")
    assert irt.sources()["cal"] == "calibrated"
    texts = ["Which gas do plants take in?", "What is 12 * 13?"]
    batch = PromptBatch(texts, embeddings=encoder.encode(texts))
    assert np.allclose(ts.prior_quality(batch), irt.predict_quality(batch))
