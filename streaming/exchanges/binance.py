"""Binance spot market streams: protocol pieces (URLs, SUBSCRIBE, frame classes) and pure parsing.

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

Websocket-level pings are answered by the websockets library with the same payload; there is no
text ping on this API.
"""
from __future__ import annotations

import json
from decimal import Decimal
from typing import Any, Iterable, Mapping

from common.models import Tick
from common.symbols import InvalidSymbol, check_canonical

from .base import (BadFrame, ExchangeAdapter, Reject, UnknownSymbol, event_ms, optional_amount, optional_price,
                   price_field, require, require_dict, sequence_field)

_MAX_RAW_SYMBOL = 40


class Binance(ExchangeAdapter):
    name = "binance"
    max_frame_bytes = 8 << 20        # !miniTicker@arr for ~2000 symbols is ~400 kB

    # exchange limits (web-socket-streams.md)
    MAX_STREAMS_PER_CONNECTION = 1024
    # `!miniTicker@arr` pushes each changed symbol once a second, carrying its last trade: a tick's
    # exchange time may precede its push by up to a second
    PUSH_INTERVAL_MS = 1000
    MAX_MESSAGES_PER_SECOND = 5       # incoming control messages per connection
    CONNECTION_LIFETIME_S = 24 * 3600
    MAX_URL_CHARS = 8000              # beyond this, subscribe with SUBSCRIBE messages instead

    DEFAULT_STREAMS = ("!miniTicker@arr",)
    # standard channel -> Binance stream suffix
    CHANNELS = {"mini_ticker": "miniTicker", "ticker": "ticker", "book_ticker": "bookTicker",
                "trade": "trade", "agg_trade": "aggTrade"}

    def __init__(self, symbol_map: Mapping[str, str] | None = None):
        self._symbols: dict[str, str] = {}
        self.update_symbols(symbol_map or {})
        self._parsers = {
            "24hrMiniTicker": self._mini_ticker,
            "24hrTicker": self._ticker,
            "trade": self._trade,
            "aggTrade": self._agg_trade,
        }

    def update_symbols(self, symbol_map: Mapping[str, str]) -> None:
        """Replace the {BTCUSDT: BTC-USDT} map (e.g. after UnknownSymbol, from a fresh load_markets)."""
        if hasattr(symbol_map, "_map"):          # common.symbols.BinanceSymbolMap
            symbol_map = symbol_map._map      # noqa: SLF001 - read-only use
        fresh = {}
        for raw, canonical in dict(symbol_map).items():
            try:
                fresh[str(raw)] = check_canonical(canonical)
            except InvalidSymbol as exc:
                raise ValueError(f"binance symbol map: {exc}") from None
        self._symbols = fresh

    @property
    def symbols(self) -> dict[str, str]:
        return dict(self._symbols)

    # ------------------------------------------------------------------ protocol (pure)

    @classmethod
    def stream_name(cls, canonical_symbol: str, channel: str = "mini_ticker") -> str:
        """BTC-USDT, 'trade' -> 'btcusdt@trade'."""
        suffix = cls.CHANNELS.get(channel, channel)
        return f"{check_canonical(canonical_symbol).replace('-', '').lower()}@{suffix}"

    @classmethod
    def shard_streams(cls, streams: Iterable[str], per_connection: int | None = None) -> list[list[str]]:
        """Split stream names (deduplicated, order kept) into groups of at most 1024 per connection."""
        limit = min(per_connection or cls.MAX_STREAMS_PER_CONNECTION, cls.MAX_STREAMS_PER_CONNECTION)
        unique = list(dict.fromkeys(streams))
        return [unique[i:i + limit] for i in range(0, len(unique), limit)] or [[]]

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
    def classify(raw: bytes | str) -> tuple[str, Any]:
        """Cheap control-frame triage for the transport: (kind, detail).

        kinds: `data`, `server_shutdown`, `result` (detail = id), `error` (detail = the error
        object), `malformed`. Data frames are not decoded fully here: the extractor forwards bytes.
        """
        head = raw[:200] if isinstance(raw, (bytes, bytearray)) else raw[:200].encode()
        if b"serverShutdown" in head:
            return "server_shutdown", None
        if head.startswith(b'{"stream"') or head.startswith(b"["):
            return "data", None
        try:
            obj = json.loads(raw, parse_float=Decimal)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return "malformed", None
        if isinstance(obj, dict):
            if "stream" in obj and "data" in obj:
                data = obj["data"]
                if isinstance(data, dict) and data.get("e") == "serverShutdown":
                    return "server_shutdown", None
                return "data", None
            if obj.get("e") == "serverShutdown":
                return "server_shutdown", None
            if "error" in obj:
                return "error", obj.get("error")
            if "result" in obj and "id" in obj:
                return "result", obj.get("id")
        return "data", None

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
