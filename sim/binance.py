"""Binance spot: REST market data under /binance, websockets under /binance-ws.

REST: /api/v3/ping, /time, /exchangeInfo, /klines (1m), /aggTrades, with request-weight accounting
(X-MBX-USED-WEIGHT-1M), 429 + Retry-After over the per-minute budget, 418 (IP ban) for a client
that calls again before its Retry-After ran out. Errors are {"code": ..., "msg": ...}.
Websocket: /binance-ws/ws/<stream>, /binance-ws/ws, /binance-ws/stream?streams=a/b/c; SUBSCRIBE,
UNSUBSCRIBE, LIST_SUBSCRIPTIONS; server ping every --binance-ping-interval s, close without a pong
within --binance-pong-timeout s; close at --max-lifetime s; serverShutdown on command.

Why one module of ~430 lines: every Binance route the simulator serves, REST and websocket, in one
place, so that a reader can hold it against the exchange's documentation route by route.
"""
from __future__ import annotations

import asyncio
import json
import math
import re
import time

from aiohttp import WSMsgType, web

from sim.engine import Conn, b8
from sim.market import MINUTE_MS, is_buyer_maker
from sim.truth import now_ms

JSON_CT = "application/json;charset=UTF-8"
WEIGHTS = {"ping": 1, "time": 1, "exchangeInfo": 20, "klines": 2, "aggTrades": 4}
_STREAM_RE = re.compile(r"^([a-z0-9]{2,40})@(miniTicker|trade|kline_1m|bookTicker)$")


def parse_stream(name, market) -> object:
    """'!miniTicker@arr' -> 'all'; 'btcusdt@trade' -> ('trade', idx); anything else -> None."""
    if not isinstance(name, str):
        return None
    if name == "!miniTicker@arr":
        return "all"
    m = _STREAM_RE.match(name)
    if not m:
        return None
    s = market.by_binance.get(m.group(1).upper())
    return None if s is None else (m.group(2), s.idx)


