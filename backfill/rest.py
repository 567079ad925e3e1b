"""REST access for backfill: ccxt clients, spot markets, 1-minute candles with exact decimals.

- `known_symbols(exchange, purpose="backfill") -> set[str]`: canonical symbols of the
  exchange's active spot markets (cached per process for MARKETS_TTL_S).
- `RestFetcher(exchange)`: one per worker thread (ccxt clients are not shared between threads);
  all fetchers of an exchange share `backfill.ratelimit.budget_for(exchange)`.
  `fetch_minutes(symbol, start, end, now=None) -> FetchResult`: every minute of [start, end)
  as a `MinuteCandle`, in requests of at most the plug's CANDLES_PER_REQUEST minutes (Binance
  1000, KuCoin 1500), with every raw response kept (`FetchResult.responses`) for the S3 archive.

ccxt builds the requests, maps errors and is pointed at settings' REST URLs
(`common.exchange_clients.make_ccxt`). ccxt turns prices into floats, so the candle values are
read again, exactly, from the raw body ccxt received, in the layout the exchange's plug gives
(`candle_rows`, CANDLE_COLUMNS, CANDLE_TIME_UNIT_MS: Binance `/api/v3/klines` rows
`[openTime ms, "o", "h", "l", "c", "v", ...]`; KuCoin `/api/v1/market/candles` rows
`["time s", "o", "c", "h", "l", "v", "turnover"]`, newest first).

Empty minutes: a minute in the answered range with no row (KuCoin's way to say "no trade"), or
a row with zero volume (Binance's way), is returned with `confirmed_empty=True`. Minutes that
ended less than SETTLE_S before `now` are never confirmed empty from a missing row (the
exchange may not have published them yet): they are left out and `FetchResult.complete` is False.

Errors: 429/418 pause the exchange's shared budget (Retry-After, ban time) and retry, up to
`max_wait_s` of total rate-limit waiting; timeouts, network errors and 5xx retry with
exponential backoff and jitter up to `max_attempts`; anything else (unknown symbol, malformed
body) raises `FetchError` at once with a readable reason.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation

from backfill.ratelimit import ExchangeBudget, budget_for
from common.exchange_clients import make_ccxt
from common.exchanges import plug
from common.symbols import to_ccxt

UTC = timezone.utc
MARKETS_TTL_S = 600.0
SETTLE_S = 30.0     # keep below the gap detector's settle (60 s) so detected gaps are always settled
_MINUTE = timedelta(minutes=1)
_KEEP_HEADERS = ("retry-after", "content-type", "date")      # and each exchange's RATE_HEADERS


class FetchError(RuntimeError):
    """A chunk could not be fetched; str() says why. `retryable` is False for permanent errors."""

    def __init__(self, message: str, *, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class MinuteCandle:
    open_time: datetime
    open: Decimal | None
    high: Decimal | None
    low: Decimal | None
    close: Decimal | None
    volume: Decimal | None
    confirmed_empty: bool


@dataclass
class RawResponse:
    url: str
    status: int
    headers: dict
    body: str
    received_at: str

    def to_dict(self) -> dict:
        return {"url": self.url, "status": self.status, "headers": self.headers, "body": self.body,
                "received_at": self.received_at}


@dataclass
class FetchResult:
    candles: list[MinuteCandle] = field(default_factory=list)
    responses: list[RawResponse] = field(default_factory=list)
    requests: int = 0
    retries: int = 0
    rate_limit_waits: int = 0
    complete: bool = True


# -- markets --------------------------------------------------------------------------------

MARKETS_MAX_RATE_LIMIT_WAIT_S = 300.0
_MARKETS: dict[str, tuple[float, dict]] = {}
_MARKETS_LOCK = threading.Lock()


def _rate_limit_status(exc, http_status: int) -> int | None:
    """The status to report to the budget when a ccxt call failed: 418 or 429 as answered, 429
    for ccxt's rate-limit errors without one (ccxt 4.5 raises RateLimitExceeded (429) and
    DDoSProtection (418) as siblings); None when `exc` is no rate limit."""
    import ccxt

    if http_status in (418, 429):
        return http_status
    return 429 if isinstance(exc, (ccxt.DDoSProtection, ccxt.RateLimitExceeded)) else None


def _markets(exchange: str, client=None, budget: ExchangeBudget | None = None) -> dict:
    with _MARKETS_LOCK:
        cached = _MARKETS.get(exchange)
        if cached and time.monotonic() - cached[0] < MARKETS_TTL_S:
            return cached[1]
        import ccxt

        the_plug = plug(exchange)
        client = client or make_ccxt(exchange, enableRateLimit=False)
        budget = budget or budget_for(exchange)
        waited = 0.0
        while True:
            budget.acquire(the_plug.REST_LIMITS.weights["markets"])
            try:
                markets = client.load_markets(reload=True)
                break
            except (ccxt.DDoSProtection, ccxt.RateLimitExceeded) as e:
                # 429/418 (a storm, a ban): wait as the server says, like every candles request
                # (ccxt keeps no status here: the message names a 418)
                status = _rate_limit_status(e, 418 if "418" in str(e)[:200] else 0)
                waited += budget.observe(status, client.last_response_headers, str(e)[:500])
                if waited <= MARKETS_MAX_RATE_LIMIT_WAIT_S:
                    continue
                raise FetchError(f"{exchange} kept rate-limiting the markets request for {waited:.0f} s: "
                                 f"{type(e).__name__}: {str(e)[:300]}", retryable=True) from e
            except Exception as e:  # ccxt errors: tell the operator which exchange and why
                raise FetchError(f"cannot load {exchange} markets from {client.urls.get('api')!s:.120}: "
                                 f"{type(e).__name__}: {str(e)[:300]}", retryable=True) from e
        announced = the_plug.server_limit_from_markets(client.last_http_response)
        if announced is not None:
            budget.set_server_limit(announced)
        _MARKETS[exchange] = (time.monotonic(), markets)
        return markets


def known_symbols(exchange: str, purpose: str = "backfill") -> set[str]:
    """Canonical BASE-QUOTE of every active spot market of `exchange` (a reload is paid from the
    budget of `purpose`, backfill.ratelimit.SHARES)."""
    return set(plug(exchange).symbol_map(_markets(exchange, budget=budget_for(exchange, purpose))).values())


def forget_markets() -> None:
    with _MARKETS_LOCK:
        _MARKETS.clear()


# -- raw body parsing (exact decimals) ------------------------------------------------------

def _dec(value, what: str) -> Decimal:
    try:
        d = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise FetchError(f"malformed candle: {what} {str(value)[:40]!r} is not a number") from None
    if not d.is_finite() or d < 0:
        raise FetchError(f"malformed candle: {what} {str(value)[:40]!r} is not a finite non-negative number")
    return d


def parse_candle_rows(exchange: str, body: str) -> dict[datetime, tuple[Decimal, ...]]:
    """Raw klines/candles body -> {open_time: (open, high, low, close, volume)} (exact)."""
    the_plug = plug(exchange)
    try:
        rows = the_plug.candle_rows(json.loads(body))
    except (TypeError, ValueError) as exc:
        reason = str(exc) if not isinstance(exc, json.JSONDecodeError) else f"{exchange} candles response is not JSON"
        raise FetchError(f"{reason}: {str(body)[:200]!r}") from None
    columns, unit_ms = the_plug.CANDLE_COLUMNS, the_plug.CANDLE_TIME_UNIT_MS
    out = {}
    for row in rows:
        if not isinstance(row, list) or len(row) < 6:
            raise FetchError(f"malformed {exchange} candle row: {str(row)[:120]!r}")
        try:
            ts = int(row[0])
        except (TypeError, ValueError):
            raise FetchError(f"malformed {exchange} candle time: {str(row[0])[:40]!r}") from None
        ms = ts * unit_ms
        if ms % 60_000:
            raise FetchError(f"{exchange} candle time {ts} is not the start of a minute")
        o, h, l, c, v = (_dec(row[i], name) for i, name in zip(columns, ("open", "high", "low", "close", "volume")))
        out[datetime.fromtimestamp(ms // 1000, tz=UTC)] = (o, h, l, c, v)
    return out


# -- the fetcher ----------------------------------------------------------------------------

class RestFetcher:
    def __init__(self, exchange: str, *, client=None, budget: ExchangeBudget | None = None,
                 sleep=time.sleep, max_attempts: int = 6, max_wait_s: float = 900.0):
        self.exchange = exchange
        self.plug = plug(exchange)
        self.budget = budget or budget_for(exchange)
        self.client = client if client is not None else make_ccxt(exchange, enableRateLimit=False)
        self._sleep = sleep
        self.max_attempts = max_attempts
        self.max_wait_s = max_wait_s
        self._captured: list[RawResponse] = []
        self._install_capture()
        self._markets_ready = False

    def _install_capture(self) -> None:
        original = self.client.on_rest_response
        keep = _KEEP_HEADERS + self.plug.RATE_HEADERS

        def capture(code, reason, url, method, headers, body, request_headers, request_body):
            kept = {k.lower(): str(v) for k, v in (headers or {}).items() if k.lower() in keep}
            self._captured.append(RawResponse(url=str(url), status=int(code or 0), headers=kept,
                                              body=body if isinstance(body, str) else str(body),
                                              received_at=datetime.now(UTC).isoformat()))
            return original(code, reason, url, method, headers, body, request_headers, request_body)

        self.client.on_rest_response = capture

    def _ensure_markets(self) -> None:
        if not self._markets_ready:
            self.client.set_markets(_markets(self.exchange, budget=self.budget))
            self._markets_ready = True

    def _request(self, symbol: str, since: datetime, minutes: int, result: FetchResult) -> RawResponse:
        """One candles request with retries; returns the raw successful response."""
        import ccxt

        since_ms = int(since.timestamp() * 1000)
        params = self.plug.ohlcv_params(since_ms, minutes)
        attempts, waited = 0, 0.0
        while True:
            self.budget.acquire(self.plug.REST_LIMITS.weights["ohlcv"])
            self._captured.clear()
            result.requests += 1
            try:
                self.client.fetch_ohlcv(to_ccxt(symbol), "1m", since_ms, minutes, params)
            except ccxt.BaseError as e:
                last = self._captured[-1] if self._captured else None
                status = last.status if last else 0
                limited = _rate_limit_status(e, status)
                if limited is not None:
                    pause = self.budget.observe(limited, last.headers if last else None,
                                                last.body if last else str(e))
                    waited += pause
                    result.rate_limit_waits += 1
                    if waited > self.max_wait_s:
                        raise FetchError(f"{self.exchange} kept rate-limiting for {waited:.0f} s "
                                         f"(last HTTP {status}); giving up on this chunk", retryable=True) from e
                    continue
                if isinstance(e, ccxt.NetworkError):     # timeouts, connection errors, 5xx, maintenance
                    attempts += 1
                    result.retries += 1
                    if attempts >= self.max_attempts:
                        raise FetchError(f"{self.exchange} unreachable after {attempts} attempts: "
                                         f"{type(e).__name__}: {str(e)[:300]}", retryable=True) from e
                    self._sleep(self.budget.backoff(attempts))
                    continue
                raise FetchError(f"{self.exchange} refused the candles request for {symbol}: "
                                 f"{type(e).__name__}: {str(e)[:300]}") from e
            if not self._captured:
                raise FetchError(f"{self.exchange} candles request for {symbol} returned no HTTP response")
            last = self._captured[-1]
            self.budget.observe(last.status, last.headers, None)
            return last

    def fetch_minutes(self, symbol: str, start: datetime, end: datetime, *,
                      now: datetime | None = None) -> FetchResult:
        """Every minute of [start, end) of `symbol` (canonical); see the module docstring."""
        self._ensure_markets()
        now = now or datetime.now(UTC)
        settled_before = now - timedelta(seconds=SETTLE_S)
        result = FetchResult()
        since = start
        while since < end:
            minutes = min(self.plug.CANDLES_PER_REQUEST, int((end - since).total_seconds() // 60))
            response = self._request(symbol, since, minutes, result)
            result.responses.append(response)
            rows = parse_candle_rows(self.exchange, response.body)
            for i in range(minutes):
                t = since + i * _MINUTE
                row = rows.get(t)
                if row is not None:
                    o, h, l, c, v = row
                    result.candles.append(MinuteCandle(t, o, h, l, c, v, confirmed_empty=(v == 0)))
                elif t + _MINUTE <= settled_before:
                    result.candles.append(MinuteCandle(t, None, None, None, None, None, confirmed_empty=True))
                else:
                    result.complete = False
            since += minutes * _MINUTE
        return result
