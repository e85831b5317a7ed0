// The live view: one flow diagram per kind (heat, water, material), the exchange table with
// the current rates and the last complete window spelled out (Δ, Δ %, the expected loss, z),
// and the meters with their last reading, age and state.  A meter that is stale, stuck,
// suspect or has sent nothing colours the links and rows of the exchanges it measures.
//
// The diagrams are drawn as SVG here (not with a chart library's Sankey): a network may send
// water back where it came from, and a cycle is drawn as a return link below the diagram, so
// that each partner is one node.  Within a diagram link widths and node heights are on one
// scale (the kind's unit per hour); diagrams of different kinds are never compared.

import {
  api,
  el,
  exchangeTitle,
  fmtNumber,
  fmtZ,
  partnerName,
  prettyUnit,
  reportError,
  selectExchange,
  shortPartnerName,
  state,
  STATUS_COLOURS,
} from "./app.js";
import { ageText, localSpan, localText } from "./time.js";

export const CONDITION_COLOURS = {
  offline: "#5d4037",
  stale: "#7e57c2",
  stuck: "#ad1457",
  suspect: "#ef6c00",
  no_data: "#98a2ad",
};
const KINDS = [
  ["heat", "Heat"],
  ["water", "Water"],
  ["material", "Material"],
];
const SVG = "http://www.w3.org/2000/svg";
const METER_POLL_MS = 15000;

// ---------------------------------------------------------------------------------------------
// What colours an exchange: a meter that is stale, stuck or has sent nothing first (the
// window's figures are not to be trusted then); then an imbalance; then a suspect meter (the
// network reconciliation's verdict, often the consequence of an imbalance); then the status
// of the last window.

export function conditionOf(ex) {
  const c = ex.meter_state;
  return c && c !== "ok" && CONDITION_COLOURS[c] ? c : "ok";
}

export function colourOf(ex) {
  const c = conditionOf(ex);
  if (c !== "ok" && (c !== "suspect" || ex.status !== "imbalance")) return CONDITION_COLOURS[c];
  return STATUS_COLOURS[ex.status] || STATUS_COLOURS.no_data;
}

function statusOf(ex) {
  return STATUS_COLOURS[ex.status] ? ex.status : "no_data";
}

function flowOf(ex) {
  const r = ex.received_rate ?? ex.sent_rate;
  return typeof r === "number" && Number.isFinite(r) && r > 0 ? r : 0;
}

// ---------------------------------------------------------------------------------------------
// Flow diagrams

function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, String(v));
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

// Columns by longest path over the links that do not close a cycle; those that do are
// "return" links (drawn below the diagram).
function layers(nodeIds, links) {
  const outs = new Map(nodeIds.map((n) => [n, []]));
  for (const l of links) outs.get(l.src).push(l);
  const mark = new Map();
  const order = [];
  const visit = (n) => {
    mark.set(n, 1);
    for (const l of outs.get(n)) {
      const m = mark.get(l.dst);
      if (m === 1) l.back = true; // closes a cycle
      else if (!m) visit(l.dst);
    }
    mark.set(n, 2);
    order.push(n);
  };
  const ins = new Map(nodeIds.map((n) => [n, 0]));
  for (const l of links) ins.set(l.dst, ins.get(l.dst) + 1);
  // sources first, then the rest, each in a stable order
  for (const n of [...nodeIds].sort((a, b) => ins.get(a) - ins.get(b) || a.localeCompare(b))) {
    if (!mark.get(n)) visit(n);
  }
  const col = new Map(nodeIds.map((n) => [n, 0]));
  for (const n of order.reverse()) {
    for (const l of outs.get(n)) if (!l.back) col.set(l.dst, Math.max(col.get(l.dst), col.get(n) + 1));
  }
  // a node with only incoming links sits in the last column
  const last = Math.max(0, ...col.values());
  for (const n of nodeIds) if (!outs.get(n).some((l) => !l.back) && ins.get(n) > 0) col.set(n, last);
  return col;
}

