// Alert work for operators: the alert history with its filters and each alert's details,
// incidents with their timeline, silences (made and expired by operators and admins, read by
// integrations, not shown to partners), acknowledgement with a comment, and the alerts marked
// on the exchange history chart. app.js hands in its helpers (setup) and tells this module
// when someone signs in or out and when an alert changes.

import { fromLocalInput, toLocalInput } from "./timerange.js";

const $ = (id) => document.getElementById(id);

const RULES = [
  "imbalance",
  "drift",
  "meter_suspect",
  "meter_stale",
  "meter_stuck",
  "counter_reset",
  "negative_flow",
  "meter_spike",
  "rejections",
  "rules_error",
  "statement_held",
];
const SEVERITY_COLOURS = { critical: "#c0392b", warning: "#d68910" };
const HISTORY_PAGE = 50;

let ctx = null; // app.js helpers: api, el, fmtTime, reportError, selectExchange, exchangeTitle
const work = {
  who: null,
  network: null,
  tab: "history",
  history: { items: [], next: null, params: null, selected: null },
  incidents: { items: [], detail: null },
  silences: [],
  chartAlerts: [],
};

// ---------------------------------------------------------------------------------------------
// Roles

const role = () => (work.who ? work.who.role : null);
const canAck = () => role() === "admin" || role() === "operator";
const canSilence = canAck;
const seesSilences = () => canSilence() || role() === "integration";

// ---------------------------------------------------------------------------------------------
// Small helpers

function el(...args) {
  return ctx.el(...args);
}

function ruleName(rule) {
  return String(rule || "").replace(/_/g, " ");
}

function fmtTime(iso) {
  return ctx.fmtTime(iso);
}

// A 422's list of problems as one readable line.
function problemText(err) {
  try {
    const detail = JSON.parse(err.message);
    if (Array.isArray(detail)) {
      return detail
        .map((d) => {
          const where = Array.isArray(d.loc) ? d.loc.filter((p) => p !== "body").join(" ") : "";
          return where ? `${where}: ${d.msg}` : d.msg;
        })
        .join("; ");
    }
  } catch {
    /* plain text */
  }
  return err.message;
}


function exchangeIds() {
  return new Set(work.network ? work.network.exchanges.map((e) => e.id) : []);
}

function subjectLabel(alert) {
  if (alert.subject_kind === "exchange") {
    return el(
      "button",
      { type: "button", class: "link-button", onclick: () => ctx.selectExchange(alert.subject) },
      alert.subject,
    );
  }
  return el("span", { class: "subject" }, alert.subject);
}

function publish() {
  window.symbiont.alertWork = {
    tab: work.tab,
    history: work.history.items.map((a) => a.id),
    historyQuery: work.history.params ? work.history.params.toString() : null,
    incidents: work.incidents.items.map((i) => i.id),
    incident: work.incidents.detail
      ? { id: work.incidents.detail.id, events: work.incidents.detail.timeline.length }
      : null,
    silences: work.silences.map((s) => ({ id: s.id, state: s.state })),
    chartAlerts: work.chartAlerts,
  };
}

// ---------------------------------------------------------------------------------------------
// Acknowledgement (used by the open alerts list in app.js and by the details here)

// The acknowledged line: who, and the comment when there is one.
export function ackText(alert) {
  const comment = alert.ack_comment ? ` — “${alert.ack_comment}”` : "";
  return `✓ acknowledged by ${alert.acknowledged_by}${comment}`;
}

// A silenced alert still fires: say that its deliveries are muted.
export function silencedBadge(alert) {
  if (!alert.silenced_by) return null;
  return el(
    "span",
    { class: "silenced-badge", title: `Deliveries muted by silence ${alert.silenced_by}` },
    "silenced",
  );
}

