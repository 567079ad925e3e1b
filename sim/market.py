"""The seeded market: symbols, trades and true 1-minute candles, all pure functions of the seed.

Every trade of (exchange, symbol, minute) comes from one `random.Random` seeded by
(seed, exchange, symbol index, minute): the websocket engine and the REST candles read the same
function, so the candle REST serves for a minute is exactly the aggregate of the trades the trade
feeds sent (the tickers send a sample of them: sim/engine.py).

Prices and quantities are integers in units of 10**-decimals (exact); they become strings only
when a frame or response is written. Trade times within one (symbol, minute) are distinct
milliseconds, so per symbol the event time of consecutive trades strictly increases.
The model depends on (seed, symbols, rate): the same three give the same market, until a drift
(`Market.set_drift`, the control API's `drift`) scales one symbol's prices on one exchange from a
given time on; the drift schedule is part of the model, so websockets, REST and the truth API
still agree, and what an exchange reported before a drift began or after it ended never changes.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

MINUTE_MS = 60_000
MAX_TRADES_PER_MINUTE = 24_000          # distinct ms per symbol-minute; caps one symbol at 400/s
ILLIQUID_TRADES_PER_MINUTE = 0.5        # P(no trade in a minute) = e^-0.5 ~ 61%
BINANCE_DECIMALS = 8                    # Binance pads every price/qty to 8 decimals

_REAL_BASES = [
    ("BTC", 60000.0), ("ETH", 3000.0), ("BNB", 550.0), ("XRP", 0.55), ("ADA", 0.45), ("SOL", 150.0),
    ("DOGE", 0.12), ("DOT", 6.5), ("LTC", 80.0), ("LINK", 14.0), ("TRX", 0.12), ("AVAX", 30.0),
    ("ATOM", 8.0), ("XLM", 0.11), ("NEAR", 5.0), ("UNI", 7.0), ("FIL", 5.0), ("APT", 9.0),
    ("ARB", 1.1), ("OP", 2.0), ("ETC", 25.0), ("HBAR", 0.08), ("VET", 0.03), ("ALGO", 0.18),
    ("AAVE", 90.0), ("EGLD", 35.0), ("SAND", 0.45), ("MANA", 0.4), ("AXS", 7.0), ("XTZ", 0.9),
    ("EOS", 0.7), ("THETA", 1.5), ("FTM", 0.6), ("KSM", 30.0), ("NKN", 0.1), ("LRC", 0.25),
    ("BLZ", 0.3), ("RUNE", 5.0), ("ZEC", 25.0), ("DASH", 28.0), ("NEO", 12.0), ("IOTA", 0.2),
    ("QTUM", 3.0), ("ZIL", 0.02), ("ONT", 0.2), ("ICX", 0.2), ("BAT", 0.22), ("ENJ", 0.25),
    ("CHZ", 0.08), ("HOT", 0.002), ("KEY", 0.005), ("MOG", 0.0000012), ("PEPE", 0.0000085),
]
_QUOTES = [("USDT", 1.0, 0.6), ("BTC", 60000.0, 0.2), ("ETH", 3000.0, 0.1), ("USDC", 1.0, 0.1)]


@dataclass(frozen=True)
class Symbol:
    idx: int
    base: str
    quote: str
    price_decimals: int        # price = price_int / 10**price_decimals
    qty_decimals: int
    ref_price: float           # the level the price oscillates around
    qty_scale: float           # mean trade size in qty units
    phases: tuple[float, float, float]
    illiquid: bool
    break_on_binance: bool     # listed on Binance with status BREAK: never trades there

    @property
    def canonical(self) -> str:
        return f"{self.base}-{self.quote}"

    @property
    def binance(self) -> str:
        return f"{self.base}{self.quote}"


def build_universe(seed: int, n: int) -> list[Symbol]:
    """n symbols, the same on both exchanges: real names first, then synthetic ones."""
    rng = random.Random(f"universe/{seed}")
    bases = list(_REAL_BASES)
    seen_bases = {b for b, _ in bases}
    while len(bases) < n:  # synthetic bases: 3-5 upper-case letters, sometimes a digit
        name = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(rng.randint(3, 5)))
        if rng.random() < 0.1:
            name += str(rng.randint(1, 9))
        if name not in seen_bases and name not in {q for q, _, _ in _QUOTES}:
            seen_bases.add(name)
            bases.append((name, 10 ** rng.uniform(-4, 2.5)))
    out: list[Symbol] = []
    names: set[str] = set()
    concat: set[str] = set()
    i = 0
    first = ["BTC-USDT", "ETH-USDT", "ETH-BTC", "BNB-USDT", "BNB-BTC"]
    pairs: list[tuple[str, float, str, float]] = []
    usd = dict(bases)
    usd.update({q: p for q, p, _ in _QUOTES})
    for f in first:
        b, q = f.split("-")
        pairs.append((b, usd[b], q, usd[q]))
    for b, p in bases:
        r = rng.random()
        acc = 0.0
        for q, qp, w in _QUOTES:
            acc += w
            if r <= acc:
                break
        if b == q:
            q, qp = "USDT", 1.0
        pairs.append((b, p, q, qp))
    for b, bp, q, qp in pairs:
        if len(out) >= n:
            break
        sym = f"{b}-{q}"
        if sym in names or f"{b}{q}" in concat:
            continue
        price = bp / qp
        if price < 1e-9:  # too small for 8-decimal quotes: quote it in USDT instead
            q, price, sym = "USDT", bp, f"{b}-USDT"
            if sym in names or f"{b}{q}" in concat:
                continue
        exp = math.floor(math.log10(price))
        pdec = max(0, min(BINANCE_DECIMALS, 5 - exp))
        qdec = max(0, min(BINANCE_DECIMALS, 2 + exp))
        illiquid = i >= 5 and rng.random() < 0.12
        brk = i >= 5 and not illiquid and rng.random() < 0.04
        notional_usd = 10 ** rng.uniform(1.0, 3.5)
        qty_scale = max(1.0, notional_usd / (price * qp) * 10 ** qdec)
        out.append(Symbol(i, b, q, pdec, qdec, price, qty_scale,
                          (rng.uniform(0, 6.3), rng.uniform(0, 6.3), rng.uniform(0, 6.3)), illiquid, brk))
        names.add(sym)
        concat.add(f"{b}{q}")
        i += 1
    return out


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 40:
        return max(0, int(round(rng.gauss(lam, math.sqrt(lam)))))
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def fmt_fixed(value: int, decimals: int, pad_to: int) -> str:
    """value / 10**decimals written with exactly `pad_to` decimals (pad_to >= decimals)."""
    v = value * 10 ** (pad_to - decimals)
    if pad_to == 0:
        return str(v)
    s = str(v).rjust(pad_to + 1, "0")
    return f"{s[:-pad_to]}.{s[-pad_to:]}"


def fmt_plain(value: int, decimals: int) -> str:
    """value / 10**decimals with trailing zeros stripped (KuCoin style: '67220', '0.0000001141')."""
    if decimals == 0:
        return str(value)
    s = str(value).rjust(decimals + 1, "0")
    whole, frac = s[:-decimals], s[-decimals:].rstrip("0")
    return f"{whole}.{frac}" if frac else whole


@dataclass(frozen=True)
class Candle:
    open_ms: int
    open: int
    high: int
    low: int
    close: int
    volume: int          # qty units
    quote_volume: int    # price units * qty units (decimals = price_decimals + qty_decimals)
    trades: int
    taker_buy_volume: int
    taker_buy_quote: int
    first_seq: int
    last_seq: int


def is_buyer_maker(seq: int) -> bool:
    return ((seq * 2654435761) >> 7) & 1 == 1


class Market:
    """One exchange's market over the shared universe. `rate` = trades/s over all symbols."""

    def __init__(self, exchange: str, seed: int, universe: list[Symbol], rate: float):
        self.exchange = exchange
        self.seed = seed
        self.symbols = universe
        self.salt = {"binance": 1, "kucoin": 2}[exchange]
        self.by_binance = {x.binance: x for x in universe}
        self.by_canonical = {x.canonical: x for x in universe}
        rng = random.Random(f"liquidity/{seed}/{exchange}")
        weights = []
        for s in universe:
            weights.append(0.0 if (s.illiquid or self.trades_never(s)) else 10 ** rng.uniform(0, 0.8))
        illiquid_rate = sum(ILLIQUID_TRADES_PER_MINUTE / 60 for s in universe
                            if s.illiquid and not self.trades_never(s))
        liquid_rate = max(0.0, rate - illiquid_rate)
        total = sum(weights) or 1.0
        self.lam_per_minute: list[float] = []
        for s, w in zip(universe, weights):
            if self.trades_never(s):
                lam = 0.0
            elif s.illiquid:
                lam = ILLIQUID_TRADES_PER_MINUTE
            else:
                lam = min(liquid_rate * w / total * 60, MAX_TRADES_PER_MINUTE * 0.8)
            self.lam_per_minute.append(lam)
        self.effective_rate = sum(self.lam_per_minute) / 60
        self._candle = lru_cache(maxsize=200_000)(self._candle_uncached)
        # symbol idx -> drift periods [start_ms, end_ms (None: open), bps, numerator, denominator]
        self.drifts: dict[int, list[list]] = {}

    # --- drift: one symbol's prices on this exchange scaled by (1 + bps/10000) over a period
    def set_drift(self, s: Symbol, bps, start_ms: int, end_ms: int | None = None) -> list:
        """From start_ms on (to end_ms, or open), scale `s`'s trade prices by 1 + bps/10000; a
        running drift of `s` ends at start_ms. bps = 0 only ends it. Returns the periods of `s`."""
        f = Fraction(str(bps))
        if not -10_000 < f <= 100_000:
            raise ValueError("bps must be > -10000 (prices stay positive) and <= 100000")
        periods = [p for p in self.drifts.get(s.idx, []) if p[0] < start_ms]
        for p in periods:
            if p[1] is None or p[1] > start_ms:
                p[1] = start_ms
        if f:
            factor = 1 + f / 10_000
            periods.append([start_ms, end_ms, bps, factor.numerator, factor.denominator])
        if periods:
            self.drifts[s.idx] = periods
        else:
            self.drifts.pop(s.idx, None)
        self._candle.cache_clear()       # a cached minute may reach past start_ms
        return periods

    def end_drifts(self, at_ms: int) -> list[tuple[Symbol, list]]:
        """End every drift still running at `at_ms`; returns the (symbol, period) pairs ended."""
        ended = []
        for idx, periods in self.drifts.items():
            for p in periods:
                if p[0] < at_ms and (p[1] is None or p[1] > at_ms):
                    p[1] = at_ms
                    ended.append((self.symbols[idx], p))
            self.drifts[idx] = [p for p in periods if p[0] < at_ms]
        self.drifts = {i: ps for i, ps in self.drifts.items() if ps}
        self._candle.cache_clear()
        return ended

    def drifted_price(self, idx: int, t: int, p: int) -> int:
        """The price of a trade at t after any drift of symbol idx (exact integers, rounded half
        up, at least one tick: decimals are kept and the price stays positive)."""
        for start, end, _, num, den in self.drifts.get(idx, ()):
            if start <= t and (end is None or t < end):
                return max(1, (2 * p * num + den) // (2 * den))
        return p

    def trades_never(self, s: Symbol) -> bool:
        return self.exchange == "binance" and s.break_on_binance

    def ref(self, s: Symbol, t_ms: int) -> float:
        t = t_ms / 1000.0
        a, b, c = s.phases
        x = (0.05 * math.sin(t / 41253.0 + a) + 0.012 * math.sin(t / 2291.8 + b)
             + 0.003 * math.sin(t / 66.8 + c))
        return s.ref_price * math.exp(x)

    def minute_trade_iter(self, s: Symbol, minute: int, skip_before: int = 0, raw: bool = False):
        """Trades of `s` in `minute` (minutes since the epoch), lazily: (t_ms, price_int, qty_int, seq).

        A Poisson process with distinct-millisecond arrivals; the engine streams it, REST lists it.
        Arrival times and values come from two random streams, so trades before `skip_before`
        (not yielded) cost two draws each and the rest are identical to an unskipped run.
        `raw`: prices before any drift (the engine reads ahead, so it applies drifts when it takes
        a trade: `drifted_price`).
        """
        lam = self.lam_per_minute[s.idx]
        if lam <= 0:
            return
        key = (self.seed * 1_000_003 + self.salt) * 10_000_019 + s.idx * 100_000_007 + minute
        rt = random.Random(key).random
        values = random.Random(key ^ 0x5DEECE66D)
        rv = values.random
        skipped = 0
        log = math.log
        mean_gap = MINUTE_MS / lam
        base_ms = minute * MINUTE_MS
        scale = 10 ** s.price_decimals
        qscale = s.qty_scale
        seq = minute * MINUTE_MS
        off = -1
        ref_sec = -1
        ref = 0.0
        drift = not raw and s.idx in self.drifts
        for _ in range(MAX_TRADES_PER_MINUTE):
            off += 1 + int(-log(1.0 - rt()) * mean_gap)
            if off >= MINUTE_MS:
                return
            t = base_ms + off
            seq += 1
            if t < skip_before:
                skipped += 1
                continue
            if skipped:
                # two random() per skipped trade = four 32-bit words: consume them in one call
                values.getrandbits(128 * skipped)
                skipped = 0
            u1 = rv()
            u2 = rv()
            sec = t // 1000
            if sec != ref_sec:
                ref_sec = sec
                ref = self.ref(s, sec * 1000) * scale
            p = int(ref * (1.0 + 0.0012 * (u1 - 0.5)) + 0.5)
            if p <= 0:
                p = 1
            if drift:
                p = self.drifted_price(s.idx, t, p)
            yield (t, p, int(-log(1.0 - u2) * qscale) + 1, seq)

    def minute_trades(self, s: Symbol, minute: int) -> list[tuple[int, int, int, int]]:
        return list(self.minute_trade_iter(s, minute))

    def trade_stream(self, s: Symbol, minute: int, skip_before: int = 0, raw: bool = False):
        """Every trade of `s` from `skip_before` (ms) on, forever (only for symbols that trade)."""
        yield from self.minute_trade_iter(s, minute, skip_before, raw)
        while True:
            minute += 1
            yield from self.minute_trade_iter(s, minute, raw=raw)

    def candle(self, s: Symbol, minute: int) -> Candle | None:
        """The true candle of a whole minute, None if no trade (cached)."""
        return self._candle(s.idx, minute)

    def _candle_uncached(self, idx: int, minute: int) -> Candle | None:
        return aggregate(minute, self.minute_trades(self.symbols[idx], minute))

    def partial_candle(self, s: Symbol, minute: int, until_ms: int) -> Candle | None:
        """Aggregate of the trades of `minute` with t <= until_ms (the still-open minute)."""
        if (minute + 1) * MINUTE_MS - 1 <= until_ms:
            return self.candle(s, minute)
        return aggregate(minute, [tr for tr in self.minute_trades(s, minute) if tr[0] <= until_ms])

    def last_close_before(self, s: Symbol, minute: int, lookback: int = 1440) -> int:
        """Close of the last minute before `minute` that traded; the model level if none in lookback."""
        for m in range(minute - 1, minute - 1 - lookback, -1):
            c = self.candle(s, m)
            if c is not None:
                return c.close
        return max(1, int(round(self.ref(s, minute * MINUTE_MS) * 10 ** s.price_decimals)))


def aggregate(minute: int, trades) -> Candle | None:
    if not trades:
        return None
    o = trades[0][1]
    c = trades[-1][1]
    hi = lo = o
    vol = qv = tbv = tbq = 0
    for _, p, q, seq in trades:
        if p > hi:
            hi = p
        elif p < lo:
            lo = p
        vol += q
        qv += p * q
        if not is_buyer_maker(seq):
            tbv += q
            tbq += p * q
    return Candle(minute * MINUTE_MS, o, hi, lo, c, vol, qv, len(trades), tbv, tbq, trades[0][3], trades[-1][3])
