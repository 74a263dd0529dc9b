"""The admin API (`/admin/*`) over real HTTP: who reaches it, keys made by it and by the CLI,
the ledger's views (requests, spend, overview), policies with their eval frontier, model health."""

from __future__ import annotations

import json
import time

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from router.cli import app as cli
from router.config import load_config
from tests.conftest import pool
from tests.promtext import sample
from tests.support import ADMIN, ASK, MASTER, add_key, admin_config, bearer, wait_for
from tests.upstream import Fail

# a prompt the default policy sends to "coder" when cost does not count (coder is best at code)
CODE = {
    "model": "router",
    "messages": [{"role": "user", "content": "Write a Python function that reverses a linked list."}],
    "routing": {"cost_weight": 0.0},
}


@pytest.fixture
def gw(upstream, start_gateway, tmp_path):
    return start_gateway(admin_config(upstream, tmp_path))


GETS = [
    "/admin/session",
    "/admin/keys",
    "/admin/spend",
    "/admin/requests",
    "/admin/overview",
    "/admin/policies",
    "/admin/models",
]


def test_only_the_master_key_reaches_admin(gw):
    _, rec = add_key(gw, "alice")
    for path in GETS:
        assert gw.get(path).status_code == 401, path
        assert gw.get(path, headers=bearer("sk-mr-000000000000-wrong")).status_code == 403, path
        r = gw.get(path, headers=bearer(rec))
        assert r.status_code == 403 and r.json()["error"]["code"] == "master_key_required", path
        assert gw.get(path, headers=ADMIN).status_code == 200, path
    # writes too, and paths no route serves are refused before a 404 could tell them apart
    assert gw.post("/admin/keys", json={"name": "eve"}, headers=bearer(rec)).status_code == 403
    assert httpx.delete(gw.url + "/admin/keys/alice", headers=bearer(rec)).status_code == 403
    assert gw.get("/admin/nothing-here", headers=bearer(rec)).status_code == 403
    assert gw.get("/admin/nothing-here", headers=ADMIN).status_code == 404
    # the key still works for what it is for
    assert gw.post("/v1/chat/completions", json=ASK, headers=bearer(rec)).status_code == 200


def test_without_a_master_key_admin_is_off(upstream, start_gateway, tmp_path):
    gw = start_gateway(admin_config(upstream, tmp_path, auth={}))
    for path in GETS:
        r = gw.get(path)
        assert r.status_code == 403 and r.json()["error"]["code"] == "master_key_required", path
        assert "master key" in r.json()["error"]["message"]
    assert gw.get("/ui").status_code == 200  # the page itself holds no data


def test_console_files_are_public_but_credentials_must_be_the_master_key(gw):
    page = gw.get("/ui")
    assert page.status_code == 200 and "moe-router console" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    js = gw.get("/ui/static/chart.umd.js")
    assert js.status_code == 200 and "Chart.js v4.4.9" in js.text[:200]
    assert js.headers["content-type"].startswith("text/javascript")
    assert gw.get("/ui/static/../../app.py").status_code == 404
    assert gw.get("/ui/static/nope.js").status_code == 404
    assert gw.get("/ui/requests").text == page.text  # each page's address serves the same file
    assert gw.get("/ui/nope").status_code == 404
    assert gw.get("/ui", headers=bearer("sk-mr-000000000000-wrong")).status_code == 403
    assert gw.get("/ui", headers=bearer("some-other-token")).status_code == 403
    assert gw.get("/ui", headers=ADMIN).status_code == 200


