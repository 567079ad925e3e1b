"""GET /v1/candles — stored 1-minute history of one symbol, a page at a time.

Each row says whether it is final: a candle the exchange's REST API gave (`source='rest'`,
reconciled or backfilled) is final; one built from the stream's tickers is provisional until the
reconciler replaces it. A minute the exchange confirmed had no trade is a row with `empty: true`.
Minutes the pipeline has nothing for are absent (see /v1/gaps).
"""
from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from common.models import decimal_text, iso_utc
from streaming.api import params

router = APIRouter()


class Candle(BaseModel):
    open_time: str
    open: str | None
    high: str | None
    low: str | None
    close: str | None
    volume: str | None
    source: str          # 'rest' (the exchange's own candle) or 'stream' (built from tickers)
    final: bool          # true for 'rest': it will not change again
    empty: bool          # the exchange confirmed no trade in this minute


class CandlePage(BaseModel):
    exchange: str
    symbol: str
    start: str
    end: str
    candles: list[Candle]
    next: str | None     # the URL of the next page, null on the last one


def _text(v):
    return None if v is None else decimal_text(v)


@router.get("/v1/candles", response_model=CandlePage, summary="1-minute candles",
            description="Stored 1-minute candles of one symbol in [start, end) (whole minutes, UTC), oldest "
                        "first, at most `limit` per page; `next` is the URL of the following page. The window "
                        "is capped (API_MAX_CANDLE_WINDOW_HOURS, default 168 h).")
def get_candles(request: Request,
                exchange: str | None = Query(None, description="binance or kucoin"),
                symbol: str | None = Query(None, description="BASE-QUOTE", examples=["BTC-USDT"]),
                start: str | None = Query(None, description="ISO-8601, naive = UTC; default: an hour before end",
                                          examples=["2026-11-25T08:00Z"]),
                end: str | None = Query(None, description="ISO-8601, exclusive; default: now"),
                limit: int | None = Query(None, description="rows per page (default and maximum: "
                                                            "API_CANDLES_PAGE_SIZE, 1000)")) -> dict:
    st = request.app.state
    ex = params.one_exchange(exchange)
    if symbol is None or not symbol.strip():
        raise params.bad("symbol is required, e.g. BTC-USDT")
    sym = params.symbol(symbol.strip())
    t0, t1 = params.window(start, end, st.settings.api_max_candle_window_hours)
    page = params.bounded_int(limit, "limit", 1, st.settings.api_candles_page_size, st.settings.api_candles_page_size)
    if not st.catalog.known(ex, sym):
        params.unknown(set(), [sym], ex)
    with st.pool.cursor() as cur:
        cur.execute("""SELECT open_time, open, high, low, close, volume, source, confirmed_empty FROM candles_1m
                        WHERE exchange = %s AND symbol = %s AND open_time >= %s AND open_time < %s
                        ORDER BY open_time LIMIT %s""", (ex, sym, t0, t1, page + 1))
        rows = cur.fetchall()
    more = len(rows) > page
    rows = rows[:page]
    candles = [{"open_time": iso_utc(t), "open": _text(o), "high": _text(h), "low": _text(lo), "close": _text(c),
                "volume": _text(v), "source": src, "final": src == "rest", "empty": bool(empty)}
               for t, o, h, lo, c, v, src, empty in rows]
    nxt = None
    if more:        # keyset paging: the next page starts at the minute after this page's last row
        nxt = "/v1/candles?" + urlencode({"exchange": ex, "symbol": sym, "start": iso_utc(rows[-1][0] + timedelta(minutes=1)),
                                          "end": iso_utc(t1), "limit": page})
    return {"exchange": ex, "symbol": sym, "start": iso_utc(t0), "end": iso_utc(t1), "candles": candles, "next": nxt}

