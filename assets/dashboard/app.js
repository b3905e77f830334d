// The mesh dashboard: reads the agent's API (/v1/stream, /v1/history, /v1/events) and sends
// the same changes the CLI sends, with the session cookie of a login. No framework, no build
// step: the agent embeds this file. Data only ever reaches the page through textContent.
"use strict";

const MAX_EVENTS = 500;
const SVG = "http://www.w3.org/2000/svg";
const COLORS = ["#5fb3f9", "#9fe07f", "#f9a65f", "#d98ff0", "#f2e15c", "#6fe3d1", "#f07f8f", "#b3b3b3"];

const ui = {
  overview: null,
  history: [],
  events: [],
  cursors: null,
  loggedIn: false,
  logTimer: null,
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else if (k === "title") node.title = v;
    else node[k] = v;
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function human(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  const d = Math.floor(seconds / 86400), h = Math.floor(seconds % 86400 / 3600);
  const m = Math.floor(seconds % 3600 / 60), s = seconds % 60;
  if (d) return `${d}d${h}h`;
  if (h) return `${h}h${m}m`;
  if (m) return `${m}m${s}s`;
  return `${s}s`;
}

function clock(ms) {
  const t = new Date(ms);
  return t.toLocaleTimeString([], { hour12: false }) + "." + String(t.getMilliseconds()).padStart(3, "0");
}

function say(text, bad) {
  const m = $("message");
  m.textContent = text;
  m.dataset.kind = bad ? "error" : "ok";
  m.hidden = false;
  clearTimeout(say.timer);
  say.timer = setTimeout(() => { m.hidden = true; }, bad ? 12000 : 5000);
}

async function api(method, path, body) {
  const init = { method, headers: {}, credentials: "same-origin" };
  if (method !== "GET") {
    init.headers["Content-Type"] = "application/json";
    init.body = body === undefined ? "{}" : JSON.stringify(body);
  }
  const r = await fetch(path, init);
  let json = null;
  try { json = await r.json(); } catch (_) { /* not JSON */ }
  if (!r.ok) {
    const message = json && json.message ? json.message : `${r.status} ${r.statusText}`;
    const e = new Error(message);
    e.status = r.status;
    throw e;
  }
  return json;
}

// ----- rendering -------------------------------------------------------------------------

function stateClass(s) {
  if (["alive", "healthy", "running", "in-use", "direct", "placed"].includes(s)) return "good";
  if (["suspect", "starting", "backoff", "stopping", "allocated", "moving", "relayed", "pending"].includes(s)) return "warn";
  if (["dead", "failed", "unhealthy", "lost", "refused", "unplaced", "invalid"].includes(s)) return "bad";
  return "";
}

function badge(s) {
  return el("span", { class: "badge " + stateClass(s) }, s);
}

function renderOverview() {
  const o = ui.overview;
  if (!o) return;
  const st = o.status;
  $("summary").textContent = `${st.name} · ${st.peers.alive + 1} alive of ${st.peers.alive + st.peers.suspect + st.peers.dead + 1} · mesh ${st.mesh_id.slice(0, 12)}`;
  $("nodes-count").textContent = String(o.peers.length);
  fill($("nodes").tBodies[0], o.peers.map((p) => {
    const tags = Object.entries(p.tags || {}).map(([k, v]) => `${k}=${v}`).join(" ");
    return el("tr", { "data-node": p.name || p.short_id },
      el("td", {}, p.name || p.short_id, p.is_self ? el("span", { class: "muted" }, " (this)") : null),
      el("td", { class: "state" }, badge(p.state)),
      el("td", {}, p.is_self ? "-" : badge(p.link)),
      el("td", { class: "num" }, p.rtt_ms === null || p.rtt_ms === undefined ? "-" : p.rtt_ms.toFixed(1) + " ms"),
      el("td", {}, p.profile ? `${p.profile} (${p.score})` : "-"),
      el("td", {}, p.os ? `${p.os}/${p.arch}` : "-"),
      el("td", { class: "tags" }, tags || "-"),
      el("td", {}, p.version || "-"));
  }));
  $("services-count").textContent = String(new Set(o.services.map((s) => s.name)).size);
  fill($("services").tBodies[0], o.services.map((s) => {
    const actions = el("td", { class: "actions" });
    for (const a of ["start", "stop", "restart"]) {
      const b = el("button", { type: "button", "data-action": a, "data-service": s.name, disabled: !ui.loggedIn,
        title: ui.loggedIn ? `${a} ${s.name}` : "log in with the API token to change services" }, a);
      b.addEventListener("click", () => act(s.name, a));
      actions.append(b);
    }
    const link = el("a", { href: "#service/" + encodeURIComponent(s.name) }, s.name);
    return el("tr", { "data-service": s.name, "data-node": s.node },
      el("td", {}, link),
      el("td", {}, s.copies || "-"),
      el("td", {}, s.node),
      el("td", { class: "state" }, badge(s.state)),
      el("td", { class: "health" }, badge(s.health)),
      el("td", {}, s.ports.length ? s.ports.join(",") : "-"),
      el("td", { class: "num restarts" }, s.restarts),
      el("td", { class: "num" }, human(s.uptime_s)),
      el("td", { class: "flag" }, s.anomaly ? el("span", { class: "badge bad", title: s.anomaly }, "anomaly") : "-"),
      actions);
  }));
  $("ports-count").textContent = String(o.ports.length);
  fill($("ports").tBodies[0], o.ports.map((p) => el("tr", {},
    el("td", {}, p.node), el("td", { class: "num" }, p.port), el("td", {}, p.proto),
    el("td", {}, p.service), el("td", {}, badge(p.state)))));
  renderFilters();
  renderService();
}

function renderFilters() {
  const o = ui.overview;
  const names = (sel, values) => {
    const keep = sel.value;
    const want = ["", ...[...new Set(values)].sort()];
    const have = [...sel.options].map((x) => x.value);
    if (want.join("\n") !== have.join("\n")) {
      sel.replaceChildren(...want.map((v) => el("option", { value: v }, v || "all")));
      sel.value = want.includes(keep) ? keep : "";
    }
  };
  names($("filter-node"), o.peers.map((p) => p.name || p.short_id));
  names($("filter-service"), [...o.services.map((s) => s.name), ...ui.events.map((e) => e.service)]);
}

function renderEvents() {
  const node = $("filter-node").value, service = $("filter-service").value;
  const shown = ui.events.filter((e) => (!node || e.node === node) && (!service || e.service === service));
  fill($("events").tBodies[0], shown.slice(-200).reverse().map((e) => el("tr", { "data-kind": e.kind, "data-service": e.service },
    el("td", { class: "num" }, clock(e.at_ms)), el("td", {}, e.node), el("td", {}, e.service),
    el("td", {}, badge(e.kind)), el("td", { class: "reason" }, e.reason))));
}

// ----- charts ----------------------------------------------------------------------------

// A line chart of `series` (name → [[t_ms, value]]), in a box of fixed proportions.
function chart(container, series, format) {
  const W = 480, H = 180, L = 46, B = 20, T = 8, R = 8;
  const names = Object.keys(series).filter((n) => series[n].length);
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("role", "img");
  if (!names.length) {
    container.replaceChildren(el("p", { class: "muted" }, "no samples yet (one every sampler interval)"));
    return;
  }
  let t0 = Infinity, t1 = -Infinity, v1 = 0;
  for (const n of names) for (const [t, v] of series[n]) { t0 = Math.min(t0, t); t1 = Math.max(t1, t); v1 = Math.max(v1, v); }
  if (t1 <= t0) t1 = t0 + 1;
  v1 = v1 > 0 ? v1 * 1.1 : 1;
  const x = (t) => L + (W - L - R) * (t - t0) / (t1 - t0);
  const y = (v) => H - B - (H - B - T) * v / v1;
  const line = (x1, y1, x2, y2, cls) => {
    const l = document.createElementNS(SVG, "line");
    Object.entries({ x1, y1, x2, y2 }).forEach(([k, v]) => l.setAttribute(k, v));
    l.setAttribute("class", cls);
    svg.append(l);
  };
  const text = (tx, ty, s, anchor) => {
    const t = document.createElementNS(SVG, "text");
    t.setAttribute("x", tx); t.setAttribute("y", ty); t.setAttribute("text-anchor", anchor || "end");
    t.setAttribute("class", "axis");
    t.textContent = s;
    svg.append(t);
  };
  for (const f of [0, 0.5, 1]) {
    line(L, y(v1 * f / 1.1), W - R, y(v1 * f / 1.1), "grid");
    text(L - 4, y(v1 * f / 1.1) + 4, format(v1 * f / 1.1));
  }
  text(L, H - 4, clock(t0).slice(0, 5), "start");
  text(W - R, H - 4, clock(t1).slice(0, 8), "end");
  const legend = el("div", { class: "legend" });
  names.forEach((n, i) => {
    const color = COLORS[i % COLORS.length];
    const p = document.createElementNS(SVG, "polyline");
    p.setAttribute("points", series[n].map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(" "));
    p.setAttribute("fill", "none");
    p.setAttribute("stroke", color);
    p.setAttribute("stroke-width", "1.6");
    svg.append(p);
    const last = series[n][series[n].length - 1][1];
    const key = el("span", { class: "key" }, `${n} ${format(last)}`);
    key.style.borderColor = color;
    legend.append(key);
  });
  container.replaceChildren(svg, legend);
}

function seriesOf(field, only, scale) {
  const out = {};
  for (const s of ui.history) {
    for (const [name, v] of Object.entries(s[field] || {})) {
      if (only && name !== only) continue;
      (out[name] = out[name] || []).push([s.at_ms, v * scale]);
    }
  }
  return out;
}

function renderCharts() {
  const mib = 1 / (1024 * 1024);
  if (!$("view-overview").hidden) {
    chart($("chart-rtt"), seriesOf("rtt_ms", null, 1), (v) => v.toFixed(1));
    chart($("chart-memory"), seriesOf("memory", null, mib), (v) => v.toFixed(0));
    chart($("chart-cpu"), seriesOf("cpu", null, 100), (v) => v.toFixed(0));
  }
  const name = currentService();
  if (name) {
    chart($("chart-service-memory"), seriesOf("memory", name, mib), (v) => v.toFixed(1));
    chart($("chart-service-cpu"), seriesOf("cpu", name, 100), (v) => v.toFixed(1));
  }
}

// ----- a service's page ------------------------------------------------------------------

function currentService() {
  const m = location.hash.match(/^#service\/(.+)$/);
  return m ? decodeURIComponent(m[1]) : null;
}

function renderService() {
  const name = currentService();
  $("view-overview").hidden = !!name;
  $("view-service").hidden = !name;
  if (!name || !ui.overview) return;
  if (renderService.shown !== name) {
    // A service's page shows its own events first.
    renderService.shown = name;
    const sel = $("filter-service");
    if ([...sel.options].some((o) => o.value === name)) { sel.value = name; renderEvents(); }
  }
  const copies = ui.overview.services.filter((s) => s.name === name);
  $("service-title").textContent = name;
  const detail = $("service-detail");
  if (!copies.length) {
    detail.replaceChildren(el("p", { class: "muted" }, "no such service in the mesh"));
    return;
  }
  detail.replaceChildren(...copies.map((s) => el("dl", { class: "facts", "data-node": s.node },
    el("dt", {}, "node"), el("dd", {}, s.node),
    el("dt", {}, "state"), el("dd", { class: "state" }, badge(s.state)),
    el("dt", {}, "health"), el("dd", {}, badge(s.health)),
    el("dt", {}, "copies"), el("dd", {}, `${s.copies || "-"} (${s.exclusive ? "exclusive" : "replicas " + s.replicas})`),
    el("dt", {}, "ports"), el("dd", {}, s.ports.join(",") || "-"),
    el("dt", {}, "restarts"), el("dd", { class: "restarts" }, s.restarts),
    el("dt", {}, "uptime"), el("dd", {}, human(s.uptime_s)),
    el("dt", {}, "command"), el("dd", { class: "code" }, s.command.join(" ")),
    el("dt", {}, "reason"), el("dd", {}, s.reason || "-"),
    el("dt", {}, "anomaly"), el("dd", {}, s.anomaly || "none"))));
  const actions = $("service-actions");
  actions.replaceChildren(...["start", "stop", "restart"].map((a) => {
    const b = el("button", { type: "button", "data-action": a, "data-service": name, disabled: !ui.loggedIn,
      title: ui.loggedIn ? "" : "log in with the API token to change services" }, a);
    b.addEventListener("click", () => act(name, a));
    return b;
  }));
  if (!ui.logTimer) { loadLog(); ui.logTimer = setTimeout(() => { ui.logTimer = null; }, 2000); }
}

async function loadLog() {
  const name = currentService();
  if (!name) return;
  try {
    const r = await api("GET", `/v1/services/${encodeURIComponent(name)}/logs?n=40`);
    $("log-node").textContent = `on ${r.node}, last ${r.lines.length} lines`;
    $("service-log").textContent = r.lines.join("\n") || "(empty)";
  } catch (e) {
    $("service-log").textContent = `cannot read the log: ${e.message}`;
  }
}

// ----- changes ---------------------------------------------------------------------------

async function act(service, action) {
  try {
    const r = await api("POST", `/v1/services/${encodeURIComponent(service)}/${action}`);
    say(r.changed === false ? `${service}: nothing to ${action}` : `${action}: ${service} on ${r.node}`);
  } catch (e) {
    say(`${action} ${service} refused: ${e.message}`, true);
    if (e.status === 401) setLoggedIn(false);
  }
}

function setLoggedIn(v) {
  ui.loggedIn = v;
  $("login").hidden = v;
  $("session").hidden = !v;
  renderOverview();
}

async function checkSession() {
  try { setLoggedIn((await api("GET", "/v1/session")).logged_in); } catch (_) { /* offline */ }
}

$("login").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const token = $("login-token").value.trim();
  try {
    await api("POST", "/v1/session", { token });
    $("login-token").value = "";
    setLoggedIn(true);
    say("logged in: buttons work for 12 hours");
  } catch (e) {
    say(`login refused: ${e.message}`, true);
  }
});

