"""KuCoin spot: REST market data under /kucoin, the websocket (from bullet-public) at /kucoin-ws/endpoint.

REST: POST /api/v1/bullet-public, GET /api/v1/timestamp, /api/v1/status, /api/v2/symbols (and v1),
/api/v3/currencies, /api/v1/market/allTickers, /api/v1/market/candles (1min; startAt/endAt in
seconds, open_time in [startAt, endAt), newest first, <= 1500 rows, no row for a minute without
trades), /api/v1/market/histories. Public pool of --kucoin-pool requests per 30 s; over it 429
{"code":"429000",...}. Errors otherwise come as HTTP 200/400 with code != "200000".
Websocket: ?token=&connectId=; welcome first; subscribe/unsubscribe (ack when response is true);
ping -> pong; closed without a ping within pingInterval + pingTimeout; expired tokens get
{"type":"error","code":401,"data":"token is expired"} and a close.
"""
from __future__ import annotations

import asyncio
import json
import secrets
import time

from aiohttp import WSMsgType, web

from sim.engine import Conn
from sim.market import MINUTE_MS, fmt_plain, is_buyer_maker
from sim.truth import now_ms

TOPIC_KINDS = {"/market/ticker": "ticker", "/market/match": "match", "/market/candles": "candles"}


class KucoinError(Exception):
    def __init__(self, code: str, msg: str, status: int = 200):
        super().__init__(msg)
        self.code, self.msg, self.status = code, msg, status