// "Acknowledge" opens a small form for an optional comment; confirming sends it.
export function ackAction(alert, onDone) {
  const box = el("div", { class: "ack-box" });
  const button = el(
    "button",
    { type: "button", class: "button small ack", onclick: () => open() },
    "Acknowledge",
  );
  box.append(button);
  function open() {
    const input = el("input", {
      type: "text",
      class: "ack-comment",
      maxlength: "2000",
      placeholder: "Comment (optional): what is being done",
      "aria-label": "Comment",
    });
    const error = el("span", { class: "form-error small", hidden: true });
    const form = el(
      "form",
      {
        class: "ack-form",
        onsubmit: async (e) => {
          e.preventDefault();
          const confirm = form.querySelector(".ack-confirm");
          confirm.disabled = true;
          confirm.textContent = "Acknowledging…";
          try {
            const comment = input.value.trim();
            const updated = await ctx.api(`/alerts/${encodeURIComponent(alert.id)}/ack`, {
              method: "POST",
              body: comment ? { comment } : {},
            });
            onDone(updated);
            alertEvent(updated);
          } catch (err) {
            confirm.disabled = false;
            confirm.textContent = "Acknowledge";
            error.textContent = problemText(err);
            error.hidden = false;
          }
        },
      },
      input,
      el("button", { type: "submit", class: "button small ack-confirm" }, "Acknowledge"),
      el(
        "button",
        { type: "button", class: "link-button ack-cancel", onclick: () => box.replaceChildren(button) },
        "Cancel",
      ),
      error,
    );
    box.replaceChildren(form);
    input.focus();
  }
  return box;
}

// ---------------------------------------------------------------------------------------------
// Alert history

function fillFilters() {
  const rule = $("history-rule");
  rule.replaceChildren(
    el("option", { value: "" }, "any rule"),
    ...RULES.map((r) => el("option", { value: r }, ruleName(r))),
  );
  const net = work.network;
  const subjects = $("subject-options");
  const options = [];
  if (net) {
    for (const e of net.exchanges) options.push(el("option", { value: e.id }, "exchange"));
    for (const m of net.meters) options.push(el("option", { value: m.id }, "meter"));
    for (const p of net.partners) options.push(el("option", { value: p.id }, "partner"));
  }
  subjects.replaceChildren(...options);
  const partner = $("history-partner");
  const partners = net ? net.partners : [];
  partner.replaceChildren(
    el("option", { value: "" }, "any partner"),
    ...partners.map((p) => el("option", { value: p.id }, p.name || p.id)),
  );
  // a partner's alerts are its own already
  $("history-partner-label").hidden = role() === "partner" || partners.length === 0;
  const silenceRule = $("silence-rule");
  silenceRule.replaceChildren(
    el("option", { value: "" }, "any rule"),
    ...RULES.map((r) => el("option", { value: r }, ruleName(r))),
  );
  const silencePartner = $("silence-partner");
  silencePartner.replaceChildren(
    el("option", { value: "" }, "any partner"),
    ...partners.map((p) => el("option", { value: p.id }, p.name || p.id)),
  );
}

function historyParams() {
  const params = new URLSearchParams();
  const value = (id) => $(id).value.trim();
  if (value("history-status")) params.set("status", value("history-status"));
  if (value("history-rule")) params.set("rule", value("history-rule"));
  if (value("history-severity")) params.set("severity", value("history-severity"));
  const subject = value("history-subject");
  if (subject) params.set(exchangeIds().has(subject) ? "exchange" : "subject", subject);
  if (value("history-partner") && !$("history-partner-label").hidden) {
    params.set("partner", value("history-partner"));
  }
  const since = fromLocalInput(value("history-since"));
  const until = fromLocalInput(value("history-until"));
  if (since) params.set("since", since.toISOString());
  if (until) params.set("until", until.toISOString());
  params.set("limit", value("history-limit") || String(HISTORY_PAGE));
  return params;
}

async function loadHistory(more = false) {
  const h = work.history;
  if (!more) h.params = historyParams();
  const params = new URLSearchParams(h.params);
  if (more && h.next) params.set("cursor", h.next);
  $("history-error").hidden = true;
  let page;
  try {
    page = await ctx.api(`/alerts?${params}`);
  } catch (err) {
    $("history-error").textContent = problemText(err);
    $("history-error").hidden = false;
    return;
  }
  h.items = more ? [...h.items, ...(page.items || [])] : page.items || [];
  h.next = page.next_cursor || null;
  renderHistory();
}

