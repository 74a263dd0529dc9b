"""The console at /ui in a real browser: Playwright driving Debian's Chromium, headless.

Skipped (with the reason) where /usr/bin/chromium is absent; `.ci/run` installs it. Set
MOE_ROUTER_SCREENSHOTS=docs/img to write the screenshots docs/console.md shows.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import httpx
import pytest

from tests.conftest import make_config
from tests.support import wait_for

CHROMIUM = os.environ.get("MOE_ROUTER_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)"
)
playwright_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

MASTER = "mk-" + "c" * 40
XSS = '<img src=x onerror="window.__xss = 1"> a river of <b>markup</b>'

ADMIN = {"authorization": f"Bearer {MASTER}"}
SHOTS = os.environ.get("MOE_ROUTER_SCREENSHOTS")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]


def ask(content: str, **kw) -> dict:
    return {"model": "router", "messages": [{"role": "user", "content": content}], **kw}


@pytest.fixture(scope="module")
def trained_artifact(tmp_path_factory, encoder):
    """A trained knn policy with the eval report `moe-router eval --report` writes beside it."""
    from policies.artifacts import save_policy
    from tests.training_fixtures import planted_dataset
    from training.jobs import run_eval, train

    d = tmp_path_factory.mktemp("artifact")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MOE_ROUTER_CACHE_DIR", str(d / "cache"))
        ds = planted_dataset()
        p = train("knn", ds, encoder, {"calib_folds": 3})
        art = save_policy(p, d / "knn", encoder=encoder)
        (art / "eval.json").write_text(json.dumps(run_eval(p, ds, encoder, points=21).report))
    return art


@pytest.fixture
def gw(upstream, start_gateway, tmp_path, trained_artifact):
    cfg = make_config(
        upstream.base_url,
        auth={"master_key": MASTER},
        ledger=f"sqlite+aiosqlite:///{tmp_path}/ledger.db",
        routing={"policies": {"learned": {"artifact": str(trained_artifact)}}},
    )
    gw = start_gateway(cfg)
    # some traffic for the overview and requests pages
    for text, w in [
        ("What is the capital of France?", 0.9),
        ("Write a Python function that reverses a linked list.", 0.0),
        ("Prove that the square root of two is irrational.", 0.0),
        ("Name a river in Egypt.", 0.5),
        (XSS, 0.5),  # a prompt that is markup: shown as text, never run
    ]:
        r = gw.post("/v1/chat/completions", json=ask(text, routing={"cost_weight": w}), headers=ADMIN)
        assert r.status_code == 200
    wait_for(lambda: len(gw.get("/admin/requests", headers=ADMIN).json()["data"]) >= 5)
    return gw


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1280, "height": 860})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    # script errors and CSP refusals; answers with a 4xx status (the login's 401) are expected
    pg.on(
        "console",
        lambda m: (
            errors.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource")
            else None
        ),
    )
    pg.errors = errors
    yield pg
    ctx.close()


def shot(page, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"console-{name}.png"))


def login(page, url: str) -> None:
    page.goto(url + "/ui")
    page.wait_for_selector("#login-form")
    page.fill("#master-key", "wrong")
    page.click("#login-form button")
    page.wait_for_selector("#login-error:has-text('master key')")
    page.fill("#master-key", MASTER)
    page.click("#login-form button")
    page.wait_for_selector("#app:not([hidden])")


def test_login_overview_and_requests(gw, page):
    login(page, gw.url)
    page.wait_for_function("() => document.querySelector('#ov-requests').textContent === '5'")
    assert page.text_content("#ov-errors") == "0.0%"
    assert page.text_content("#ov-baseline-model") == "big"
    assert page.text_content("#ov-savings").startswith("$")
    assert page.text_content("#ov-p50").endswith("ms")
    page.wait_for_selector("#ov-models tr[data-model=keyless]")
    assert page.text_content("#ov-models tr[data-model=cheap] td:nth-child(3)") == "closed"
    shot(page, "overview")

    page.click("nav a[data-page=requests]")
    page.wait_for_selector("#rq-table tr.request")
    assert page.locator("#rq-table tr.request").count() == 5
    # filter by model, then expand a routed request into its decision
    first_model = page.text_content("#rq-table tr.request td:nth-child(5)")
    page.fill("#rq-filter input[name=model]", first_model)
    page.click("#rq-filter button")
    page.wait_for_function(
        "m => [...document.querySelectorAll('#rq-table tr.request td:nth-child(5)')].every(td => td.textContent === m)",
        arg=first_model,
    )
    page.click("#rq-table tr.request")
    page.wait_for_selector("tr.detail table.decision-ranked")
    ranked = page.locator("tr.detail table.decision-ranked tbody tr")
    assert ranked.count() >= 2 and first_model in ranked.first.text_content()
    assert "keyless" in page.text_content("tr.detail table.decision-excluded")
    shot(page, "requests")
    assert page.url.endswith("/ui/requests")  # each page has its own address
    # that address opened directly, logged in by an Authorization header alone (a script's way)
    page.context.set_extra_http_headers({"Authorization": f"Bearer {MASTER}"})
    page.goto(gw.url + "/ui/requests")
    page.wait_for_selector("#page-requests:not([hidden]) #rq-table tr.request")
    assert page.locator("#rq-table tr.request").count() == 5
    assert page.errors == []


def test_keys_create_use_and_revoke(gw, page):
    login(page, gw.url)
    page.click("nav a[data-page=keys]")
    page.fill("#key-create input[name=name]", "web-user")
    page.fill("#key-create input[name=budget_usd]", "0.5")
    page.fill("#key-create input[name=rpm]", "30")
    page.click("#key-create button")
    page.wait_for_selector("#key-secret:not([hidden])")
    raw = page.text_content("#key-secret-value")
    assert raw.startswith("sk-mr-")
    r = gw.post("/v1/chat/completions", json=ask("hello"), headers={"authorization": f"Bearer {raw}"})
    assert r.status_code == 200
    page.click("nav a[data-page=overview]")
    page.click("nav a[data-page=keys]")
    row = page.locator("#keys-table tr[data-key=web-user]")
    row.wait_for()
    assert "/ $0.500 monthly" in row.text_content() and "active" in row.text_content()
    shot(page, "keys")

    # change a limit with the form, then revoke
    page.select_option("#key-update select[name=name]", "web-user")
    page.fill("#key-update input[name=rpm]", "7")
    page.click("#key-update button")
    page.wait_for_function(
        "() => document.querySelector('#keys-table tr[data-key=\"web-user\"] td:nth-child(5)').textContent === '7'"
    )
    page.once("dialog", lambda d: d.accept())
    row.locator("button[data-revoke]").click()
    page.wait_for_function(
        "() => document.querySelector('#keys-table tr[data-key=\"web-user\"]').textContent.includes('revoked')"
    )
    r = gw.post("/v1/chat/completions", json=ask("hello"), headers={"authorization": f"Bearer {raw}"})
    assert r.status_code == 401
    assert page.errors == []


def test_policies_show_the_frontier(gw, page):
    login(page, gw.url)
    page.click("nav a[data-page=policies]")
    page.wait_for_selector("#pol-table tr[data-policy=learned]")
    assert "default" in page.text_content("#pol-table tr[data-policy=irt]")
    page.wait_for_selector("#pol-frontiers figure[data-policy=learned] canvas")
    drawn = page.evaluate(
        "Chart.getChart(document.querySelector('#pol-frontiers canvas')).data.datasets[0].data.length"
    )
    assert drawn == 21
    shot(page, "policies")
    assert page.errors == []


def test_playground_routes_compares_and_rates(gw, page):
    # scripts and tests may skip the login form: an Authorization header is enough
    page.context.set_extra_http_headers(ADMIN)
    page.goto(gw.url + "/ui#playground")
    page.wait_for_selector("#page-playground:not([hidden])")
    page.select_option("#pg-policy", "thompson")
    page.fill("#pg-prompt", "Write a Python function that merges two sorted lists.")
    page.click("#pg-route")
    page.wait_for_selector("#pg-ranked tbody tr")
    assert page.locator("#pg-ranked tbody tr").count() == 3
    assert "keyless" in page.text_content("#pg-excluded")
    assert page.text_content("#pg-routed-name") == "router:thompson"
    # the router's pick plus the two runners-up (checked by default): three answers side by side
    page.click("#pg-send")
    page.wait_for_function("() => document.querySelectorAll('#pg-answers .answer .meta').length === 3")
    targets = page.eval_on_selector_all("#pg-answers .answer", "cs => cs.map(c => c.dataset.target)")
    assert targets[0] == "router:thompson" and len(set(targets)) == 3
    text = page.text_content("#pg-answers .answer:first-child .text")
    assert "merges two sorted lists" in text  # the mock upstream echoes the prompt
    shot(page, "playground")

    routed = page.locator("#pg-answers .answer").first
    request_id = routed.get_attribute("data-id")
    routed.locator("button[data-rating='1']").click()
    routed.locator(".rated").wait_for()
    # what the rating means, not a bare number
    assert routed.locator(".rated").text_content() == "Rated good (1 on a 0–1 scale): saved to the ledger"

    # the rating is in the ledger, by the operator, and the bandit learnt from it
    row = wait_for(
        lambda: (r := gw.get(f"/admin/requests/{request_id}", headers=ADMIN).json()).get("feedback") and r
    )
    assert row["policy"] == "thompson" and row["rating"] == 1.0
    assert row["feedback"][0]["rater"] == "admin" and row["feedback"][0]["rating"] == 1.0
    metrics = httpx.get(gw.url + "/metrics", headers=ADMIN).text
    assert f'moe_router_policy_updates_total{{model="{row["model"]}",policy="thompson"}} 1.0' in metrics
    assert page.errors == []


def test_overview_shows_where_the_money_goes(gw, page):
    login(page, gw.url)
    page.wait_for_selector("#ov-spend-model tr[data-group]")
    spend = {r["group"]: r for r in gw.get("/admin/spend?group_by=model", headers=ADMIN).json()["data"]}
    rows = page.eval_on_selector_all(
        "#ov-spend-model tr[data-group]", "rs => rs.map(r => [r.dataset.group, r.cells[1].textContent])"
    )
    assert [g for g, _ in rows] == list(spend)  # the biggest spender first
    assert all(usd.startswith("$") for _, usd in rows)
    keys = page.eval_on_selector_all("#ov-spend-key tr[data-group]", "rs => rs.map(r => r.dataset.group)")
    assert keys == ["admin"]  # every request above was made with the master key
    assert page.text_content("#ov-spend-key tr[data-group=admin] td:nth-child(4)") == "5"
    # spend over time: one stacked series per model that spent, the same colour as in traffic
    series = page.evaluate(
        """() => {
        const get = (id) => Chart.getChart(document.getElementById(id));
        const colours = (c) => Object.fromEntries(c.data.datasets.map((d) => [d.label, d.backgroundColor]));
        return { spend: colours(get("ov-spend-time")), share: colours(get("ov-share")),
                 total: get("ov-spend-time").data.datasets.flatMap((d) => d.data).reduce((a, b) => a + b, 0),
                 latency: get("ov-latency").options.scales.y.type };
    }"""
    )
    assert set(series["spend"]) == {m for m in spend if m != "none"}
    assert all(series["share"][m] == c for m, c in series["spend"].items())
    assert len(set(series["share"].values())) == len(series["share"])  # distinct colours
    assert series["total"] == pytest.approx(sum(r["cost_usd"] for r in spend.values()))
    assert series["latency"] == "logarithmic"
    assert page.errors == []


def test_frontier_has_a_log_cost_axis_and_a_colour_per_model(gw, page):
    login(page, gw.url)
    page.click("nav a[data-page=policies]")
    page.wait_for_selector("#pol-frontiers figure[data-policy=learned] canvas")
    got = page.evaluate(
        """() => {
        const c = Chart.getChart(document.querySelector('#pol-frontiers canvas'));
        const models = c.data.datasets.filter((d) => d.pointStyle === "rectRot");
        return { x: c.options.scales.x.type, colours: models.map((d) => d.backgroundColor),
                 xs: c.data.datasets.flatMap((d) => d.data.map((p) => p.x)) };
    }"""
    )
    assert got["x"] == "logarithmic"
    assert len(got["colours"]) >= 2 and len(set(got["colours"])) == len(got["colours"])
    assert all(x > 0 for x in got["xs"])  # a free model is drawn at the axis' floor, not dropped
    assert page.errors == []


def test_requests_search_prompts_and_show_markup_as_text(gw, page):
    login(page, gw.url)
    page.click("nav a[data-page=requests]")
    page.wait_for_selector("#rq-table tr.request")
    page.fill("#rq-filter input[name=q]", "RIVER")
    page.click("#rq-filter button")
    page.wait_for_function("() => document.querySelectorAll('#rq-table tr.request').length === 2")
    page.fill("#rq-filter input[name=q]", "<img")
    page.click("#rq-filter button")
    page.wait_for_function("() => document.querySelectorAll('#rq-table tr.request').length === 1")
    page.click("#rq-table tr.request")
    page.wait_for_selector("tr.detail i")
    assert page.text_content("tr.detail i") == XSS  # the prompt, as text
    assert page.evaluate("() => document.querySelectorAll('main img, main b:not(p > b)').length") == 0
    assert page.evaluate("() => window.__xss === undefined")
    assert page.errors == []


def test_header_holds_together_at_420_px_and_says_whose_traffic(gw, browser):
    ctx = browser.new_context(viewport={"width": 420, "height": 800}, extra_http_headers=ADMIN)
    page = ctx.new_page()
    try:
        page.goto(gw.url + "/ui")
        page.wait_for_selector("#app:not([hidden])")
        page.wait_for_function("() => document.querySelector('#whose').textContent !== ''")
        whose = page.text_content("#whose")
        assert whose == f"embedded default config · ledger {gw.engine.config.ledger}"
        boxes = page.eval_on_selector_all(
            "header .brand, header nav a, #logout",
            "es => es.map(e => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom]; })",
        )
        for left, top, right, bottom in boxes:
            assert left >= 0 and right <= 420 and bottom > top  # inside the window, not clipped
        for i, a in enumerate(boxes):  # nothing drawn over anything else
            for b in boxes[i + 1 :]:
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)
        assert page.evaluate(
            "() => { const h = document.querySelector('header'); return h.scrollWidth <= h.clientWidth; }"
        )
        whose_box = page.eval_on_selector("#whose", "e => e.getBoundingClientRect().right")
        assert whose_box <= 420
        shot(page, "narrow")
        page.wait_for_selector("#ov-models tr[data-model]")
        filled = {
            "overview": "#ov-spend-model tr[data-group]",
            "requests": "#rq-table tr.request",
            "keys": "#key-create",
            "policies": "#pol-frontiers canvas",
            "playground": "#pg-form",
        }
        for name, selector in filled.items():  # no page scrolls sideways: wide tables scroll inside
            page.click(f"nav a[data-page={name}]")
            page.wait_for_selector(f"#page-{name}:not([hidden]) {selector}")
            assert page.evaluate("() => document.documentElement.scrollWidth") <= 420, name
    finally:
        ctx.close()


def test_overview_shows_local_moe_expert_load(upstream, start_gateway, tiny_moe_dir, page):
    from tests.tiny_moe import LAYERS, NUM_EXPERTS

    tiny = {"name": "tiny", "backend": "transformers", "params": {"path": str(tiny_moe_dir)}}
    gw = start_gateway(make_config(upstream.base_url, models=[tiny], auth={"master_key": MASTER}))
    r = gw.post(
        "/v1/chat/completions", json={**ask("hello"), "model": "tiny", "max_tokens": 3}, headers=ADMIN
    )
    assert r.status_code == 200
    usage = json.loads(r.headers["x-moe-router-experts"])
    login(page, gw.url)
    page.wait_for_selector("#ov-experts-box:not([hidden]) #ov-experts tr[data-model=tiny]")
    rows = page.locator("#ov-experts tr[data-model=tiny]")
    assert rows.count() == LAYERS
    for layer, counts in usage.items():
        row = page.locator(f"#ov-experts tr[data-layer='{layer}']")
        imbalance = max(counts) / (sum(counts) / NUM_EXPERTS)
        assert row.locator("td:nth-child(3)").text_content() == f"{imbalance:.2f}"
        assert row.locator(".expert").count() == NUM_EXPERTS
    # this gateway keeps no ledger: the traffic charts say so, the expert load is shown anyway
    assert "ledger is off" in page.text_content("#banner")


def test_refusals_show_on_the_overview_and_the_requests_page(gw, page):
    served = gw.get("/admin/overview", headers=ADMIN).json()["totals"]["requests"]
    created = gw.post("/admin/keys", json={"name": "old-laptop"}, headers=ADMIN).json()
    assert httpx.delete(gw.url + "/admin/keys/old-laptop", headers=ADMIN).status_code == 200
    r = gw.post(
        "/v1/chat/completions", json=ask("hello"), headers={"authorization": f"Bearer {created['key']}"}
    )
    assert r.status_code == 401
    assert wait_for(lambda: gw.get("/admin/requests?status=refused", headers=ADMIN).json()["data"])
    login(page, gw.url)
    page.wait_for_function("() => document.querySelector('#ov-refused').textContent === '1'")
    assert page.text_content("#ov-requests") == str(served)  # served requests only, not the refusal
    page.click("nav a[data-page=requests]")
    page.wait_for_selector("#rq-table tr.request")
    page.select_option("#rq-filter select[name=status]", "refused")
    page.click("#rq-filter button")
    page.wait_for_function("() => document.querySelectorAll('#rq-table tr.request').length === 1")
    row = page.locator("#rq-table tr.request")
    assert row.locator("td:nth-child(3)").text_content() == "old-laptop"
    assert row.locator("td:nth-child(8)").text_content() == "refused: invalid_api_key"
    row.click()
    page.wait_for_selector("tr.detail p.refusal")
    assert "invalid or revoked API key" in page.text_content("tr.detail p.refusal")
    shot(page, "refusals")
    assert page.errors == []
