// The moe-router operator console: plain JavaScript over the gateway's /admin/* JSON API.
// Every value from the server is written with textContent (never innerHTML): prompts, key
// names and model names are data, not markup.
"use strict";

const TOKEN = "moe-router-master-key";
const $ = (sel, root = document) => root.querySelector(sel);
const charts = {};
let session = null;

// ---- helpers ------------------------------------------------------------------------------
function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(e.dataset, v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, { method = "GET", body } = {}) {
  const headers = {};
  const token = sessionStorage.getItem(TOKEN);
  if (token) headers.authorization = "Bearer " + token;
  if (body !== undefined) headers["content-type"] = "application/json";
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!r.ok) {
    const msg = (data && data.error && data.error.message) || `${r.status} ${r.statusText}`;
    throw new ApiError(r.status, msg);
  }
  return { data, headers: r.headers };
}

const fmt = {
  usd: (x) => (x === null || x === undefined ? "-" : "$" + (Math.abs(x) >= 1 ? x.toFixed(2) : x.toPrecision(3))),
  ms: (x) => (x === null || x === undefined ? "-" : x >= 1000 ? (x / 1000).toFixed(2) + " s" : Math.round(x) + " ms"),
  num: (x, d = 3) => (x === null || x === undefined ? "-" : Number(x).toFixed(d)),
  pct: (x) => (x === null || x === undefined || !isFinite(x) ? "-" : (100 * x).toFixed(1) + "%"),
  time: (t) => (t ? new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) : "-"),
  hm: (t) => new Date(t * 1000).toISOString().slice(11, 16),
};

function showError(where, err) {
  const p = where.querySelector ? where.querySelector("[data-role=error]") || where : where;
  p.textContent = err ? err.message || String(err) : "";
}

function banner(err) {
  const b = $("#banner");
  b.hidden = !err;
  b.textContent = err ? err.message : "";
  if (err && err.status === 401) logout();
}

function chart(id, config) {
  if (charts[id]) charts[id].destroy();
  if (typeof Chart === "undefined") return null; // the page still works without its plots
  charts[id] = new Chart(document.getElementById(id), config);
  return charts[id];
}

const PALETTE = ["#2f5bd3", "#e07b39", "#1b9e77", "#b3261e", "#7b5ea7", "#8c6d1f", "#d45087", "#5b6478"];

// One colour per model, the same on every chart, and distinct however many models there are:
// the palette first, then hues a golden angle apart.
const MODEL_COLOURS = new Map();
function modelColour(name) {
  if (!MODEL_COLOURS.has(name)) {
    const i = MODEL_COLOURS.size;
    MODEL_COLOURS.set(name, i < PALETTE.length ? PALETTE[i] : `hsl(${Math.round((i * 137.508) % 360)}, 62%, 42%)`);
  }
  return MODEL_COLOURS.get(name);
}

// A table cell's bar (0..1 of its width); widths go through the CSSOM after rendering, since
// the page's CSP allows no inline style attributes.
function bar(share) {
  return el("span", { class: "bar" }, el("span", { dataset: { share: Math.max(0, Math.min(1, share || 0)) } }));
}
function sizeBars(root) {
  for (const s of root.querySelectorAll(".bar > span[data-share]")) s.style.width = 100 * Number(s.dataset.share) + "%";
}

// Log axes label 1, 2 and 5 of each decade only (Chart.js labels every tick: they overlap).
function logTicks(unit = "") {
  return {
    callback: (v) => {
      const m = v / 10 ** Math.floor(Math.log10(v));
      return [1, 2, 5].some((k) => Math.abs(m - k) < 1e-6) ? unit + Number(v.toPrecision(1)) : "";
    },
    autoSkip: false,
  };
}

// What a rating means, as the Playground's buttons say it.
const RATINGS = { 1: "good", 0.5: "ok", 0: "bad" };

