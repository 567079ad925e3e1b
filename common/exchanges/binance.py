"""Binance, the plug: spot market streams (URLs, SUBSCRIBE, frame classes, pure parsing), the
connection's protocol steps, the market list and the REST rules.

Frames handled (see tests/fixtures/exchange-samples/, SOURCES.md):
- `24hrMiniTicker` (`<sym>@miniTicker`, and `!miniTicker@arr`: a bare JSON array in the raw form,
  `{"stream","data":[...]}` in the combined form) -> price `c`, 24h open/high/low/volume.
- `24hrTicker` (`<sym>@ticker`, retired `!ticker@arr`) -> also bid/ask, last size `Q`, sequence `L`.
- `bookTicker` (no `e`/`E`) -> price = mid of `b`/`a`, event time = receive time, sequence `u`.
- `trade` (with or without the pre-2024 `b`/`a` order ids) and `aggTrade` -> price `p`, size `q`,
  sequence `t` / `a`.
- control: SUBSCRIBE replies `{"result":..,"id":..}`, error replies `{"error":{..},"id":..}`,
  `serverShutdown` (raw and combined) -> no ticks.
- anything else (`kline`, `depthUpdate`, `avgPrice`, ...) -> BadFrame("unsupported_event:<e>"):
  we never subscribe to them, so one arriving is worth a dead-letter record, not silence.

Connection: `$BINANCE_WS_URL/stream?streams=...` (SUBSCRIBE messages when the list is too long
for a URL); websocket-level pings are answered by the websockets library with the same payload
(there is no text ping on this API); `serverShutdown` asks for a rotation.

REST (`/api/v3/klines` through ccxt): rows `[openTime ms, "o", "h", "l", "c", "v", ...]`, at most
1000 per request; weight 6000 per minute (announced in exchangeInfo `rateLimits`), the IP's
weight this minute in `x-mbx-used-weight-1m`, 418 = IP ban ("banned until <ms>").
"""
from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any, Callable, Iterable

from common.models import Tick
from common.symbols import check_canonical

from .base import DATA, MALFORMED, Control, Exchange, RateHeaders, RestLimits, Session, SessionEnded, log
from .fields import (BadFrame, Reject, UnknownSymbol, event_ms, optional_amount, optional_price, price_field, require,
                     require_dict, sequence_field)

_MAX_RAW_SYMBOL = 40
_BANNED_UNTIL = re.compile(r"banned until (\d{12,14})")
_SHUTDOWN = Control("server_shutdown")


