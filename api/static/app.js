// symbiont dashboard: sign in with a token, the network as a live Sankey, open alerts,
// per-exchange history and statements.  Plain ES module, no build step; ECharts is the
// global `echarts` from /static/vendor/echarts.min.js.  The live view's diagrams, table and
// meters are in live.js, the views in views.js; times are the network's (time.js). Alert work
// (history, incidents, silences, acknowledgement with a comment, alert marks) is in alerts.js;
// the charts' period in timerange.js.

import { alertWork } from "./alerts.js";
import { liveLoaded, loadMeters, renderLive, startLive, stopLive } from "./live.js";
import { axisTime, localDate, localText, setZone } from "./time.js";
import { chartRange } from "./timerange.js";

const API = "/api/v1";
const TOKEN_KEY = "symbiont.token";
export const STATUS_COLOURS = {
  ok: "#2f9e5b",
  imbalance: "#d64541",
  incomplete: "#e0a030",
  no_data: "#98a2ad",
};
const BACKOFF_MIN_MS = 1000;
const BACKOFF_MAX_MS = 30000;

// Rendered state, kept current for tests and for the console.
export const state = {
  token: null,
  whoami: null,
  network: null,
  exchanges: {}, // id -> live entry
  order: [], // exchange ids in network order
  alerts: new Map(), // id -> alert (open ones only)
  selected: null,
  stream: { connected: false, connects: 0, events: 0 },
};
window.symbiont = { exchanges: {}, alerts: [], stream: state.stream, ready: false };

const $ = (id) => document.getElementById(id);
let historyChart = null;
let streamAbort = null;
let generation = 0; // bumped on sign-out; stale async work checks it

// ---------------------------------------------------------------------------------------------
// HTTP

class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : JSON.stringify(detail));
    this.status = status;
  }
}

export async function api(path, { method = "GET", signal, raw = false, body } = {}) {
  const headers = { Authorization: `Bearer ${state.token}`, Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(API + path, {
    method,
    signal,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!resp.ok) {
    let detail = `${resp.status} ${resp.statusText}`;
    try {
      const body = await resp.json();
      if (body && body.detail !== undefined) detail = body.detail;
    } catch {
      /* not JSON */
    }
    if (resp.status === 401) {
      signOut("Your session is no longer valid; please sign in again.");
    }
    throw new ApiError(resp.status, detail);
  }
  return raw ? resp : resp.json();
}

function showError(message) {
  $("error-text").textContent = message;
  $("error").hidden = false;
}

export function reportError(context, err) {
  if (err && err.name === "AbortError") return;
  if (err instanceof ApiError && err.status === 401) return; // already back at sign-in
  console.error(context, err);
  showError(`${context}: ${err && err.message ? err.message : err}`);
}

// ---------------------------------------------------------------------------------------------
// Formatting

const numberFormat = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });
const preciseFormat = new Intl.NumberFormat(undefined, { maximumSignificantDigits: 3 });
export function fmtNumber(v) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  return Math.abs(v) >= 100 ? numberFormat.format(v) : preciseFormat.format(v);
}

export function fmtZ(v) {
  if (v === null || v === undefined || !Number.isFinite(v)) return "–";
  return (v > 0 ? "+" : v < 0 ? "−" : "") + Math.abs(v).toFixed(1);
}

// In the network's time zone with its offset: "2026-12-04 14:50 +01:00".
export function fmtTime(iso) {
  return localText(iso);
}

export function fmtDate(iso) {
  return localDate(iso);
}

export function prettyUnit(u) {
  return (u || "").replace(/m3/g, "m³");
}

export function partnerName(id) {
  const p = state.network && state.network.partners.find((x) => x.id === id);
  return p ? p.name : id;
}

// "Kalundborg Forsyning (water supply and …)" -> "Kalundborg Forsyning", for tight spots.
export function shortPartnerName(id) {
  const name = partnerName(id) || "";
  const short = name.replace(/\s*\(.*\)\s*$/, "") || name;
  return short.length > 30 ? `${short.slice(0, 28)}…` : short;
}

