"""From served traffic back to training, for real: a gateway answers requests and takes ratings,
`moe-router export` writes them out, `moe-router train --format jsonl` fits a policy on the file,
and a fresh gateway serving that artifact routes the way the ratings taught.

The procedure is the one docs/learned-policies.md spells out ("From served traffic back to
training")."""

from __future__ import annotations

import json

import pytest
import yaml

from router.config import load_config
from tests.conftest import priced_model
from tests.support import count, run, wait_for
from tests.training_fixtures import HELD_OUT, TOPICS

# two kinds of prompts; the ratings make `large` the one for code and `small` the one for cooking
KINDS = {"code": "large", "cooking": "small"}
WANT = {"coder": "large", "cheap": "small"}  # HELD_OUT's planted winners, in this pool's names


pytestmark = pytest.mark.usefixtures("training_cache")


def two_models(base_url: str) -> list[dict]:
    return [priced_model(base_url, "small", 0.2, 0.4), priced_model(base_url, "large", 5.0, 15.0)]


def write_config(path, base_url: str, ledger: str, **extra) -> str:
    # the full prompt is logged: what the policy is trained on is what it will see when serving
    cfg = {"models": two_models(base_url), "ledger": ledger, "log": {"prompts": "full"}, **extra}
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def traffic() -> list[tuple[str, str]]:
    """(prompt, kind) for every code and cooking prompt of the planted topics."""
    return [(t.format(x=x), kind) for kind in KINDS for t in TOPICS[kind][1] for x in TOPICS[kind][2]]


def test_served_traffic_exports_trains_and_serves(tmp_path, upstream, start_gateway):
    ledger = f"sqlite+aiosqlite:///{tmp_path}/ledger.db"
    served = write_config(tmp_path / "serve.yaml", upstream.base_url, ledger)
    gw = start_gateway(load_config(served))
    prompts = traffic()
    # each prompt asked of both models (an A/B period); the caller rates every answer
    for text, kind in prompts:
        for model in ("small", "large"):
            resp = gw.client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": text}]
            )
            assert resp.model == model
            rating = 1.0 if KINDS[kind] == model else 0.0
            assert gw.post("/v1/feedback", json={"id": resp.id, "rating": rating}).status_code == 200
    n = 2 * len(prompts)
    wait_for(lambda: count(ledger) == n and count(ledger, "feedback") == n, what=f"{n} requests and ratings")

    # 1. export: one row per answered request, with its rating
    out = tmp_path / "traffic.jsonl"
    r = run("export", "--out", str(out), "--only-rated", "--config", served)
    assert r.returncode == 0, r.stderr
    assert f"wrote {n} rows ({n} with feedback)" in r.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    first = next(row for row in rows if row["prompt"] == prompts[0][0] and row["model"] == "large")
    assert first["quality"] == 1.0 and first["cost_usd"] > 0 and first["prompt_tokens"] > 0

    # 2. train on the export as it is
    art = tmp_path / "learned"
    r = run(
        "train", "--policy", "knn", "--data", str(out), "--format", "jsonl", "--out", str(art),
        "--param", "k=5", "--param", "calib_folds=3", timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f"trained knn on {len(prompts)} prompts x 2 models" in r.stdout
    meta = json.loads((art / "policy.json").read_text())
    assert sorted(meta["models"]) == ["large", "small"]
    assert meta["data"]["observed_cells"] == n and meta["data"]["mean_quality"] == {
        "small": 0.5,
        "large": 0.5,
    }

    # 3. serve it from a fresh config: routing follows what the ratings taught
    policies = {"learned": {"artifact": str(art)}}
    fresh = write_config(
        tmp_path / "fresh.yaml", upstream.base_url, "none", routing={"policies": policies, "cost_weight": 0.0}
    )
    r = run("config", "validate", fresh)
    assert r.returncode == 0 and "warning" not in r.stdout, r.stdout + r.stderr
    gw2 = start_gateway(load_config(fresh))
    held = [(t, WANT[w]) for t, w in HELD_OUT if w in WANT]
    assert len(held) == 4
    for text, want in held:
        raw = gw2.client.chat.completions.with_raw_response.create(
            model="router:learned", messages=[{"role": "user", "content": text}]
        )
        assert raw.headers["x-moe-router-model"] == want, text
        assert raw.parse().model == want
        assert float(raw.headers["x-moe-router-predicted-quality"]) > 0.5


def test_export_leaves_out_the_judges_calls_and_notes_cut_prompts(tmp_path, upstream, start_gateway):
    ledger = f"sqlite+aiosqlite:///{tmp_path}/ledger.db"
    cfg = tmp_path / "judged.yaml"
    # the default log keeps 200 characters of a prompt; the judge grades every answer with `large`
    cfg.write_text(
        yaml.safe_dump(
            {
                "models": two_models(upstream.base_url),
                "ledger": ledger,
                "judge": {"mode": "llm", "model": "large"},
            }
        )
    )
    upstream.behave("large", reply="Grade: 7")
    gw = start_gateway(load_config(cfg))
    ids = [
        gw.client.chat.completions.create(
            model="router:cheapest", messages=[{"role": "user", "content": t}]
        ).id
        for t in ("Give me a simple recipe for apple pie.", "x" * 300)
    ]
    wait_for(
        lambda: count(ledger) == 4 and count(ledger, "feedback") == 2,
        what="2 requests, 2 judge calls, 2 grades",
    )
    out = tmp_path / "all.jsonl"
    r = run("export", "--out", str(out), "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["request_id"] for row in rows] == ids
    assert [row["model"] for row in rows] == ["small", "small"] and [row["quality"] for row in rows] == [
        0.7,
        0.7,
    ]
    assert [len(row["prompt"]) for row in rows] == [38, 200]
    assert "note: this config logs only the first 200 characters of a prompt" in r.stderr
