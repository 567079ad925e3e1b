// cryptopipe live prices page: /v1/prices for the first view, WS /v1/stream for updates,
// /v1/health for the coverage strips and the cross-exchange divergence marks.
// Prices stay the exact decimal strings the server sends; the spread is computed with BigInt.
"use strict";

const EXCHANGES = ["binance", "kucoin"];
const rows = new Map();           // symbol -> {tr, cells: {exchange: td}, prices: {exchange: {price, time}}}
const tbody = document.querySelector("#prices tbody");
let updates = 0;
let divergent = new Map();        // symbol -> newest divergence

// --- exact decimals ------------------------------------------------------------------------
function parseDecimal(text) {
  const [whole, frac = ""] = text.split(".");
  return { units: BigInt(whole + frac), scale: frac.length };
}
function align(a, b) {
  const scale = Math.max(a.scale, b.scale);
  return [a.units * 10n ** BigInt(scale - a.scale), b.units * 10n ** BigInt(scale - b.scale)];
}
// (b - a) / mid in basis points, one decimal, rounded half away from zero
function spreadBps(aText, bText) {
  const [a, b] = align(parseDecimal(aText), parseDecimal(bText));
  if (a + b === 0n) return null;
  const tenths = ((b - a) * 200000n * 2n) / (a + b);      // 10 x bps, doubled for rounding
  const rounded = tenths >= 0n ? (tenths + 1n) / 2n : (tenths - 1n) / 2n;
  const sign = rounded < 0n ? "-" : "";
  const abs = rounded < 0n ? -rounded : rounded;
  return sign + (abs / 10n).toString() + "." + (abs % 10n).toString();
}

// --- the table -----------------------------------------------------------------------------
function rowFor(symbol) {
  let row = rows.get(symbol);
  if (row) return row;
  const tr = document.createElement("tr");
  tr.dataset.symbol = symbol;
  const name = document.createElement("td");
  name.className = "symbol";
  name.textContent = symbol;
  tr.appendChild(name);
  const cells = {};
  for (const ex of EXCHANGES) {
    const td = document.createElement("td");
    td.className = "price";
    td.dataset.exchange = ex;
    td.dataset.symbol = symbol;
    td.textContent = "–";
    tr.appendChild(td);
    cells[ex] = td;
  }
  const spread = document.createElement("td");
  spread.className = "spread";
  const when = document.createElement("td");
  when.className = "updated";
  tr.append(spread, when);
  row = { tr, cells, spread, when, prices: {} };
  rows.set(symbol, row);
  // keep rows sorted by symbol
  const after = [...rows.keys()].sort().find((s) => s > symbol);
  tbody.insertBefore(tr, after ? rows.get(after).tr : null);
  applyFilter(tr);
  markDivergence(symbol);
  return row;
}

function show(tick) {
  const row = rowFor(tick.symbol);
  const old = row.prices[tick.exchange];
  if (old && old.time > tick.event_time) return;          // never show an older tick over a newer one
  const td = row.cells[tick.exchange];
  if (old) {
    const [o, n] = align(parseDecimal(old.price), parseDecimal(tick.price));
    td.classList.toggle("up", n > o);
    td.classList.toggle("down", n < o);
  }
  row.prices[tick.exchange] = { price: tick.price, time: tick.event_time };
  td.textContent = tick.price;
  td.dataset.price = tick.price;
  td.dataset.eventTime = tick.event_time;
  td.title = `${tick.exchange} ${tick.event_time}`;
  const b = row.prices.binance, k = row.prices.kucoin;
  if (b && k) {
    const bps = spreadBps(b.price, k.price);
    row.spread.textContent = bps ?? "–";
    row.spread.classList.toggle("wide", bps !== null && Math.abs(parseFloat(bps)) >= 50);
  }
  row.when.textContent = tick.event_time.slice(11, 23);
}

function applyFilter(tr) {
  const f = document.getElementById("filter").value.trim().toUpperCase();
  tr.hidden = f !== "" && !tr.dataset.symbol.includes(f);
}
document.getElementById("filter").addEventListener("input", () => {
  for (const { tr } of rows.values()) applyFilter(tr);
});