// ---- login ----------------------------------------------------------------------------------
async function boot() {
  try {
    session = (await api("/admin/session")).data; // a stored key, or an Authorization header set by a script
  } catch (e) {
    session = null;
    if (e.status !== 401) $("#login-error").textContent = e.message;
  }
  if (session) enter(); else showLogin();
}

function showLogin() {
  $("#app").hidden = true;
  $("#login").hidden = false;
  $("#master-key").focus();
}

function enter() {
  $("#login").hidden = true;
  $("#app").hidden = false;
  // whose traffic this is: several gateways may run on one machine
  const config = session.config || "";
  const ledger = session.ledger_at ? "ledger " + session.ledger_at : "ledger off";
  $("#whose").textContent = `${config.split("/").pop()} · ${ledger}`;
  $("#whose").title = `config: ${config}\n${ledger}`;
  for (const m of [...(session.models || [])].sort()) modelColour(m);
  const sel = $("#pg-policy");
  sel.replaceChildren(...session.policies.map((p) => el("option", { value: p, selected: p === session.default_policy }, p)));
  route();
}

function logout() {
  sessionStorage.removeItem(TOKEN);
  session = null;
  showLogin();
}

$("#login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  sessionStorage.setItem(TOKEN, $("#master-key").value.trim());
  $("#master-key").value = "";
  try {
    session = (await api("/admin/session")).data;
    $("#login-error").textContent = "";
    enter();
  } catch (e) {
    sessionStorage.removeItem(TOKEN);
    $("#login-error").textContent = e.message;
  }
});
$("#logout").addEventListener("click", logout);

// ---- pages ----------------------------------------------------------------------------------
const PAGES = { overview: loadOverview, requests: loadRequests, keys: loadKeys, policies: loadPolicies, playground: () => {} };

// Each page has its own address (/ui/requests, ...; /ui is the overview); /ui#requests works too.
function route() {
  const name = location.pathname.replace(/^\/ui\/?/, "") || location.hash.slice(1);
  const page = PAGES[name] ? name : "overview";
  for (const s of document.querySelectorAll(".page")) s.hidden = s.id !== "page-" + page;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.page === page);
  banner(null);
  Promise.resolve(PAGES[page]()).catch(banner);
}
window.addEventListener("hashchange", () => session && route());
window.addEventListener("popstate", () => session && route());
for (const a of document.querySelectorAll("nav a")) {
  a.addEventListener("click", (ev) => {
    ev.preventDefault();
    history.pushState(null, "", a.getAttribute("href"));
    route();
  });
}

