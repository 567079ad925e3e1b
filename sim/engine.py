"""The tick engine: advances every symbol's trade stream in real time and fans frames out.

Each step (default every 50 ms) takes, per exchange, every trade with t < now from the seeded
market, in time order, and builds only the frames somebody subscribed to. Frames go to each
connection's bounded queue as one batch per step; the connection's writer applies frame faults,
writes, and records the ticks it wrote in the ground truth.

Like the real exchanges, the ticker streams sample the trades: Binance's miniTicker carries the
last trade of each second, KuCoin's ticker the last trade of each 100 ms window (trades between
two pushes are never pushed). The windows are fixed slices of trade time, so which trades are
pushed is a function of the market alone; a window is pushed by the first step at or after its
end, whether or not a later trade came. Trade feeds, candles and REST see every trade.

Why one module of ~550 lines: the per-exchange frame builders share the step's state (trade
heads, subscriptions, running candles and windows) in the simulator's hottest loop; split across
modules they would reach into each other's attributes for no reader's benefit.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections import defaultdict

from sim.market import MINUTE_MS, Market, fmt_fixed, fmt_plain, is_buyer_maker
from sim.truth import now_ms

log = logging.getLogger("sim")

KUCOIN_TICKER_MS = 100      # KuCoin pushes a symbol's ticker at most once per window (docs: "100ms")
MAX_LAG_MS = 2000            # default: an engine this far behind real time drops its backlog (Engine.step)
QUEUE_BATCHES = 400          # per connection: ~20 s of steps; a client slower than that is dropped
_ids = itertools.count(1)


CONN_ID_HEADER = "X-Cryptopipe-Conn-Id"   # a client's own id for the socket (real exchanges ignore it)


def client_conn_id(request) -> str | None:
    """The client's `X-Cryptopipe-Conn-Id` upgrade header, if any: printable ASCII, at most 128 chars."""
    v = request.headers.get(CONN_ID_HEADER) if request is not None else None
    if not v:
        return None
    return "".join(ch for ch in v[:128] if " " <= ch <= "~") or None


