"""Routing-data loaders, splits and metrics, on small files the tests write."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from tests.training_fixtures import MODELS, planted, planted_dataset, write_jsonl, write_routerbench
from training import metrics as M
from training.dataset import RoutingDataset
from training.evaluate import Predictions, evaluate, weight_grid
from training.loaders import load_dataset, save_jsonl
from training.prices import apply_prices


def test_routerbench_csv_masks_blanks_and_drops_bad_rows(tmp_path):
    texts, _, Q, C = planted()
    Q = Q.astype(object)
    Q[3, 1] = "not a number"  # an unreadable row is dropped, not zeroed
    p = write_routerbench(tmp_path / "rb.csv", texts[:10], Q[:10], C[:10], blank={(0, "big"), (5, "cheap")})
    ds = load_dataset(p, "routerbench")
    assert len(ds) == 9 and ds.models == MODELS
    assert ds.report.dropped == {"unreadable quality or cost": 1}
    assert ds.report.cells_masked == 2 and ds.mask.sum() == 9 * 3 - 2
    assert np.isnan(ds.quality[0, 2]) and not ds.mask[0, 2]  # blank: masked, never 0
    assert ds.cost is not None and ds.cost[0, 0] == pytest.approx(C[0, 0])
    assert ds.texts[0] == texts[0]  # the Python-literal prompt list is parsed
    assert ds.responses["coder"][0] == "coder answer"
    assert ds.complete.sum() == 7


def test_wrong_columns_and_garbage_are_clear_errors(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("question,answer\nhi,there\n")
    with pytest.raises(ValueError, match="not a RouterBench file"):
        load_dataset(p, "routerbench")
    with pytest.raises(ValueError, match="not a RouteLLM file"):
        load_dataset(p, "routellm")
    j = tmp_path / "x.json"
    j.write_text('{"not": "a list"}')
    with pytest.raises(ValueError, match="not a RouterDC file"):
        load_dataset(j)
    with pytest.raises(FileNotFoundError):
        load_dataset(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="unknown data format"):
        load_dataset(p, "excel")


def test_pickle_needs_explicit_opt_in(tmp_path):
    import pandas as pd

    texts, _, Q, C = planted()
    df = pd.read_csv(write_routerbench(tmp_path / "rb.csv", texts[:6], Q[:6], C[:6]))
    p = tmp_path / "rb.pkl"
    with p.open("wb") as f:
        pickle.dump(df, f)
    with pytest.raises(ValueError, match="allow-pickle"):
        load_dataset(p)
    ds = load_dataset(p, allow_pickle=True)
    assert len(ds) == 6 and ds.models == MODELS


def test_routellm_contamination_filter_and_prices(tmp_path):
    d = tmp_path / "mmlu"
    d.mkdir()
    (d / "mmlu_anatomy.csv").write_text(
        "prompt,weak,strong\nWhat is a femur?,False,True\nWhat is a tibia?,True,True\nLeaked question?,True,True\n"
    )
    (d / "mmlu_law.csv").write_text("prompt,weak,strong\nWhat is a tort?,,True\n")
    (d / "contaminated_prompts.jsonl").write_text(json.dumps({"eval_prompt": "Leaked question?"}) + "\n")
    ds = load_dataset(d)
    assert ds.texts == ["What is a femur?", "What is a tibia?", "What is a tort?"]
    assert ds.report.dropped == {"contaminated prompt": 1}
    assert ds.meta["subject"] == ["anatomy", "anatomy", "law"]
    assert not ds.mask[2, 0] and ds.report.cells_masked == 1
    assert load_dataset(d, contamination_filter=False).report.rows_kept == 4
    apply_prices(ds, {"weak": (1.0, 2.0), "strong": (10.0, 30.0)}, default_completion_tokens=100)
    tok = len("What is a femur?") // 4
    assert ds.cost[0, 1] == pytest.approx((tok * 10 + 100 * 30) / 1e6)
    with pytest.raises(ValueError, match="no price"):
        apply_prices(ds, {"weak": (1, 1)})


def test_routerdc_json(tmp_path):
    p = tmp_path / "arc_challenge_test.json"
    p.write_text(
        json.dumps(
            [
                {"question": "q1", "scores": {"a": 1, "b": 0.5}, "cluster_id": 0},
                {"question": "q2", "scores": {"a": 0, "c": 1}},
                {"question": "", "scores": {"a": 1}},
                {"question": "q4", "scores": {"a": 2}},
            ]
        )
    )
    ds = load_dataset(p)
    assert ds.models == ["a", "b", "c"] and len(ds) == 2
    assert ds.report.dropped == {"no question or scores": 1, "score outside 0..1": 1}
    assert ds.mask.tolist() == [[True, True, False], [True, False, True]]
    assert ds.quality[0, 1] == 0.5 and ds.meta["task"] == ["arc_challenge", "arc_challenge"]


def test_canonical_jsonl_round_trip_and_bad_rows(tmp_path):
    ds = planted_dataset()
    n = save_jsonl(ds, tmp_path / "d.jsonl", source="test")
    assert n == len(ds) * 3
    back = load_dataset(tmp_path / "d.jsonl")
    assert back.texts == ds.texts and back.models == ds.models
    np.testing.assert_allclose(back.quality, ds.quality)
    np.testing.assert_allclose(back.cost, ds.cost)
    rows = [
        {
            "prompt_id": "p1",
            "prompt": "hello",
            "model": "a",
            "quality": 1,
            "cost_usd": 0.1,
            "latency_ms": 100,
        },
        {"prompt_id": "p1", "prompt": "hello", "model": "a", "quality": 0, "cost_usd": 0.3},
        {"prompt_id": "p1", "prompt": "hello", "model": "b", "quality": None, "cost_usd": 0.2},
        {"prompt": "bye", "model": "b", "quality": 0.5},
        {"prompt": "no model"},
        {"prompt": "bad", "model": "a", "quality": 7},
    ]
    p = write_jsonl(tmp_path / "obs.jsonl", rows)
    with p.open("a") as f:
        f.write("{not json\n")
    ds = load_dataset(p)
    assert ds.models == ["a", "b"] and ds.texts == ["hello", "bye"]
    assert ds.quality[0, 0] == 0.5 and ds.cost[0, 0] == pytest.approx(0.2)  # repeated: averaged
    assert not ds.mask[0, 1] and ds.cost[0, 1] == pytest.approx(0.2)  # null quality stays unobserved
    assert ds.latency[0, 0] == 100 and np.isnan(ds.latency[1, 1])
    assert ds.report.dropped == {
        "no prompt or model": 1,
        "quality outside 0..1 or negative cost": 1,
        "not a JSON object": 1,
    }


def test_splits_are_by_prompt_and_seeded():
    texts = ["a", "b", "a", "c", "d", "e", "b", "f", "g", "h"]
    ds = RoutingDataset(texts=texts, models=["m"], quality=np.ones((10, 1)), mask=np.ones((10, 1), bool))
    tr, te = ds.split(0.3, seed=1)
    assert not set(tr.texts) & set(te.texts) and len(tr) + len(te) == 10
    assert ds.split(0.3, seed=1)[1].texts == te.texts
    seen = []
    for a, b in ds.kfold(4, seed=0):
        assert not {texts[i] for i in a} & {texts[i] for i in b}
        seen += list(b)
    assert sorted(seen) == list(range(10))


def test_metrics_by_hand():
    pts = [(1.0, 0.5), (2.0, 0.8), (3.0, 0.7), (4.0, 0.9)]
    assert M.upper_hull(pts) == [(1.0, 0.5), (2.0, 0.8), (4.0, 0.9)]
    # over [1, 4]: trapezoids 0.65 * 1 + 0.85 * 2 = 2.35, / 3
    assert M.aiq(pts, 1.0, 4.0) == pytest.approx(2.35 / 3, abs=1e-6)
    # starts at cost 2 over [1, 3]: nothing below 2, then 0.8 -> 0.85 => (0.825) / 2
    assert M.aiq([(2.0, 0.8), (4.0, 0.9)], 1.0, 3.0) == pytest.approx(0.825 / 2, abs=1e-3)
    assert M.cost_to_reach(pts, 0.85) == pytest.approx(3.0)
    assert M.cost_to_reach(pts, 0.95) is None
    # two models: weak 0.6, strong 0.8; at 50% strong calls quality 0.76 (PGR 0.8)
    assert M.apgr([0.5], [0.76], 0.6, 0.8) == pytest.approx(0.5 * 0.8 / 2 + 0.5 * 1.8 / 2)
    assert M.cpt([0.5], [0.76], 0.6, 0.8, 0.5) == pytest.approx(0.5 * 0.5 / 0.8)
    assert M.cpt([0.5], [0.76], 0.6, 0.8, 0.9) == pytest.approx(0.75)


def test_evaluate_tiny_table_matches_hand_computation():
    # 4 prompts, cheap (cost 1) and strong (cost 10); cheap is right on prompts 0 and 1 only
    Q = np.array([[1, 1], [1, 0], [0, 1], [0, 1]], float)
    C = np.array([[1, 10]] * 4, float)
    ds = RoutingDataset(
        texts=list("abcd"), models=["cheap", "strong"], quality=Q, mask=np.ones_like(Q, bool), cost=C
    )
    # a perfect predictor: the sweep goes from all-strong through the oracle to all-cheap
    ev = evaluate(ds, Predictions(Q.copy(), C.copy()), weight_grid(21))
    r = ev.report
    assert r["points"] == 21 and r["best_single"] == {"model": "strong", "quality": 0.75, "cost_usd": 10.0}
    assert r["oracle"] == {"quality": 1.0, "cost_usd": pytest.approx((1 + 1 + 10 + 10) / 4)}
    assert r["max_quality"] == 1.0
    assert ev.points[0] == (5.5, 1.0) and ev.points[-1] == (1.0, 0.5)
    # hull (1, .5) -> (5.5, 1): reaches .75 at cost 3.25; AIQ over [1, 10]
    assert r["cost_to_best_single_quality"]["ratio"] == pytest.approx(0.325)
    assert r["aiq"] == pytest.approx((4.5 * 0.75 + 4.5 * 1.0) / 9, abs=1e-3)
    t = r["two_model"]
    # PGR = (q - 0.5) / 0.25: (share 0, 0), oracle (0.5, 2), all-strong (1, 1)
    assert t["strong"] == "strong" and t["apgr"] == pytest.approx(0.5 * 2 / 2 + 0.5 * (2 + 1) / 2)
    assert t["cpt_strong_share"]["50%"] == pytest.approx(0.125)