// Overview: tiles, traffic share by model over time, latency, model health.
async function loadOverview() {
  const [span, bucket] = $("#ov-window").value.split(",").map(Number);
  const since = Date.now() / 1000 - span;
  // the models' health and expert load need no ledger: shown first, whatever the ledger says
  const models = (await api("/admin/models")).data.data;
  modelTable(models);
  expertTable(models);
  const window_ = `since=${since.toFixed(0)}`;
  const [ov, byModel, byKey] = await Promise.all([
    api(`/admin/overview?${window_}&bucket_s=${bucket}`).then((r) => r.data),
    api(`/admin/spend?group_by=model&${window_}`).then((r) => r.data.data),
    api(`/admin/spend?group_by=key&${window_}`).then((r) => r.data.data),
  ]);
  const t = ov.totals;
  $("#ov-requests").textContent = t.requests;
  $("#ov-rps").textContent = (t.requests / span).toFixed(3);
  $("#ov-errors").textContent = t.requests ? fmt.pct(t.errors / t.requests) : "-";
  $("#ov-refused").textContent = t.refused ?? 0;
  $("#ov-p50").textContent = fmt.ms(t.p50_ms);
  $("#ov-p95").textContent = fmt.ms(t.p95_ms);
  $("#ov-spend").textContent = fmt.usd(t.cost_usd);
  $("#ov-baseline-model").textContent = t.baseline_model || "the strongest model";
  $("#ov-savings").textContent =
    t.baseline_cost_usd ? `${fmt.usd(t.savings_usd)} (${fmt.pct(t.savings_usd / t.baseline_cost_usd)} of ${fmt.usd(t.baseline_cost_usd)})` : fmt.usd(t.savings_usd);

  const labels = ov.buckets.map((b) => fmt.hm(b.t));
  const names = [...new Set(ov.buckets.flatMap((b) => Object.keys(b.by_model || {})))].sort();
  chart("ov-share", {
    type: "bar",
    data: {
      labels,
      datasets: names.map((m) => ({
        label: m, data: ov.buckets.map((b) => (b.by_model || {})[m] || 0), backgroundColor: modelColour(m),
      })),
    },
    options: { animation: false, maintainAspectRatio: false, scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true, title: { display: true, text: "requests" } } } },
  });
  chart("ov-latency", {
    type: "line",
    data: {
      labels,
      datasets: [
        { label: "p50 ms", data: ov.buckets.map((b) => b.p50_ms), borderColor: PALETTE[0], spanGaps: true },
        { label: "p95 ms", data: ov.buckets.map((b) => b.p95_ms), borderColor: PALETTE[1], spanGaps: true },
        { label: "errors", data: ov.buckets.map((b) => b.errors), borderColor: PALETTE[3], yAxisID: "e", type: "bar", backgroundColor: "#b3261e55" },
        { label: "refused", data: ov.buckets.map((b) => b.refused || 0), borderColor: PALETTE[5], yAxisID: "e", type: "bar", backgroundColor: "#8c6d1f55" },
      ],
    },
    // log scale: a 300 ms model and a 30 s one both stay readable
    options: { animation: false, maintainAspectRatio: false, scales: { y: { type: "logarithmic", ticks: logTicks(), title: { display: true, text: "ms (log)" } }, e: { position: "right", beginAtZero: true, grid: { display: false } } } },
  });
  const spenders = [...new Set(ov.buckets.flatMap((b) => Object.keys(b.cost_by_model || {})))].sort();
  chart("ov-spend-time", {
    type: "bar",
    data: {
      labels,
      datasets: spenders.map((m) => ({
        label: m, data: ov.buckets.map((b) => (b.cost_by_model || {})[m] || 0), backgroundColor: modelColour(m),
      })),
    },
    options: { animation: false, maintainAspectRatio: false, scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true, title: { display: true, text: "USD" } } } },
  });
  spendTable("#ov-spend-model", byModel);
  spendTable("#ov-spend-key", byKey);
}

function modelTable(models) {
  $("#ov-models tbody").replaceChildren(
    ...models.map((m) =>
      el("tr", { dataset: { model: m.name } },
        el("td", {}, m.name, m.kind === "chat" ? "" : ` (${m.kind})`),
        el("td", { title: m.unavailable_reason || "" }, m.available ? "yes" : "no"),
        el("td", { class: "breaker-" + (m.breaker || "closed") }, m.breaker || "-"),
        el("td", { class: "num" }, fmt.ms(m.latency_ewma_ms)),
        el("td", { class: "num" }, fmt.ms(m.latency_p95_ms)),
        el("td", { class: "num" }, m.samples),
        el("td", { class: "num" }, `${m.input_price_per_1m} / ${m.output_price_per_1m}`),
        el("td", { title: "where the irt policy takes this model's quality from" }, m.quality_source || "-"),
      )),
  );
}
function spendTable(sel, rows) {
  const total = rows.reduce((s, r) => s + r.cost_usd, 0);
  $(sel + " tbody").replaceChildren(
    ...rows.map((r) => el("tr", { dataset: { group: r.group } },
      el("td", {}, r.group), el("td", { class: "num" }, fmt.usd(r.cost_usd)),
      el("td", {}, total > 0 ? fmt.pct(r.cost_usd / total) : "-", bar(total > 0 ? r.cost_usd / total : 0)),
      el("td", { class: "num" }, r.requests))),
  );
  if (!rows.length) $(sel + " tbody").append(el("tr", {}, el("td", { colspan: 4 }, "No spend in this window.")));
  sizeBars($(sel));
}

