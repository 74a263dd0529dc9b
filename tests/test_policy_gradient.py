"""The offline policy-gradient router (`pg`): its reward and advantage functions on hand-made
tables, the planted pattern, the cost term, and its artifact."""

from __future__ import annotations

import json

import numpy as np
import pytest

from policies.artifacts import load_policy, save_policy
from policies.base import PromptBatch
from policies.decision import choose
from policies.policy_gradient import group_advantages, pg_loss, rewards
from tests.training_fixtures import HELD_OUT, MODELS, planted_dataset
from training.jobs import train

FAST = {"calib_folds": 3}
NAN = np.nan
CODE = [text for text, model in HELD_OUT if model == "coder"]


pytestmark = pytest.mark.usefixtures("training_cache")


@pytest.fixture(scope="module")
def pg(encoder):
    return train("pg", planted_dataset(), encoder, FAST)


def batch(encoder, texts):
    return PromptBatch(list(texts), embeddings=encoder.encode(list(texts)))


def test_group_relative_advantages_by_hand():
    Y = np.array(
        [
            [1.0, 0.0, 0.0],  # mean 1/3, std sqrt(2)/3
            [1.0, NAN, 0.0],  # the masked cell is out of the group: mean 1/2, std 1/2
            [0.5, 0.5, 0.5],  # all equal: no signal
            [NAN, 0.8, NAN],  # a group of one: no signal
            [NAN, NAN, NAN],  # nothing observed
        ]
    )
    M = np.isfinite(Y)
    R = rewards(Y, M)
    assert np.isnan(R[~M]).all() and np.array_equal(R[M], Y[M])
    s = np.sqrt(2) / 3
    want = np.array(
        [
            [(2 / 3) / s, -(1 / 3) / s, -(1 / 3) / s],
            [1.0, 0.0, -1.0],
            [0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0],
        ]
    )
    np.testing.assert_allclose(group_advantages(R, M, eps=0.0), want, atol=1e-12)
    # with eps the std is only nudged; a masked cell counted as 0 would give row 1 mean 1/3
    np.testing.assert_allclose(group_advantages(R, M)[1], [1.0, 0.0, -1.0], atol=1e-5)
    np.testing.assert_allclose(
        group_advantages(R, M, std=False)[:2], [[2 / 3, -1 / 3, -1 / 3], [0.5, 0.0, -0.5]], atol=1e-12
    )


def test_cost_reward_is_relative_to_the_prompts_dearest_model():
    Y = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    M = np.ones_like(Y, bool)
    C = np.array([[1.0, 2.0, 4.0], [3.0, NAN, 6.0], [0.0, 0.0, 0.0]])  # row 1: a cost unknown
    Y, M = np.vstack([Y, [1.0, 0.0, 1.0]]), np.ones((3, 3), bool)
    R = rewards(Y, M, C, cost_lambda=0.5)
    # row 0: relative costs 1/4, 1/2, 1; row 1: 1/2, (model 1's mean relative cost, 1/4), 1;
    # row 2: all free, no cost term
    np.testing.assert_allclose(R, [[0.875, 0.75, -0.5], [0.75, 0.875, 0.5], [1.0, 0.0, 1.0]])
    np.testing.assert_array_equal(rewards(Y, M, C, cost_lambda=0.0), Y)


def test_loss_ignores_masked_models():
    import torch

    logits = torch.zeros(1, 3, requires_grad=True)
    A = torch.tensor([[1.0, 0.0, -1.0]])
    M = torch.tensor([[True, False, True]])
    loss = pg_loss(logits, A, M, entropy_coef=0.0)
    # pi = (1/2, -, 1/2) over the two observed models: expected advantage 0
    assert float(loss.detach()) == pytest.approx(0.0, abs=1e-7)
    loss.backward()
    g = logits.grad[0].numpy()
    # d(-E[A])/dz = -pi * (A - E[A]) = (-1/2, 0, +1/2); the masked logit gets no gradient
    np.testing.assert_allclose(g, [-0.5, 0.0, 0.5], atol=1e-6)
    # an entropy bonus at the uniform policy: -beta * log 2
    assert float(pg_loss(torch.zeros(1, 3), A, M, 0.5)) == pytest.approx(-0.5 * np.log(2), rel=1e-6)


def test_pg_learns_the_planted_pattern(pg, encoder):
    texts = [t for t, _ in HELD_OUT]
    b = batch(encoder, texts)
    pi = pg.action_probs(b)
    np.testing.assert_allclose(pi.sum(axis=1), 1.0, rtol=1e-5)
    argmax = [MODELS[j] for j in pi.argmax(axis=1)]
    assert argmax == [want for _, want in HELD_OUT]
    assert (pi.max(axis=1) > 0.8).all(), pi
    q = pg.predict_quality(b)
    assert ((q >= 0) & (q <= 1)).all()
    # calibrated quality at cost weight 0 ranks as the policy does
    assert [MODELS[j] for j in choose(q, np.ones_like(q), 0.0)] == argmax
    assert pg.metrics_["calibration"]["method"] == "platt"
    assert pg.metrics_["pg"] == {"cost_lambda": 0.0, "cost_in_reward": False}


def test_cost_lambda_prefers_the_cheaper_of_two_equally_good_models(encoder):
    ds = planted_dataset()
    code = np.array(ds.meta["topic"]) == "code"
    ds.quality[code, MODELS.index("big")] = ds.quality[code, MODELS.index("coder")]  # big as good on code
    b = batch(encoder, CODE)
    j_coder, j_big = MODELS.index("coder"), MODELS.index("big")

    def coder_share(lam):
        p = train("pg", ds, encoder, {**FAST, "cost_lambda": lam})
        pi = p.action_probs(b)
        q = p.predict_quality(b)
        return pi[:, j_coder] / (pi[:, j_coder] + pi[:, j_big]), choose(q, np.ones_like(q), 0.0)

    share0, _ = coder_share(0.0)
    share1, chosen1 = coder_share(0.5)
    assert (share0 < 0.6).all(), share0  # quality alone: coder not preferred (measured 0.33, 0.22)
    assert (share1 > 0.85).all() and (share1 > share0 + 0.3).all(), (share0, share1)  # coder: 1/10 of big
    assert list(chosen1) == [j_coder, j_coder]


@pytest.mark.parametrize("hidden", [128, 0])
def test_artifact_round_trip(hidden, pg, encoder, tmp_path):
    p = pg if hidden else train("pg", planted_dataset(), encoder, {**FAST, "hidden": 0})
    d = save_policy(p, tmp_path / "pg", encoder=encoder, metrics=p.metrics_)
    meta = json.loads((d / "policy.json").read_text())
    assert meta["type"] == "pg" and meta["models"] == MODELS and meta["params"]["hidden"] == hidden
    want = {"b2_", "cal_a_", "cal_b_", "cost_coef_", "w2_"} | ({"b1_", "w1_"} if hidden else set())
    assert set(meta["arrays"]) == want
    q = load_policy(d, encoder=encoder)
    b = batch(encoder, [t for t, _ in HELD_OUT])
    np.testing.assert_allclose(q.action_probs(b), p.action_probs(b), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(q.predict_quality(b), p.predict_quality(b), rtol=1e-5, atol=1e-7)