export function exchangeMeta(id) {
  return state.network ? state.network.exchanges.find((x) => x.id === id) : undefined;
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

// ---------------------------------------------------------------------------------------------
// Sign in / out

function showSignIn(message) {
  $("dashboard").hidden = true;
  $("session").hidden = true;
  $("signin").hidden = false;
  $("network-name").textContent = "";
  const err = $("signin-error");
  err.hidden = !message;
  err.textContent = message || "";
  $("token-input").focus();
}

function signOut(message) {
  generation += 1;
  state.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  if (streamAbort) streamAbort.abort();
  streamAbort = null;
  setStreamState("offline");
  state.whoami = null;
  state.network = null;
  state.exchanges = {};
  state.order = [];
  state.alerts.clear();
  state.selected = null;
  stopLive();
  $("exchange-rows").replaceChildren();
  $("alerts").replaceChildren();
  $("statement-rows").replaceChildren();
  $("error").hidden = true;
  if (historyChart) historyChart.clear();
  $("exchange-chart").hidden = true;
  $("detail-hint").hidden = false;
  $("detail-hint").textContent = "Select an exchange in the diagram or the table.";
  $("detail-title").textContent = "Exchange history";
  $("detail-summary").textContent = "";
  alertWork.signedOut();
  publish();
  window.symbiont.ready = false;
  document.dispatchEvent(new CustomEvent("symbiont:signed-out"));
  showSignIn(message);
}

async function signIn(token) {
  state.token = token;
  const gen = generation;
  let who;
  try {
    who = await api("/whoami");
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      // api() has already signed out; say why on the form.
      showSignIn("That token was not accepted.");
    } else if (gen === generation) {
      state.token = null;
      showSignIn(`Could not sign in: ${err.message}`);
    }
    return;
  }
  if (gen !== generation) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  state.whoami = who;
  $("signin").hidden = true;
  $("dashboard").hidden = false;
  $("session").hidden = false;
  $("whoami").replaceChildren(
    el("span", { class: `role role-${who.role}` }, who.role),
    who.partner ? el("span", { class: "partner" }, who.partner) : "",
  );
  $("whoami").dataset.role = who.role;
  $("whoami").dataset.partner = who.partner || "";
  ensureCharts();
  try {
    await loadNetwork();
    await loadLive();
    await loadAlerts();
  } catch (err) {
    reportError("Loading the dashboard", err);
  }
  if (gen !== generation) return;
  $("whoami").replaceChildren(
    el("span", { class: `role role-${who.role}` }, who.role),
    who.partner ? el("span", { class: "partner" }, partnerName(who.partner)) : "",
  );
  setupStatements().catch((err) => reportError("Loading statements", err));
  alertWork.signedIn(who, state.network);
  startLive();
  document.dispatchEvent(new CustomEvent("symbiont:signed-in", { detail: who }));
  window.symbiont.ready = true;
  runStream(gen);
}

// ---------------------------------------------------------------------------------------------
// Data loading

async function loadNetwork() {
  try {
    state.network = await api("/network");
  } catch (err) {
    if (!(err instanceof ApiError) || (err.status !== 403 && err.status !== 404)) throw err;
    state.network = null; // this role sees flows but not the topology; /live fills in
  }
  if (state.network) {
    setZone(state.network.timezone);
    $("network-name").textContent = state.network.name || state.network.id || "";
    state.order = state.network.exchanges.map((x) => x.id);
  }
}

