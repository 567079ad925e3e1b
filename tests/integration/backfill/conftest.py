"""Backfill integration fixtures: a simulator the REST clients point at, and a private time window.

Every test works in a random historical window (days ago: the simulator's market is a pure
function of time) on a few simulator symbols, and deletes exactly its rows afterwards, so it
neither sees nor disturbs the streaming tests that run at the same time on the same database.
"""
import gzip
import json
import random
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

UTC = timezone.utc


def ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def reset_backfill_state():
    from backfill.engine import reset_clients
    from backfill.ratelimit import reset_budgets
    from backfill.rest import forget_markets
    from common.settings import get_settings

    get_settings.cache_clear()
    reset_budgets()
    forget_markets()
    reset_clients()


@pytest.fixture
def sim_rest(stack, sim_factory, monkeypatch):
    from sim.market import build_universe

    # a fresh market per test, with illiquid symbols (minutes without a trade) on both exchanges
    seed = next(seed for seed in iter(lambda: random.randint(1000, 99999), None)
                if sum(s.illiquid and not s.break_on_binance for s in build_universe(seed, 20)) >= 2)
    sim = sim_factory(symbols=20, rate=20, seed=seed)
    monkeypatch.setenv("BINANCE_REST_URL", sim.env["BINANCE_REST_URL"])
    monkeypatch.setenv("KUCOIN_REST_URL", sim.env["KUCOIN_REST_URL"])
    reset_backfill_state()
    yield sim
    monkeypatch.undo()
    reset_backfill_state()


class Window:
    """A private historical window; cleanup() deletes every row the test wrote in it."""

    def __init__(self, pg, minutes: int):
        rng = random.Random()
        now = datetime.now(UTC).replace(second=0, microsecond=0)
        self.start = now - timedelta(days=rng.randint(2, 6), minutes=rng.randint(0, 1439)) - timedelta(minutes=minutes)
        self.end = self.start + timedelta(minutes=minutes)
        self.pg = pg
        self.symbols: dict[str, set[str]] = {}
        self.conn_ids: list[str] = []

    def use(self, exchange: str, symbols) -> list[str]:
        self.symbols.setdefault(exchange, set()).update(symbols)
        return list(symbols)

    def cleanup(self):
        lo, hi = self.start - timedelta(hours=2), self.end + timedelta(days=5)
        with self.pg.cursor() as cur:
            for exchange, symbols in self.symbols.items():
                syms = sorted(symbols)
                cur.execute("DELETE FROM candles_1m WHERE exchange = %s AND symbol = ANY(%s) "
                            "AND open_time >= %s AND open_time < %s", (exchange, syms, lo, hi))
                cur.execute("DELETE FROM backfill_chunks WHERE exchange = %s AND symbol = ANY(%s) "
                            "AND chunk_start >= %s AND chunk_start < %s", (exchange, syms, lo, hi))
                cur.execute("DELETE FROM ticks WHERE exchange = %s AND symbol = ANY(%s) "
                            "AND event_time >= %s AND event_time < %s", (exchange, syms, lo, hi))
                cur.execute("DELETE FROM gaps WHERE exchange = %s AND gap_start >= %s AND gap_start < %s "
                            "AND (symbol IS NULL OR symbol = ANY(%s))", (exchange, lo, hi, syms))
                # per exchange and minute: the windows are private, so are their minutes' checks
                cur.execute("DELETE FROM candle_checks WHERE exchange = %s AND minute >= %s AND minute < %s",
                            (exchange, lo, self.end + timedelta(hours=2)))
            if self.conn_ids:
                cur.execute("DELETE FROM stream_sessions WHERE conn_id = ANY(%s)", (self.conn_ids,))


@pytest.fixture
def window(pg):
    made = []

    def make(minutes: int) -> Window:
        w = Window(pg, minutes)
        made.append(w)
        return w

    yield make
    for w in made:
        w.cleanup()


def pick_symbols(ctl, exchange: str, n_liquid: int = 2, n_illiquid: int = 1) -> list[str]:
    listed = [s for s in ctl.symbols(exchange) if s["status"] == "TRADING"]
    liquid = [s["symbol"] for s in listed if not s["illiquid"]]
    illiquid = [s["symbol"] for s in listed if s["illiquid"]]
    rng = random.Random()
    return sorted(rng.sample(liquid, n_liquid) + rng.sample(illiquid, min(n_illiquid, len(illiquid))))


def stored_candles(pg, exchange, symbol, start, end) -> dict:
    with pg.cursor() as cur:
        cur.execute("SELECT open_time, open, high, low, close, volume, confirmed_empty, source FROM candles_1m "
                    "WHERE exchange = %s AND symbol = %s AND open_time >= %s AND open_time < %s",
                    (exchange, symbol, start, end))
        return {r[0]: r[1:] for r in cur.fetchall()}


def assert_matches_truth(pg, ctl, exchange, symbols, start, end, *, source="rest"):
    """Every minute of [start, end) of every symbol is stored with the simulator's true values."""
    minutes = int((end - start).total_seconds() // 60)
    empty = 0
    for symbol in symbols:
        truth = {c["open_ms"]: c for c in ctl.candles(exchange, symbol, ms(start), ms(end) - 1)}
        stored = stored_candles(pg, exchange, symbol, start, end)
        assert len(stored) == minutes, f"{exchange} {symbol}: {len(stored)} of {minutes} minutes stored"
        for i in range(minutes):
            t = start + timedelta(minutes=i)
            o, h, l, c, v, confirmed_empty, src = stored[t]
            if source is not None:
                assert src == source, (symbol, t, src)
            true = truth.get(ms(t))
            if true is None:                        # KuCoin: no row = no trade
                assert exchange == "kucoin" and confirmed_empty and o is None, (symbol, t, stored[t])
                empty += 1
                continue
            assert (o, h, l, c, v) == tuple(Decimal(true[k]) for k in ("open", "high", "low", "close", "volume")), \
                (exchange, symbol, t, stored[t], true)
            assert confirmed_empty == (Decimal(true["volume"]) == 0), (symbol, t)
            empty += confirmed_empty
    return empty


def read_archive(s3, bucket, key) -> dict:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return json.loads(gzip.decompress(body))