class Kucoin:
    def __init__(self, sim):
        self.sim = sim
        self.market = sim.markets["kucoin"]
        self.tokens: dict[str, bool] = {}      # token -> valid
        self.pool: list[float] = []            # request times in the current 30 s window

    def routes(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/kucoin/api/v1/bullet-public", self.rest)
        for path in ("/api/v1/timestamp", "/api/v1/status", "/api/v2/symbols", "/api/v1/symbols",
                     "/api/v3/currencies", "/api/v1/market/allTickers", "/api/v1/market/candles",
                     "/api/v1/market/histories"):
            r.add_get("/kucoin" + path, self.rest)
        r.add_get("/kucoin-ws/endpoint", self.ws)

    # --- REST
    def _json(self, body, status=200) -> web.Response:
        remaining = max(0, self.sim.cfg.kucoin_pool - len(self.pool))
        return web.Response(text=json.dumps(body, separators=(",", ":")), status=status,
                            content_type="application/json",
                            headers={"gw-ratelimit-limit": str(self.sim.cfg.kucoin_pool),
                                     "gw-ratelimit-remaining": str(remaining),
                                     "gw-ratelimit-reset": str(self._reset_ms())})

    def _reset_ms(self) -> int:
        return int(max(0.0, (self.pool[0] + 30 - time.time()) * 1000)) if self.pool else 30_000

    async def rest(self, request: web.Request) -> web.Response:
        sim = self.sim
        sim.rest_calls["kucoin"] += 1
        delay = sim.faults.rest_delay("kucoin")
        if delay:
            await asyncio.sleep(delay)
        forced = sim.faults.rest_fault("kucoin")
        if forced in (429, 418):
            return self._json({"code": "429000", "msg": "Too Many Requests"}, 429)
        if forced:
            return web.Response(status=503, text="Service Unavailable")
        now = time.time()
        self.pool = [t for t in self.pool if t > now - 30]
        if len(self.pool) >= sim.cfg.kucoin_pool:
            return self._json({"code": "429000", "msg": "Too many requests. System-level rate limit exceeded."}, 429)
        self.pool.append(now)
        path = request.path[len("/kucoin"):]
        try:
            data = {
                "/api/v1/bullet-public": self._bullet,
                "/api/v1/timestamp": lambda q, r: now_ms(),
                "/api/v1/status": lambda q, r: {"status": "open", "msg": ""},
                "/api/v2/symbols": self._symbols,
                "/api/v1/symbols": self._symbols,
                "/api/v3/currencies": self._currencies,
                "/api/v1/market/allTickers": self._all_tickers,
                "/api/v1/market/candles": self._candles,
                "/api/v1/market/histories": self._histories,
            }[path](request.query, request)
        except KucoinError as e:
            return self._json({"code": e.code, "msg": e.msg}, e.status)
        return self._json({"code": "200000", "data": data})

    def _bullet(self, q, request):
        token = secrets.token_urlsafe(48) + "." + secrets.token_urlsafe(16)
        if len(self.tokens) >= 100_000:          # forget the oldest tokens (dicts keep insertion order)
            for old in list(self.tokens)[:10_000]:
                del self.tokens[old]
        self.tokens[token] = True
        host = request.host or f"127.0.0.1:{self.sim.port}"
        return {"token": token, "instanceServers": [{
            "endpoint": f"ws://{host}/kucoin-ws/endpoint", "encrypt": False, "protocol": "websocket",
            "pingInterval": int(self.sim.cfg.kucoin_ping_interval * 1000),
            "pingTimeout": int(self.sim.cfg.kucoin_ping_timeout * 1000)}]}

    def _symbols(self, q, r):
        out = []
        market = q.get("market")
        for s in self.market.symbols:
            mk = "USDS" if s.quote in ("USDT", "USDC") else s.quote
            if market and market != mk:
                continue
            out.append({
                "symbol": s.canonical, "name": s.canonical, "baseCurrency": s.base, "quoteCurrency": s.quote,
                "feeCurrency": s.quote, "market": mk, "baseMinSize": fmt_plain(1, s.qty_decimals),
                "quoteMinSize": "0.1", "baseMaxSize": "10000000000", "quoteMaxSize": "99999999",
                "baseIncrement": fmt_plain(1, s.qty_decimals), "quoteIncrement": fmt_plain(1, s.price_decimals),
                "priceIncrement": fmt_plain(1, s.price_decimals), "priceLimitRate": "0.1", "minFunds": "0.1",
                "isMarginEnabled": False, "enableTrading": True, "feeCategory": 1, "makerFeeCoefficient": "1.00",
                "takerFeeCoefficient": "1.00", "st": False, "callauctionIsEnabled": False,
                "callauctionPriceFloor": None, "callauctionPriceCeiling": None,
                "callauctionFirstStageStartTime": None, "callauctionSecondStageStartTime": None,
                "callauctionThirdStageStartTime": None, "tradingStartTime": None})
        return out

    def _currencies(self, q, r):
        names = sorted({s.base for s in self.market.symbols} | {s.quote for s in self.market.symbols})
        return [{"currency": c, "name": c, "fullName": c, "precision": 8, "confirms": None, "contractAddress": None,
                 "isMarginEnabled": False, "isDebitEnabled": False, "chains": [{
                     "chainName": c, "withdrawalMinSize": "1", "depositMinSize": None, "withdrawFeeRate": "0",
                     "withdrawalMinFee": "0.1", "isWithdrawEnabled": True, "isDepositEnabled": True, "confirms": 12,
                     "preConfirms": 12, "contractAddress": "", "withdrawPrecision": 8, "maxWithdraw": None,
                     "maxDeposit": None, "needTag": False, "chainId": c.lower()}]} for c in names]

    def _all_tickers(self, q, r):
        now = now_ms()
        m = self.market
        out = []
        cur = now // MINUTE_MS
        for s in m.symbols:
            pd, qd = s.price_decimals, s.qty_decimals
            c = m.partial_candle(s, cur, now)           # the last trade so far, never a later one
            last = c.close if c is not None else m.last_close_before(s, cur, lookback=120)
            day = max(1, int(round(m.ref(s, now - 86_400_000) * 10 ** pd)))
            vol = int(m.lam_per_minute[s.idx] * 1440 * s.qty_scale)
            out.append({"symbol": s.canonical, "symbolName": s.canonical, "buy": fmt_plain(last, pd),
                        "bestBidSize": fmt_plain(max(1, vol // 1000), qd), "sell": fmt_plain(last + 1, pd),
                        "bestAskSize": fmt_plain(max(1, vol // 900), qd),
                        "changeRate": f"{(last - day) / day:.4f}", "changePrice": fmt_plain(abs(last - day), pd)
                        if last >= day else "-" + fmt_plain(day - last, pd),
                        "high": fmt_plain(max(last, day), pd), "low": fmt_plain(min(last, day), pd),
                        "vol": fmt_plain(vol, qd), "volValue": fmt_plain(vol * last, pd + qd),
                        "last": fmt_plain(last, pd), "averagePrice": fmt_plain((last + day) // 2, pd),
                        "takerFeeRate": "0.001", "makerFeeRate": "0.001", "takerCoefficient": "1",
                        "makerCoefficient": "1"})
        return {"time": now, "ticker": out}

    def _symbol(self, q):
        name = q.get("symbol")
        s = self.market.by_canonical.get(name or "")
        if s is None:
            raise KucoinError("400100", "This pair is not provided at present.")
        return s

    @staticmethod
    def _secs(q, key):
        v = q.get(key)
        if v in (None, ""):
            return 0
        try:
            return int(v)
        except ValueError:
            raise KucoinError("400100", f"Invalid Parameter {key}.", 400)

    def _candles(self, q, r):
        s = self._symbol(q)
        typ = q.get("type")
        if typ != "1min":
            raise KucoinError("400100", "This type of Candlestick is currently not provided.")
        start, end = self._secs(q, "startAt"), self._secs(q, "endAt")
        now = now_ms()
        cur = now // MINUTE_MS
        if end == 0 or end * 1000 > now:
            last = cur
        else:
            last = -(-end * 1000 // MINUTE_MS) - 1       # open_time < endAt
        first = -(-start * 1000 // MINUTE_MS) if start else last - 1499
        first = max(first, last - 1499)                  # newest 1500 rows at most
        return self.candle_rows(s, first, last, now)

    def candle_rows(self, s, first: int, last: int, now: int) -> list:
        pd, qd = s.price_decimals, s.qty_decimals
        rows = []
        for minute in range(last, first - 1, -1):
            c = self.market.partial_candle(s, minute, now)
            if c is None:
                continue
            rows.append([str(minute * 60), fmt_plain(c.open, pd), fmt_plain(c.close, pd), fmt_plain(c.high, pd),
                         fmt_plain(c.low, pd), fmt_plain(c.volume, qd), fmt_plain(c.quote_volume, pd + qd)])
        return rows

    def _histories(self, q, r):
        s = self._symbol(q)
        now = now_ms()
        minute = now // MINUTE_MS
        out = []
        while len(out) < 100 and minute > now // MINUTE_MS - 60:
            out[:0] = [tr for tr in self.market.minute_trades(s, minute) if tr[0] <= now]
            minute -= 1
        pd, qd = s.price_decimals, s.qty_decimals
        return [{"sequence": str(seq), "price": fmt_plain(p, pd), "size": fmt_plain(qq, qd),
                 "side": "sell" if is_buyer_maker(seq) else "buy", "time": t * 1_000_000}
                for t, p, qq, seq in out[-100:]]

    # --- websocket
    def parse_topic(self, topic) -> list | str:
        """-> list of engine keys, or an error text."""
        if not isinstance(topic, str) or ":" not in topic:
            return "topic does not exist"
        prefix, _, arg = topic.partition(":")
        kind = TOPIC_KINDS.get(prefix)
        if kind is None:
            return "topic does not exist"
        if kind == "ticker" and arg == "all":
            return ["all"]
        keys = []
        for part in arg.split(","):
            name = part
            if kind == "candles":
                name, sep, typ = part.rpartition("_")
                if not sep or typ != "1min":
                    return f"topic {topic} is not found"
            s = self.market.by_canonical.get(name)
            if s is None:
                return f"topic {topic} is not found"
            keys.append((kind, s.idx))
        return keys or "topic does not exist"

    async def ws(self, request: web.Request):
        sim = self.sim
        if sim.faults.in_outage("kucoin"):
            return web.Response(status=503, text="Service Unavailable")
        token = request.query.get("token", "")
        connect_id = request.query.get("connectId") or secrets.token_hex(5)
        ws = web.WebSocketResponse(autoping=False, max_msg_size=1 << 20, compress=False)
        await ws.prepare(request)
        if not self.tokens.get(token):
            await ws.send_str(json.dumps({"id": connect_id, "type": "error", "code": 401, "data": "token is expired"}))
            await ws.close(code=1000)
            sim.faults.note("token_refused", token_known=token in self.tokens)
            return ws
        conn = Conn(sim, "kucoin", ws, request, request.path, extra={"connect_id": connect_id[:128]})
        conn.token = token
        sim.conns[conn.id] = conn
        conn.reply({"id": connect_id, "type": "welcome"})
        loop = asyncio.get_running_loop()
        writer = loop.create_task(conn.writer())
        keeper = loop.create_task(self._keeper(conn))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self._message(conn, msg.data)
                elif msg.type == WSMsgType.PING:
                    if not sim.faults.stalled("kucoin"):
                        await ws.pong(msg.data)
                elif msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                    break
        finally:
            keeper.cancel()
            await conn.close("client_closed")
            writer.cancel()
        return ws

    async def _keeper(self, conn: Conn) -> None:
        cfg = self.sim.cfg
        limit = cfg.kucoin_ping_interval + cfg.kucoin_ping_timeout
        while not conn.closed:
            await asyncio.sleep(min(0.5, limit / 4))
            if time.monotonic() - conn.last_ping > limit:
                await conn.close("ping_timeout", code=1000)
                return

    def _message(self, conn: Conn, text: str) -> None:
        try:
            msg = json.loads(text)
        except ValueError:
            conn.reply({"id": "", "type": "error", "code": 400, "data": "invalid message"})
            return
        if not isinstance(msg, dict):
            conn.reply({"id": "", "type": "error", "code": 400, "data": "invalid message"})
            return
        mid = msg.get("id")
        sid = "" if mid is None else str(mid)
        typ = msg.get("type")
        if typ == "ping":
            conn.last_ping = time.monotonic()
            conn.reply({"id": sid, "type": "pong"})
            return
        if typ not in ("subscribe", "unsubscribe"):
            conn.reply({"id": sid, "type": "error", "code": 400, "data": "type is not supported"})
            return
        topic = msg.get("topic")
        keys = self.parse_topic(topic)
        if isinstance(keys, str):
            conn.reply({"id": sid, "type": "error", "code": 404, "data": keys})
            return
        for k in keys:
            if typ == "subscribe":
                self.sim.engine.add(conn, k)
            else:
                self.sim.engine.discard(conn, k)
        if typ == "subscribe":
            if topic not in conn.names:
                conn.names.append(topic)
        elif topic in conn.names:
            conn.names.remove(topic)
        conn.rec["subscriptions"] = list(conn.names)
        if msg.get("response"):
            conn.reply({"id": sid, "type": "ack"})

    async def expire_tokens(self, close: bool = True, grace_s: float = 0.05) -> int:
        """Every token issued so far becomes invalid. With `close`, each open socket gets the 401
        error frame, keeps sending data for `grace_s` (the old socket may deliver until it is
        closed, as a real one does while its client rotates), then all are closed together."""
        for t in self.tokens:
            self.tokens[t] = False
        if not close:
            return 0
        conns = [c for c in list(self.sim.conns.values()) if c.exchange == "kucoin"]
        for c in conns:
            c.notice("token_expired", json.dumps({"type": "error", "code": 401, "data": "token is expired"}))
        await asyncio.sleep(grace_s)
        await asyncio.gather(*(c.close("token_expired", code=1000) for c in conns))
        return len(conns)
