"""The simulator process: one aiohttp application on 127.0.0.1 serving both exchanges and /_sim.

Control API (JSON; POST bodies are JSON objects, GET parameters are query strings):
  GET  /_sim/status                      config, counters, connections, active faults
  GET  /_sim/connections?exchange=&since_ms=&until_ms=&client_conn_id=
                                         every websocket connection: conn_id, exchange, path,
                                         opened_ms, closed_ms, close_reason, subscriptions,
                                         ticks_sent, ticks_flagged, data_frames_sent, frames_sent,
                                         first_sent_ms, last_sent_ms, notice, notice_ms,
                                         client_conn_id (X-Cryptopipe-Conn-Id), connect_id (KuCoin)
  GET  /_sim/truth?exchange=&since_ms=&until_ms=&symbol=&conn_id=&kind=&by=event|sent&limit=
                                         ticks written: {"columns": [...], "rows": [[...]], "oldest_ms",
                                         "dropped"}; window on event time (default) or send time
  GET  /_sim/candles?exchange=&symbol=BASE-QUOTE&start_ms=&end_ms=
                                         the true 1-minute candles (the rows REST serves; KuCoin has no
                                         row for a minute without trades, Binance a zero-volume one)
  GET  /_sim/symbols?exchange=           symbols with status and expected trades per minute
  GET  /_sim/faults                      the fault log (what was injected and each corrupted frame)
  GET  /_sim/drifts?exchange=            every price drift period (running and ended)
  POST /_sim/faults/drop                 {"exchange"?, "mode": "abort"|"close"}
  POST /_sim/faults/outage               {"seconds", "exchange"?, "rest": false}  (drops, then refuses)
  POST /_sim/faults/stall                {"seconds", "exchange"?}
  POST /_sim/faults/corrupt              {"kind": "malformed"|"truncated", "count"? | "ratio"?, "seconds"?, "exchange"?}
  POST /_sim/faults/duplicate            {"count"? | "ratio"?, "seconds"?, "exchange"?}
  POST /_sim/faults/oversized            {"bytes": 2097152, "exchange"?}
  POST /_sim/faults/rest                 {"status": 429|418|503, "seconds"? | "count"?, "exchange"?}
  POST /_sim/faults/slow_rest            {"delay_s", "seconds", "exchange"?}
  POST /_sim/faults/expire_tokens        {"close": true, "grace_s": 0.05}         (KuCoin)
  POST /_sim/faults/server_shutdown      {"grace_s": 1.0}                         (Binance)
  POST /_sim/faults/drift                {"exchange", "symbol": "BASE-QUOTE", "bps", "seconds"?}
  POST /_sim/faults/clear                {}
"""
from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import asdict, dataclass
from fractions import Fraction

from aiohttp import web

from sim.binance import Binance
from sim.engine import Engine
from sim.faults import EXCHANGES, Faults, _exchanges
from sim.kucoin import Kucoin
from sim.market import MINUTE_MS, Market, build_universe, fmt_plain
from sim.truth import TICK_COLUMNS, Truth, now_ms

log = logging.getLogger("sim")


@dataclass
class Config:
    host: str = "127.0.0.1"
    port: int = 0
    symbols: int = 200
    rate: float = 200.0
    seed: int = 1
    max_lifetime: float = 86_400.0
    binance_ping_interval: float = 20.0
    binance_pong_timeout: float = 60.0
    kucoin_ping_interval: float = 18.0
    kucoin_ping_timeout: float = 10.0
    weight_limit: int = 6000
    ban_seconds: float = 120.0
    kucoin_pool: int = 2000
    truth_max: int = 300_000
    truth_dir: str | None = None
    truth_keep_hours: float = 24.0
    step_s: float = 0.05
    max_lag_s: float = 2.0