function renderHistory() {
  const h = work.history;
  $("history-rows").replaceChildren(
    ...h.items.map((a) =>
      el(
        "tr",
        {
          tabindex: "0",
          class: h.selected === a.id ? "selected" : null,
          dataset: { alertId: String(a.id), status: a.status, rule: a.rule, subject: a.subject },
          onclick: () => showDetails(a.id),
          onkeydown: (e) => {
            if (e.key === "Enter") showDetails(a.id);
          },
        },
        el("td", { class: "nowrap" }, fmtTime(a.started_at)),
        el("td", {}, el("span", { class: `sev sev-${a.severity}` }, a.severity), " ", ruleName(a.rule)),
        el("td", { class: "subject" }, a.subject),
        el(
          "td",
          { class: "nowrap" },
          el("span", { class: `badge alert-${a.status}` }, a.status),
          silencedBadge(a),
        ),
        el("td", { class: "nowrap" }, a.resolved_at ? fmtTime(a.resolved_at) : "–"),
        el("td", { class: "ack-cell" }, a.acknowledged_by ? ackText(a).slice(2) : "–"),
      ),
    ),
  );
  $("history-empty").hidden = h.items.length > 0;
  $("history-more").hidden = !h.next;
  $("history-count").textContent = String(h.items.length) + (h.next ? "+" : "");
  publish();
}

function showDetails(id) {
  const alert = work.history.items.find((a) => a.id === id);
  work.history.selected = id;
  for (const tr of $("history-rows").children) {
    tr.classList.toggle("selected", tr.dataset.alertId === String(id));
  }
  const box = $("alert-details");
  if (!alert) {
    box.hidden = true;
    return;
  }
  box.hidden = false;
  box.dataset.alertId = String(alert.id);
  const rows = [
    ["Rule", ruleName(alert.rule)],
    ["Subject", `${alert.subject} (${alert.subject_kind})`],
    ["Severity", alert.severity],
    ["Status", alert.status],
    ["Started", fmtTime(alert.started_at)],
    ["Seen by the rules", fmtTime(alert.detected_at)],
    ["Resolved", alert.resolved_at ? fmtTime(alert.resolved_at) : "–"],
    [
      "Acknowledged",
      alert.acknowledged_by ? `${alert.acknowledged_by}, ${fmtTime(alert.acknowledged_at)}` : "–",
    ],
  ];
  if (alert.ack_comment) rows.push(["Comment", alert.ack_comment]);
  if (alert.silenced_by) rows.push(["Deliveries", `muted by silence ${alert.silenced_by}`]);
  for (const [k, v] of Object.entries(alert.details || {})) {
    let shown = v;
    if (typeof v === "number") shown = String(Math.round(v * 1000) / 1000);
    else if (typeof v !== "string") shown = JSON.stringify(v);
    rows.push([k, shown]);
  }
  const actions = el("div", { class: "detail-actions" });
  if (alert.status === "firing" && !alert.acknowledged_by && canAck()) {
    actions.append(ackAction(alert, () => {}));
  }
  if (alert.incident_id) {
    actions.append(
      el(
        "button",
        {
          type: "button",
          class: "button small secondary-dark open-incident",
          onclick: () => {
            showTab("incidents");
            openIncident(alert.incident_id);
          },
        },
        `Incident ${alert.incident_id}`,
      ),
    );
  }
  if (canSilence()) {
    actions.append(
      el(
        "button",
        {
          type: "button",
          class: "button small secondary-dark silence-like",
          onclick: () => prefillSilence(alert),
        },
        "Silence…",
      ),
    );
  }
  box.replaceChildren(
    el(
      "div",
      { class: "details-head" },
      el("h3", {}, `Alert ${alert.id}`),
      el(
        "button",
        { type: "button", class: "link-button", onclick: () => (box.hidden = true) },
        "close",
      ),
    ),
    el("p", { class: "summary" }, alert.summary),
    el(
      "dl",
      { class: "kv" },
      ...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]),
    ),
    actions,
  );
}

