"""The simulator settings that offer a given number of ticks per second to our extractors.

The simulator's `--rate` is trades/s per exchange, and its tickers sample the trades: KuCoin's
`/market/ticker:all` pushes each symbol's last trade of each 100 ms window, Binance's
`!miniTicker@arr` each symbol's last trade of each second (sim/README.md). So one symbol offers at
most 11 ticks/s, and a high tick rate needs many symbols. Which trades fall in which window is a
Poisson process per symbol with the rate the simulator's own market model gives it
(`sim.market.Market.lam_per_minute`), so the expected ticks/s of (symbols, rate) is computed here
from that model and each exchange's push interval (its plug's PUSH_INTERVAL_MS), not guessed:
with W pushes per symbol and minute at most (600 on KuCoin, 60 on Binance),

    ticks/s = sum over the symbols that trade there of W/60 * (1 - exp(-lambda_per_minute / W))

`plan(ticks_per_s)` picks the symbols (`TICKS_PER_SYMBOL` per symbol unless given) and solves for
the trade rate. Few trades per tick keep the simulator's own CPU small: at ~3 ticks/s per symbol
a tick costs ~1.5 trades (Binance's once-a-second ticker samples the most).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

from common.exchanges import EXCHANGES, plug

# ticks/s each symbol offers when --symbols is not given (both exchanges together)
TICKS_PER_SYMBOL = 3.0
MIN_SYMBOLS = 20


@dataclass(frozen=True)
class FeedPlan:
    ticks_per_s: float            # expected ticks/s over both exchanges (the model's figure)
    symbols: int                  # simulator --symbols
    rate: float                   # simulator --rate (trades/s per exchange)
    by_exchange: dict             # expected ticks/s per exchange
    trades_per_s: float           # trades/s the simulator generates, both exchanges

    def as_dict(self) -> dict:
        return {"expected_ticks_per_s": round(self.ticks_per_s), "symbols": self.symbols, "sim_rate": round(self.rate),
                "expected_by_exchange": {k: round(v) for k, v in self.by_exchange.items()},
                "sim_trades_per_s": round(self.trades_per_s)}


@lru_cache(maxsize=8)
def _universe(seed: int, symbols: int):
    from sim.market import build_universe

    return build_universe(seed, symbols)


def expected(symbols: int, rate: float, seed: int = 7, exchanges: tuple[str, ...] = EXCHANGES) -> FeedPlan:
    """Expected ticks/s our extractors receive from a simulator started with these options."""
    from sim.market import Market

    universe = _universe(seed, symbols)
    by_exchange, trades = {}, 0.0
    for ex in exchanges:
        market = Market(ex, seed, universe, rate)
        # a ticker pushes each symbol at most once per push interval (its last trade in it)
        windows_per_minute = 60_000 / plug(ex).PUSH_INTERVAL_MS
        by_exchange[ex] = sum(windows_per_minute / 60 * (1 - math.exp(-lam / windows_per_minute))
                              for lam in market.lam_per_minute if lam > 0)
        trades += market.effective_rate
    return FeedPlan(sum(by_exchange.values()), symbols, rate, by_exchange, trades)


def plan(ticks_per_s: float, symbols: int | None = None, seed: int = 7,
         exchanges: tuple[str, ...] = EXCHANGES) -> FeedPlan:
    """The simulator's (symbols, rate) that offer `ticks_per_s` in expectation. With `symbols`
    given, only the rate is solved; when those symbols cannot offer that many ticks even at the
    busiest rate the model allows, the plan says how many they can (ticks_per_s is lower)."""
    if ticks_per_s <= 0:
        raise ValueError("ticks_per_s must be positive")
    n = symbols if symbols is not None else max(MIN_SYMBOLS, math.ceil(ticks_per_s / TICKS_PER_SYMBOL))
    lo, hi = 0.0, max(1.0, ticks_per_s)
    # the model caps a symbol at 320 trades/s: beyond that a higher rate adds nothing
    while expected(n, hi, seed, exchanges).ticks_per_s < ticks_per_s and hi < 400 * n:
        lo, hi = hi, hi * 2
    best = expected(n, hi, seed, exchanges)
    if best.ticks_per_s < ticks_per_s:
        return best
    for _ in range(40):                   # bisection on the rate: ticks grow with it
        mid = (lo + hi) / 2
        if expected(n, mid, seed, exchanges).ticks_per_s < ticks_per_s:
            lo = mid
        else:
            hi = mid
        if hi - lo < max(1.0, hi * 1e-4):
            break
    return expected(n, hi, seed, exchanges)