// Local MoE models: each layer's selections per expert (this replica, since it started).
function expertTable(models) {
  const rows = [];
  for (const m of models.filter((x) => x.experts)) {
    for (const [layer, load] of Object.entries(m.experts)) {
      const total = load.selections.reduce((s, n) => s + n, 0);
      const most = Math.max(...load.selections, 1);
      rows.push(el("tr", { dataset: { model: m.name, layer } },
        el("td", {}, m.name), el("td", {}, layer), el("td", { class: "num" }, fmt.num(load.imbalance, 2)),
        el("td", { class: "experts" }, load.selections.map((n, i) =>
          el("span", { class: "expert", title: `expert ${i}: ${n} selections` }, `${i}: ${total ? fmt.pct(n / total) : "-"}`, bar(n / most))))));
    }
  }
  $("#ov-experts-box").hidden = !rows.length;
  $("#ov-experts tbody").replaceChildren(...rows);
  sizeBars($("#ov-experts"));
}
$("#ov-window").addEventListener("change", () => loadOverview().catch(banner));
$("#ov-refresh").addEventListener("click", () => loadOverview().catch(banner));

// Requests: the ledger, newest first; a row expands to its routing decision.
async function loadRequests() {
  const q = new URLSearchParams();
  for (const [k, v] of new FormData($("#rq-filter"))) if (String(v).trim()) q.set(k, String(v).trim());
  const rows = (await api("/admin/requests?" + q)).data.data;
  const body = $("#rq-table tbody");
  body.replaceChildren(
    ...rows.map((r) => {
      const p = r.predicted || {};
      const tr = el("tr", { class: "request", dataset: { id: r.id } },
        el("td", {}, fmt.time(r.created)),
        el("td", { class: "mono id", title: r.id }, r.id), // full id, clipped by CSS
        el("td", {}, r.key || "-"),
        el("td", {}, r.policy || "(named)"),
        el("td", {}, r.model || "-"),
        el("td", { class: "num" }, `${fmt.usd(p.cost_usd)} / ${fmt.usd(r.cost_usd)}`),
        el("td", { class: "num" }, `${fmt.ms(p.latency_ms)} / ${fmt.ms(r.latency_ms)}`),
        el("td", { class: "status-" + r.status, title: r.error || "" },
          r.status === "refused" ? `refused: ${String(r.error || "").split(":")[0]}` : r.status),
        el("td", { class: "num" }, r.rating === null || r.rating === undefined ? "-" : fmt.num(r.rating, 2)),
      );
      tr.addEventListener("click", () => toggleDetail(tr, r.id));
      return tr;
    }),
  );
  if (!rows.length) body.append(el("tr", {}, el("td", { colspan: 9 }, "No requests match.")));
}
$("#rq-filter").addEventListener("submit", (ev) => { ev.preventDefault(); loadRequests().catch(banner); });

async function toggleDetail(tr, id) {
  const next = tr.nextElementSibling;
  if (next && next.classList.contains("detail")) { next.remove(); return; }
  const cell = el("td", { colspan: 9 }, "loading...");
  tr.after(el("tr", { class: "detail", dataset: { id } }, cell));
  try {
    const r = (await api("/admin/requests/" + encodeURIComponent(id))).data;
    cell.replaceChildren(detailView(r));
  } catch (e) {
    cell.textContent = e.message;
  }
}

