"""The prices server's REST endpoints on the real Postgres: what they answer for stored rows, and
a 4xx with a message for every kind of bad input (nothing reaches SQL but bound parameters)."""
import urllib.parse
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

pytestmark = pytest.mark.integration
UTC = timezone.utc
HOUR = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)


@pytest.fixture
def rows(clean_db):
    """Prices, candles (stream, rest, confirmed-empty), sessions, gaps, a supervisor check and a
    divergence, written straight into the tables the pipeline fills."""
    with clean_db.cursor() as cur:
        cur.executemany("INSERT INTO latest_prices (exchange, symbol, price, event_time) VALUES (%s,%s,%s,%s)", [
            ("binance", "BTC-USDT", Decimal("62056.80000000"), datetime(2026, 11, 25, 8, 0, 0, 123000, UTC)),
            ("kucoin", "BTC-USDT", Decimal("62050.1"), datetime(2026, 11, 25, 8, 0, 1, tzinfo=UTC)),
            ("kucoin", "SHIB-USDT", Decimal("0.0000001141"), datetime(2026, 11, 25, 8, 0, 2, tzinfo=UTC)),
        ])
        for i in range(5):
            t = HOUR + timedelta(minutes=i)
            source = "rest" if i < 3 else "stream"
            empty = i == 2
            ohlc = (None,) * 5 if empty else (Decimal("100.5") + i, Decimal("101") + i, Decimal("99") + i,
                                               Decimal("100.25") + i, Decimal("3.5"))
            cur.execute("""INSERT INTO candles_1m (exchange, symbol, open_time, open, high, low, close, volume,
                                                   source, confirmed_empty) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)""",
                        ("binance", "BTC-USDT", t, *ohlc, source, empty))
        now = datetime.now(UTC)
        cur.executemany("""INSERT INTO stream_sessions (conn_id, exchange, connected_at, subscribed_at, last_seen_at,
                                                         disconnected_at, reason) VALUES (%s,%s,%s,%s,%s,%s,%s)""", [
            ("b1", "binance", now - timedelta(hours=3), now - timedelta(hours=3), now - timedelta(hours=1),
             now - timedelta(hours=1), "server_closed"),
            ("b2", "binance", now - timedelta(minutes=59), now - timedelta(minutes=59), now, None, None),
            ("k1", "kucoin", now - timedelta(hours=2), now - timedelta(hours=2), now, None, None),
        ])
        cur.executemany("""INSERT INTO gaps (exchange, symbol, gap_start, gap_end, status, kind)
                           VALUES (%s,%s,%s,%s,%s,%s)""", [
            ("binance", None, now - timedelta(hours=1, minutes=2), now - timedelta(hours=1), "filled", "uncovered"),
            ("binance", "BTC-USDT", now - timedelta(minutes=30), now - timedelta(minutes=27), "open", "missing_candles"),
            ("kucoin", None, now - timedelta(hours=30), now - timedelta(hours=29), "failed", "uncovered"),
        ])
        cur.execute("""INSERT INTO supervisor_checks (checked_at, program, state, verdict, action, outcome, reason)
                       VALUES (now(), 'load', 'FATAL', 'dead', 'restart', 'recovered', 'supervisord reports FATAL')""")
        cur.execute("""INSERT INTO price_divergences (symbol, exchange_a, exchange_b, window_start, window_end, minutes,
                                                      max_bps, max_at, close_a, close_b, threshold_bps)
                       VALUES ('ETH-USDT', 'binance', 'kucoin', %s, %s, 4, 212.5, %s, 3000.1, 3064.2, 50)""",
                    (now - timedelta(minutes=20), now - timedelta(minutes=16), now - timedelta(minutes=18)))
    return clean_db


def q(path: str, **params) -> str:
    return path + ("?" + urllib.parse.urlencode(params) if params else "")


def test_prices_are_exact_decimal_strings_with_utc_times(api_server, rows):
    status, body = api_server.get("/v1/prices")
    assert status == 200
    assert body == [
        {"exchange": "binance", "symbol": "BTC-USDT", "price": "62056.80000000", "event_time": "2026-11-25T08:00:00.123Z"},
        {"exchange": "kucoin", "symbol": "BTC-USDT", "price": "62050.1", "event_time": "2026-11-25T08:00:01.000Z"},
        {"exchange": "kucoin", "symbol": "SHIB-USDT", "price": "0.0000001141", "event_time": "2026-11-25T08:00:02.000Z"},
    ]
    status, body = api_server.get(q("/v1/prices", exchange="kucoin", symbols="shib-usdt"))
    assert status == 200 and [(p["symbol"], p["price"]) for p in body] == [("SHIB-USDT", "0.0000001141")]