class Weights:
    """Per-IP request weight in the current calendar minute."""

    def __init__(self, limit: int, ban_s: float):
        self.limit = limit
        self.ban_s = ban_s
        self.used: dict[str, tuple[int, int]] = {}
        self.retry_until: dict[str, float] = {}
        self.banned_until: dict[str, float] = {}

    def charge(self, ip: str, weight: int) -> tuple[int, int, int]:
        """-> (http status 200/429/418, used weight now, retry-after seconds)."""
        now = time.time()
        minute = int(now // 60)
        m, used = self.used.get(ip, (minute, 0))
        if m != minute:
            used = 0
        used += weight
        self.used[ip] = (minute, used)
        ban = self.banned_until.get(ip, 0.0)
        if now < ban:
            return 418, used, math.ceil(ban - now)
        if now < self.retry_until.get(ip, 0.0):
            self.banned_until[ip] = now + self.ban_s
            return 418, used, math.ceil(self.ban_s)
        if used > self.limit:
            retry = math.ceil((minute + 1) * 60 - now)
            self.retry_until[ip] = now + retry
            return 429, used, retry
        return 200, used, 0


class Binance:
    def __init__(self, sim):
        self.sim = sim
        self.market = sim.markets["binance"]
        self.weights = Weights(sim.cfg.weight_limit, sim.cfg.ban_seconds)

    def routes(self, app: web.Application) -> None:
        r = app.router
        for name in WEIGHTS:
            r.add_get(f"/binance/api/v3/{name}", self.rest)
        r.add_get("/binance-ws/ws", self.ws)
        r.add_get("/binance-ws/ws/{stream}", self.ws)
        r.add_get("/binance-ws/stream", self.ws)

    # --- REST
    def _json(self, body, status=200, used=0, extra=None) -> web.Response:
        headers = {"X-MBX-USED-WEIGHT-1M": str(used), "X-MBX-USED-WEIGHT": str(used)}
        headers.update(extra or {})
        return web.Response(text=json.dumps(body, separators=(",", ":")), status=status,
                            headers=headers, content_type="application/json", charset="UTF-8")

    def _err(self, code: int, msg: str, status=400, used=0, extra=None) -> web.Response:
        return self._json({"code": code, "msg": msg}, status, used, extra)

    async def rest(self, request: web.Request) -> web.Response:
        name = request.path.rsplit("/", 1)[1]
        sim = self.sim
        sim.rest_calls["binance"] += 1
        delay = sim.faults.rest_delay("binance")
        if delay:
            await asyncio.sleep(delay)
        forced = sim.faults.rest_fault("binance")
        if forced:
            return self._forced(forced)
        status, used, retry = self.weights.charge(request.remote or "?", WEIGHTS[name])
        if status == 418:
            until = int((time.time() + retry) * 1000)
            return self._err(-1003, f"Way too much request weight used; IP banned until {until}. Please use "
                             "WebSocket Streams for live updates to avoid bans.", 418, used, {"Retry-After": str(retry)})
        if status == 429:
            return self._err(-1003, f"Too much request weight used; current limit is {self.weights.limit} request "
                             "weight per 1 MINUTE. Please use WebSocket Streams for live updates to avoid polling "
                             "the API.", 429, used, {"Retry-After": str(retry)})
        try:
            body = getattr(self, "_" + name)(request.query)
        except ApiError as e:
            return self._err(e.code, e.msg, 400, used)
        return self._json(body, 200, used)

    def _forced(self, status: int) -> web.Response:
        retry = self.sim.faults.rest_retry_after("binance")
        if status == 418:
            until = int((time.time() + retry) * 1000)
            return self._err(-1003, f"Way too much request weight used; IP banned until {until}. Please use "
                             "WebSocket Streams for live updates to avoid bans.", 418, 0, {"Retry-After": str(retry)})
        if status == 429:
            return self._err(-1003, f"Too much request weight used; current limit is {self.weights.limit} request "
                             "weight per 1 MINUTE. Please use WebSocket Streams for live updates to avoid polling "
                             "the API.", 429, 0, {"Retry-After": str(retry)})
        return web.Response(status=503, text="Service Unavailable")

    def _ping(self, q):
        return {}

    def _time(self, q):
        return {"serverTime": now_ms()}

    def _exchangeInfo(self, q):
        syms = self.market.symbols
        if "symbol" in q:
            syms = [self._symbol(q)]
        elif "symbols" in q:
            try:
                names = json.loads(q["symbols"])
            except ValueError:
                raise ApiError(-1100, "Illegal characters found in parameter 'symbols'; legal range is '^\\[(\"[A-Z0-9-_.]{1,20}\"(,\"[A-Z0-9-_.]{1,20}\"){0,}){0,1}\\]$'.")
            syms = []
            for n in names:
                s = self.market.by_binance.get(str(n))
                if s is None:
                    raise ApiError(-1121, "Invalid symbol.")
                syms.append(s)
        return {"timezone": "UTC", "serverTime": now_ms(),
                "rateLimits": [
                    {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": self.weights.limit},
                    {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
                    {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000},
                    {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000}],
                "exchangeFilters": [], "symbols": [self._symbol_info(s) for s in syms]}

    def _symbol_info(self, s) -> dict:
        tick = b8(1, s.price_decimals)
        step = b8(1, s.qty_decimals)
        return {
            "symbol": s.binance, "status": "BREAK" if s.break_on_binance else "TRADING",
            "baseAsset": s.base, "baseAssetPrecision": 8, "quoteAsset": s.quote, "quotePrecision": 8,
            "quoteAssetPrecision": 8, "baseCommissionPrecision": 8, "quoteCommissionPrecision": 8,
            "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
            "icebergAllowed": True, "ocoAllowed": True, "otoAllowed": True, "quoteOrderQtyMarketAllowed": True,
            "allowTrailingStop": True, "cancelReplaceAllowed": True, "isSpotTradingAllowed": True,
            "isMarginTradingAllowed": False,
            "filters": [
                {"filterType": "PRICE_FILTER", "minPrice": tick, "maxPrice": "1000000.00000000", "tickSize": tick},
                {"filterType": "LOT_SIZE", "minQty": step, "maxQty": "9000000.00000000", "stepSize": step},
                {"filterType": "ICEBERG_PARTS", "limit": 10},
                {"filterType": "MARKET_LOT_SIZE", "minQty": "0.00000000", "maxQty": "100000.00000000", "stepSize": "0.00000000"},
                {"filterType": "NOTIONAL", "minNotional": "5.00000000", "applyMinToMarket": True,
                 "maxNotional": "9000000.00000000", "applyMaxToMarket": False, "avgPriceMins": 5},
                {"filterType": "MAX_NUM_ORDERS", "maxNumOrders": 200},
                {"filterType": "MAX_NUM_ALGO_ORDERS", "maxNumAlgoOrders": 5}],
            "permissions": [], "permissionSets": [["SPOT"]],
            "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
            "allowedSelfTradePreventionModes": ["EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
        }

    def _symbol(self, q):
        name = q.get("symbol")
        if not name:
            raise ApiError(-1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.")
        s = self.market.by_binance.get(name)
        if s is None:
            raise ApiError(-1121, "Invalid symbol.")
        return s

    @staticmethod
    def _int(q, key, default=None):
        v = q.get(key)
        if v is None or v == "":
            return default
        try:
            return int(v)
        except ValueError:
            raise ApiError(-1100, f"Illegal characters found in parameter '{key}'; legal range is '^[0-9]{{1,20}}$'.")

    def _klines(self, q):
        s = self._symbol(q)
        interval = q.get("interval")
        if not interval:
            raise ApiError(-1102, "Mandatory parameter 'interval' was not sent, was empty/null, or malformed.")
        if interval != "1m":
            raise ApiError(-1120, "Invalid interval.")
        limit = max(1, min(1000, self._int(q, "limit", 500)))
        start, end = self._int(q, "startTime"), self._int(q, "endTime")
        if start is not None and end is not None and start > end:
            raise ApiError(-1023, "Start time is greater than end time.")
        now = now_ms()
        cur = now // MINUTE_MS
        if start is not None:
            first = -(-start // MINUTE_MS)
            last = min(cur, first + limit - 1)
            if end is not None:
                last = min(last, end // MINUTE_MS)
        else:
            last = min(cur, (end // MINUTE_MS) if end is not None else cur)
            first = last - limit + 1
        return self.klines_rows(s, first, last, now)

    def klines_rows(self, s, first: int, last: int, now: int) -> list:
        m = self.market
        if s.break_on_binance or last < first:
            return []
        pd, qd = s.price_decimals, s.qty_decimals
        rows = []
        prev = None
        for minute in range(first, last + 1):
            c = m.partial_candle(s, minute, now)
            t0 = minute * MINUTE_MS
            if c is None:
                if prev is None:
                    prev = m.last_close_before(s, minute)
                p = b8(prev, pd)
                rows.append([t0, p, p, p, p, "0.00000000", t0 + MINUTE_MS - 1, "0.00000000", 0,
                             "0.00000000", "0.00000000", "0"])
                continue
            prev = c.close
            rows.append([t0, b8(c.open, pd), b8(c.high, pd), b8(c.low, pd), b8(c.close, pd), b8(c.volume, qd),
                         t0 + MINUTE_MS - 1, b8(c.quote_volume, pd + qd), c.trades, b8(c.taker_buy_volume, qd),
                         b8(c.taker_buy_quote, pd + qd), "0"])
        return rows

    def _aggTrades(self, q):
        s = self._symbol(q)
        limit = max(1, min(1000, self._int(q, "limit", 500)))
        start, end, from_id = self._int(q, "startTime"), self._int(q, "endTime"), self._int(q, "fromId")
        now = now_ms()
        if start is not None and end is not None and end - start > 3_600_000:
            raise ApiError(-1127, "More than 1 hours between startTime and endTime.")
        m = self.market
        out = []
        if from_id is not None or start is not None:
            if from_id is not None:
                minute, lo_t = (from_id - 1) // MINUTE_MS, None
            else:
                minute, lo_t = start // MINUTE_MS, start
            hi_t = min(now, end if end is not None else (start + 3_600_000 if start is not None else now))
            while len(out) < limit and minute * MINUTE_MS <= hi_t:
                for tr in m.minute_trades(s, minute):
                    if (lo_t is not None and tr[0] < lo_t) or (from_id is not None and tr[3] < from_id):
                        continue
                    if tr[0] > hi_t or len(out) >= limit:
                        break
                    out.append(tr)
                minute += 1
        else:
            minute = now // MINUTE_MS
            while len(out) < limit and minute > now // MINUTE_MS - 60:
                trs = [tr for tr in m.minute_trades(s, minute) if tr[0] <= now]
                out[:0] = trs
                minute -= 1
            out = out[-limit:]
        pd, qd = s.price_decimals, s.qty_decimals
        return [{"a": seq, "p": b8(p, pd), "q": b8(qq, qd), "f": seq, "l": seq, "T": t,
                 "m": is_buyer_maker(seq), "M": True} for t, p, qq, seq in out]

    # --- websocket
    async def ws(self, request: web.Request):
        sim = self.sim
        if sim.faults.in_outage("binance"):
            return web.Response(status=503, text="Service Unavailable")
        keys, names = [], []
        combined = request.path.startswith("/binance-ws/stream")
        if combined:
            raw = request.query.get("streams", "")
            names = [n for n in raw.split("/") if n]
        elif "stream" in request.match_info:
            names = [n for n in request.match_info["stream"].split("/") if n]
        for n in names:
            key = parse_stream(n, self.market)
            if key is None:
                return web.Response(status=400, text=json.dumps({"code": 2, "msg": "Invalid request: invalid stream"}),
                                    content_type="application/json")
            keys.append(key)
        ws = web.WebSocketResponse(autoping=False, max_msg_size=1 << 20, compress=False)
        await ws.prepare(request)
        conn = Conn(sim, "binance", ws, request, request.path_qs)
        conn.combined = combined
        sim.conns[conn.id] = conn
        for n, k in zip(names, keys):
            self._subscribe(conn, n, k)
        writer = asyncio.get_running_loop().create_task(conn.writer())
        keeper = asyncio.get_running_loop().create_task(self._keeper(conn))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self._request(conn, msg.data)
                elif msg.type == WSMsgType.PING:
                    if not sim.faults.stalled("binance"):
                        await ws.pong(msg.data)
                elif msg.type == WSMsgType.PONG:
                    conn.last_pong = time.monotonic()
                elif msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                    break
        finally:
            keeper.cancel()
            await conn.close("client_closed" if not conn.closed else "")
            writer.cancel()
        return ws

    def _subscribe(self, conn: Conn, name: str, key) -> None:
        if name not in conn.names:
            conn.names.append(name)
        self.sim.engine.add(conn, key)
        conn.rec["subscriptions"] = list(conn.names)

    async def _keeper(self, conn: Conn) -> None:
        """Server pings, pong timeout and the maximum connection lifetime."""
        cfg = self.sim.cfg
        try:
            while not conn.closed:
                await asyncio.sleep(min(cfg.binance_ping_interval, 0.5))
                now = time.monotonic()
                if now - conn.opened >= cfg.max_lifetime:
                    await conn.close("max_lifetime", code=1000)
                    return
                if now - conn.last_pong >= cfg.binance_pong_timeout:
                    await conn.close("pong_timeout", code=1008)
                    return
                if now - conn.last_ping >= cfg.binance_ping_interval and not self.sim.faults.stalled("binance"):
                    conn.last_ping = now
                    await conn.ws.ping(str(now_ms()).encode())
        except (ConnectionError, RuntimeError):
            await conn.close("write_failed")

    def _request(self, conn: Conn, text: str) -> None:
        try:
            req = json.loads(text)
        except ValueError:
            conn.reply({"error": {"code": 3, "msg": "Invalid JSON: expected value at line 1 column 1"}, "id": None})
            return
        if not isinstance(req, dict):
            conn.reply({"error": {"code": 3, "msg": "Invalid JSON: expected an object"}, "id": None})
            return
        rid = req.get("id")
        if rid is not None and (not isinstance(rid, int) or isinstance(rid, bool) or rid < 0):
            conn.reply({"error": {"code": 2, "msg": "Invalid request: request ID must be an unsigned integer"},
                        "id": None})
            return
        method = req.get("method")
        if method is None:
            conn.reply({"error": {"code": 2, "msg": "Invalid request: missing field `method`"}, "id": rid})
            return
        if method == "LIST_SUBSCRIPTIONS":
            conn.reply({"result": list(conn.names), "id": rid})
            return
        if method in ("SET_PROPERTY", "GET_PROPERTY"):
            params = req.get("params")
            if not isinstance(params, list) or not params or not isinstance(params[0], str):
                conn.reply({"error": {"code": 2, "msg": "Invalid request: property name must be a string"}, "id": rid})
            elif params[0] != "combined":
                conn.reply({"error": {"code": 0, "msg": "Unknown property"}, "id": rid})
            elif method == "GET_PROPERTY":
                conn.reply({"result": conn.combined, "id": rid})
            elif len(params) < 2 or not isinstance(params[1], bool):
                conn.reply({"error": {"code": 1, "msg": "Invalid value type: expected Boolean"}, "id": rid})
            else:
                conn.combined = params[1]
                conn.reply({"result": None, "id": rid})
            return
        if method not in ("SUBSCRIBE", "UNSUBSCRIBE"):
            conn.reply({"error": {"code": 2, "msg": f"Invalid request: unknown variant `{str(method)[:40]}`, expected one "
                                  "of `SUBSCRIBE`, `UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`, `SET_PROPERTY`, "
                                  "`GET_PROPERTY`"}, "id": rid})
            return
        params = req.get("params")
        if not isinstance(params, list) or not params:
            conn.reply({"error": {"code": 2, "msg": "Invalid request: invalid stream"}, "id": rid})
            return
        if len(params) > 1024:
            conn.reply({"error": {"code": 2, "msg": "Invalid request: too many parameters"}, "id": rid})
            return
        keys = [parse_stream(p, self.market) for p in params]
        if any(k is None for k in keys):
            conn.reply({"error": {"code": 2, "msg": "Invalid request: invalid stream"}, "id": rid})
            return
        for name, key in zip(params, keys):
            if method == "SUBSCRIBE":
                self._subscribe(conn, name, key)
            elif name in conn.names:
                conn.names.remove(name)
                self.sim.engine.discard(conn, key)
        conn.rec["subscriptions"] = list(conn.names)
        conn.reply({"result": None, "id": rid})

    async def server_shutdown(self, grace_s: float) -> int:
        """Announce serverShutdown on every open socket; each keeps sending data for `grace_s`
        (the overlap in which a client opens its next socket), then all are closed together."""
        conns = [c for c in list(self.sim.conns.values()) if c.exchange == "binance"]
        ev = now_ms()
        payload = f'{{"e":"serverShutdown","E":{ev}}}'
        for c in conns:
            c.notice("serverShutdown", c.wrap("!serverShutdown", payload))
        await asyncio.sleep(grace_s)
        await asyncio.gather(*(c.close("server_shutdown", code=1001) for c in conns))
        return len(conns)


class ApiError(Exception):
    def __init__(self, code: int, msg: str):
        super().__init__(msg)
        self.code = code
        self.msg = msg
