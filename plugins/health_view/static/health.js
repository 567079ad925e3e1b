// The operators' health view: renders GET data (PipelineHealthHook.snapshot) every 15 s.
"use strict";

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else if (k.startsWith("data-")) e.setAttribute(k, v); else e[k] = v;
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c ?? "–"));
  return e;
}
const t = (iso) => (iso ? iso.replace("T", " ").slice(0, 19) + "Z" : "–");
function rows(tbody, list, cells) {
  tbody.replaceChildren(...list.map((r) => el("tr", {}, ...cells(r).map((c) => el("td", {}, c)))));
}
function heatColor(share) {
  if (share === null) return "#eceff2";
  if (share >= 0.999) return "#1f7a45";
  if (share >= 0.95) return "#9ccc65";
  if (share >= 0.5) return "#e0a82e";
  return "#b3261e";
}

function render(d) {
  document.getElementById("generated").textContent = t(d.generated_at);
  const cards = document.getElementById("exchanges");
  cards.replaceChildren();
  for (const [ex, v] of Object.entries(d.exchanges)) {
    const kv = el("div", { class: "kv" });
    const add = (label, value, key) => kv.append(el("span", {}, label), el("b", { "data-field": key }, String(value ?? "–")));
    add("sessions connected now", v.sessions.connected_now, "connected_now");
    add("sessions in the last 24 h", v.sessions.sessions_24h, "sessions_24h");
    add("disconnects in the last 24 h", v.sessions.disconnects_24h, "disconnects_24h");
    add("last disconnect", v.sessions.last_disconnect_at ? `${t(v.sessions.last_disconnect_at)} (${v.sessions.last_disconnect_reason || "?"})` : "–", "last_disconnect");
    add("ticks/s (last 10 s)", v.ticks.ticks_per_s, "ticks_per_s");
    add("newest tick age (s)", v.ticks.newest_tick_age_s, "newest_tick_age_s");
    add("symbols with a price", v.ticks.symbols, "symbols");
    for (const s of ["open", "backfilling", "filled", "failed"]) {
      add(`gaps ${s}`, `${v.gaps[s].gaps} (${v.gaps[s].minutes} min)`, `gaps_${s}`);
    }
    cards.append(el("div", { class: "card", "data-exchange": ex }, el("h3", {}, ex), kv));
  }

  const lag = d.consumer_lag || {};
  document.getElementById("error").textContent = lag.error ? `consumer lag unavailable: ${lag.error}` : "";
  rows(document.querySelector("#lag tbody"), lag.groups || [], (g) => [g.group, g.topic, g.committed, g.end, g.lag]);

  const heat = document.getElementById("heatmaps");
  heat.replaceChildren();
  for (const [ex, cov] of Object.entries(d.coverage)) {
    const hm = cov.heatmap;
    const head = el("tr", {}, el("th", {}, "group (symbols)"), ...hm.hours.map((h) => el("th", { class: "h" }, h.slice(11, 13))));
    const body = hm.groups.map((g, i) => el("tr", {}, el("td", {}, `${g} (${hm.group_symbols[i]})`),
      ...hm.stored_share[i].map((s, j) => {
        const c = el("td", { class: "cell", title: `${g} ${hm.hours[j].slice(0, 13)}h: ${s === null ? "–" : (s * 100).toFixed(1) + "%"}` });
        c.style.background = heatColor(s);
        return c;
      })));
    heat.append(el("div", { class: "card", "data-exchange": ex }, el("h3", {}, ex),
      el("table", { class: "heat" }, el("thead", {}, head), el("tbody", {}, ...body))));
  }

  rows(document.querySelector("#divergences tbody"), d.divergences || [], (v) =>
    [v.symbol, `${v.exchange_a} / ${v.exchange_b}`, t(v.window_start), t(v.window_end), v.minutes,
     v.max_bps, `${v.close_a} / ${v.close_b}`]);
  if (d.divergences === null) document.querySelector("#divergences tbody").replaceChildren(
    el("tr", {}, el("td", { colSpan: 7, class: "muted" }, "no price_divergences table yet")));

  const checks = document.getElementById("checks");
  if (d.candle_checks === null) {
    checks.replaceChildren(el("p", { class: "muted" }, "no reconciliation checks recorded yet (table candle_checks absent)"));
  } else if (!d.candle_checks.length) {
    checks.replaceChildren(el("p", { class: "muted" }, "none yet"));
  } else {
    const cols = Object.keys(d.candle_checks[0]);
    checks.replaceChildren(el("table", {}, el("thead", {}, el("tr", {}, ...cols.map((c) => el("th", {}, c)))),
      el("tbody", {}, ...d.candle_checks.slice(0, 20).map((r) => el("tr", {}, ...cols.map((c) => el("td", {}, String(r[c] ?? "–"))))))));
  }

  const sup = d.supervisor_checks || { latest: [], problems: [] };
  rows(document.querySelector("#supervisor tbody"), sup.latest, (c) =>
    [c.program, t(c.checked_at), c.state, el("span", { class: c.verdict === "healthy" ? "ok" : "bad" }, c.verdict),
     c.action + (c.outcome ? ` (${c.outcome})` : ""), c.reason]);
  rows(document.querySelector("#problems tbody"), sup.problems, (c) =>
    [t(c.checked_at), c.program, c.verdict, c.outcome, c.reason]);
}

async function refresh() {
  try {
    const r = await fetch("data", { credentials: "same-origin" });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    render(await r.json());
  } catch (e) {
    document.getElementById("error").textContent = `could not load: ${e.message}`;
  }
}
refresh();
setInterval(refresh, 15000);