@pytest.mark.parametrize("params,status,words", [
    ({"symbols": "DOGE-USDT"}, 404, "unknown symbol"),
    ({"symbols": "BTC-USDT,NOPE-USDT"}, 404, "NOPE-USDT"),
    ({"exchange": "ftx"}, 400, "unknown exchange"),
    ({"exchange": "binance'; DROP TABLE ticks;--"}, 400, "unknown exchange"),
    ({"symbols": "BTC-USDT'; DROP TABLE latest_prices;--"}, 400, "not a symbol"),
    ({"symbols": "<script>alert(1)</script>"}, 400, "not a symbol"),
    ({"symbols": "ВТС-USDT"}, 400, "not a symbol"),                 # Cyrillic look-alikes
    ({"symbols": "../../etc/passwd"}, 400, "not a symbol"),
    ({"symbols": ",".join(f"S{i}-USDT" for i in range(11))}, 400, "too many symbols"),
    ({"symbols": "A-B," * 2000}, 400, "too long"),
])
def test_prices_bad_input_is_a_4xx_with_a_message(api_server, rows, params, status, words):
    got, body = api_server.get(q("/v1/prices", **params))
    assert got == status, body
    assert words in body["detail"]
    with rows.cursor() as cur:       # nothing was dropped
        cur.execute("SELECT count(*) FROM latest_prices")
        assert cur.fetchone()[0] == 3


def test_candles_flag_final_provisional_and_empty_minutes(api_server, rows):
    status, body = api_server.get(q("/v1/candles", exchange="binance", symbol="BTC-USDT",
                                    start=HOUR.isoformat(), end=(HOUR + timedelta(hours=1)).isoformat()))
    assert status == 200, body
    got = [(c["open_time"], c["source"], c["final"], c["empty"], c["close"]) for c in body["candles"]]
    iso = lambda i: (HOUR + timedelta(minutes=i)).strftime("%Y-%m-%dT%H:%M:00.000Z")  # noqa: E731
    assert got == [(iso(0), "rest", True, False, "100.25"), (iso(1), "rest", True, False, "101.25"),
                   (iso(2), "rest", True, True, None), (iso(3), "stream", False, False, "103.25"),
                   (iso(4), "stream", False, False, "104.25")]
    assert body["next"] is None


def test_candles_pages_cover_the_window_once(api_server, rows):
    path = q("/v1/candles", exchange="binance", symbol="BTC-USDT", start=HOUR.isoformat(),
             end=(HOUR + timedelta(hours=1)).isoformat(), limit=2)
    seen, pages = [], 0
    while path:
        status, body = api_server.get(path)
        assert status == 200, body
        seen += [c["open_time"] for c in body["candles"]]
        path, pages = body["next"], pages + 1
    assert pages == 3 and len(seen) == 5 and seen == sorted(set(seen))


@pytest.mark.parametrize("params,status,words", [
    ({"symbol": "BTC-USDT"}, 400, "exchange is required"),
    ({"exchange": "binance"}, 400, "symbol is required"),
    ({"exchange": "binance", "symbol": "XRP-USDT"}, 404, "unknown symbol"),
    ({"exchange": "binance", "symbol": "BTC-USDT", "start": "2020-01-01", "end": "2021-01-01"}, 400, "too long"),
    ({"exchange": "binance", "symbol": "BTC-USDT", "start": "2026-11-25T10:00Z", "end": "2026-11-25T09:00Z"}, 400,
     "must be after start"),
    ({"exchange": "binance", "symbol": "BTC-USDT", "start": "yesterday"}, 400, "not a date-time"),
    ({"exchange": "binance", "symbol": "BTC-USDT", "start": "1999-01-01T00:00Z"}, 400, "out of range"),
    ({"exchange": "binance", "symbol": "BTC-USDT", "start": "2026-11-25T09:00Z'; SELECT pg_sleep(10);--"}, 400,
     "not a date-time"),
    ({"exchange": "binance", "symbol": "BTC-USDT", "limit": "100000"}, 400, "limit must be between"),
    ({"exchange": "binance", "symbol": "BTC-USDT", "limit": "ten"}, 422, ""),
])
def test_candles_bad_input_is_a_4xx_with_a_message(api_server, rows, params, status, words):
    got, body = api_server.get(q("/v1/candles", **params))
    assert got == status, body
    assert words in str(body["detail"])