function diagram(kind, exchanges, width) {
  const narrow = width < 640;
  const unit = prettyUnit(exchanges[0].rate_unit || `${exchanges[0].unit}/h`);
  const links = exchanges.map((ex) => ({
    ex,
    id: ex.id,
    src: ex.provider,
    dst: ex.receiver,
    value: flowOf(ex),
    back: false,
  }));
  const nodeIds = [...new Set(links.flatMap((l) => [l.src, l.dst]))];
  const col = layers(nodeIds, links);
  const ncol = Math.max(...col.values()) + 1;
  const columns = Array.from({ length: ncol }, () => []);
  for (const n of nodeIds) columns[col.get(n)].push(n);

  const inflow = new Map(nodeIds.map((n) => [n, 0]));
  const outflow = new Map(nodeIds.map((n) => [n, 0]));
  for (const l of links) {
    outflow.set(l.src, outflow.get(l.src) + l.value);
    inflow.set(l.dst, inflow.get(l.dst) + l.value);
  }
  const nodeValue = (n) => Math.max(inflow.get(n), outflow.get(n));
  const gap = 26;
  const maxCount = Math.max(...columns.map((c) => c.length));
  const target = Math.min(340, Math.max(56, 56 * maxCount));
  let scale = Infinity;
  for (const c of columns) {
    const sum = c.reduce((s, n) => s + nodeValue(n), 0);
    if (sum > 0) scale = Math.min(scale, (target - gap * (c.length - 1)) / sum);
  }
  if (!Number.isFinite(scale)) scale = 0;
  const MIN_W = 2;
  for (const l of links) l.w = Math.max(l.value * scale, MIN_W);
  const nodeH = new Map(
    nodeIds.map((n) => {
      const inW = links.filter((l) => l.dst === n).reduce((s, l) => s + l.w, 0);
      const outW = links.filter((l) => l.src === n).reduce((s, l) => s + l.w, 0);
      return [n, Math.max(inW, outW, 6)];
    }),
  );

  const labelW = narrow ? 104 : 190;
  const nodeW = 12;
  const left = labelW + 8;
  const right = labelW + 8;
  const top = 22;
  const innerW = Math.max(120, width - left - right);
  const xOf = (c) => left + (ncol === 1 ? innerW / 2 : (c * (innerW - nodeW)) / (ncol - 1));

  // Stack each column, in an order that follows the column before it (fewer crossings).
  const y = new Map();
  const heights = columns.map((c) => c.reduce((s, n) => s + nodeH.get(n), 0) + gap * (c.length - 1));
  const tallest = Math.max(...heights);
  columns.forEach((c, i) => {
    if (i > 0) {
      const centre = (n) => {
        const from = links.filter((l) => l.dst === n && !l.back && y.has(l.src));
        if (!from.length) return Infinity;
        return from.reduce((s, l) => s + y.get(l.src), 0) / from.length;
      };
      c.sort((a, b) => centre(a) - centre(b) || a.localeCompare(b));
    } else {
      c.sort((a, b) => nodeValue(b) - nodeValue(a) || a.localeCompare(b));
    }
    let at = top + (tallest - heights[i]) / 2;
    for (const n of c) {
      y.set(n, at);
      at += nodeH.get(n) + gap;
    }
  });

  // Where each link leaves and enters its nodes: stacked, in the order of the other end.
  const backs = links.filter((l) => l.back);
  const bottom = top + tallest;
  backs.forEach((l, i) => {
    l.lane = bottom + 18 + i * 10 + backs.slice(0, i).reduce((s, b) => s + b.w, 0) + l.w / 2;
  });
  const height = Math.ceil(
    (backs.length ? Math.max(...backs.map((l) => l.lane + l.w / 2)) : bottom) + 14,
  );
  for (const n of nodeIds) {
    const outs = links.filter((l) => l.src === n);
    outs.sort((a, b) => (a.back - b.back) || y.get(a.dst) - y.get(b.dst));
    let at = y.get(n);
    for (const l of outs) {
      l.y0 = at + l.w / 2;
      at += l.w;
    }
    const ins = links.filter((l) => l.dst === n);
    ins.sort((a, b) => (a.back - b.back) || y.get(a.src) - y.get(b.src));
    at = y.get(n);
    for (const l of ins) {
      l.y1 = at + l.w / 2;
      at += l.w;
    }
  }

  const root = svg("svg", {
    class: "flow",
    width,
    height,
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    "aria-label": `${kind} flows between partners, ${unit}`,
    "data-kind": kind,
  });
  const linkLayer = svg("g", { class: "links" });
  const nodeLayer = svg("g", { class: "nodes" });
  const labelLayer = svg("g", { class: "labels" });
  root.append(linkLayer, nodeLayer, labelLayer);

  for (const l of links) {
    const x0 = xOf(col.get(l.src)) + nodeW;
    const x1 = xOf(col.get(l.dst));
    let d;
    if (!l.back) {
      const mx = (x0 + x1) / 2;
      d = `M${x0},${l.y0} C${mx},${l.y0} ${mx},${l.y1} ${x1},${l.y1}`;
    } else {
      const r = 28 + l.w / 2;
      d =
        `M${x0},${l.y0} C${x0 + r},${l.y0} ${x0 + r},${l.lane} ${x0},${l.lane} ` +
        `L${x1},${l.lane} C${x1 - r},${l.lane} ${x1 - r},${l.y1} ${x1},${l.y1}`;
    }
    const ex = l.ex;
    const colour = colourOf(ex);
    const selected = state.selected === ex.id;
    const path = svg(
      "path",
      {
        class: `link${l.back ? " back" : ""}${selected ? " selected" : ""}`,
        d,
        stroke: colour,
        "stroke-width": l.w,
        "stroke-opacity": selected ? 0.85 : l.value > 0 ? 0.55 : 0.35,
        "stroke-dasharray": l.value > 0 ? null : "4 3",
        fill: "none",
        "data-exchange": ex.id,
        "data-status": statusOf(ex),
        "data-condition": conditionOf(ex),
        "data-value": l.value,
        "data-width": l.w.toFixed(2),
        tabindex: "0",
        onclick: () => selectExchange(ex.id),
        onkeydown: (e) => {
          if (e.key === "Enter" || e.key === " ") {
            e.preventDefault();
            selectExchange(ex.id);
          }
        },
      },
      svg("title", {}, linkTitle(ex)),
    );
    linkLayer.append(path);
  }

  for (const n of nodeIds) {
    const c = col.get(n);
    const x = xOf(c);
    const h = nodeH.get(n);
    const top0 = y.get(n);
    nodeLayer.append(
      svg(
        "rect",
        { class: "node", x, y: top0, width: nodeW, height: h, rx: 2, "data-partner": n },
        svg(
          "title",
          {},
          `${partnerName(n)}\nin ${fmtNumber(inflow.get(n))} ${unit} · out ${fmtNumber(outflow.get(n))} ${unit}`,
        ),
      ),
    );
    // Labels beside the node, away from its links: left of the first column, right of the
    // last; above the node in between (its links leave on both sides).
    let lx;
    let ly;
    let anchor;
    if (c === 0 && ncol > 1) {
      [lx, ly, anchor] = [x - 6, top0 + h / 2, "end"];
    } else if (c === ncol - 1) {
      [lx, ly, anchor] = [x + nodeW + 6, top0 + h / 2, "start"];
    } else {
      [lx, ly, anchor] = [x + nodeW / 2, top0 - 7, "middle"];
    }
    const name = shortPartnerName(n);
    const max = narrow ? 15 : 28;
    labelLayer.append(
      svg(
        "text",
        {
          class: "node-label",
          x: lx,
          y: ly,
          "text-anchor": anchor,
          "dominant-baseline": anchor === "middle" ? "auto" : "middle",
          "data-partner": n,
        },
        name.length > max ? `${name.slice(0, max - 1)}…` : name,
      ),
    );
  }
  return { root, scale, unit };
}

