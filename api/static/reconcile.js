// The network reconciliation view: per balance (a connected part of the network with a
// balance in it) and window, the global test, and per meter the measured and reconciled
// quantities, the adjustment, its z and whether the meter is named suspect.  The numbers are
// the API's (GET /reconciliations), shown rounded; each cell keeps the exact value in a
// data attribute.

import { api, el, fmtNumber, fmtZ, prettyUnit, reportError, shortPartnerName, state } from "./app.js";
import { localSpan } from "./time.js";

const $ = (id) => document.getElementById(id);
const SPAN_MS = 2 * 86400e3;
let items = []; // reconciliations of the last two days, oldest first
let loadedAt = 0;
let loading = null;

export async function showReconciliation() {
  if (Date.now() - loadedAt > 60000 && !loading) {
    loading = load().finally(() => {
      loading = null;
    });
  }
  await loading;
  render();
}

async function load() {
  const to = new Date();
  const from = new Date(to.getTime() - SPAN_MS);
  const got = [];
  let cursor = null;
  try {
    for (let page = 0; page < 10; page += 1) {
      const q =
        `/reconciliations?from=${encodeURIComponent(from.toISOString())}` +
        `&to=${encodeURIComponent(to.toISOString())}&limit=1000` +
        (cursor ? `&cursor=${encodeURIComponent(cursor)}` : "");
      const data = await api(q);
      got.push(...(data.items || []));
      cursor = data.next_cursor;
      if (!cursor) break;
    }
  } catch (err) {
    reportError("Loading the network reconciliation", err);
    return;
  }
  items = got;
  loadedAt = Date.now();
  const components = [...new Set(items.map((r) => r.component))].sort();
  const picker = $("reconcile-component");
  const before = picker.value;
  picker.replaceChildren(...components.map((c) => el("option", { value: c }, componentTitle(c))));
  if (components.includes(before)) picker.value = before;
  fillWindows();
}

function componentTitle(id) {
  return id.split("+").join(" + ");
}

function fillWindows() {
  const comp = $("reconcile-component").value;
  const windows = items.filter((r) => r.component === comp).sort((a, b) => b.start.localeCompare(a.start));
  const picker = $("reconcile-window");
  picker.replaceChildren(
    ...windows.map((r) =>
      el(
        "option",
        { value: r.start },
        `${localSpan(r.start, r.end)}${r.passed === false ? " · failed" : ""}${r.suspects.length ? " · suspect" : ""}`,
      ),
    ),
  );
}

function meterInfo(id) {
  return state.network ? state.network.meters.find((m) => m.id === id) : null;
}

// Where a meter stands in the component: an input or output of a balance, an exchange's end.
function roleOf(meter) {
  const net = state.network;
  if (!net) return "";
  const roles = [];
  for (const b of net.balances || []) {
    if (b.in_meters.includes(meter)) roles.push(`into ${b.id}`);
    if (b.out_meters.includes(meter)) roles.push(`out of ${b.id}`);
  }
  for (const e of net.exchanges || []) {
    if (e.sent_meters.includes(meter)) roles.push(`sends ${e.id}`);
    if (e.received_meters.includes(meter)) roles.push(`receives ${e.id}`);
  }
  return roles.join("; ");
}

function num(value, unit, cls = "num") {
  const text = value === null || value === undefined ? "–" : `${fmtNumber(value)}${unit ? ` ${unit}` : ""}`;
  return el("td", { class: cls, dataset: { value: value === null || value === undefined ? "" : String(value) } }, text);
}