class Sim:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        universe = build_universe(cfg.seed, cfg.symbols)
        # both exchanges list the same symbols; each has its own trades at the full --rate
        self.markets = {ex: Market(ex, cfg.seed, universe, cfg.rate) for ex in EXCHANGES}
        self.truth = Truth(cfg.truth_max, cfg.truth_dir, cfg.truth_keep_hours)
        self.faults = Faults(cfg.seed)
        self.conns: dict = {}
        self.rest_calls = {ex: 0 for ex in EXCHANGES}
        self.ticks_out = 0
        self.port = cfg.port
        self.engine = Engine(self, self.markets, cfg.step_s, int(cfg.max_lag_s * 1000))
        self.binance = Binance(self)
        self.kucoin = Kucoin(self)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1 << 20)
        self.binance.routes(app)
        self.kucoin.routes(app)
        r = app.router
        r.add_get("/_sim/status", self.h_status)
        r.add_get("/_sim/connections", self.h_connections)
        r.add_get("/_sim/truth", self.h_truth)
        r.add_get("/_sim/candles", self.h_candles)
        r.add_get("/_sim/symbols", self.h_symbols)
        r.add_get("/_sim/faults", self.h_fault_log)
        r.add_get("/_sim/drifts", self.h_drifts)
        r.add_post("/_sim/faults/{name}", self.h_fault)
        return app

    def env(self) -> dict[str, str]:
        base = f"127.0.0.1:{self.port}"
        return {"BINANCE_WS_URL": f"ws://{base}/binance-ws", "BINANCE_REST_URL": f"http://{base}/binance",
                "KUCOIN_REST_URL": f"http://{base}/kucoin", "SIM_CONTROL_URL": f"http://{base}/_sim"}

    # --- handlers
    @staticmethod
    def _ok(body, status=200) -> web.Response:
        return web.Response(text=json.dumps(body, separators=(",", ":")), status=status,
                            content_type="application/json")

    @staticmethod
    def _qint(q, key):
        v = q.get(key)
        if v in (None, ""):
            return None
        try:
            return int(v)
        except ValueError:
            raise web.HTTPBadRequest(text=json.dumps({"error": f"{key} must be an integer"}),
                                     content_type="application/json")

    async def h_status(self, request):
        return self._ok({
            "config": asdict(self.cfg), "port": self.port, "env": self.env(), "now_ms": now_ms(),
            "started_ms": self.engine.start_ms, "ticks_out": self.ticks_out, "trades_in": self.engine.trades_in,
            "rest_calls": self.rest_calls,
            "overload_skips": self.engine.overload_skips, "overload_skipped_ms": self.engine.skipped_ms,
            "effective_rate": {ex: m.effective_rate for ex, m in self.markets.items()},
            "truth": {"records": len(self.truth.records), "dropped": self.truth.dropped,
                      "dir": self.cfg.truth_dir, "spool_dropped": self.truth.spool_dropped,
                      "oldest_ms": self.truth.oldest_ms()},
            "connections": [{"conn_id": c.id, "exchange": c.exchange, "subscriptions": list(c.names),
                             "queued_batches": c.queue.qsize()} for c in self.conns.values()],
            "faults": self.faults.status(), "drifts": self.drift_list(active_only=True)})

    async def h_connections(self, request):
        q = request.query
        return self._ok({"connections": self.truth.connections_list(
            q.get("exchange"), self._qint(q, "since_ms"), self._qint(q, "until_ms"), q.get("client_conn_id"))})

    async def h_truth(self, request):
        q = request.query
        rows = self.truth.query(q.get("exchange"), self._qint(q, "since_ms"), self._qint(q, "until_ms"),
                                q.get("symbol"), q.get("conn_id"), q.get("kind"), q.get("by", "event"),
                                self._qint(q, "limit"))
        return self._ok({"columns": TICK_COLUMNS, "rows": rows, "oldest_ms": self.truth.oldest_ms(),
                         "dropped": self.truth.dropped, "enabled": self.truth.enabled})

    async def h_candles(self, request):
        q = request.query
        ex = q.get("exchange", "")
        if ex not in EXCHANGES:
            return self._ok({"error": "exchange must be binance or kucoin"}, 400)
        s = self.markets[ex].by_canonical.get(q.get("symbol", ""))
        if s is None:
            return self._ok({"error": "unknown symbol (use canonical BASE-QUOTE)"}, 400)
        now = now_ms()
        start = self._qint(q, "start_ms")
        end = self._qint(q, "end_ms")
        end = now if end is None else min(end, now)
        start = end - 60 * MINUTE_MS if start is None else start
        first, last = -(-start // MINUTE_MS), end // MINUTE_MS
        if last - first > 10_000:
            return self._ok({"error": "at most 10000 minutes per call"}, 400)
        m = self.markets[ex]
        out = []
        if not (ex == "binance" and s.break_on_binance):
            for minute in range(first, last + 1):
                c = m.partial_candle(s, minute, now)
                if c is None and ex == "kucoin":
                    continue
                pd, qd = s.price_decimals, s.qty_decimals
                if c is None:
                    p = fmt_plain(m.last_close_before(s, minute), pd)
                    out.append({"open_ms": minute * MINUTE_MS, "open": p, "high": p, "low": p, "close": p,
                                "volume": "0", "trades": 0, "complete": True})
                    continue
                out.append({"open_ms": c.open_ms, "open": fmt_plain(c.open, pd), "high": fmt_plain(c.high, pd),
                            "low": fmt_plain(c.low, pd), "close": fmt_plain(c.close, pd),
                            "volume": fmt_plain(c.volume, qd), "trades": c.trades,
                            "complete": (minute + 1) * MINUTE_MS - 1 <= now})
        return self._ok({"exchange": ex, "symbol": s.canonical, "candles": out})

    async def h_symbols(self, request):
        ex = request.query.get("exchange", "binance")
        if ex not in EXCHANGES:
            return self._ok({"error": "exchange must be binance or kucoin"}, 400)
        m = self.markets[ex]
        return self._ok({"symbols": [
            {"symbol": s.canonical, "exchange_symbol": s.binance if ex == "binance" else s.canonical,
             "base": s.base, "quote": s.quote,
             "status": "BREAK" if m.trades_never(s) else "TRADING", "illiquid": s.illiquid,
             "trades_per_minute": m.lam_per_minute[s.idx]} for s in m.symbols]})

    async def h_fault_log(self, request):
        return self._ok({"log": self.faults.log})

    async def h_drifts(self, request):
        ex = request.query.get("exchange")
        if ex and ex not in EXCHANGES:
            return self._ok({"error": "exchange must be binance or kucoin"}, 400)
        return self._ok({"drifts": [d for d in self.drift_list() if not ex or d["exchange"] == ex]})

    def drift_list(self, active_only: bool = False) -> list[dict]:
        now = now_ms()
        out = []
        for ex, m in self.markets.items():
            for idx, periods in m.drifts.items():
                for start, end, bps, _, _ in periods:
                    active = start <= now and (end is None or now < end)
                    if active or not active_only:
                        out.append({"exchange": ex, "symbol": m.symbols[idx].canonical, "bps": bps,
                                    "start_ms": start, "end_ms": end, "active": active})
        return out

    def set_drift(self, body: dict) -> dict:
        """One exchange's price of one symbol moves by `bps` basis points from now on."""
        ex = body.get("exchange")
        if ex not in EXCHANGES:
            raise ValueError("exchange must be binance or kucoin (a drift moves one exchange away from the other)")
        m = self.markets[ex]
        s = m.by_canonical.get(body.get("symbol") or "")
        if s is None:
            raise ValueError("unknown symbol (use canonical BASE-QUOTE)")
        bps = body.get("bps")
        try:
            if isinstance(bps, bool) or not isinstance(bps, (int, float, str)):
                raise ValueError
            exact = Fraction(str(bps))
        except ValueError:
            raise ValueError("bps must be a number") from None
        bps = int(exact) if exact.denominator == 1 else float(exact)
        seconds = body.get("seconds")
        if seconds is not None:
            if isinstance(seconds, bool) or not 0 < float(seconds) <= 10 ** 8:
                raise ValueError("seconds must be > 0 and at most 1e8 (or omitted: until cleared)")
            seconds = float(seconds)
        start = now_ms()
        end = start + int(seconds * 1000) if seconds is not None else None
        running = [p for p in m.drifts.get(s.idx, []) if p[1] is None or p[1] > start]
        periods = m.set_drift(s, bps, start, end)
        for p in running:
            self.faults.note("drift_end", exchange=ex, symbol=s.canonical, bps=p[2], start_ms=p[0], end_ms=p[1])
        if periods and periods[-1][0] == start:
            self.faults.note("drift", exchange=ex, symbol=s.canonical, bps=bps, seconds=seconds,
                             start_ms=start, end_ms=end)
        return {"exchange": ex, "symbol": s.canonical, "bps": bps, "start_ms": start, "end_ms": end,
                "ended": len(running)}

    def end_drifts(self) -> None:
        at = now_ms()
        for ex, m in self.markets.items():
            for s, (start, end, bps, _, _) in m.end_drifts(at):
                self.faults.note("drift_end", exchange=ex, symbol=s.canonical, bps=bps, start_ms=start, end_ms=end)

    async def h_fault(self, request):
        name = request.match_info["name"]
        try:
            body = await request.json() if request.can_read_body else {}
        except ValueError:
            return self._ok({"error": "body must be a JSON object"}, 400)
        if not isinstance(body, dict):
            return self._ok({"error": "body must be a JSON object"}, 400)
        f = self.faults
        try:
            ex = body.get("exchange")
            if name == "drop":
                n = await self.drop(ex, body.get("mode", "abort"), "dropped")
                f.note("drop", exchange=ex or "all", connections=n)
                return self._ok({"ok": True, "dropped": n})
            if name == "outage":
                f.set_outage(float(body["seconds"]), ex, body.get("rest", False))
                n = await self.drop(ex, "abort", "outage")
                return self._ok({"ok": True, "dropped": n})
            if name == "stall":
                f.set_stall(float(body["seconds"]), ex)
            elif name == "corrupt":
                f.set_corrupt(body.get("count"), body.get("ratio"), body.get("seconds"), body.get("kind", "malformed"), ex)
            elif name == "duplicate":
                f.set_duplicate(body.get("count"), body.get("ratio"), body.get("seconds"), ex)
            elif name == "oversized":
                f.set_oversized(int(body.get("bytes", 2 << 20)), ex)
            elif name == "rest":
                f.set_rest(int(body.get("status", 429)), body.get("seconds"), body.get("count"), ex)
            elif name == "slow_rest":
                f.set_slow_rest(float(body["delay_s"]), float(body["seconds"]), ex)
            elif name == "expire_tokens":
                grace = grace_seconds(body.get("grace_s", 0.05))
                close = bool(body.get("close", True))
                f.note("expire_tokens", close=close, grace_s=grace)
                n = await self.kucoin.expire_tokens(close, grace)
                return self._ok({"ok": True, "closed": n})
            elif name == "server_shutdown":
                grace = grace_seconds(body.get("grace_s", 1.0))
                f.note("server_shutdown", grace_s=grace)
                n = await self.binance.server_shutdown(grace)
                return self._ok({"ok": True, "closed": n})
            elif name == "drift":
                return self._ok({"ok": True, "drift": self.set_drift(body)})
            elif name == "clear":
                f.clear()
                self.end_drifts()
            else:
                return self._ok({"error": f"unknown fault {name[:40]!r}"}, 404)
        except (KeyError, TypeError, ValueError) as e:
            return self._ok({"error": f"bad fault request: {e!r:.200}"}, 400)
        return self._ok({"ok": True, "faults": f.status()})

    async def drop(self, exchange, mode: str, reason: str) -> int:
        exs = _exchanges(exchange)
        conns = [c for c in list(self.conns.values()) if c.exchange in exs]
        await asyncio.gather(*(c.close(reason, code=1001, abort=(mode == "abort")) for c in conns))
        return len(conns)


MAX_GRACE_S = 20.0    # the control call waits out the grace; SimControl's HTTP timeout is 30 s


def grace_seconds(value) -> float:
    g = float(value)
    if not 0 <= g <= MAX_GRACE_S:
        raise ValueError(f"grace_s must be between 0 and {MAX_GRACE_S:g}")
    return g


async def serve(cfg: Config, ready=None) -> None:
    """Run until cancelled. `ready(sim)` is called once the port is bound."""
    sim = Sim(cfg)
    runner = web.AppRunner(sim.app(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, cfg.host, cfg.port, reuse_address=True)
    await site.start()
    sim.port = site._server.sockets[0].getsockname()[1]
    engine = asyncio.get_running_loop().create_task(sim.engine.run())
    flusher = asyncio.get_running_loop().create_task(sim.truth.run_flusher()) if cfg.truth_dir else None
    try:
        if ready:
            ready(sim)
        await asyncio.Event().wait()
    finally:
        engine.cancel()
        for c in list(sim.conns.values()):
            await c.close("sim_stopped", code=1001)
        if flusher:
            flusher.cancel()
            sim.truth.flush_files()
        await runner.cleanup()