async function loadLive() {
  const live = await api("/live");
  setZone(live.timezone);
  const seen = new Set();
  for (const entry of live.exchanges || []) {
    state.exchanges[entry.id] = entry;
    seen.add(entry.id);
    if (!state.order.includes(entry.id)) state.order.push(entry.id);
  }
  // Exchanges known from the network but absent from /live: no data yet.
  for (const id of state.order) {
    if (!seen.has(id) && !state.exchanges[id]) {
      const meta = exchangeMeta(id);
      state.exchanges[id] = {
        id,
        provider: meta ? meta.provider : null,
        receiver: meta ? meta.receiver : null,
        kind: meta ? meta.kind : null,
        unit: meta ? meta.unit : null,
        sent_rate: null,
        received_rate: null,
        rate_unit: meta ? `${meta.unit}/h` : null,
        status: "no_data",
        open_alerts: 0,
      };
    }
  }
  for (const alert of live.alerts || []) upsertAlert(alert, false);
  liveLoaded(live);
  renderExchanges();
  renderAlerts();
}

async function loadAlerts() {
  const page = await api("/alerts?status=firing&limit=100");
  for (const alert of page.items || []) upsertAlert(alert, false);
  renderAlerts();
}

// ---------------------------------------------------------------------------------------------
// Live stream: fetch() + a small SSE parser (EventSource cannot send Authorization).

function setStreamState(s) {
  const node = $("stream-state");
  node.dataset.state = s;
  node.textContent = { live: "live", connecting: "connecting…", offline: "offline" }[s] || s;
  state.stream.connected = s === "live";
}

async function runStream(gen) {
  let backoff = BACKOFF_MIN_MS;
  let first = true;
  while (gen === generation) {
    setStreamState("connecting");
    const abort = new AbortController();
    streamAbort = abort;
    const started = Date.now();
    try {
      const resp = await api("/live/stream", { signal: abort.signal, raw: true });
      setStreamState("live");
      state.stream.connects += 1;
      if (!first) {
        // Catch up on what happened while we were away.
        await Promise.all([loadLive(), loadAlerts(), loadMeters()]);
      }
      first = false;
      await readEvents(resp, gen, handleEvent);
      backoff = BACKOFF_MIN_MS; // a stream that ended cleanly (bounded lifetime): come back soon
    } catch (err) {
      if (gen !== generation || (err && err.name === "AbortError")) return;
      if (err instanceof ApiError && err.status === 401) return;
      console.warn("live stream:", err);
    }
    if (gen !== generation) return;
    setStreamState("offline");
    if (Date.now() - started > 10000) backoff = BACKOFF_MIN_MS;
    const wait = backoff * (0.75 + Math.random() * 0.5);
    backoff = Math.min(backoff * 2, BACKOFF_MAX_MS);
    await new Promise((r) => setTimeout(r, wait));
    first = false;
  }
}