function detailView(r) {
  const d = r.decision;
  const parts = [
    el("p", {}, el("b", {}, "Request "), r.id, " · prompt: ", el("i", {}, r.prompt || "(not kept)")),
    el("p", { class: "hint" },
      `tokens ${r.prompt_tokens} in / ${r.completion_tokens} out · cost weight ${r.cost_weight ?? "-"}`,
      r.fallbacks && r.fallbacks.length ? ` · fell back from ${r.fallbacks.join(", ")}` : "",
      r.error ? ` · error: ${r.error}` : "", r.cache ? ` · cache: ${r.cache}` : ""),
  ];
  if (r.status === "refused") {
    parts.push(el("p", { class: "refusal" }, "Refused before any model was asked: ", r.error || "(no reason kept)"));
  } else if (!d) {
    parts.push(el("p", {}, "No routing decision: the caller named the model."));
  } else {
    parts.push(el("h3", {}, "Ranked candidates"), el("table", { class: "grid decision-ranked" },
      el("thead", {}, el("tr", {}, ["#", "model", "quality", "cost", "latency", "score"].map((h) => el("th", {}, h)))),
      el("tbody", {}, d.ranked.map((c, i) => el("tr", {},
        el("td", {}, i + 1), el("td", {}, c.model, c.model === r.model ? " ✓" : ""), el("td", { class: "num" }, fmt.num(c.quality)),
        el("td", { class: "num" }, fmt.usd(c.cost_usd)), el("td", { class: "num" }, fmt.ms(c.latency_ms)), el("td", { class: "num" }, fmt.num(c.score, 4))))),
    ));
    parts.push(el("h3", {}, "Excluded"), d.excluded.length
      ? el("table", { class: "grid decision-excluded" }, el("tbody", {}, d.excluded.map((x) => el("tr", {}, el("td", {}, x.model), el("td", {}, x.reason)))))
      : el("p", {}, "none"));
  }
  if (r.feedback && r.feedback.length) {
    parts.push(el("h3", {}, "Ratings"), el("ul", {}, r.feedback.map((f) =>
      el("li", {}, `${fmt.num(f.rating, 2)} by ${f.rater} (${f.source}) ${fmt.time(f.created)}`, f.comment ? ` — ${f.comment}` : ""))));
  }
  return el("div", {}, parts);
}

// Keys & budgets.
async function loadKeys() {
  const keys = (await api("/admin/keys")).data.data;
  $("#keys-table tbody").replaceChildren(
    ...keys.map((k) => {
      const share = k.budget_usd ? Math.min(1, (k.spent_usd || 0) / k.budget_usd) : 0;
      const budget = k.budget_usd === null
        ? "-"
        : el("span", {}, `${fmt.usd(k.spent_usd || 0)} / ${fmt.usd(k.budget_usd)} ${k.budget_window}`,
          el("span", { class: "bar" + (share >= 1 ? " over" : "") }, el("span", { style: null, dataset: { share } })));
      const revoke = k.revoked ? "" : el("button", { type: "button", class: "danger", dataset: { revoke: k.name }, onclick: () => revokeKey(k.name) }, "Revoke");
      return el("tr", { dataset: { key: k.name } },
        el("td", {}, k.name), el("td", { class: "mono" }, k.id), el("td", {}, fmt.time(k.created)), el("td", {}, budget),
        el("td", { class: "num" }, k.rpm ?? "-"), el("td", { class: "num" }, k.tpm ?? "-"),
        el("td", {}, k.models ? k.models.join(", ") : "all"), el("td", {}, k.team || "-"),
        el("td", { class: k.revoked ? "status-error" : "status-ok" }, k.revoked ? "revoked" : "active"), el("td", {}, revoke));
    }),
  );
  sizeBars($("#keys-table"));
  const active = keys.filter((k) => !k.revoked).map((k) => k.name);
  $("#key-update select[name=name]").replaceChildren(...active.map((n) => el("option", { value: n }, n)));
}

async function revokeKey(name) {
  if (!confirm(`Revoke key ${name}? Every replica refuses it from its next request on.`)) return;
  try { await api("/admin/keys/" + encodeURIComponent(name), { method: "DELETE" }); } catch (e) { banner(e); }
  await loadKeys().catch(banner);
}

function numberOrNull(v, int) {
  const s = String(v).trim();
  return s === "" ? undefined : s === "-" ? null : int ? parseInt(s, 10) : Number(s);
}