def b8(value: int, decimals: int) -> str:
    """Binance style: always 8 decimals (values with more decimals are truncated to 8)."""
    if decimals > 8:
        return fmt_fixed(value // 10 ** (decimals - 8), 8, 8)
    return fmt_fixed(value, decimals, 8)


class Conn:
    """One websocket connection (either exchange)."""

    def __init__(self, sim, exchange: str, ws, request, path: str, extra: dict | None = None):
        self.sim = sim
        self.exchange = exchange
        self.ws = ws
        self.request = request
        self.id = f"{exchange[0]}{next(_ids)}"
        self.path = path
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=QUEUE_BATCHES)
        self.closed = False
        self.combined = False
        self.keys: set = set()            # engine subscription keys
        self.names: list[str] = []        # subscriptions as the client named them
        self.opened = time.monotonic()
        self.last_pong = time.monotonic()
        self.last_ping = time.monotonic()
        self.token = None
        # the per-socket accounting (sim.truth.Truth.open_conn): counters the writer keeps current
        self.rec = sim.truth.open_conn(self.id, exchange, path,
                                       client_conn_id=client_conn_id(request), **(extra or {}))

    def wrap(self, stream: str, payload: str) -> str:
        return f'{{"stream":"{stream}","data":{payload}}}' if self.combined else payload

    def push(self, batch: list) -> None:
        """Queue frames [(text, ticks|None)]; a full queue means a client too slow to keep: drop it."""
        if self.closed:
            return
        try:
            self.queue.put_nowait(batch)
        except asyncio.QueueFull:
            log.warning("connection %s too slow (queue full): closing", self.id)
            asyncio.get_running_loop().create_task(self.close("slow_consumer", code=1008))

    def reply(self, obj) -> None:
        if not self.sim.faults.stalled(self.exchange):
            self.push([(json.dumps(obj, separators=(",", ":")), None)])

    async def writer(self) -> None:
        sim, ex, ws, rec = self.sim, self.exchange, self.ws, self.rec
        faults, truth = sim.faults, sim.truth
        corrupt, dup = faults.corrupt[ex], faults.duplicate[ex]
        try:
            while not self.closed:
                batch = await self.queue.get()
                if batch is None:
                    break
                sent = now_ms()
                for frame, ticks in batch:
                    if self.closed or ws.closed:
                        return
                    if ticks is not None:
                        big = faults.oversized_pending[ex]
                        if big:
                            faults.oversized_pending[ex] = 0
                            pad = "x" * max(0, big - 40)
                            rec["frames_sent"] += 1
                            await ws.send_str(f'{{"e":"oversized","pad":"{pad}"}}')
                            faults.note("oversized_sent", conn_id=self.id, bytes=len(pad) + 23)
                        flag = ""
                        if (corrupt.count or corrupt.ratio) and corrupt.hit(faults.rng):
                            flag = corrupt.kind
                            frame = frame[: len(frame) // 2] if flag == "truncated" else frame.replace(":", ";", 1)
                            faults.note(flag + "_sent", conn_id=self.id, frame=frame[:200])
                        # recorded before the write: a frame can reach the client even when the
                        # socket dies during the write, so the truth must already hold it (a recorded
                        # frame that never arrived can only be the last one before a close)
                        self._account(ticks, sent, flag)
                        await ws.send_str(frame)
                        if (dup.count or dup.ratio) and dup.hit(faults.rng):
                            self._account(ticks, sent, "dup")
                            faults.note("duplicate_sent", conn_id=self.id, frame=frame[:200])
                            await ws.send_str(frame)
                    else:
                        rec["frames_sent"] += 1
                        await ws.send_str(frame)
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            pass
        finally:
            if not self.closed:
                await self.close("write_failed")

    def _account(self, ticks, sent: int, flag: str) -> None:
        """Record one data frame about to be written: in the truth and in this socket's counters."""
        rec = self.rec
        n = len(ticks)
        if n:
            self.sim.truth.add_many(self.id, ticks, sent, flag)
            if rec["first_sent_ms"] is None:
                rec["first_sent_ms"] = sent
            rec["last_sent_ms"] = sent
            if flag:
                rec["ticks_flagged"][flag] = rec["ticks_flagged"].get(flag, 0) + n
        self.sim.ticks_out += n
        rec["ticks_sent"] += n
        rec["data_frames_sent"] += 1
        rec["frames_sent"] += 1

    def notice(self, kind: str, frame: str) -> None:
        """Queue an announcement (serverShutdown, token expiry) and note when it was sent."""
        self.rec["notice"], self.rec["notice_ms"] = kind, now_ms()
        self.push([(frame, None)])

    async def close(self, reason: str, code: int = 1000, abort: bool = False, message: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        self.sim.engine.remove(self)
        self.sim.truth.close_conn(self.id, reason)
        self.sim.conns.pop(self.id, None)
        try:
            self.queue.put_nowait(None)
        except asyncio.QueueFull:
            pass
        try:
            if abort:
                tr = self.request.transport
                if tr is not None:
                    tr.abort()
            else:
                await asyncio.wait_for(self.ws.close(code=code, message=message.encode()), 2.0)
        except Exception:  # noqa: BLE001 - the peer may be gone already; the close is recorded
            pass


class Engine:
    def __init__(self, sim, markets: dict[str, Market], step_s: float = 0.05, max_lag_ms: int = MAX_LAG_MS):
        self.sim = sim
        self.max_lag_ms = max_lag_ms
        self.markets = markets
        self.step_s = step_s
        self.subs: dict[str, dict] = {ex: defaultdict(lambda: defaultdict(set)) for ex in markets}
        self.all_subs: dict[str, set] = {ex: set() for ex in markets}   # !miniTicker@arr / ticker:all
        start = now_ms()
        self.start_ms = start
        # nothing is generated until somebody subscribes (the first subscriber seeks to the present)
        self.streams: dict[str, list] = {ex: [] for ex in markets}
        self.idle = {ex: True for ex in markets}
        self.overload_skips = 0
        self.skipped_ms = 0
        self.last_ms = start
        u = next(iter(markets.values())).symbols
        self.canon = [s.canonical for s in u]
        self.bname = [s.binance for s in u]
        self.lname = [s.binance.lower() for s in u]
        self.pdec = [s.price_decimals for s in u]
        self.qdec = [s.qty_decimals for s in u]
        # Binance rolling state: 24h stats [o, h, l, v, qv, c, last_t] and per-second changes
        self.bstats: dict[int, list] = {}
        self.bsec = start // 1000
        self.changed: dict[int, None] = {}
        self.bkline: dict[int, list] = {}
        self.kcandle: dict[int, list] = {}
        # KuCoin ticker throttle: the latest trade per symbol in the current window, not yet pushed
        self.kwin = start // KUCOIN_TICKER_MS
        self.kpending: dict[int, tuple] = {}
        self.trades_in = {ex: 0 for ex in markets}     # trades taken from the market (bench figure)

    @staticmethod
    def _seek(m: Market, start: int) -> list:
        """Per trading symbol [next trade, trade generator, idx], positioned at `start` (ms)."""
        heads = []
        for s in m.symbols:
            if m.lam_per_minute[s.idx] <= 0:
                continue
            gen = m.trade_stream(s, start // MINUTE_MS, skip_before=start, raw=True)
            heads.append([next(gen), gen, s.idx])
        return heads

    def listened(self, ex: str) -> bool:
        return bool(self.all_subs[ex]) or any(self.subs[ex].values())

    # --- subscriptions
    def add(self, conn: Conn, key) -> None:
        ex = conn.exchange
        if key == "all":
            self.all_subs[ex].add(conn)
        else:
            kind, idx = key
            self.subs[ex][kind][idx].add(conn)
        conn.keys.add(key)

    def discard(self, conn: Conn, key) -> None:
        ex = conn.exchange
        if key == "all":
            self.all_subs[ex].discard(conn)
        else:
            kind, idx = key
            s = self.subs[ex][kind].get(idx)
            if s is not None:
                s.discard(conn)
                if not s:
                    del self.subs[ex][kind][idx]
                    # a running candle is only exact while somebody follows it
                    (self.bkline if ex == "binance" else self.kcandle).pop(idx, None)
        conn.keys.discard(key)

    def remove(self, conn: Conn) -> None:
        for key in list(conn.keys):
            self.discard(conn, key)

    # --- the loop
    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.step_s)
            try:
                self.step(now_ms())
            except Exception:  # noqa: BLE001 - a bug in one step must not stop the market
                log.exception("engine step failed")

    def step(self, now: int) -> None:
        if self.max_lag_ms and now - self.last_ms > self.max_lag_ms:
            # more trades than one core can write: drop the backlog unsent rather than fall further
            # behind (dropped trades are never sent, so the ground truth stays exact)
            self.overload_skips += 1
            self.skipped_ms += now - self.last_ms
            log.warning("engine %d ms behind: dropping the backlog", now - self.last_ms)
            self.sim.faults.note("overload_skip", behind_ms=now - self.last_ms)
            for heads in self.streams.values():
                for h in heads:
                    head, gen = h[0], h[1]
                    while head[0] < now:
                        head = next(gen)
                    h[0] = head
            self.bsec = now // 1000
            self.changed = {}
            self.bkline.clear()
            self.kcandle.clear()
            self.kwin = now // KUCOIN_TICKER_MS
            self.kpending = {}
            self.last_ms = now
            return
        for ex, heads in self.streams.items():
            if not self.listened(ex):
                # nobody listens: generate nothing; jump to the present when somebody comes
                self.idle[ex] = True
                continue
            if self.idle[ex]:
                self.idle[ex] = False
                heads = self.streams[ex] = self._seek(self.markets[ex], self.last_ms)
                if ex == "binance":
                    self.bsec = self.last_ms // 1000
                    self.changed = {}
                else:
                    self.kwin = self.last_ms // KUCOIN_TICKER_MS
                    self.kpending = {}
            trades = []
            drifts = self.markets[ex].drifts
            for h in heads:
                head = h[0]
                if head[0] >= now:
                    continue
                gen, idx = h[1], h[2]
                if drifts and idx in drifts:
                    # the market's streams are raw: a drift set after a trade was drawn still applies
                    drifted = self.markets[ex].drifted_price
                    while head[0] < now:
                        trades.append((head[0], idx, drifted(idx, head[0], head[1]), head[2], head[3]))
                        head = next(gen)
                else:
                    while head[0] < now:
                        trades.append((head[0], idx, head[1], head[2], head[3]))
                        head = next(gen)
                h[0] = head
            trades.sort()
            self.trades_in[ex] += len(trades)
            stalled = self.sim.faults.stalled(ex)
            out: dict[Conn, list] = defaultdict(list)
            if ex == "binance":
                self._binance(trades, now, out)
            else:
                self._kucoin(trades, now, out)
            if stalled:
                continue
            for conn, batch in out.items():
                conn.push(batch)
        self.last_ms = now

    # --- Binance
    def _bstat(self, idx: int, p: int) -> list:
        st = self.bstats.get(idx)
        if st is None:
            m = self.markets["binance"]
            s = m.symbols[idx]
            o = max(1, int(round(m.ref(s, self.start_ms - 86_400_000) * 10 ** s.price_decimals)))
            v0 = int(m.lam_per_minute[idx] * 1440 * s.qty_scale)
            st = self.bstats[idx] = [o, max(o, p), min(o, p), v0, v0 * o, p, 0]
        return st

    def _binance(self, trades, now: int, out) -> None:
        subs = self.subs["binance"]
        tsubs, bsubs, ksubs = subs["trade"], subs["bookTicker"], subs["kline_1m"]
        for t, idx, p, q, seq in trades:
            sec = t // 1000
            if sec > self.bsec:
                self._bflush(sec, out)
            st = self._bstat(idx, p)
            if p > st[1]:
                st[1] = p
            if p < st[2]:
                st[2] = p
            st[3] += q
            st[4] += p * q
            st[5] = p
            st[6] = t
            self.changed[idx] = None
            pd = self.pdec[idx]
            if idx in tsubs:
                qd = self.qdec[idx]
                pstr = b8(p, pd)
                m = "true" if is_buyer_maker(seq) else "false"
                payload = (f'{{"e":"trade","E":{t},"s":"{self.bname[idx]}","t":{seq},"p":"{pstr}",'
                           f'"q":"{b8(q, qd)}","T":{t},"m":{m},"M":true}}')
                tick = ("binance", "trade", self.canon[idx], t, seq, pstr)
                name = f"{self.lname[idx]}@trade"
                for c in tsubs[idx]:
                    out[c].append((c.wrap(name, payload), (tick,)))
            if idx in bsubs:
                qd = self.qdec[idx]
                bid = p if is_buyer_maker(seq) else p - 1
                bstr = b8(bid, pd)
                payload = (f'{{"u":{seq},"s":"{self.bname[idx]}","b":"{bstr}","B":"{b8(q + seq % 97, qd)}",'
                           f'"a":"{b8(bid + 1, pd)}","A":"{b8(q + seq % 89, qd)}"}}')
                tick = ("binance", "bookTicker", self.canon[idx], t, seq, bstr)
                name = f"{self.lname[idx]}@bookTicker"
                for c in bsubs[idx]:
                    out[c].append((c.wrap(name, payload), (tick,)))
            if idx in ksubs:
                k = self.bkline.get(idx)
                minute = t // MINUTE_MS
                if k is None or k[0] != minute:
                    k = self.bkline[idx] = self._start_candle("binance", idx, minute, t, k, p, seq)
                k[2] = max(k[2], p)
                k[3] = min(k[3], p)
                k[4] = p
                k[5] += q
                k[6] += p * q
                k[7] += 1
                k[9] = seq
                k[12] = t
                if not is_buyer_maker(seq):
                    k[10] += q
                    k[11] += p * q
        if now // 1000 > self.bsec:
            self._bflush(now // 1000, out)

    def _bflush(self, upto_sec: int, out) -> None:
        """Emit the per-second streams of every second before `upto_sec`."""
        while self.bsec < upto_sec:
            sec = self.bsec
            self.bsec += 1
            changed, self.changed = self.changed, {}
            subs = self.subs["binance"]
            arr = self.all_subs["binance"]
            msubs, ksubs = subs["miniTicker"], subs["kline_1m"]
            if changed and (arr or msubs):
                parts, ticks = [], []
                for idx in changed:
                    o, h, l, v, qv, c, t = self.bstats[idx]
                    pd, qd = self.pdec[idx], self.qdec[idx]
                    cstr = b8(c, pd)
                    payload = (f'{{"e":"24hrMiniTicker","E":{t},"s":"{self.bname[idx]}","c":"{cstr}",'
                               f'"o":"{b8(o, pd)}","h":"{b8(h, pd)}","l":"{b8(l, pd)}","v":"{b8(v, qd)}",'
                               f'"q":"{b8(qv, pd + qd)}"}}')
                    if arr:
                        parts.append(payload)
                        ticks.append(("binance", "miniTicker@arr", self.canon[idx], t, None, cstr))
                    if idx in msubs:
                        tick = ("binance", "miniTicker", self.canon[idx], t, None, cstr)
                        name = f"{self.lname[idx]}@miniTicker"
                        for cn in msubs[idx]:
                            out[cn].append((cn.wrap(name, payload), (tick,)))
                if arr:
                    frame = "[" + ",".join(parts) + "]"
                    ticks = tuple(ticks)
                    for cn in arr:
                        out[cn].append((cn.wrap("!miniTicker@arr", frame), ticks))
            if ksubs:
                closing = sec % 60 == 59
                for idx, conns in ksubs.items():
                    k = self.bkline.get(idx)
                    if k is None or k[0] != sec // 60 or not (idx in changed or closing):
                        continue
                    ev = k[12] if idx in changed else sec * 1000 + 999
                    payload = self._kline_payload(idx, k, ev, closing)
                    tick = ("binance", "kline_1m", self.canon[idx], ev, None, b8(k[4], self.pdec[idx]))
                    name = f"{self.lname[idx]}@kline_1m"
                    for cn in conns:
                        out[cn].append((cn.wrap(name, payload), (tick,)))

    def _start_candle(self, ex: str, idx: int, minute: int, t: int, prev, p: int, seq: int) -> list:
        """A running candle for `minute` before adding the trade at t: empty when the previous
        minute was followed continuously, else rebuilt from the market (trades before t)."""
        if prev is None or prev[0] != minute - 1:
            m = self.markets[ex]
            c = m.partial_candle(m.symbols[idx], minute, t - 1)
            if c is not None:
                return [minute, c.open, c.high, c.low, c.close, c.volume, c.quote_volume, c.trades,
                        c.first_seq, c.last_seq, c.taker_buy_volume, c.taker_buy_quote, t]
        return [minute, p, p, p, p, 0, 0, 0, seq, seq, 0, 0, t]

    def _kline_payload(self, idx: int, k: list, ev: int, closed: bool) -> str:
        minute, o, h, l, c, v, qv, n, first, last, tbv, tbq, _ = k
        pd, qd = self.pdec[idx], self.qdec[idx]
        t0 = minute * MINUTE_MS
        return (f'{{"e":"kline","E":{ev},"s":"{self.bname[idx]}","k":{{"t":{t0},"T":{t0 + MINUTE_MS - 1},'
                f'"s":"{self.bname[idx]}","i":"1m","f":{first},"L":{last},"o":"{b8(o, pd)}","c":"{b8(c, pd)}",'
                f'"h":"{b8(h, pd)}","l":"{b8(l, pd)}","v":"{b8(v, qd)}","n":{n},"x":{"true" if closed else "false"},'
                f'"q":"{b8(qv, pd + qd)}","V":"{b8(tbv, qd)}","Q":"{b8(tbq, pd + qd)}","B":"0"}}}}')

    # --- KuCoin
    def _kucoin(self, trades, now: int, out) -> None:
        subs = self.subs["kucoin"]
        allc = self.all_subs["kucoin"]
        tsubs, msubs, csubs = subs["ticker"], subs["match"], subs["candles"]
        canon = self.canon
        pending = self.kpending
        win = self.kwin
        for tr in trades:
            t, idx, p, q, seq = tr
            if allc or idx in tsubs:
                w = t // KUCOIN_TICKER_MS
                if w != win:
                    if pending:
                        self._kticker_flush(out)
                        pending = self.kpending
                    win = self.kwin = w
                pending[idx] = tr          # only the window's latest trade is pushed
            if idx in msubs:
                sym = canon[idx]
                pd, qd = self.pdec[idx], self.qdec[idx]
                pstr = fmt_plain(p, pd)
                side = "sell" if is_buyer_maker(seq) else "buy"
                frame = (f'{{"topic":"/market/match:{sym}","type":"message","subject":"trade.l3match","data":'
                         f'{{"makerOrderId":"{seq * 7919 % 16 ** 24:024x}","price":"{pstr}","sequence":"{seq}",'
                         f'"side":"{side}","size":"{fmt_plain(q, qd)}","symbol":"{sym}",'
                         f'"takerOrderId":"{seq * 104729 % 16 ** 24:024x}","time":"{t * 1_000_000}",'
                         f'"tradeId":"{seq}","type":"match"}}}}')
                item = (frame, (("kucoin", "match", sym, t, seq, pstr),))
                for c in msubs[idx]:
                    out[c].append(item)
            if idx in csubs:
                sym = canon[idx]
                pd, qd = self.pdec[idx], self.qdec[idx]
                pstr = fmt_plain(p, pd)
                minute = t // MINUTE_MS
                k = self.kcandle.get(idx)
                if k is None or k[0] != minute:
                    k = self.kcandle[idx] = self._start_candle("kucoin", idx, minute, t, k, p, seq)[:7]
                k[2] = max(k[2], p)
                k[3] = min(k[3], p)
                k[4] = p
                k[5] += q
                k[6] += p * q
                frame = (f'{{"topic":"/market/candles:{sym}_1min","type":"message","subject":"trade.candles.update",'
                         f'"data":{{"symbol":"{sym}","candles":["{minute * 60}","{fmt_plain(k[1], pd)}",'
                         f'"{pstr}","{fmt_plain(k[2], pd)}","{fmt_plain(k[3], pd)}","{fmt_plain(k[5], qd)}",'
                         f'"{fmt_plain(k[6], pd + qd)}"],"time":{t * 1_000_000}}}}}')
                item = (frame, (("kucoin", "candles", sym, t, seq, pstr),))
                for c in csubs[idx]:
                    out[c].append(item)
        # the window is over once now reaches its end (every trade with t < now was taken): push
        # its pending trades even when no later trade comes
        if pending and win < now // KUCOIN_TICKER_MS:
            self._kticker_flush(out)

    def _kticker_flush(self, out) -> None:
        """Push the pending window: per symbol one ticker frame with its latest trade."""
        pending, self.kpending = self.kpending, {}
        allc = self.all_subs["kucoin"]
        tsubs = self.subs["kucoin"]["ticker"]
        canon = self.canon
        for t, idx, p, q, seq in sorted(pending.values()):
            sym = canon[idx]
            pd, qd = self.pdec[idx], self.qdec[idx]
            pstr = fmt_plain(p, pd)
            qstr = fmt_plain(q, qd)
            if is_buyer_maker(seq):   # the trade hit the bid: bid = price, ask one tick above
                bid_s, ask_s = pstr, fmt_plain(p + 1, pd)
            else:
                bid_s, ask_s = fmt_plain(p - 1, pd), pstr
            data = (f'{{"bestAsk":"{ask_s}","bestAskSize":"{fmt_plain(q + seq % 89, qd)}",'
                    f'"bestBid":"{bid_s}","bestBidSize":"{qstr}",'
                    f'"price":"{pstr}","sequence":"{seq}","size":"{qstr}","time":{t}}}')
            if allc:
                frame = f'{{"topic":"/market/ticker:all","type":"message","subject":"{sym}","data":{data}}}'
                item = (frame, (("kucoin", "ticker:all", sym, t, seq, pstr),))
                for c in allc:
                    out[c].append(item)
            if idx in tsubs:
                frame = f'{{"topic":"/market/ticker:{sym}","type":"message","subject":"trade.ticker","data":{data}}}'
                item = (frame, (("kucoin", "ticker", sym, t, seq, pstr),))
                for c in tsubs[idx]:
                    out[c].append(item)
