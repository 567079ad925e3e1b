"""GET /v1/prices — the newest price of each symbol (table `latest_prices`)."""
from __future__ import annotations

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel

from common.models import decimal_text, iso_utc
from streaming.api import params

router = APIRouter()


class Price(BaseModel):
    exchange: str
    symbol: str
    price: str           # decimal text, exact
    event_time: str      # ISO-8601 UTC


@router.get("/v1/prices", response_model=list[Price], summary="Latest prices",
            description="The newest price of each symbol, per exchange, as stored by the pipeline. "
                        "Prices are decimal strings (exact), times ISO-8601 UTC.")
def get_prices(request: Request,
               exchange: str | None = Query(None, description="binance, kucoin, or both comma-separated; "
                                                               "omitted: every exchange"),
               symbols: str | None = Query(None, description="BASE-QUOTE symbols, comma-separated; omitted: all",
                                           examples=["BTC-USDT,ETH-USDT"])) -> list[dict]:
    st = request.app.state
    exchanges = params.exchanges(exchange)
    wanted = params.symbols(symbols, st.settings.api_max_symbols)
    if wanted is not None:
        found = set().union(*(st.catalog.symbols(ex, wanted) for ex in exchanges))
        params.unknown(found, wanted, " or ".join(exchanges))
    with st.pool.cursor() as cur:
        cur.execute("""SELECT exchange, symbol, price, event_time FROM latest_prices
                        WHERE exchange = ANY(%s) AND (%s::text[] IS NULL OR symbol = ANY(%s))
                        ORDER BY symbol, exchange""", (exchanges, wanted, wanted))
        return [{"exchange": ex, "symbol": sym, "price": decimal_text(price), "event_time": iso_utc(t)}
                for ex, sym, price, t in cur.fetchall()]