$("#key-create").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const f = ev.target;
  const body = { name: f.name.value.trim(), budget_window: f.budget_window.value };
  for (const [k, int] of [["budget_usd", false], ["rpm", true], ["tpm", true]]) {
    const v = numberOrNull(f[k].value, int);
    if (v !== undefined && v !== null) body[k] = v;
  }
  if (f.models.value.trim()) body.models = f.models.value.split(",").map((s) => s.trim()).filter(Boolean);
  if (f.team.value.trim()) body.team = f.team.value.trim();
  try {
    const { data } = await api("/admin/keys", { method: "POST", body });
    showError(f, null);
    $("#key-secret-value").textContent = data.key;
    $("#key-secret").hidden = false;
    f.reset();
    await loadKeys();
  } catch (e) { showError(f, e); }
});

$("#key-update").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const f = ev.target;
  const body = {};
  for (const [k, int] of [["budget_usd", false], ["rpm", true], ["tpm", true]]) {
    const v = numberOrNull(f[k].value, int);
    if (v !== undefined) body[k] = v;
  }
  if (f.budget_window.value) body.budget_window = f.budget_window.value;
  const models = f.models.value.trim();
  if (models) body.models = models === "-" ? null : models.split(",").map((s) => s.trim()).filter(Boolean);
  try {
    await api("/admin/keys/" + encodeURIComponent(f.name.value), { method: "PATCH", body });
    showError(f, null);
    await loadKeys();
  } catch (e) { showError(f, e); }
});

// Policies: the loaded ones and, for trained ones, the cost-quality frontier of their eval.
async function loadPolicies() {
  const pols = (await api("/admin/policies")).data.data;
  $("#pol-table tbody").replaceChildren(...pols.map((p) => el("tr", { dataset: { policy: p.name } },
    el("td", {}, p.name), el("td", {}, p.type), el("td", {}, p.default ? "default" : ""), el("td", {}, p.online ? "yes" : ""),
    el("td", { title: p.eval_missing || "" }, p.artifact || ""), el("td", { class: "num" }, p.eval ? fmt.num(p.eval.aiq, 4) : "-"))));
  const box = $("#pol-frontiers");
  box.replaceChildren();
  for (const p of pols.filter((x) => x.eval)) {
    const id = "frontier-" + p.name.replace(/[^A-Za-z0-9_-]/g, "_");
    box.append(el("figure", { dataset: { policy: p.name } }, el("figcaption", {}, `${p.name}: quality vs. cost per prompt (AIQ ${fmt.num(p.eval.aiq, 4)})`), el("canvas", { id })));
    const singles = Object.entries(p.eval.single_models || {});
    // log cost axis: models a hundred times apart in price; a free model sits at its left edge
    const costs = [...p.eval.frontier.map((f) => f.cost_usd), ...singles.map(([, s]) => s.cost_usd), p.eval.oracle ? p.eval.oracle.cost_usd : 0];
    const floor = Math.min(...costs.filter((c) => c > 0), 1) / 2;
    const x = (c) => Math.max(c, floor);
    const ink = "#000";
    chart(id, {
      type: "scatter",
      data: {
        datasets: [
          { label: p.name, data: p.eval.frontier.map((f) => ({ x: x(f.cost_usd), y: f.quality })), showLine: true, borderColor: ink, backgroundColor: ink, pointRadius: 2 },
          ...singles.map(([m, s]) => ({ label: s.cost_usd > 0 ? m : `${m} (free)`, data: [{ x: x(s.cost_usd), y: s.quality }], pointRadius: 7, pointStyle: "rectRot", backgroundColor: modelColour(m), borderColor: modelColour(m) })),
          ...(p.eval.oracle ? [{ label: "oracle", data: [{ x: x(p.eval.oracle.cost_usd), y: p.eval.oracle.quality }], pointRadius: 7, pointStyle: "star", borderColor: ink }] : []),
        ],
      },
      options: { animation: false, maintainAspectRatio: false, scales: { x: { type: "logarithmic", ticks: logTicks("$"), title: { display: true, text: "cost per prompt (USD, log)" } }, y: { title: { display: true, text: "quality" } } } },
    });
  }
}