$("logout-button").addEventListener("click", async () => {
  try { await api("DELETE", "/v1/session"); } catch (_) { /* the cookie goes anyway */ }
  setLoggedIn(false);
});

// ----- live updates ----------------------------------------------------------------------

function setConn(state) {
  const c = $("conn");
  c.dataset.state = state;
  c.textContent = state;
}

async function loadHistory() {
  try { ui.history = (await api("GET", "/v1/history")).samples; renderCharts(); } catch (_) { /* retried on reconnect */ }
}

function connect() {
  const source = new EventSource("/v1/stream");
  source.addEventListener("open", () => { setConn("live"); loadHistory(); checkSession(); });
  source.addEventListener("error", () => setConn("reconnecting"));
  source.addEventListener("overview", (ev) => {
    ui.overview = JSON.parse(ev.data);
    setConn("live");
    renderOverview();
  });
  source.addEventListener("sample", (ev) => {
    ui.history.push(JSON.parse(ev.data));
    if (ui.history.length > 720) ui.history.shift();
    renderCharts();
  });
}

// The merged trail, followed with per-node cursors (the same route as `mesh events`).
async function followEvents() {
  let delay = 1000;
  for (;;) {
    try {
      const path = ui.cursors === null
        ? "/v1/events?limit=200"
        : `/v1/events?wait_ms=25000&cursors=${encodeURIComponent(ui.cursors)}`;
      const r = await api("GET", path);
      const cursors = Object.assign(ui.cursorMap || {}, r.cursors || {});
      ui.cursorMap = cursors;
      ui.cursors = Object.entries(cursors).map(([id, seq]) => `${id}:${seq}`).join(",");
      if (r.events.length) {
        ui.events.push(...r.events);
        ui.events.sort((a, b) => a.at_ms - b.at_ms);
        if (ui.events.length > MAX_EVENTS) ui.events.splice(0, ui.events.length - MAX_EVENTS);
        renderEvents();
        if (ui.overview) renderFilters();
      }
      delay = 1000;
    } catch (_) {
      await new Promise((done) => setTimeout(done, delay));
      delay = Math.min(delay * 2, 8000);
    }
  }
}

$("filter-node").addEventListener("change", renderEvents);
$("filter-service").addEventListener("change", renderEvents);
window.addEventListener("hashchange", () => {
  ui.logTimer = null;
  if (!currentService()) { renderService.shown = null; $("filter-service").value = ""; renderEvents(); }
  renderOverview();
  renderCharts();
});

connect();
checkSession();
followEvents();