function linkTitle(ex) {
  const u = prettyUnit(ex.rate_unit || "");
  const lines = [
    exchangeTitle(ex.id),
    `${partnerName(ex.provider)} → ${partnerName(ex.receiver)}`,
    `now: sent ${fmtRate(ex.sent_rate, u)}, received ${fmtRate(ex.received_rate, u)}`,
    `last window ${ex.window_start ? localSpan(ex.window_start, ex.window_end) : "–"}: ` +
      `${(ex.status || "no_data").replace("_", " ")}` +
      (ex.z !== null && ex.z !== undefined ? `, z = ${fmtZ(ex.z)}` : ""),
  ];
  const c = conditionOf(ex);
  if (c !== "ok") lines.push(`a meter is ${c.replace("_", " ")}`);
  return lines.join("\n");
}

function fmtRate(v, unit) {
  return v === null || v === undefined ? "–" : `${fmtNumber(v)} ${unit || ""}`.trim();
}

function renderDiagrams() {
  const host = document.getElementById("flows");
  if (!host) return;
  const ids = state.order.filter((id) => state.exchanges[id]);
  const width = Math.max(300, host.clientWidth || 900);
  const sections = [];
  for (const [kind, title] of KINDS) {
    const exs = ids.map((id) => state.exchanges[id]).filter((ex) => (ex.kind || kindOf(ex.id)) === kind);
    if (!exs.length) continue;
    const { root, scale, unit } = diagram(kind, exs, width);
    const per = scale > 0 ? 10 / scale : null;
    sections.push(
      el(
        "section",
        { class: "flow-kind", dataset: { kind } },
        el(
          "h3",
          {},
          `${title} `,
          el("span", { class: "flow-unit" }, unit),
          per
            ? el(
                "span",
                { class: "flow-scale", title: "link widths and node heights are to this scale" },
                el("span", { class: "scale-bar" }),
                `= ${fmtNumber(per)} ${unit}`,
              )
            : null,
        ),
        root,
      ),
    );
  }
  host.replaceChildren(...sections);
}