// --- live updates --------------------------------------------------------------------------
async function loadPrices() {
  const r = await fetch("v1/prices");
  if (!r.ok) throw new Error(`prices: HTTP ${r.status}`);
  for (const tick of await r.json()) show(tick);
}

let backoff = 500;
function connect() {
  const url = new URL("v1/stream?conflate_ms=250", location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(url);
  const dot = document.getElementById("conn"), text = document.getElementById("conn-text");
  ws.onopen = () => { backoff = 500; dot.className = "dot on"; text.textContent = "live"; };
  ws.onmessage = (ev) => {
    const data = JSON.parse(ev.data);
    const ticks = Array.isArray(data) ? data : [data];
    for (const t of ticks) show(t);
    updates += ticks.length;
    document.getElementById("tick-count").textContent = updates.toLocaleString();
  };
  ws.onclose = (ev) => {
    dot.className = "dot off";
    text.textContent = `disconnected (${ev.code}${ev.reason ? ": " + ev.reason : ""}); reconnecting`;
    setTimeout(connect, backoff);
    backoff = Math.min(backoff * 2, 15000);
  };
}

// --- coverage strips and divergence marks --------------------------------------------------
function cellClass(b) {
  const g = b.gap_minutes || {};
  if ((g.failed || 0) > 0) return "c-failed";
  if ((g.open || 0) + (g.backfilling || 0) > 0) return "c-open";
  if ((g.filled || 0) > 0) return "c-filled";
  if (b.streamed > 0) return "c-ok";
  return b.candle_minutes > 0 ? "c-filled" : "c-none";
}

function drawCoverage(health) {
  const box = document.getElementById("strips");
  box.replaceChildren();
  for (const ex of EXCHANGES) {
    const cov = health.coverage[ex];
    const line = document.createElement("div");
    line.className = "strip";
    line.dataset.exchange = ex;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = ex;
    const cells = document.createElement("div");
    cells.className = "cells";
    for (const b of cov.buckets) {
      const i = document.createElement("i");
      i.className = cellClass(b) + (b.streamed > 0 && b.streamed < 0.99 && cellClass(b) === "c-ok" ? " partial" : "");
      const gaps = Object.entries(b.gap_minutes || {}).map(([s, m]) => `${s} ${m} min`).join(", ");
      i.title = `${b.start.slice(0, 16)}Z: streamed ${(b.streamed * 100).toFixed(0)}%, ` +
                `${b.candle_minutes} minutes with candles${gaps ? ", gaps: " + gaps : ""}`;
      cells.appendChild(i);
    }
    line.append(name, cells);
    box.appendChild(line);
  }
}

function markDivergence(symbol) {
  const row = rows.get(symbol);
  if (!row) return;
  row.tr.querySelector(".badge")?.remove();
  const d = divergent.get(symbol);
  if (!d) return;
  const badge = document.createElement("span");
  badge.className = "badge";
  badge.textContent = `⚠ ${d.max_bps} bps`;
  badge.title = `${d.exchange_a} vs ${d.exchange_b} differed by up to ${d.max_bps} bps from ` +
                `${d.window_start.slice(0, 16)}Z to ${d.window_end.slice(0, 16)}Z ` +
                `(${d.exchange_a} ${d.close_a}, ${d.exchange_b} ${d.close_b})`;
  row.tr.querySelector(".symbol").appendChild(badge);
}

async function loadHealth() {
  try {
    const r = await fetch("v1/health");
    if (!r.ok) throw new Error(`health: HTTP ${r.status}`);
    const health = await r.json();
    drawCoverage(health);
    divergent = new Map();
    for (const d of health.divergences || []) if (!divergent.has(d.symbol)) divergent.set(d.symbol, d);
    for (const symbol of rows.keys()) markDivergence(symbol);
    const n = divergent.size;
    document.getElementById("divergence-note").textContent =
      n ? `⚠ ${n} pair${n > 1 ? "s" : ""} diverged between exchanges in the last 24 h` : "";
  } catch (e) {
    console.warn(e);
  }
}

loadPrices().catch(console.warn).finally(() => { connect(); loadHealth(); });
setInterval(loadHealth, 60000);