// ---------------------------------------------------------------------------------------------
// Incidents

async function loadIncidents() {
  const status = $("incident-status").value;
  const params = new URLSearchParams({ limit: "50" });
  if (status) params.set("status", status);
  const page = await ctx.api(`/incidents?${params}`);
  work.incidents.items = page.items || [];
  renderIncidents();
}

function renderIncidents() {
  const open = work.incidents.detail ? work.incidents.detail.id : null;
  $("incident-list").replaceChildren(
    ...work.incidents.items.map((i) =>
      el(
        "li",
        {
          class: `incident severity-${i.severity}${open === i.id ? " selected" : ""}`,
          dataset: { incidentId: String(i.id), status: i.status },
          tabindex: "0",
          onclick: () => openIncident(i.id),
          onkeydown: (e) => {
            if (e.key === "Enter") openIncident(i.id);
          },
        },
        el(
          "div",
          { class: "alert-head" },
          el("span", { class: `badge incident-${i.status}` }, i.status),
          el("span", { class: "rule" }, `#${i.id} ${i.subject}`),
        ),
        el("div", { class: "note" }, `${i.rules.map(ruleName).join(", ")} · since ${fmtTime(i.started_at)}`),
      ),
    ),
  );
  $("incidents-empty").hidden = work.incidents.items.length > 0;
  publish();
}

async function openIncident(id) {
  let detail;
  try {
    detail = await ctx.api(`/incidents/${encodeURIComponent(id)}`);
  } catch (err) {
    ctx.reportError(`Loading incident ${id}`, err);
    return;
  }
  work.incidents.detail = detail;
  renderIncidents();
  renderIncident();
}

// The incident's alerts as bars over its span, then every event in order.
function renderIncident() {
  const d = work.incidents.detail;
  const box = $("incident-detail");
  if (!d) {
    box.hidden = true;
    return;
  }
  box.hidden = false;
  box.dataset.incidentId = String(d.id);
  const start = new Date(d.started_at).getTime();
  const end = d.resolved_at ? new Date(d.resolved_at).getTime() : Date.now();
  const span = Math.max(end - start, 1);
  const bars = d.alerts.map((a) => {
    const s = new Date(a.started_at).getTime();
    const e = a.resolved_at ? new Date(a.resolved_at).getTime() : end;
    const left = ((s - start) / span) * 100;
    const width = Math.max(((e - s) / span) * 100, 0.8);
    return el(
      "div",
      { class: "bar-row", dataset: { alertId: String(a.id) } },
      el("span", { class: "bar-label" }, `${ruleName(a.rule)} · ${a.subject}`),
      el(
        "span",
        { class: "bar-track" },
        el("span", {
          class: `bar severity-${a.severity}${a.status === "firing" ? " firing" : ""}`,
          style: `left:${left.toFixed(2)}%;width:${Math.min(width, 100 - left).toFixed(2)}%`,
          title: `${fmtTime(a.started_at)} → ${a.resolved_at ? fmtTime(a.resolved_at) : "firing"}`,
        }),
      ),
    );
  });
  box.replaceChildren(
    el(
      "div",
      { class: "details-head" },
      el("h3", {}, `Incident ${d.id}: ${d.subject}`),
      el("span", { class: `badge incident-${d.status}` }, d.status),
    ),
    el("p", { class: "summary" }, d.summary),
    el(
      "p",
      { class: "note" },
      `${fmtTime(d.started_at)} → ${d.resolved_at ? fmtTime(d.resolved_at) : "open"}`,
    ),
    el("div", { class: "bars" }, ...bars),
    el(
      "ol",
      { id: "incident-timeline", class: "timeline" },
      ...d.timeline.map((e) =>
        el(
          "li",
          { class: `event-${e.event}`, dataset: { event: e.event, alertId: String(e.alert_id) } },
          el("time", { datetime: e.at }, fmtTime(e.at)),
          el("span", { class: `badge event-badge event-${e.event}` }, e.event),
          el("span", { class: "rule" }, ruleName(e.rule)),
          el("span", { class: "subject" }, e.subject),
          e.event === "acknowledged"
            ? el(
                "span",
                { class: "by" },
                `by ${e.by || "?"}${e.comment ? ` — “${e.comment}”` : ""}`,
              )
            : el("span", { class: "event-summary" }, e.summary),
        ),
      ),
    ),
  );
  publish();
}