function kindOf(id) {
  const meta = state.network && state.network.exchanges.find((x) => x.id === id);
  return meta ? meta.kind : null;
}

// ---------------------------------------------------------------------------------------------
// The exchange table

function pct(v) {
  if (v === null || v === undefined) return "–";
  const digits = Math.abs(v) >= 100 ? 0 : Math.abs(v) >= 0.1 || v === 0 ? 1 : 2;
  return `${v.toFixed(digits)} %`;
}

function renderTable() {
  const body = document.getElementById("exchange-rows");
  const rows = new Map([...body.children].map((tr) => [tr.dataset.exchange, tr]));
  const wanted = state.order.filter((id) => state.exchanges[id]);
  for (const [id, tr] of rows) if (!wanted.includes(id)) tr.remove();
  let prev = null;
  for (const id of wanted) {
    const ex = state.exchanges[id];
    const status = statusOf(ex);
    const condition = conditionOf(ex);
    const u = prettyUnit(ex.rate_unit || "");
    const q = prettyUnit(ex.unit || "");
    let tr = rows.get(id);
    if (!tr) {
      tr = el("tr", {
        tabindex: "0",
        dataset: { exchange: id },
        onclick: () => selectExchange(id),
        onkeydown: (e) => {
          if (e.key === "Enter" || e.key === " ") {
            e.preventDefault();
            selectExchange(id);
          }
        },
      });
    }
    tr.dataset.status = status;
    tr.dataset.condition = condition;
    tr.style.setProperty("--row-colour", colourOf(ex));
    tr.classList.toggle("selected", state.selected === id);
    const alerts = ex.open_alerts || 0;
    const lossPct = typeof ex.loss === "number" ? ex.loss * 100 : null;
    const nowTitle = ex.rates_to
      ? `from the readings of ${localSpan(ex.rates_from, ex.rates_to)}`
      : "no recent readings";
    tr.replaceChildren(
      el(
        "th",
        { scope: "row" },
        el("span", { class: "ex-name" }, exchangeTitle(id)),
        el(
          "span",
          { class: "route", title: `${partnerName(ex.provider)} → ${partnerName(ex.receiver)}` },
          `${shortPartnerName(ex.provider)} → ${shortPartnerName(ex.receiver)}`,
        ),
      ),
      el("td", { class: "num", dataset: { col: "sent-rate" }, title: nowTitle }, fmtRate(ex.sent_rate, u)),
      el(
        "td",
        { class: "num", dataset: { col: "received-rate" }, title: nowTitle },
        fmtRate(ex.received_rate, u),
      ),
      el(
        "td",
        { class: "nowrap window", dataset: { col: "window" } },
        ex.window_start ? localSpan(ex.window_start, ex.window_end) : "–",
      ),
      el(
        "td",
        { class: "num", dataset: { col: "delta" }, title: "S − R in the last window" },
        ex.delta === null || ex.delta === undefined ? "–" : `${fmtNumber(ex.delta)} ${q}`,
      ),
      el(
        "td",
        { class: "num", dataset: { col: "delta-pct" }, title: "(S − R) / S" },
        pct(ex.delta_pct),
      ),
      el(
        "td",
        {
          class: "num",
          dataset: { col: "expected-loss" },
          title: "what may be lost in transit: loss × S",
        },
        lossPct === null
          ? "–"
          : `${pct(lossPct)}${ex.expected_loss !== null && ex.expected_loss !== undefined ? ` · ${fmtNumber(ex.expected_loss)} ${q}` : ""}`,
      ),
      el(
        "td",
        { class: "num col-z", dataset: { col: "z" }, title: "d / σ, d = (1 − loss)·S − R" },
        fmtZ(ex.z),
      ),
      el(
        "td",
        { class: "nowrap", dataset: { col: "status" } },
        el("span", { class: `badge status-${status}` }, status.replace("_", " ")),
        condition !== "ok"
          ? el(
              "span",
              { class: `badge cond cond-${condition}`, title: "a meter of this exchange" },
              `meter ${condition.replace("_", " ")}`,
            )
          : null,
        alerts ? el("span", { class: "alert-pill", title: "open alerts" }, `⚠ ${alerts}`) : null,
      ),
    );
    if (prev ? prev.nextSibling !== tr : body.firstChild !== tr) {
      if (prev) prev.after(tr);
      else body.prepend(tr);
    }
    prev = tr;
  }
  // When the figures are from: the newest reading behind "now" (each row's own span is in
  // its tooltip).
  const exs = wanted.map((id) => state.exchanges[id]);
  const tos = exs.map((e) => e.rates_to).filter(Boolean).sort();
  const note = document.getElementById("rates-when");
  if (note) {
    note.textContent = tos.length
      ? `Now: flows from the meters' latest readings, up to ${localText(tos[tos.length - 1])}` +
        " (registers and rate meters over their last 10 minutes, weighbridges over their last" +
        " window)."
      : "Now: no recent readings.";
    note.dataset.to = tos[tos.length - 1] || "";
  }
}