class Binance(Exchange):
    name = "binance"
    max_frame_bytes = 8 << 20        # !miniTicker@arr for ~2000 symbols is ~400 kB

    # exchange limits (web-socket-streams.md)
    MAX_STREAMS_PER_CONNECTION = 1024
    MAX_PER_CONNECTION = MAX_STREAMS_PER_CONNECTION
    # `!miniTicker@arr` pushes each changed symbol once a second, carrying its last trade: a tick's
    # exchange time may precede its push by up to a second
    PUSH_INTERVAL_MS = 1000
    MAX_MESSAGES_PER_SECOND = 5       # incoming control messages per connection
    UPLINK_LIMIT = (MAX_MESSAGES_PER_SECOND - 1, 1.0)      # stay under 5/s
    SUBSCRIBE_BATCH = 200             # streams per SUBSCRIBE message
    CONNECTION_LIFETIME_S = 24 * 3600
    MAX_URL_CHARS = 8000              # beyond this, subscribe with SUBSCRIBE messages instead
    WS_URL_SETTING = "binance_ws_url"
    LIVE_WS_URL = "wss://stream.binance.com:9443"
    EXTRACTOR_METRICS_PORT = 9101
    NEEDS_SYMBOL_MAP = True           # BTCUSDT cannot be split without the market list

    DEFAULT_STREAMS = ("!miniTicker@arr",)
    # standard channel -> Binance stream suffix
    CHANNELS = {"mini_ticker": "miniTicker", "ticker": "ticker", "book_ticker": "bookTicker",
                "trade": "trade", "agg_trade": "aggTrade"}

    # REST (spot API docs: limits, klines)
    REST_URL_SETTING = "binance_rest_url"
    LIVE_REST_URL = "https://api.binance.com"
    CCXT_ID = "binance"
    CANDLES_PER_REQUEST = 1000
    REST_LIMITS = RestLimits(server_limit=6000, window_s=60.0, weights={"ohlcv": 2, "markets": 20})
    RATE_HEADERS = ("x-mbx-used-weight", "x-mbx-used-weight-1m")

    def __init__(self, symbol_map=None):
        super().__init__(symbol_map)
        self._parsers = {
            "24hrMiniTicker": self._mini_ticker,
            "24hrTicker": self._ticker,
            "trade": self._trade,
            "aggTrade": self._agg_trade,
        }

    # ------------------------------------------------------------------ markets

    @classmethod
    def market_id(cls, symbol: str) -> str:
        """BTC-USDT -> BTCUSDT."""
        return check_canonical(symbol).replace("-", "")

    @classmethod
    def markets_from_listing(cls, doc: Any) -> list[dict]:
        """An exchangeInfo response -> ccxt-shaped markets (TRADING = active)."""
        if not isinstance(doc, dict) or not isinstance(doc.get("symbols"), list):
            raise ValueError("binance: not an exchangeInfo response")
        return [{"id": item["symbol"], "base": item.get("baseAsset"), "quote": item.get("quoteAsset"), "spot": True,
                 "active": item.get("status") == "TRADING"}
                for item in doc["symbols"] if isinstance(item, dict) and isinstance(item.get("symbol"), str)]

    # ------------------------------------------------------------------ protocol (pure)

    @classmethod
    def stream_name(cls, canonical_symbol: str, channel: str = "mini_ticker") -> str:
        """BTC-USDT, 'trade' -> 'btcusdt@trade'."""
        suffix = cls.CHANNELS.get(channel, channel)
        return f"{cls.market_id(canonical_symbol).lower()}@{suffix}"

    @classmethod
    def shard_streams(cls, streams: Iterable[str], per_connection: int | None = None) -> list[list[str]]:
        """Split stream names (deduplicated, order kept) into groups of at most 1024 per connection."""
        limit = min(per_connection or cls.MAX_STREAMS_PER_CONNECTION, cls.MAX_STREAMS_PER_CONNECTION)
        unique = list(dict.fromkeys(streams))
        return [unique[i:i + limit] for i in range(0, len(unique), limit)] or [[]]

    @classmethod
    def plan_shards(cls, symbols: list[str], extra: list[str], per_connection: int) -> list[list[str]]:
        streams = [cls.stream_name(s, "mini_ticker") for s in symbols] if symbols else list(cls.DEFAULT_STREAMS)
        return cls.shard_streams(streams + list(extra), per_connection)

    @classmethod
    def carried_symbols(cls, symbols: list[str]) -> Callable[[str], list[str] | None]:
        by_stream = {cls.stream_name(s, "mini_ticker"): s for s in symbols}

        def carried(item: str) -> list[str] | None:
            return None if item in cls.DEFAULT_STREAMS else [by_stream[item]] if item in by_stream else []
        return carried

    @classmethod
    def combined_url(cls, base_url: str, streams: list[str]) -> str:
        """`$BINANCE_WS_URL/stream?streams=a/b/c` (the combined form, so every frame names its stream).

        With no streams (or too many for one URL) the bare `/stream` endpoint is returned and the
        caller subscribes with `subscribe_message`.
        """
        base = base_url.rstrip("/")
        url = f"{base}/stream?streams={'/'.join(streams)}"
        if not streams or len(url) > cls.MAX_URL_CHARS:
            return f"{base}/stream"
        return url

    @staticmethod
    def subscribe_message(streams: list[str], request_id: int) -> str:
        return json.dumps({"method": "SUBSCRIBE", "params": list(streams), "id": int(request_id)},
                          separators=(",", ":"))

    @staticmethod
    def classify(raw: bytes | str) -> Control:
        """Cheap control-frame triage for the transport: kinds `data`, `server_shutdown`, `result`
        (id), `error` (code, data = the error object), `malformed`. Data frames are not decoded
        fully here: the extractor forwards bytes."""
        head = raw[:200] if isinstance(raw, (bytes, bytearray)) else raw[:200].encode()
        if b"serverShutdown" in head:
            return _SHUTDOWN
        if head.startswith(b'{"stream"') or head.startswith(b"["):
            return DATA
        try:
            obj = json.loads(raw, parse_float=Decimal)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return MALFORMED
        if isinstance(obj, dict):
            if "stream" in obj and "data" in obj:
                data = obj["data"]
                if isinstance(data, dict) and data.get("e") == "serverShutdown":
                    return _SHUTDOWN
                return DATA
            if obj.get("e") == "serverShutdown":
                return _SHUTDOWN
            ident = None if obj.get("id") is None else str(obj.get("id"))
            if "error" in obj:
                error = obj.get("error")
                code = error.get("code") if isinstance(error, dict) else None
                return Control("error", ident, code if isinstance(code, int) else None, error)
            if "result" in obj and "id" in obj:
                return Control("result", ident)
        return DATA

    @staticmethod
    def tick_count(raw: bytes) -> int:
        return raw.count(b'"e":"24hr') or raw.count(b'"s":')

    @classmethod
    def session(cls, spec: list[str], link) -> Session:
        return BinanceSession(cls, spec, link)

    # ------------------------------------------------------------------ REST

    @classmethod
    def ohlcv_params(cls, since_ms: int, minutes: int) -> dict:
        # an inclusive `until` for the chunk's last minute: the answer never runs past the chunk
        return {"until": since_ms + minutes * 60_000 - 1}

    @classmethod
    def read_rate_headers(cls, number) -> RateHeaders:
        return RateHeaders(used=number("x-mbx-used-weight-1m"), used_window_s=60.0)

    @classmethod
    def server_limit_from_markets(cls, body: str | None) -> float | None:
        """exchangeInfo `rateLimits`: REQUEST_WEIGHT per 1 MINUTE."""
        try:
            for item in json.loads(body or "{}").get("rateLimits") or []:
                if (item.get("rateLimitType") == "REQUEST_WEIGHT" and item.get("interval") == "MINUTE"
                        and int(item.get("intervalNum", 1)) == 1):
                    return item.get("limit")
        except (ValueError, TypeError, AttributeError):
            pass      # no usable announcement: keep the documented default
        return None

    @classmethod
    def banned_until_ms(cls, body: str | None) -> int | None:
        match = _BANNED_UNTIL.search(body or "")
        return int(match.group(1)) if match else None

    # ------------------------------------------------------------------ parsing (pure)

    def parse_ticks(self, raw: bytes, received_ns: int, rejects: list[Reject] | None = None) -> list[Tick]:
        obj = self.decode(raw)
        if isinstance(obj, dict) and "stream" in obj and "data" in obj:
            if not isinstance(obj["stream"], str):
                raise BadFrame("mistyped_field:stream")
            obj = obj["data"]
        if isinstance(obj, list):
            return self._parse_array(obj, received_ns, rejects)
        if not isinstance(obj, dict):
            raise BadFrame("unexpected_shape", f"top level is {type(obj).__name__}")
        if self._is_control(obj):
            return []
        return [self._element(obj, received_ns)]

    def lost_symbols(self, raw: bytes, rejects: list[Reject]) -> set[str]:
        out = set()
        for r in rejects:
            name = r.element.get("s") if isinstance(r.element, dict) else None
            canonical = self._symbols.get(name) if isinstance(name, str) else None
            if canonical is None:
                return set()          # one element we cannot name: the loss is exchange-wide
            out.add(canonical)
        return out

    def _parse_array(self, items: list, received_ns: int, rejects: list[Reject] | None) -> list[Tick]:
        ticks = []
        for index, item in enumerate(items):
            try:
                ticks.append(self._element(item, received_ns))
            except BadFrame as exc:
                if rejects is None:
                    raise
                rejects.append(Reject(index, exc, item))
        return ticks

    @staticmethod
    def _is_control(obj: dict) -> bool:
        if obj.get("e") == "serverShutdown":
            return True
        if "id" in obj and ("result" in obj or "error" in obj):
            return True
        return False

    def _element(self, obj: Any, received_ns: int) -> Tick:
        obj = require_dict(obj, "element")
        kind = obj.get("e")
        if kind is None:
            if "u" in obj and "b" in obj and "a" in obj:
                return self._book_ticker(obj, received_ns)
            if "lastUpdateId" in obj:             # <sym>@depth<N> partial book: no `e` either
                raise BadFrame("unsupported_event:depth")
            raise BadFrame("missing_field:e")
        parser = self._parsers.get(kind) if isinstance(kind, str) else None
        if parser is None:
            raise BadFrame(f"unsupported_event:{str(kind)[:40]}")
        return parser(obj, received_ns)

    def _symbol(self, obj: dict) -> str:
        raw = require(obj, "s")
        if not isinstance(raw, str) or not raw or len(raw) > _MAX_RAW_SYMBOL:
            raise BadFrame("mistyped_field:s")
        canonical = self._symbols.get(raw)
        if canonical is None:
            raise UnknownSymbol(raw)
        return canonical

    def _mini_ticker(self, obj: dict, received_ns: int) -> Tick:
        return Tick(exchange=self.name, symbol=self._symbol(obj),
                    event_time_ms=event_ms(require(obj, "E"), "E", received_ns),
                    price=price_field(obj, "c"), received_ns=received_ns,
                    open_24h=optional_price(obj, "o"), high_24h=optional_price(obj, "h"),
                    low_24h=optional_price(obj, "l"), volume_24h=optional_amount(obj, "v"),
                    quote_volume_24h=optional_amount(obj, "q"))

    def _ticker(self, obj: dict, received_ns: int) -> Tick:
        last_id = obj.get("L")
        return Tick(exchange=self.name, symbol=self._symbol(obj),
                    event_time_ms=event_ms(require(obj, "E"), "E", received_ns),
                    price=price_field(obj, "c"), received_ns=received_ns,
                    # L = last trade id; -1 when there was no trade in 24 h
                    sequence=sequence_field(last_id, "L") if isinstance(last_id, int) and last_id >= 0 else 0,
                    bid=optional_price(obj, "b"), bid_size=optional_amount(obj, "B"),
                    ask=optional_price(obj, "a"), ask_size=optional_amount(obj, "A"),
                    last_size=optional_amount(obj, "Q"),
                    open_24h=optional_price(obj, "o"), high_24h=optional_price(obj, "h"),
                    low_24h=optional_price(obj, "l"), volume_24h=optional_amount(obj, "v"),
                    quote_volume_24h=optional_amount(obj, "q"))

    def _book_ticker(self, obj: dict, received_ns: int) -> Tick:
        bid, ask = price_field(obj, "b"), price_field(obj, "a")
        # spot bookTicker carries no event time: the receive time stands in for it
        received_ms = received_ns // 1_000_000
        event = event_ms(obj["E"], "E", received_ns) if "E" in obj else received_ms
        return Tick(exchange=self.name, symbol=self._symbol(obj), event_time_ms=event,
                    price=(bid + ask) / 2, received_ns=received_ns,
                    sequence=sequence_field(require(obj, "u"), "u"),
                    bid=bid, bid_size=optional_amount(obj, "B"), ask=ask, ask_size=optional_amount(obj, "A"))

    def _trade(self, obj: dict, received_ns: int) -> Tick:
        return Tick(exchange=self.name, symbol=self._symbol(obj),
                    event_time_ms=event_ms(require(obj, "E"), "E", received_ns),
                    price=price_field(obj, "p"), received_ns=received_ns,
                    sequence=sequence_field(require(obj, "t"), "t"), last_size=optional_amount(obj, "q"))

    def _agg_trade(self, obj: dict, received_ns: int) -> Tick:
        return Tick(exchange=self.name, symbol=self._symbol(obj),
                    event_time_ms=event_ms(require(obj, "E"), "E", received_ns),
                    price=price_field(obj, "p"), received_ns=received_ns,
                    sequence=sequence_field(require(obj, "a"), "a"), last_size=optional_amount(obj, "q"))