// ---------------------------------------------------------------------------------------------
// Silences

function silenceState(s) {
  const now = Date.now();
  if (new Date(s.ends_at).getTime() <= now) return "expired";
  if (new Date(s.starts_at).getTime() > now) return "pending";
  return "active";
}

async function loadSilences() {
  if (!seesSilences()) return;
  const page = await ctx.api("/silences?limit=100");
  work.silences = page.items || [];
  renderSilences();
}

function renderSilences() {
  $("silence-rows").replaceChildren(
    ...work.silences.map((s) => {
      const state = silenceState(s);
      const expire =
        canSilence() && state !== "expired"
          ? el(
              "button",
              {
                type: "button",
                class: "button small danger expire",
                onclick: (e) => expireSilence(s.id, e.currentTarget),
              },
              "Expire",
            )
          : null;
      return el(
        "tr",
        { dataset: { silenceId: String(s.id), state } },
        el("td", {}, el("span", { class: `badge silence-${state}` }, state)),
        el(
          "td",
          {},
          ...s.matchers.map((m) => el("code", { class: "matcher" }, `${m.name}=${m.value}`)),
        ),
        el("td", { class: "nowrap" }, fmtTime(s.starts_at), el("br"), fmtTime(s.ends_at)),
        el(
          "td",
          {},
          el("div", { class: "comment" }, s.comment),
          el(
            "div",
            { class: "note" },
            `by ${s.created_by}` + (s.expired_by ? `, expired by ${s.expired_by}` : ""),
          ),
        ),
        el(
          "td",
          { class: "num" },
          state === "expired" ? "–" : String(s.firing_alerts.length),
          el("div", { class: "note" }, `${s.muted_deliveries} muted`),
        ),
        el("td", {}, expire),
      );
    }),
  );
  $("silences-empty").hidden = work.silences.length > 0;
  $("silence-form").hidden = !canSilence();
  publish();
}

function setEnds(ms) {
  const starts = fromLocalInput($("silence-starts").value) || new Date();
  $("silence-ends").value = toLocalInput(new Date(starts.getTime() + ms));
}

function resetSilenceForm() {
  const now = new Date();
  $("silence-rule").value = "";
  $("silence-subject").value = "";
  $("silence-partner").value = "";
  $("silence-starts").value = toLocalInput(now);
  setEnds(2 * 3600e3);
  $("silence-comment").value = "";
  $("silence-error").hidden = true;
}

function prefillSilence(alert) {
  showTab("silences");
  resetSilenceForm();
  $("silence-rule").value = alert.rule;
  $("silence-subject").value = alert.subject;
  $("silence-comment").focus();
}

async function createSilence(e) {
  e.preventDefault();
  const matchers = [];
  for (const [name, id] of [
    ["rule", "silence-rule"],
    ["subject", "silence-subject"],
    ["partner", "silence-partner"],
  ]) {
    const value = $(id).value.trim();
    if (value) matchers.push({ name, value });
  }
  const error = $("silence-error");
  const starts = fromLocalInput($("silence-starts").value);
  const ends = fromLocalInput($("silence-ends").value);
  if (!matchers.length) {
    error.textContent = "Choose at least one of rule, subject and partner.";
    error.hidden = false;
    return;
  }
  if (!ends) {
    error.textContent = "Choose when it ends.";
    error.hidden = false;
    return;
  }
  const body = {
    matchers,
    ends_at: ends.toISOString(),
    comment: $("silence-comment").value,
  };
  if (starts) body.starts_at = starts.toISOString();
  const button = $("silence-create");
  button.disabled = true;
  try {
    const made = await ctx.api("/silences", { method: "POST", body });
    work.silences = [made, ...work.silences.filter((s) => s.id !== made.id)];
    renderSilences();
    resetSilenceForm();
    refreshAfterSilence();
  } catch (err) {
    error.textContent = problemText(err);
    error.hidden = false;
  } finally {
    button.disabled = false;
  }
}