// ---------------------------------------------------------------------------------------------
// Meters

let meterTimer = null;
let meterFilter = "all";

export async function loadMeters() {
  try {
    const data = await api("/meters");
    state.meters = data.items || [];
  } catch (err) {
    if (err && err.status === 403) return;
    reportError("Loading the meters", err);
    return;
  }
  renderMeters();
}

function renderMeters() {
  const body = document.getElementById("meter-rows");
  if (!body) return;
  const order = { retired: 0, no_data: 1, offline: 2, stale: 3, stuck: 4, suspect: 5, ok: 6 };
  const all = [...(state.meters || [])].sort(
    (a, b) => order[a.state] - order[b.state] || a.id.localeCompare(b.id),
  );
  const shown = meterFilter === "problems" ? all.filter((m) => m.state !== "ok") : all;
  body.replaceChildren(
    ...shown.map((m) =>
      el(
        "tr",
        { dataset: { meter: m.id, state: m.state } },
        el(
          "th",
          { scope: "row" },
          el("span", { class: "mono" }, m.id),
        ),
        el("td", {}, shortPartnerName(m.partner)),
        el("td", {}, m.kind),
        el(
          "td",
          { class: "nowrap", dataset: { col: "age" } },
          m.last_ts ? `${ageText(m.age_s)} ago` : "never",
          m.last_ts ? el("span", { class: "ts" }, localText(m.last_ts, { seconds: true })) : null,
        ),
        el(
          "td",
          { class: "num" },
          m.last_value === null || m.last_value === undefined
            ? "–"
            : `${fmtNumber(m.last_value)} ${prettyUnit(m.unit)}`,
        ),
        el("td", { class: "num" }, fmtRate(m.rate, prettyUnit(m.rate_unit))),
        el(
          "td",
          { class: "nowrap" },
          el("span", { class: `badge meter-${m.state}` }, m.state.replace("_", " ")),
        ),
      ),
    ),
  );
  const bad = all.filter((m) => m.state !== "ok" && m.state !== "retired").length;
  document.getElementById("meter-count").textContent = bad ? `${bad} not ok` : "all ok";
  document.getElementById("meter-count").dataset.bad = String(bad);
  window.symbiont.meters = Object.fromEntries(all.map((m) => [m.id, m.state]));
}

for (const chip of document.querySelectorAll("#meter-filter .chip")) {
  chip.addEventListener("click", () => {
    meterFilter = chip.dataset.filter;
    for (const c of document.querySelectorAll("#meter-filter .chip")) c.classList.toggle("active", c === chip);
    renderMeters();
  });
}

// ---------------------------------------------------------------------------------------------
// Entry points (called by app.js)

export function renderLive() {
  renderDiagrams();
  renderTable();
}

export function liveLoaded(live) {
  if (live && Array.isArray(live.meters)) {
    state.meters = live.meters;
    renderMeters();
  }
}

export function startLive() {
  if (meterTimer) clearInterval(meterTimer);
  meterTimer = setInterval(() => {
    if (state.token && !document.hidden) loadMeters();
  }, METER_POLL_MS);
}

export function stopLive() {
  if (meterTimer) clearInterval(meterTimer);
  meterTimer = null;
  state.meters = [];
  const body = document.getElementById("meter-rows");
  if (body) body.replaceChildren();
  const flows = document.getElementById("flows");
  if (flows) flows.replaceChildren();
}

let resizeTimer = null;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => {
    if (state.token) renderDiagrams();
  }, 150);
});