async function readEvents(resp, gen, onEvent) {
  const reader = resp.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let event = "message";
  let data = [];
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done || gen !== generation) break;
      buffer += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buffer.search(/\r\n|\r|\n/)) >= 0) {
        const line = buffer.slice(0, nl);
        const sep = buffer[nl] === "\r" && buffer[nl + 1] === "\n" ? 2 : 1;
        if (buffer[nl] === "\r" && nl + 1 === buffer.length) break; // maybe half of \r\n
        buffer = buffer.slice(nl + sep);
        if (line === "") {
          if (data.length) onEvent(event, data.join("\n"));
          event = "message";
          data = [];
        } else if (line.startsWith(":")) {
          // comment / heartbeat
        } else {
          const colon = line.indexOf(":");
          const field = colon < 0 ? line : line.slice(0, colon);
          let val = colon < 0 ? "" : line.slice(colon + 1);
          if (val.startsWith(" ")) val = val.slice(1);
          if (field === "event") event = val;
          else if (field === "data") data.push(val);
        }
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

function handleEvent(event, data) {
  let payload;
  try {
    payload = JSON.parse(data);
  } catch {
    console.warn("live stream: not JSON", data);
    return;
  }
  state.stream.events += 1;
  if (event === "flow") {
    if (!payload || !payload.id) return;
    const prev = state.exchanges[payload.id] || {};
    state.exchanges[payload.id] = { ...prev, ...payload };
    if (!state.order.includes(payload.id)) state.order.push(payload.id);
    scheduleRender();
  } else if (event === "alert") {
    upsertAlert(payload, true);
    alertWork.alertEvent(payload);
  }
}

let renderPending = false;
function scheduleRender() {
  if (renderPending) return;
  renderPending = true;
  requestAnimationFrame(() => {
    renderPending = false;
    renderExchanges();
  });
}

// ---------------------------------------------------------------------------------------------
// Exchanges: Sankey + table

function ensureCharts() {
  if (!historyChart) {
    historyChart = echarts.init($("exchange-chart"), null, { renderer: "canvas" });
  }
}

window.addEventListener("resize", () => {
  if (historyChart) historyChart.resize();
});

export function escapeHtml(s) {
  return String(s).replace(
    /[&<>"']/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c],
  );
}

export function exchangeTitle(id) {
  // The API may name an exchange after its id ("water forsyning equinor"): show the id then.
  const meta = exchangeMeta(id);
  if (!meta || !meta.name || meta.name.trim().replace(/\s+/g, "-") === id) return id;
  return meta.name;
}

function renderExchanges() {
  renderLive();
  publish();
}

// ---------------------------------------------------------------------------------------------
// Alerts

function upsertAlert(alert, render) {
  if (!alert || alert.id === undefined) return;
  const known = state.alerts.get(alert.id); // live events do not say which silence mutes it
  if (known && alert.silenced_by === undefined) alert.silenced_by = known.silenced_by;
  if (alert.status === "firing") state.alerts.set(alert.id, alert);
  else state.alerts.delete(alert.id);
  if (render) renderAlerts();
}

function canAck() {
  return state.whoami && (state.whoami.role === "admin" || state.whoami.role === "operator");
}

function renderAlerts() {
  const list = $("alerts");
  const alerts = [...state.alerts.values()].sort(
    (a, b) =>
      (a.severity === "critical" ? 0 : 1) - (b.severity === "critical" ? 0 : 1) ||
      String(b.started_at).localeCompare(String(a.started_at)),
  );
  list.replaceChildren(
    ...alerts.map((a) => {
      const acked = Boolean(a.acknowledged_by);
      const subject =
        a.subject_kind === "exchange"
          ? el(
              "button",
              { type: "button", class: "link-button", onclick: () => selectExchange(a.subject) },
              a.subject,
            )
          : el("span", {}, a.subject);
      let action = null;
      if (acked) {
        action = el(
          "span",
          { class: "acked", title: fmtTime(a.acknowledged_at) },
          alertWork.ackText(a),
        );
      } else if (canAck()) {
        action = alertWork.ackAction(a, (alert) => upsertAlert(alert, true));
      }
      return el(
        "li",
        {
          class: `alert severity-${a.severity}${acked ? " is-acked" : ""}`,
          dataset: { alertId: String(a.id), rule: a.rule, subject: a.subject },
        },
        el(
          "div",
          { class: "alert-head" },
          el("span", { class: `sev sev-${a.severity}` }, a.severity),
          el("span", { class: "rule" }, a.rule.replace(/_/g, " ")),
          subject,
          alertWork.silencedBadge(a),
        ),
        el("p", { class: "summary" }, a.summary),
        el(
          "div",
          { class: "alert-foot" },
          el("span", { class: "since" }, `since ${fmtTime(a.started_at)}`),
          action,
        ),
      );
    }),
  );
  $("alert-count").textContent = String(alerts.length);
  $("alerts-empty").hidden = alerts.length > 0;
  publish();
}

// ---------------------------------------------------------------------------------------------
// Per exchange history

export async function selectExchange(id) {
  state.selected = id;
  renderExchanges();
  $("detail-title").textContent = exchangeTitle(id);
  if (state.whoami && state.whoami.role === "integration") {
    $("detail-hint").textContent = "The history of an exchange is not open to integration tokens.";
    return;
  }
  $("detail-hint").hidden = true;
  $("exchange-chart").hidden = false;
  $("exchange-detail").dataset.exchange = id;
  historyChart.resize();
  if (window.matchMedia("(max-width: 1100px)").matches) {
    $("exchange-detail").scrollIntoView({ behavior: "smooth", block: "start" });
  }
  await loadHistory();
}

async function loadHistory() {
  const id = state.selected;
  if (!id) return;
  const gen = generation;
  const { from, to } = chartRange.window();
  historyChart.showLoading({ text: "loading…", color: "#4b6584" });
  let data;
  let marks = [];
  try {
    [data, marks] = await Promise.all([
      api(
        `/exchanges/${encodeURIComponent(id)}/windows?from=${encodeURIComponent(from.toISOString())}` +
          `&to=${encodeURIComponent(to.toISOString())}`,
      ),
      alertWork.chartMarks(id, from, to).catch((err) => {
        console.warn("alert marks:", err);
        return [];
      }),
    ]);
  } catch (err) {
    historyChart.hideLoading();
    reportError(`Loading the history of ${id}`, err);
    return;
  }
  historyChart.hideLoading();
  if (gen !== generation || state.selected !== id) return;
  renderHistory(id, data, from, to, marks);
}

function renderHistory(id, data, from, to, marks = []) {
  const items = data.items || [];
  const unit = prettyUnit(data.unit || (exchangeMeta(id) || {}).unit || "");
  const t = (w) => new Date(w.start).getTime();
  const sent = [];
  const received = [];
  const expected = [];
  const lower = [];
  const band = [];
  const flagged = [];
  let skipped = 0;
  for (const w of items) {
    const x = t(w);
    // Windows without full data (incomplete, no data, the one in progress) hold partial
    // quantities: leave a gap rather than draw a false dip.
    if (w.status !== "ok" && w.status !== "imbalance") {
      skipped += 1;
      for (const series of [sent, received, expected, lower, band]) series.push([x, null]);
      continue;
    }
    sent.push([x, w.sent]);
    received.push([x, w.received]);
    const exp = w.sent === null || w.sent === undefined ? null : w.sent * (1 - (w.loss || 0));
    expected.push([x, exp]);
    if (exp !== null && w.sigma !== null && w.sigma !== undefined) {
      lower.push([x, exp - 2 * w.sigma]);
      band.push([x, 4 * w.sigma]);
    } else {
      lower.push([x, null]);
      band.push([x, null]);
    }
    if (w.status === "imbalance") flagged.push([x, w.received]);
  }
  const counts = {};
  for (const w of items) counts[w.status] = (counts[w.status] || 0) + 1;
  const meta = exchangeMeta(id);
  $("detail-summary").textContent =
    `${items.length} windows` +
    (meta ? ` of ${Math.round((meta.window_s || 3600) / 60)} min` : "") +
    `: ${Object.entries(counts)
      .map(([k, v]) => `${v} ${k.replace("_", " ")}`)
      .join(", ") || "none"}. ` +
    (skipped ? `Windows without full data are left as gaps. ` : "") +
    `Band: expected received = sent × (1 − loss) ± 2σ.`;
  const narrow = $("exchange-chart").clientWidth < 560;
  historyChart.setOption(
    {
      animation: false,
      grid: { left: 56, right: 16, top: narrow ? 72 : 48, bottom: 56 },
      legend: {
        top: 0,
        data: ["sent", "received", "expected received", "± 2σ", "imbalance", "alerts"],
        textStyle: { fontSize: narrow ? 10 : 12 },
      },
      tooltip: {
        trigger: "axis",
        valueFormatter: (v) => (v === null || v === undefined ? "–" : `${fmtNumber(v)} ${unit}`),
      },
      xAxis: {
        type: "time",
        min: from.getTime(),
        max: to.getTime(),
        axisLabel: { formatter: axisTime },
        axisPointer: { label: { formatter: (p) => localText(p.value) } },
      },
      yAxis: { type: "value", name: `${unit} per window`, scale: true, nameGap: 12 },
      dataZoom: [{ type: "inside" }, { type: "slider", height: 18, bottom: 8 }],
      series: [
        {
          name: "lower",
          type: "line",
          data: lower,
          stack: "band",
          symbol: "none",
          lineStyle: { opacity: 0 },
          tooltip: { show: false },
          silent: true,
        },
        {
          name: "± 2σ",
          type: "line",
          data: band,
          stack: "band",
          symbol: "none",
          lineStyle: { opacity: 0 },
          areaStyle: { color: "rgba(75, 101, 132, 0.18)" },
          itemStyle: { color: "rgba(75, 101, 132, 0.35)" },
          tooltip: { show: false },
          silent: true,
        },
        {
          name: "expected received",
          type: "line",
          data: expected,
          symbol: "none",
          lineStyle: { type: "dashed", width: 1, color: "#4b6584" },
          itemStyle: { color: "#4b6584" },
        },
        {
          name: "sent",
          type: "line",
          data: sent,
          symbol: "none",
          lineStyle: { width: 1.5, color: "#3867d6" },
          itemStyle: { color: "#3867d6" },
        },
        {
          name: "received",
          type: "line",
          data: received,
          symbol: "none",
          lineStyle: { width: 1.5, color: "#20bf6b" },
          itemStyle: { color: "#20bf6b" },
        },
        {
          name: "imbalance",
          type: "scatter",
          data: flagged,
          symbolSize: 6,
          itemStyle: { color: STATUS_COLOURS.imbalance },
        },
        alertWork.markSeries(marks, from, to),
      ],
    },
    { notMerge: true },
  );
}

chartRange.setup();
chartRange.onChange(() => loadHistory());

// ---------------------------------------------------------------------------------------------
// Statements

async function setupStatements() {
  const who = state.whoami;
  const card = $("statements-card");
  const picker = $("partner-picker");
  let partners = [];
  if (who.role === "partner" && who.partner) {
    partners = [who.partner];
    $("partner-picker-label").hidden = true;
  } else if ((who.role === "admin" || who.role === "operator") && state.network) {
    partners = state.network.partners.map((p) => p.id);
    picker.replaceChildren(
      ...state.network.partners.map((p) => el("option", { value: p.id }, p.name)),
    );
    $("partner-picker-label").hidden = false;
    picker.onchange = () => loadStatements(picker.value).catch((e) => reportError("Statements", e));
  }
  card.hidden = partners.length === 0;
  if (partners.length) await loadStatements(partners[0]);
}

async function loadStatements(partner) {
  const gen = generation;
  const data = await api(`/partners/${encodeURIComponent(partner)}/statements`);
  if (gen !== generation) return;
  const items = [...(data.items || [])].sort((a, b) =>
    String(b.month).localeCompare(String(a.month)),
  );
  $("statements").dataset.partner = partner;
  $("statement-rows").replaceChildren(
    ...items.map((s) =>
      el(
        "tr",
        { dataset: { month: s.month, status: s.status } },
        el("th", { scope: "row", class: "nowrap" }, s.month),
        el(
          "td",
          { class: "nowrap" },
          el("span", { class: `badge stmt-${s.status}` }, s.status),
          s.revision ? el("span", { class: "revision" }, ` rev. ${s.revision}`) : null,
          s.revision > 1 ? revisionList(partner, s.month) : null,
        ),
        el("td", { class: "nowrap", title: fmtTime(s.issued_at) }, fmtDate(s.issued_at)),
        el(
          "td",
          {},
          el(
            "div",
            { class: "downloads" },
            ...["json", "csv", "pdf"].map((fmt) =>
            el(
              "a",
              {
                href: `${API}/partners/${encodeURIComponent(partner)}/statements/${encodeURIComponent(s.month)}?format=${fmt}`,
                class: "download",
                dataset: { format: fmt },
                onclick: (e) => {
                  e.preventDefault();
                  download(partner, s.month, fmt, e.currentTarget);
                },
              },
                fmt.toUpperCase(),
              ),
            ),
          ),
        ),
      ),
    ),
  );
  $("statements-empty").hidden = items.length > 0;
}

// Every issued revision of a month, fetched when the list is opened: when each was issued,
// why it replaced the one before, and its own documents.
function revisionList(partner, month) {
  const list = el("ol", { class: "revision-list" });
  const box = el(
    "details",
    {
      class: "revisions",
      dataset: { month },
      ontoggle: () => {
        if (!box.open || list.childElementCount) return;
        loadRevisions(partner, month, list).catch((e) => reportError("Revisions", e));
      },
    },
    el("summary", {}, "all revisions"),
    list,
  );
  return box;
}

async function loadRevisions(partner, month, list) {
  const data = await api(
    `/partners/${encodeURIComponent(partner)}/statements/${encodeURIComponent(month)}/revisions`,
  );
  list.replaceChildren(
    ...(data.items || []).map((r) =>
      el(
        "li",
        { dataset: { revision: r.revision } },
        el("span", { class: "nowrap" }, `rev. ${r.revision} · ${fmtTime(r.issued_at)}`),
        r.document_number ? el("span", { class: "revision" }, ` · ${r.document_number}`) : null,
        r.reason ? el("div", { class: "revision-reason" }, r.reason) : null,
        el(
          "a",
          {
            href: `${API}/partners/${encodeURIComponent(partner)}/statements/${encodeURIComponent(month)}?format=pdf&revision=${r.revision}`,
            class: "download",
            dataset: { format: "pdf" },
            onclick: (e) => {
              e.preventDefault();
              download(partner, month, "pdf", e.currentTarget, r.revision);
            },
          },
          "PDF",
        ),
      ),
    ),
  );
}

async function download(partner, month, fmt, link, revision) {
  link.classList.add("busy");
  try {
    const which = revision ? `&revision=${revision}` : "";
    const resp = await api(
      `/partners/${encodeURIComponent(partner)}/statements/${encodeURIComponent(month)}?format=${fmt}${which}`,
      { raw: true },
    );
    const blob = await resp.blob();
    const disposition = resp.headers.get("Content-Disposition") || "";
    const m = /filename\*?=(?:UTF-8'')?"?([^";]+)"?/i.exec(disposition);
    const name = m ? decodeURIComponent(m[1]) : `statement-${partner}-${month}.${fmt}`;
    const url = URL.createObjectURL(blob);
    const a = el("a", { href: url, download: name, hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (err) {
    reportError(`Downloading the ${month} statement`, err);
  } finally {
    link.classList.remove("busy");
  }
}

// ---------------------------------------------------------------------------------------------
// State for tests

function publish() {
  const exchanges = {};
  for (const id of state.order) {
    const ex = state.exchanges[id];
    if (!ex) continue;
    exchanges[id] = {
      status: ex.status || "no_data",
      meter_state: ex.meter_state || "ok",
      sent_rate: ex.sent_rate ?? null,
      received_rate: ex.received_rate ?? null,
      rate_unit: ex.rate_unit ?? null,
      open_alerts: ex.open_alerts ?? 0,
    };
  }
  window.symbiont.exchanges = exchanges;
  window.symbiont.alerts = [...state.alerts.values()];
  window.symbiont.whoami = state.whoami;
  window.symbiont.selected = state.selected;
}

// ---------------------------------------------------------------------------------------------
// Boot

$("signin-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const token = $("token-input").value.trim();
  if (!token) return;
  $("token-input").value = "";
  $("signin-error").hidden = true;
  signIn(token);
});
$("sign-out").addEventListener("click", () => signOut());
alertWork.setup({
  api,
  el,
  fmtTime,
  reportError,
  selectExchange,
  reloadAlerts: () => loadAlerts().catch((err) => reportError("Loading alerts", err)),
});
$("error-close").addEventListener("click", () => {
  $("error").hidden = true;
});

const saved = sessionStorage.getItem(TOKEN_KEY);
if (saved) signIn(saved);
else showSignIn();