async function expireSilence(id, button) {
  button.disabled = true;
  try {
    const expired = await ctx.api(`/silences/${encodeURIComponent(id)}`, { method: "DELETE" });
    work.silences = work.silences.map((s) => (s.id === id ? expired : s));
    renderSilences();
    refreshAfterSilence();
  } catch (err) {
    button.disabled = false;
    ctx.reportError("Expiring the silence", err);
  }
}

// Which alerts a silence mutes shows on them: fetch them again.
function refreshAfterSilence() {
  if (work.history.params) loadHistory().catch((err) => ctx.reportError("Alert history", err));
  if (ctx.reloadAlerts) ctx.reloadAlerts();
}

// ---------------------------------------------------------------------------------------------
// Alert marks on the exchange history chart

// The alerts about an exchange (or its meters) that were firing at some time in [from, to].
export async function chartMarks(exchange, from, to) {
  if (role() === "integration") return [];
  const params = new URLSearchParams({ exchange, until: to.toISOString(), limit: "500" });
  const page = await ctx.api(`/alerts?${params}`);
  const items = (page.items || []).filter(
    (a) => (a.resolved_at ? new Date(a.resolved_at) : new Date()) >= from,
  );
  work.chartAlerts = items.map((a) => ({
    id: a.id,
    rule: a.rule,
    subject: a.subject,
    start: a.started_at,
    end: a.resolved_at,
  }));
  publish();
  return items;
}

