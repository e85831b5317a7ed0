// The dashboard's views, chosen by the address's fragment: #live (the default), #reconciliation
// (operators; a partner whose own meters form a balance) and #partner (a partner's own page;
// operators pick the partner).  Integration tokens have the live view only.

import { state } from "./app.js";
import { showPartner } from "./partner.js";
import { showReconciliation } from "./reconcile.js";

const $ = (id) => document.getElementById(id);

function allowed() {
  const who = state.whoami;
  if (!who) return ["live"];
  if (who.role === "admin" || who.role === "operator") return ["live", "reconciliation", "partner"];
  if (who.role === "partner") {
    const balances = state.network ? state.network.balances || [] : [];
    return balances.length ? ["live", "reconciliation", "partner"] : ["live", "partner"];
  }
  return ["live"];
}

function wanted() {
  const name = (location.hash || "#live").slice(1).split("/")[0];
  const views = allowed();
  return views.includes(name) ? name : "live";
}

function show() {
  if (!state.whoami) return;
  const views = allowed();
  const view = wanted();
  const nav = $("views");
  nav.hidden = views.length < 2;
  for (const a of nav.querySelectorAll("a[data-view]")) {
    a.hidden = !views.includes(a.dataset.view);
    a.classList.toggle("active", a.dataset.view === view);
    if (a.dataset.view === view) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
    if (a.dataset.view === "partner") {
      a.textContent = state.whoami.role === "partner" ? "My account" : "Partners";
    }
  }
  $("dashboard").dataset.view = view;
  for (const card of document.querySelectorAll("#dashboard > [data-views]")) {
    card.classList.toggle("off-view", !card.dataset.views.split(" ").includes(view));
  }
  window.symbiont.view = view;
  if (view === "reconciliation") showReconciliation();
  if (view === "partner") showPartner();
  if (view === "live") window.dispatchEvent(new Event("resize"));
}

window.addEventListener("hashchange", show);
document.addEventListener("symbiont:signed-in", show);
document.addEventListener("symbiont:signed-out", () => {
  $("views").hidden = true;
});
if (state.whoami) show();