class BinanceSession(Session):
    """One connection: connect to the combined-stream URL (or bare `/stream` + SUBSCRIBE messages);
    `serverShutdown` asks for a rotation; an error reply ends the connection."""

    async def open(self) -> dict:
        link = self.link
        base = Binance.endpoint(link.options.urls, Binance.WS_URL_SETTING, Binance.LIVE_WS_URL)
        url = Binance.combined_url(base, self.spec)
        await link.connect(url)
        self._subscribe_by_message = url.endswith("/stream") and bool(self.spec)
        return {"streams": len(self.spec), "url": url.split("?")[0]}

    async def run(self) -> None:
        if not self._subscribe_by_message:
            return
        n = Binance.SUBSCRIBE_BATCH
        for i in range(0, len(self.spec), n):
            await self.link.send(Binance.subscribe_message(self.spec[i:i + n], i // n + 1))

    def on_control(self, ctl: Control) -> None:
        if ctl.kind == "server_shutdown":
            log.info("%s: serverShutdown received: rotating", self.link.conn_id)
            self.link.rotate()
        elif ctl.kind == "error":
            log.error("%s: error reply %s", self.link.conn_id, str(ctl.data)[:200])
            raise SessionEnded("subscribe_error")

    def on_first_data(self) -> None:
        # Binance covers time from the first data frame (there is no subscribe ack on URL streams)
        self.link.emit("subscribed", streams=len(self.spec))