// A series that draws each alert as a shaded span with a line where it started (solid) and
// where it ended (dashed), alerts that start or end at one instant sharing a line; toggled by
// the legend entry "alerts".
export function markSeries(alerts, from, to) {
  const lo = from.getTime();
  const hi = to.getTime();
  const clamp = (t) => Math.min(Math.max(t, lo), hi);
  const areas = [];
  const instants = new Map(); // "start|t" or "end|t" -> line
  const mark = (kind, t, alert, label) => {
    const colour = SEVERITY_COLOURS[alert.severity] || SEVERITY_COLOURS.warning;
    const key = `${kind}|${t}`;
    let line = instants.get(key);
    if (!line) {
      line = {
        name: "",
        xAxis: t,
        alertIds: [],
        labels: [],
        lineStyle: { color: colour, type: kind === "start" ? "solid" : "dashed", width: 1.5 },
      };
      instants.set(key, line);
    }
    if (alert.severity === "critical") line.lineStyle.color = colour;
    line.alertIds.push(alert.id);
    line.labels.push(label);
  };
  for (const a of alerts) {
    const colour = SEVERITY_COLOURS[a.severity] || SEVERITY_COLOURS.warning;
    const start = new Date(a.started_at).getTime();
    const end = a.resolved_at ? new Date(a.resolved_at).getTime() : hi;
    const label = `${ruleName(a.rule)}${a.subject_kind === "meter" ? ` (${a.subject})` : ""}`;
    areas.push([
      { name: label, xAxis: clamp(start), itemStyle: { color: `${colour}1f` } },
      { xAxis: clamp(end) },
    ]);
    if (start >= lo && start <= hi) mark("start", start, a, label);
    if (a.resolved_at && end >= lo && end <= hi) mark("end", end, a, label);
  }
  const lines = [...instants.entries()].map(([key, line]) => {
    const ended = key.startsWith("end|");
    const what = line.labels.join(", ");
    return {
      name: `${what} ${ended ? "resolved" : "started"}`,
      xAxis: line.xAxis,
      alertIds: line.alertIds,
      lineStyle: line.lineStyle,
      label: { formatter: ended ? `${what} resolved` : what },
    };
  });
  return {
    id: "alert-marks",
    name: "alerts",
    type: "line",
    data: [],
    symbol: "none",
    itemStyle: { color: SEVERITY_COLOURS.critical },
    lineStyle: { opacity: 0 },
    markArea: { silent: true, label: { show: false }, data: areas },
    markLine: {
      silent: false,
      symbol: "none",
      label: { show: true, position: "insideEndTop", fontSize: 10, color: "#5b6671" },
      tooltip: { formatter: (p) => p.name },
      data: lines,
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Tabs and lifecycle

function showTab(tab) {
  if (tab === "silences" && !seesSilences()) tab = "history";
  work.tab = tab;
  for (const b of document.querySelectorAll("#alert-work .tabs [data-tab]")) {
    const active = b.dataset.tab === tab;
    b.classList.toggle("active", active);
    b.setAttribute("aria-selected", active ? "true" : "false");
  }
  for (const name of ["history", "incidents", "silences"]) {
    $(`tab-${name}`).hidden = name !== tab;
  }
  if (tab === "incidents") loadIncidents().catch((err) => ctx.reportError("Incidents", err));
  if (tab === "silences") loadSilences().catch((err) => ctx.reportError("Silences", err));
  publish();
}

// Helpers from app.js: { api, el, fmtTime, reportError, selectExchange, reloadAlerts }.
export function setup(helpers) {
  ctx = helpers;
  for (const b of document.querySelectorAll("#alert-work .tabs [data-tab]")) {
    b.addEventListener("click", () => showTab(b.dataset.tab));
  }
  $("history-filter").addEventListener("submit", (e) => {
    e.preventDefault();
    loadHistory();
  });
  $("history-filter").addEventListener("reset", () => setTimeout(() => loadHistory(), 0));
  $("history-more").addEventListener("click", () => loadHistory(true));
  $("incident-status").addEventListener("change", () =>
    loadIncidents().catch((err) => ctx.reportError("Incidents", err)),
  );
  $("silence-form").addEventListener("submit", createSilence);
  for (const chip of document.querySelectorAll("#silence-form [data-duration]")) {
    chip.addEventListener("click", () => setEnds(Number(chip.dataset.duration) * 1000));
  }
  publish();
}

export function signedIn(who, network) {
  work.who = who;
  work.network = network;
  $("alert-work").hidden = false;
  $("silences-tab").hidden = !seesSilences();
  fillFilters();
  resetSilenceForm();
  showTab("history");
  loadHistory().catch((err) => ctx.reportError("Alert history", err));
}

export function signedOut() {
  work.who = null;
  work.network = null;
  work.history = { items: [], next: null, params: null, selected: null };
  work.incidents = { items: [], detail: null };
  work.silences = [];
  work.chartAlerts = [];
  $("alert-work").hidden = true;
  $("history-rows").replaceChildren();
  $("incident-list").replaceChildren();
  $("incident-detail").hidden = true;
  $("alert-details").hidden = true;
  $("silence-rows").replaceChildren();
  publish();
}

let incidentReload = null;

// An alert changed (live stream, or an acknowledgement here): show it where it is shown.
export function alertEvent(alert) {
  if (!work.who || !alert || alert.id === undefined) return;
  const h = work.history;
  const i = h.items.findIndex((a) => a.id === alert.id);
  if (i >= 0) {
    const previous = h.items[i];
    h.items[i] = {
      ...previous,
      ...alert,
      silenced_by: alert.silenced_by === undefined ? previous.silenced_by : alert.silenced_by,
    };
    renderHistory();
    if (h.selected === alert.id) showDetails(alert.id);
  }
  const d = work.incidents.detail;
  if (d && (d.alert_ids.includes(alert.id) || alert.incident_id === d.id)) {
    clearTimeout(incidentReload);
    incidentReload = setTimeout(() => openIncident(d.id), 300);
  }
}

export const alertWork = {
  setup,
  signedIn,
  signedOut,
  alertEvent,
  ackAction,
  ackText,
  silencedBadge,
  chartMarks,
  markSeries,
};