def test_gaps_filter_and_validate(api_server, rows):
    status, body = api_server.get(q("/v1/gaps", exchange="binance"))
    assert status == 200
    assert [(g["symbol"], g["status"]) for g in body] == [("BTC-USDT", "open"), (None, "filled")]
    status, body = api_server.get(q("/v1/gaps", status="failed", since="2020-01-01T00:00Z"))
    assert [(g["exchange"], g["status"]) for g in body] == [("kucoin", "failed")]
    assert api_server.get(q("/v1/gaps", status="done"))[0] == 400
    assert api_server.get(q("/v1/gaps", exchange="mtgox"))[0] == 400


def test_health_reports_what_is_stored(api_server, rows):
    status, h = api_server.get("/v1/health")
    assert status == 200
    b, k = h["exchanges"]["binance"], h["exchanges"]["kucoin"]
    assert (b["sessions"]["connected_now"], b["sessions"]["sessions_24h"], b["sessions"]["disconnects_24h"]) == (1, 2, 1)
    assert b["sessions"]["last_disconnect_reason"] == "server_closed"
    assert (k["sessions"]["connected_now"], k["sessions"]["sessions_24h"]) == (1, 1)
    assert b["gaps"]["filled"] == {"gaps": 1, "minutes": 2} and b["gaps"]["open"] == {"gaps": 1, "minutes": 3}
    assert k["gaps"]["failed"] == {"gaps": 1, "minutes": 60}
    assert b["ticks"]["symbols"] == 1 and k["ticks"]["symbols"] == 2
    assert [d["symbol"] for d in h["divergences"]] == ["ETH-USDT"] and h["divergences"][0]["max_bps"] == "212.5"
    assert [c["program"] for c in h["supervisor_checks"]["latest"]] == ["load"]
    assert h["supervisor_checks"]["problems"][0]["verdict"] == "dead"
    cov = h["coverage"]["binance"]
    assert 96 <= len(cov["buckets"]) <= 97
    streamed = [x["streamed"] for x in cov["buckets"]]
    assert max(streamed) == 1.0 and min(streamed) == 0.0      # b1 and b2 left a 1-minute hole; nothing a day ago
    assert any(x["gap_minutes"].get("open") for x in cov["buckets"])
    assert cov["heatmap"]["groups"] == ["USDT"] and cov["heatmap"]["group_symbols"] == [1]
    hours, shares = cov["heatmap"]["hours"], cov["heatmap"]["stored_share"][0]
    at = hours.index(HOUR.strftime("%Y-%m-%dT%H:00:00.000Z"))
    assert shares[at] == round(5 / 60, 3)                     # 5 of the hour's 60 minutes stored
    assert all(x is None for x in shares[:at])                # before the first candle: no history yet
    assert "consumer_lag" in h and ("groups" in h["consumer_lag"] or "error" in h["consumer_lag"])
    assert h["stream"]["kafka_assigned"] in (True, False)


def test_read_only_openapi_and_metrics(api_server, rows):
    import json
    import urllib.error
    import urllib.request

    status, spec = api_server.get("/openapi.json")
    assert status == 200
    assert {"/v1/prices", "/v1/candles", "/v1/gaps", "/v1/health"} <= set(spec["paths"])
    assert all(set(ops) == {"get"} for ops in spec["paths"].values())
    assert api_server.get("/docs")[0] == 200
    req = urllib.request.Request(api_server.url + "/v1/prices", data=json.dumps({}).encode(), method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 405
    assert api_server.metric("cryptopipe_price_divergences_24h", exchange_a="binance", exchange_b="kucoin") == 1
    assert api_server.metric("cryptopipe_api_http_requests_total", route="/v1/prices") >= 1


def test_database_sessions_are_read_only(stack):
    import psycopg2

    from streaming.api.pool import ReadOnlyPool

    pool = ReadOnlyPool(stack.postgres_dsn, 1)
    try:
        with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
            with pool.cursor() as cur:
                cur.execute("DELETE FROM latest_prices")
        with pool.cursor() as cur:             # the pool is still usable afterwards
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
    finally:
        pool.close()


def test_page_and_its_assets_are_served_without_the_internet(api_server):
    import urllib.request

    with urllib.request.urlopen(api_server.url + "/", timeout=10) as r:
        html = r.read().decode()
    assert "static/app.js" in html and "http://" not in html and "https://" not in html
    for asset in ("static/app.js", "static/style.css"):
        with urllib.request.urlopen(f"{api_server.url}/{asset}", timeout=10) as r:
            text = r.read().decode()
        assert r.status == 200 and "https://" not in text and "http://" not in text