function render() {
  const body = $("reconcile-body");
  const comp = $("reconcile-component").value;
  const start = $("reconcile-window").value;
  const r = items.find((x) => x.component === comp && x.start === start);
  $("reconcile-empty").hidden = items.length > 0;
  if (!r) {
    body.replaceChildren();
    return;
  }
  const verdict =
    r.passed === null || r.passed === undefined ? "not tested" : r.passed ? "passed" : "failed";
  const meters = r.meters.map((m) => m.meter);
  const unit = prettyUnit((meterInfo(meters[0]) || {}).unit || "");
  const quantityUnit = unit.replace(/\/h$/, "");
  const test = el(
    "dl",
    {
      class: `global-test test-${verdict.replace(" ", "-")}`,
      dataset: {
        component: r.component,
        start: r.start,
        statistic: String(r.statistic),
        dof: String(r.dof),
        critical: String(r.critical),
        passed: String(r.passed),
      },
    },
    el("dt", {}, "Window"),
    el("dd", {}, localSpan(r.start, r.end)),
    el("dt", {}, "Global test (χ², α = 5 %)"),
    el(
      "dd",
      {},
      el("span", { class: "statistic" }, r.statistic === null ? "–" : fmtNumber(r.statistic)),
      ` with ${r.dof} degree${r.dof === 1 ? "" : "s"} of freedom, critical value `,
      el("span", { class: "critical" }, r.critical === null ? "–" : fmtNumber(r.critical)),
      " → ",
      el("b", { class: `verdict verdict-${verdict.replace(" ", "-")}` }, verdict),
    ),
    el("dt", {}, "Suspect meters"),
    el(
      "dd",
      { class: "suspects" },
      r.suspects.length ? r.suspects.join(", ") : "none",
    ),
  );
  const rows = r.meters.map((m) => {
    const info = meterInfo(m.meter);
    const rel = m.measured ? (100 * (m.adjustment ?? 0)) / m.measured : null;
    return el(
      "tr",
      { dataset: { meter: m.meter, suspect: String(m.suspect) }, class: m.suspect ? "suspect" : "" },
      el(
        "th",
        { scope: "row" },
        el("span", { class: "mono" }, m.meter),
        info ? el("span", { class: "ex-id" }, shortPartnerName(info.partner)) : null,
      ),
      el("td", { class: "where" }, roleOf(m.meter)),
      Object.assign(num(m.measured, quantityUnit), { className: "num measured" }),
      Object.assign(num(m.reconciled, quantityUnit), { className: "num reconciled" }),
      Object.assign(num(m.adjustment, quantityUnit), { className: "num adjustment" }),
      el("td", { class: "num" }, rel === null ? "–" : `${rel.toFixed(2)} %`),
      Object.assign(num(m.z, ""), { className: "num z" }),
      el("td", {}, m.suspect ? el("span", { class: "badge meter-suspect" }, "suspect") : "–"),
    );
  });
  // z as the test's own: signed, one decimal
  for (const tr of rows) {
    const z = tr.querySelector("td.z");
    if (z && z.dataset.value !== "") z.textContent = fmtZ(Number(z.dataset.value));
  }
  body.replaceChildren(
    test,
    el(
      "div",
      { class: "table-wrap" },
      el(
        "table",
        { class: "reconcile", id: "reconcile-table", dataset: { component: r.component, start: r.start } },
        el(
          "thead",
          {},
          el(
            "tr",
            {},
            el("th", { scope: "col" }, "Meter"),
            el("th", { scope: "col" }, "Where"),
            el("th", { scope: "col", class: "num" }, "Measured"),
            el("th", { scope: "col", class: "num" }, "Reconciled"),
            el("th", { scope: "col", class: "num" }, "Adjustment"),
            el("th", { scope: "col", class: "num" }, "Adj. %"),
            el("th", { scope: "col", class: "num", title: "adjustment in its standard deviations" }, "z"),
            el("th", { scope: "col" }, "Suspect"),
          ),
        ),
        el("tbody", {}, ...rows),
      ),
    ),
  );
  window.symbiont.reconciliation = r;
}

$("reconcile-component").addEventListener("change", () => {
  fillWindows();
  render();
});
$("reconcile-window").addEventListener("change", render);
document.addEventListener("symbiont:signed-out", () => {
  items = [];
  loadedAt = 0;
  $("reconcile-body").replaceChildren();
  $("reconcile-component").replaceChildren();
  $("reconcile-window").replaceChildren();
});