// Playground: the decision (/v1/route), then answers side by side, then ratings (/v1/feedback).
function pgRequest(model) {
  const body = { model, messages: [{ role: "user", content: $("#pg-prompt").value }] };
  const w = $("#pg-cost-weight").value;
  if (w !== "") body.routing = { cost_weight: Number(w) };
  return body;
}

$("#pg-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const form = ev.target;
  const policy = $("#pg-policy").value;
  try {
    const d = (await api("/v1/route", { method: "POST", body: pgRequest("router:" + policy) })).data;
    showError(form, null);
    $("#pg-chosen").textContent = d.model ? `→ ${d.model} (policy ${d.policy})` : "→ no eligible model";
    $("#pg-routed-name").textContent = "router:" + policy;
    $("#pg-ranked tbody").replaceChildren(...d.candidates.map((c, i) => el("tr", { dataset: { model: c.model } },
      el("td", {}, i + 1), el("td", {}, c.model), el("td", { class: "num" }, fmt.num(c.predicted_quality)),
      el("td", { class: "num" }, fmt.usd(c.predicted_cost_usd)), el("td", { class: "num" }, fmt.ms(c.predicted_latency_ms)),
      el("td", { class: "num" }, fmt.num(c.score, 4)),
      el("td", {}, el("input", { type: "checkbox", class: "pg-compare", value: c.model, checked: i === 1 || i === 2 }))))); // the router's pick is the first column already
    $("#pg-excluded tbody").replaceChildren(...(d.excluded.length ? d.excluded.map((c) => el("tr", { dataset: { model: c.model } },
      el("td", {}, c.model), el("td", {}, c.excluded.map((x) => `${x.reason}: ${x.message}`).join("; ")))) : [el("tr", {}, el("td", { colspan: 2 }, "none"))]));
    $("#pg-decision").hidden = false;
    $("#pg-answers").replaceChildren();
  } catch (e) { showError(form, e); }
});

$("#pg-send").addEventListener("click", async () => {
  const targets = [];
  if ($("#pg-routed").checked) targets.push("router:" + $("#pg-policy").value);
  for (const c of document.querySelectorAll(".pg-compare:checked")) targets.push(c.value);
  const box = $("#pg-answers");
  if (!targets.length) { box.replaceChildren(el("p", { class: "error" }, "Select at least one model.")); return; }
  const max = Number($("#pg-max-tokens").value) || 128;
  box.replaceChildren(...targets.slice(0, 3).map((t) => {
    const card = el("div", { class: "answer", dataset: { target: t } }, el("b", {}, t), el("div", { class: "text" }, "waiting..."));
    sendOne(card, t, max);
    return card;
  }));
});

async function sendOne(card, target, maxTokens) {
  const text = card.querySelector(".text");
  try {
    const { data, headers } = await api("/v1/chat/completions", { method: "POST", body: { ...pgRequest(target), max_tokens: maxTokens } });
    const h = (k) => headers.get("x-moe-router-" + k);
    text.textContent = data.choices[0].message.content || "";
    card.dataset.id = data.id;
    card.append(
      el("div", { class: "meta" }, `${h("model")} · ${fmt.usd(Number(h("cost-usd")))} · ${fmt.ms(Number(h("latency-ms")))} · ${data.usage ? data.usage.total_tokens : "?"} tokens`),
      el("div", { class: "rate" }, "Rate: ", [1, 0.5, 0].map((v) => el("button", { type: "button", class: "secondary", dataset: { rating: v }, onclick: () => rate(card, data.id, v) }, RATINGS[v]))),
    );
  } catch (e) {
    text.textContent = e.message;
    card.classList.add("failed");
  }
}

async function rate(card, id, rating) {
  const old = card.querySelector(".rated");
  if (old) old.remove();
  try {
    await api("/v1/feedback", { method: "POST", body: { id, rating } });
    card.append(el("div", { class: "rated" }, `Rated ${RATINGS[rating]} (${rating} on a 0–1 scale): saved to the ledger`));
  } catch (e) {
    card.append(el("div", { class: "rated error" }, e.message));
  }
}

boot();