def test_keys_lifecycle(gw, upstream):
    body, raw = add_key(gw, "alice", budget_usd=5, rpm=100, models=["cheap", "big"])
    assert body["name"] == "alice" and body["budget_usd"] == 5 and body["models"] == ["cheap", "big"]
    assert "salt" not in body and "hash" not in body
    listed = gw.get("/admin/keys", headers=ADMIN).json()["data"]
    assert [k["name"] for k in listed] == ["alice"]
    assert raw not in json.dumps(listed) and "key" not in listed[0]  # the secret is shown once
    assert listed[0]["spent_usd"] == 0

    r = gw.post("/v1/chat/completions", json=ASK, headers=bearer(raw))
    assert r.status_code == 200
    spent = gw.get("/admin/keys", headers=ADMIN).json()["data"][0]["spent_usd"]
    assert spent > 0

    # limits change at once, on the same record
    r = httpx.patch(gw.url + "/admin/keys/alice", json={"rpm": 1, "budget_usd": None}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["rpm"] == 1 and r.json()["budget_usd"] is None
    gw.post("/v1/chat/completions", json=ASK, headers=bearer(raw))
    assert gw.post("/v1/chat/completions", json=ASK, headers=bearer(raw)).status_code == 429
    r = httpx.patch(gw.url + "/admin/keys/alice", json={"models": ["cheap"], "rpm": None}, headers=ADMIN)
    assert r.json()["models"] == ["cheap"]
    named = {**ASK, "model": "big"}
    assert gw.post("/v1/chat/completions", json=named, headers=bearer(raw)).status_code == 403

    # revoked: refused everywhere from the next request on, shown as revoked, name free again
    r = httpx.delete(gw.url + "/admin/keys/alice", headers=ADMIN)
    assert r.status_code == 200 and r.json()["revoked"] is True
    assert gw.post("/v1/chat/completions", json=ASK, headers=bearer(raw)).status_code == 401
    assert gw.get("/admin/keys", headers=ADMIN).json()["data"][0]["revoked"] is True
    assert httpx.delete(gw.url + "/admin/keys/alice", headers=ADMIN).status_code == 404
    r = httpx.patch(gw.url + "/admin/keys/alice", json={"rpm": 3}, headers=ADMIN)
    assert r.status_code == 404 and r.json()["error"]["code"] == "key_not_found"


@pytest.mark.parametrize(
    "body, status, code",
    [
        ({"name": "bad name"}, 400, "invalid_key_request"),
        ({"name": "x", "budget_usd": -1}, 422, "invalid_request_schema"),
        ({"name": "x", "budget_window": "weekly"}, 422, "invalid_request_schema"),
        ({"name": "x", "rpm": 0}, 422, "invalid_request_schema"),
        ({"name": "x", "models": ["nope"]}, 400, "invalid_key_request"),
        ({"name": "x", "salt": "00"}, 400, "unknown_parameter"),
        ({"name": "x", "hash": "00"}, 400, "unknown_parameter"),
    ],
)
def test_bad_key_requests_are_clear_4xx(gw, body, status, code):
    r = gw.post("/admin/keys", json=body, headers=ADMIN)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"]


def test_bad_updates_and_duplicates(gw):
    add_key(gw, "bob")
    r = gw.post("/admin/keys", json={"name": "bob"}, headers=ADMIN)
    assert r.status_code == 409 and r.json()["error"]["code"] == "key_exists"
    for body in ({}, {"name": "carol"}, {"id": "x"}, {"rpm": -3}, {"models": ["nope"]}):
        r = httpx.patch(gw.url + "/admin/keys/bob", json=body, headers=ADMIN)
        assert 400 <= r.status_code < 500 and "error" in r.json(), body
    assert gw.get("/admin/keys", headers=ADMIN).json()["data"][0]["rpm"] is None


def test_cli_and_admin_keys_are_the_same_keys(upstream, start_gateway, tmp_path, redis_url):
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text(yaml.safe_dump({"state": redis_url, "models": pool(upstream.base_url)}))
    gw = start_gateway(admin_config(upstream, tmp_path, state=redis_url))

    run = CliRunner().invoke(
        cli, ["keys", "create", "--name", "from-cli", "--rpm", "50", "--config", str(cfg_file)]
    )
    assert run.exit_code == 0, run.output
    cli_key = run.stdout.strip().splitlines()[-1]
    r = gw.post("/admin/keys", json={"name": "from-api", "budget_usd": 2}, headers=ADMIN)
    api_key = r.json()["key"]

    for key in (cli_key, api_key):
        assert gw.post("/v1/chat/completions", json=ASK, headers=bearer(key)).status_code == 200
    listed = {k["name"]: k for k in gw.get("/admin/keys", headers=ADMIN).json()["data"]}
    assert listed["from-cli"]["rpm"] == 50 and listed["from-api"]["budget_usd"] == 2

    run = CliRunner().invoke(cli, ["keys", "list", "--json", "--config", str(cfg_file)])
    rows = {k["name"]: k for k in json.loads(run.stdout)}
    assert rows["from-api"]["spent_usd"] == listed["from-api"]["spent_usd"] > 0
    assert api_key not in run.stdout and cli_key not in run.stdout

    run = CliRunner().invoke(cli, ["keys", "update", "from-api", "--tpm", "9000", "--config", str(cfg_file)])
    assert run.exit_code == 0, run.output
    assert {k["name"]: k for k in gw.get("/admin/keys", headers=ADMIN).json()["data"]}["from-api"][
        "tpm"
    ] == 9000
    assert httpx.delete(gw.url + "/admin/keys/from-cli", headers=ADMIN).status_code == 200
    assert gw.post("/v1/chat/completions", json=ASK, headers=bearer(cli_key)).status_code == 401
    run = CliRunner().invoke(cli, ["keys", "revoke", "from-cli", "--config", str(cfg_file)])
    assert run.exit_code != 0 and "no active key" in str(run.exception)


def test_requests_spend_and_overview_from_the_ledger(gw, upstream):
    key = gw.post("/admin/keys", json={"name": "dave"}, headers=ADMIN).json()["key"]
    ids = []
    for _ in range(3):  # cost counts: routed to a cheaper model than the strongest
        r = gw.post(
            "/v1/chat/completions", json={**ASK, "routing": {"cost_weight": 0.9}}, headers=bearer(key)
        )
        assert r.headers["x-moe-router-model"] != "big"
        ids.append(r.json()["id"])
    gw.post("/v1/chat/completions", json={**ASK, "model": "big"}, headers=ADMIN)
    upstream.script("cheap", *[Fail(500)] * 10)
    upstream.script("coder", *[Fail(500)] * 10)
    upstream.script("big", *[Fail(500)] * 10)
    assert gw.post("/v1/chat/completions", json={**ASK, "model": "cheap"}, headers=ADMIN).status_code >= 500
    upstream.reset()

    rows = wait_for(
        lambda: (d := gw.get("/admin/requests", headers=ADMIN).json()["data"]) and len(d) >= 5 and d
    )
    assert len(rows) == 5
    assert [r["created"] for r in rows] == sorted((r["created"] for r in rows), reverse=True)
    mine = gw.get("/admin/requests?key=dave", headers=ADMIN).json()["data"]
    assert len(mine) == 3 and all(r["key"] == "dave" and r["policy"] for r in mine)
    errors = gw.get("/admin/requests?status=error", headers=ADMIN).json()["data"]
    assert len(errors) == 1 and errors[0]["model"] in (None, "cheap")
    assert len(gw.get("/admin/requests?limit=2", headers=ADMIN).json()["data"]) == 2
    named = gw.get("/admin/requests?model=big", headers=ADMIN).json()["data"]
    assert named and all(r["model"] == "big" for r in named)

    one = gw.get(f"/admin/requests/{mine[0]['id']}", headers=ADMIN).json()
    d = one["decision"]
    assert d["ranked"][0]["model"] == one["model"]
    assert {"model", "quality", "cost_usd", "latency_ms", "score"} <= set(d["ranked"][0])
    assert any(x["model"] == "keyless" for x in d["excluded"])  # its API key is not set
    assert one["feedback"] == [] and "learn" not in one
    assert gw.get("/admin/requests/chatcmpl-nope", headers=ADMIN).status_code == 404

    by_key = {r["group"]: r for r in gw.get("/admin/spend?group_by=key", headers=ADMIN).json()["data"]}
    assert by_key["dave"]["requests"] == 3 and by_key["dave"]["cost_usd"] > 0
    by_model = gw.get("/admin/spend?group_by=model", headers=ADMIN).json()["data"]
    assert sum(r["requests"] for r in by_model) == 5
    by_day = gw.get("/admin/spend?group_by=day", headers=ADMIN).json()["data"]
    assert by_day[-1]["group"] == time.strftime("%Y-%m-%d", time.gmtime())

    ov = gw.get(f"/admin/overview?since={time.time() - 600:.0f}&bucket_s=60", headers=ADMIN).json()
    t = ov["totals"]
    assert t["requests"] == 5 and t["errors"] == 1 and t["baseline_model"] == "big"
    assert t["savings_usd"] == pytest.approx(t["baseline_cost_usd"] - t["cost_usd"], abs=1e-9)
    assert t["savings_usd"] > 0  # routed requests went to cheaper models than "big"
    assert sum(b["requests"] for b in ov["buckets"]) == 5
    spent = {}  # spend over time by model adds up to the spend by model
    for b in ov["buckets"]:
        for m, usd in b["cost_by_model"].items():
            spent[m] = spent.get(m, 0.0) + usd
    assert spent == pytest.approx({r["group"]: r["cost_usd"] for r in by_model if r["group"] != "none"})


def test_requests_search_their_prompts(gw):
    for text in ("Tell me about 100% of the Rhine", "Name a river in Egypt", "the RHINE again"):
        body = {**ASK, "messages": [{"role": "user", "content": text}]}
        assert gw.post("/v1/chat/completions", json=body, headers=ADMIN).status_code == 200
    wait_for(lambda: len(gw.get("/admin/requests", headers=ADMIN).json()["data"]) >= 3)

    def found(q: str) -> list[str]:
        rows = gw.get("/admin/requests", params={"q": q}, headers=ADMIN).json()["data"]
        return sorted(r["prompt"] for r in rows)

    assert found("rhine") == ["Tell me about 100% of the Rhine", "the RHINE again"]  # any case
    assert found("100%") == ["Tell me about 100% of the Rhine"]  # % is a character, not a wildcard
    assert found("_") == [] and found("%") == ["Tell me about 100% of the Rhine"]
    assert found("Danube") == []
    rows = gw.get("/admin/requests", params={"q": "rhine", "limit": 1}, headers=ADMIN).json()["data"]
    assert [r["prompt"] for r in rows] == ["the RHINE again"]  # newest first, with the other filters
    too_long = gw.get("/admin/requests", params={"q": "x" * 201}, headers=ADMIN)
    assert too_long.status_code == 422 and too_long.json()["error"]["param"] == "q"


@pytest.mark.parametrize(
    "path",
    [
        "/admin/spend?group_by=team",
        "/admin/spend?since=-1",
        "/admin/requests?limit=0",
        "/admin/requests?limit=501",
        "/admin/requests?limit=ten",
        "/admin/requests?status=DROP%20TABLE",
        "/admin/requests?before=yesterday",
        "/admin/overview?bucket_s=0",
        "/admin/overview?since=0&bucket_s=1",  # decades of one-second buckets
    ],
)
def test_bad_queries_are_clear_4xx(gw, path):
    r = gw.get(path, headers=ADMIN)
    assert 400 <= r.status_code < 500, (path, r.text)
    err = r.json()["error"]
    assert err["message"] and err["type"] == "invalid_request_error"


def test_ledger_off_is_a_clear_503(upstream, start_gateway, tmp_path):
    gw = start_gateway(admin_config(upstream, tmp_path, ledger="none"))
    r = gw.get("/admin/requests", headers=ADMIN)
    assert r.status_code == 503 and r.json()["error"]["code"] == "ledger_off"
    assert gw.get("/admin/keys", headers=ADMIN).status_code == 200


def test_models_show_health_and_breakers(gw, upstream):
    gw.post("/v1/chat/completions", json={**ASK, "model": "cheap"}, headers=ADMIN)
    assert gw.post("/v1/route", json=CODE, headers=ADMIN).json()["model"] == "coder"
    upstream.script("coder", *[Fail(500)] * 20)
    for _ in range(3):  # coder fails, another model answers: that counts against coder's breaker
        r = gw.post("/v1/chat/completions", json=CODE, headers=ADMIN)
        assert r.status_code == 200 and r.headers["x-moe-router-fallbacks"] == "coder"
    models = {m["name"]: m for m in gw.get("/admin/models", headers=ADMIN).json()["data"]}
    assert models["coder"]["breaker"] == "open"
    assert models["cheap"]["breaker"] == "closed" and models["cheap"]["samples"] >= 1
    assert models["cheap"]["latency_ewma_ms"] > 0
    assert (
        models["keyless"]["available"] is False
        and "MOE_TEST_NEVER_SET_KEY" in models["keyless"]["unavailable_reason"]
    )
    assert models["big"]["input_price_per_1m"] == 10.0
    # the built-in irt policy has no ability for the test pool's models: their category priors
    assert models["big"]["quality_source"] == "prior"


def test_policies_list_with_the_eval_frontier(upstream, start_gateway, tmp_path, encoder, monkeypatch):
    from policies.artifacts import save_policy
    from tests.training_fixtures import planted_dataset
    from training.jobs import run_eval, train

    monkeypatch.setenv("MOE_ROUTER_CACHE_DIR", str(tmp_path / "cache"))
    ds = planted_dataset()
    p = train("knn", ds, encoder, {"calib_folds": 3})
    art = save_policy(p, tmp_path / "knn", encoder=encoder)
    (art / "eval.json").write_text(json.dumps(run_eval(p, ds, encoder, points=21).report))
    plain = save_policy(p, tmp_path / "plain", encoder=encoder)
    routing = {"policies": {"learned": {"artifact": str(art)}, "noeval": {"artifact": str(plain)}}}
    gw = start_gateway(admin_config(upstream, tmp_path, routing=routing))

    pols = {p["name"]: p for p in gw.get("/admin/policies", headers=ADMIN).json()["data"]}
    assert {"cheapest", "thompson", "learned", "noeval"} <= set(pols)
    assert pols["thompson"]["online"] is True and pols["thompson"]["trained"] is False
    assert pols["irt"]["default"] is True
    ev = pols["learned"]["eval"]
    assert pols["learned"]["trained"] and pols["learned"]["models"] == ["cheap", "coder", "big"]
    assert len(ev["frontier"]) == 21 and 0 <= ev["aiq"] <= 1
    assert {"cost_weight", "cost_usd", "quality"} == set(ev["frontier"][0])
    assert set(ev["single_models"]) == {"cheap", "coder", "big"}
    assert pols["noeval"]["eval"] is None and "eval.json" in pols["noeval"]["eval_missing"]


def test_fuzzed_admin_requests_never_get_a_5xx(gw):
    """Every admin operation from the OpenAPI schema, with the master key, valid and broken input."""
    import schemathesis
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_dict(gw.get("/openapi.json", headers=ADMIN).json())
    ops = [r.ok() for r in schema.get_all_operations() if r.ok().path.startswith("/admin")]
    assert {(o.method.upper(), o.path) for o in ops} >= {
        ("POST", "/admin/keys"),
        ("PATCH", "/admin/keys/{name}"),
    }
    for op in ops:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _probe(gw, op, mode)


def _probe(gw, op, mode):
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode

    @given(case=op.as_strategy(generation_mode=mode))
    @settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def probe(case):
        r = case.call(base_url=gw.url, headers=ADMIN, timeout=15)
        assert r.status_code < 500, (op.method, op.path, case.body, r.text)
        if r.status_code >= 400:
            assert set(r.json()["error"]) == {"message", "type", "param", "code"}

    try:
        probe()
    except Unsatisfiable:
        assert mode == GenerationMode.NEGATIVE  # nothing to break: an operation without parameters


@pytest.mark.parametrize("content_type", [None, "application/x-www-form-urlencoded", "text/plain"])
def test_post_and_patch_read_json_whatever_the_content_type(gw, content_type):
    """`curl -d` / `curl -X PATCH -d` send a form type: both methods read the body as JSON."""
    headers = {**ADMIN, **({"content-type": content_type} if content_type else {})}
    r = gw.post("/admin/keys", content=b'{"name": "carol", "rpm": 5}', headers=headers)
    assert r.status_code == 201, r.text
    r = httpx.patch(gw.url + "/admin/keys/carol", content=b'{"rpm": 7}', headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["rpm"] == 7
    r = httpx.patch(gw.url + "/admin/keys/carol", content=b"rpm=7", headers=headers)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    metrics = gw.get("/metrics", headers=ADMIN).text
    # counted under the route they reached, not "unmatched", though their content type was rewritten
    assert sample(metrics, "moe_router_requests_total", endpoint="/admin/keys", status="201") == 1
    assert sample(metrics, "moe_router_requests_total", endpoint="/admin/keys/{name}", status="200") == 1
    assert sample(metrics, "moe_router_requests_total", endpoint="unmatched", status="201") is None


def test_the_session_says_whose_traffic_the_console_shows(upstream, start_gateway, tmp_path):
    cfg_file = tmp_path / "team-a.yaml"
    cfg_file.write_text(yaml.safe_dump({"models": pool(upstream.base_url), "auth": {"master_key": MASTER}}))
    ledger = f"sqlite+aiosqlite:///{tmp_path}/a.db"
    gw = start_gateway(load_config(cfg_file, ledger=ledger))
    s = gw.get("/admin/session", headers=ADMIN).json()
    assert s["config"] == str(cfg_file) and s["ledger_at"] == ledger
