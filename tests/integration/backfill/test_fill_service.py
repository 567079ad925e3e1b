"""Settling a fill's gaps asks no exchange anything: the listed symbols are read before and
passed in (backfill.gap_store.mark_covered), on the real Postgres, with every REST path shut."""
import random
import socket
from datetime import datetime, timedelta, timezone

import pytest

from backfill import gap_store
from backfill.validation import validate_request
from tests.integration.backfill.conftest import reset_backfill_state

pytestmark = pytest.mark.integration
UTC = timezone.utc
M = timedelta(minutes=1)


@pytest.fixture
def no_exchange(monkeypatch):
    """Both exchanges' REST URLs on a port nobody listens on, no cached markets, and
    backfill.rest.known_symbols refusing: any market listing fails the test."""
    import backfill.rest

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    monkeypatch.setenv("BINANCE_REST_URL", f"http://127.0.0.1:{dead}")
    monkeypatch.setenv("KUCOIN_REST_URL", f"http://127.0.0.1:{dead}")
    monkeypatch.delenv("SYMBOLS", raising=False)
    reset_backfill_state()

    def refuse(*a, **kw):
        raise AssertionError("marking gaps filled listed the exchange's markets")
    monkeypatch.setattr(backfill.rest, "known_symbols", refuse)
    yield
    monkeypatch.undo()
    reset_backfill_state()


@pytest.fixture
def private_gaps(pg):
    """In a private minute of 2018: an exchange-wide gap, AAA's gap, CCC's gap; three REST
    candles of AAA and a stream candle of BBB inside them."""
    t = datetime(2018, 1, 1, tzinfo=UTC) + timedelta(minutes=random.randint(0, 300_000))
    ids = {}
    with pg.cursor() as cur:
        for name, symbol in (("wide", None), ("aaa", "AAA-USDT"), ("ccc", "CCC-USDT")):
            cur.execute("INSERT INTO gaps (exchange, symbol, gap_start, gap_end, status, kind) "
                        "VALUES ('binance', %s, %s, %s, 'open', 'manual') RETURNING id", (symbol, t, t + 5 * M))
            ids[name] = cur.fetchone()[0]
        rows = [("AAA-USDT", t + i * M, "rest") for i in range(3)] + [("BBB-USDT", t, "stream")]
        for symbol, minute, source in rows:
            cur.execute("INSERT INTO candles_1m (exchange, symbol, open_time, open, high, low, close, volume, source) "
                        "VALUES ('binance', %s, %s, 1, 1, 1, 1, 1, %s)", (symbol, minute, source))
    yield t, ids
    with pg.cursor() as cur:
        cur.execute("DELETE FROM gaps WHERE id = ANY(%s)", (list(ids.values()),))
        cur.execute("DELETE FROM candles_1m WHERE exchange = 'binance' AND symbol IN ('AAA-USDT', 'BBB-USDT') "
                    "AND open_time >= %s AND open_time < %s", (t, t + 5 * M))


def test_gaps_inside_a_fill_are_marked_filled_with_the_listed_symbols_given_and_no_market_call(
        no_exchange, private_gaps):
    t, ids = private_gaps
    request = validate_request("binance", ["AAA-USDT", "BBB-USDT"], t, t + 5 * M,
                               known_symbols={"AAA-USDT", "BBB-USDT", "CCC-USDT"})
    # without the listed symbols an exchange-wide gap cannot be judged: it stays as it is
    assert gap_store.mark_covered(request, None) == [ids["aaa"]]
    assert gap_store.get_gap(ids["wide"]).status == "open"
    # an exchange that lists CCC too: the request did not fill every symbol the wide gap is about
    assert gap_store.mark_covered(request, {"AAA-USDT", "BBB-USDT", "CCC-USDT"}) == []
    # it lists what the request filled: the wide gap is filled, with the REST rows now stored
    assert gap_store.mark_covered(request, {"AAA-USDT", "BBB-USDT"}) == [ids["wide"]]
    wide, aaa, ccc = (gap_store.get_gap(ids[k]) for k in ("wide", "aaa", "ccc"))
    assert (wide.status, wide.rows_filled, wide.error) == ("filled", 3, None) and wide.filled_at
    assert (aaa.status, aaa.rows_filled) == ("filled", 3)
    assert ccc.status == "open"        # not a symbol of the request
