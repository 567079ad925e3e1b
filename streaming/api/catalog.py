"""Which symbols each exchange has, for telling an unknown symbol (404) from a known one:
the symbols of `latest_prices`, re-read at most every `ttl_s` seconds; a symbol not there may
still have stored history (a backfilled market that never streamed): `has_history` asks
`candles_1m` by its primary key."""
from __future__ import annotations

import threading
import time

from common.topics import EXCHANGES


class Catalog:
    def __init__(self, pool, ttl_s: float = 30.0):
        self.pool = pool
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._at = -1e9
        self._symbols: dict[str, set[str]] = {ex: set() for ex in EXCHANGES}

    def symbols(self, exchange: str, wanted=()) -> set[str]:
        """The exchange's symbols; re-read when older than `ttl_s`, or when one of `wanted` is
        missing and the list is older than 0.2 s (a market that just started streaming)."""
        with self._lock:
            age = time.monotonic() - self._at
            stale = age > self.ttl_s or (age > 0.2 and not set(wanted) <= self._symbols.get(exchange, set()))
            if stale:
                with self.pool.cursor() as cur:
                    cur.execute("SELECT exchange, symbol FROM latest_prices")
                    fresh = {ex: set() for ex in EXCHANGES}
                    for ex, sym in cur.fetchall():
                        fresh.setdefault(ex, set()).add(sym)
                self._symbols, self._at = fresh, time.monotonic()
            return self._symbols.get(exchange, set())

    def known(self, exchange: str, symbol: str) -> bool:
        return symbol in self.symbols(exchange, (symbol,)) or self.has_history(exchange, symbol)

    def has_history(self, exchange: str, symbol: str) -> bool:
        with self.pool.cursor() as cur:
            cur.execute("SELECT 1 FROM candles_1m WHERE exchange = %s AND symbol = %s LIMIT 1", (exchange, symbol))
            return cur.fetchone() is not None
