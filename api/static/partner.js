// A partner's page: its exchanges (its role, its counterparty, the flow now, the last window),
// its statements with every revision (the statements card of app.js), and a year of its net
// savings and CO2 avoided, month by month, from its statements (issued, or the live draft).
// It shows nothing of partners it does not exchange with; operators pick the partner.

import {
  api,
  el,
  exchangeTitle,
  fmtNumber,
  partnerName,
  prettyUnit,
  reportError,
  state,
} from "./app.js";
import { conditionOf } from "./live.js";
import { localParts, localSpan } from "./time.js";

const $ = (id) => document.getElementById(id);
let chart = null;
let shownFor = null;
let token = 0;

function currentPartner() {
  const who = state.whoami;
  if (!who) return null;
  if (who.role === "partner") return who.partner;
  return $("partner-picker").value || (state.network && state.network.partners[0]?.id) || null;
}

export async function showPartner() {
  const partner = currentPartner();
  if (!partner) return;
  $("partner-title").textContent = partnerName(partner);
  $("partner-card").dataset.partner = partner;
  renderExchanges(partner);
  if (!chart) chart = echarts.init($("savings-chart"), null, { renderer: "canvas" });
  chart.resize();
  if (shownFor !== partner) {
    shownFor = partner;
    await loadSavings(partner);
  }
}

function renderExchanges(partner) {
  const mine = state.order
    .map((id) => state.exchanges[id])
    .filter((ex) => ex && (ex.provider === partner || ex.receiver === partner));
  $("partner-exchange-rows").replaceChildren(
    ...mine.map((ex) => {
      const provider = ex.provider === partner;
      const other = provider ? ex.receiver : ex.provider;
      const rate = provider ? ex.sent_rate : ex.received_rate;
      const status = ex.status || "no_data";
      const condition = conditionOf(ex);
      return el(
        "tr",
        { dataset: { exchange: ex.id, role: provider ? "provider" : "receiver" } },
        el("th", { scope: "row" }, exchangeTitle(ex.id)),
        el("td", {}, provider ? "provides" : "receives"),
        el("td", {}, partnerName(other)),
        el(
          "td",
          { class: "num" },
          rate === null || rate === undefined ? "–" : `${fmtNumber(rate)} ${prettyUnit(ex.rate_unit)}`,
        ),
        el(
          "td",
          { class: "nowrap" },
          el("span", { class: `badge status-${status}` }, status.replace("_", " ")),
          condition !== "ok"
            ? el("span", { class: `badge cond cond-${condition}` }, `meter ${condition}`)
            : null,
          " ",
          ex.window_start ? el("span", { class: "when" }, localSpan(ex.window_start, ex.window_end)) : null,
        ),
      );
    }),
  );
}

function lastMonths(n) {
  const now = localParts(new Date());
  let [y, m] = now.date.split("-").map(Number);
  const out = [];
  for (let i = 0; i < n; i += 1) {
    out.unshift(`${y}-${String(m).padStart(2, "0")}`);
    m -= 1;
    if (m === 0) {
      m = 12;
      y -= 1;
    }
  }
  return out;
}

async function loadSavings(partner) {
  const mine = ++token;
  const months = lastMonths(12);
  chart.showLoading({ text: "loading…", color: "#4b6584" });
  const results = new Array(months.length).fill(null);
  let currency = state.network ? state.network.currency : "";
  let failed = 0;
  // four at a time: each is a statement computed from its month's windows
  let next = 0;
  const worker = async () => {
    while (next < months.length) {
      const i = next++;
      try {
        const doc = await api(
          `/partners/${encodeURIComponent(partner)}/statements/${encodeURIComponent(months[i])}?format=json`,
        );
        currency = doc.currency || currency;
        results[i] = {
          month: months[i],
          status: doc.status,
          savings: Number(doc.totals?.net_savings ?? 0),
          co2: Number(doc.totals?.co2_avoided_t ?? 0),
        };
      } catch (err) {
        if (!(err && err.status === 404)) failed += 1;
      }
    }
  };
  await Promise.all([worker(), worker(), worker(), worker()]);
  if (mine !== token) return;
  chart.hideLoading();
  const savings = results.map((r) => (r ? r.savings : null));
  const co2 = results.map((r) => (r ? r.co2 : null));
  const total = savings.reduce((s, v) => s + (v || 0), 0);
  const totalCo2 = co2.reduce((s, v) => s + (v || 0), 0);
  $("savings-note").textContent =
    `Twelve months: net savings ${fmtNumber(total)} ${currency}, CO₂ avoided ${fmtNumber(totalCo2)} t. ` +
    "Months not issued yet are their live drafts." +
    (failed ? ` ${failed} month(s) could not be loaded.` : "");
  window.symbiont.savings = { partner, months, savings, co2, currency };
  chart.setOption(
    {
      animation: false,
      grid: { left: 64, right: 56, top: 36, bottom: 28 },
      legend: { top: 0, data: [`net savings (${currency})`, "CO₂ avoided (t)"] },
      tooltip: { trigger: "axis" },
      xAxis: { type: "category", data: months },
      yAxis: [
        { type: "value", name: currency, nameGap: 10 },
        { type: "value", name: "t CO₂", nameGap: 10, splitLine: { show: false } },
      ],
      series: [
        {
          name: `net savings (${currency})`,
          type: "bar",
          data: savings,
          itemStyle: { color: "#2f9e5b" },
        },
        {
          name: "CO₂ avoided (t)",
          type: "line",
          yAxisIndex: 1,
          data: co2,
          symbolSize: 6,
          lineStyle: { color: "#3867d6" },
          itemStyle: { color: "#3867d6" },
        },
      ],
    },
    { notMerge: true },
  );
}

$("partner-picker").addEventListener("change", () => {
  if (window.symbiont.view === "partner") showPartner().catch((e) => reportError("Partner", e));
});
document.addEventListener("symbiont:signed-out", () => {
  shownFor = null;
  token += 1;
  if (chart) chart.clear();
  $("partner-exchange-rows").replaceChildren();
  $("savings-note").textContent = "";
});
