"""KuCoin spot public feed: protocol pieces (bullet-public, URL, subscribe/ping, frame classes)
and pure parsing.

Frames handled (see tests/fixtures/exchange-samples/, SOURCES.md):
- `/market/ticker:all` -> symbol in `subject`; `/market/ticker:SYM` (subject `trade.ticker`) ->
  symbol after the colon of the topic. Price `price`, bid/ask `bestBid`/`bestAsk` (+ sizes), last
  size `size`, sequence `sequence` (a digit string), time `time` in ms (the docs' example spells
  `Time`; the 2023 legacy example has none, in which case the receive time stands in).
- `/market/match:SYM` (subject `trade.l3match`) -> price, size, sequence; `time` is nanoseconds
  as a string (or an int).
- control: `welcome`, `ack`, `pong`, `notice`, `error` -> no ticks (the transport acts on them
  through `classify`).
- other topics (`/market/level2`, `/market/candles`, `/market/snapshot`, ...) ->
  BadFrame("unsupported_topic:...").
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Iterable, Mapping
from urllib.parse import urlencode, urlsplit, urlunsplit

from common.models import Tick
from common.symbols import InvalidSymbol, check_canonical

from .base import (BadFrame, ExchangeAdapter, Reject, UnknownSymbol, check_event_ms, event_ms, optional_amount,
                   optional_price, price_field, require, require_dict, sequence_field)

_CONTROL_TYPES = frozenset({"welcome", "ack", "pong", "notice", "error"})
_MAX_RAW_SYMBOL = 41


@dataclass(frozen=True, slots=True)
class Bullet:
    """What `POST /api/v1/bullet-public` returns: a token and the websocket server to use."""
    token: str
    endpoint: str
    ping_interval_s: float
    ping_timeout_s: float


@dataclass(frozen=True, slots=True)
class Control:
    """A classified frame: kind is welcome | ack | pong | error | message | notice | malformed."""
    kind: str
    id: str | None = None
    code: int | None = None
    data: Any = None

    @property
    def token_expired(self) -> bool:
        return self.kind == "error" and self.code == 401


class KuCoin(ExchangeAdapter):
    name = "kucoin"
    max_frame_bytes = 1 << 20       # one tick per frame; level2 frames are a few kB

    # exchange limits (legacy docs "limits_text")
    MAX_TOPICS_PER_SUBSCRIBE = 100
    MAX_TOPICS_PER_CONNECTION = 300
    MAX_UPLINK_PER_10S = 100
    TOKEN_LIFETIME_S = 24 * 3600
    # `/market/ticker:all` pushes a symbol's latest trade at most every 100 ms
    PUSH_INTERVAL_MS = 100

    DEFAULT_TOPICS = ("/market/ticker:all",)

    def __init__(self, symbol_map: Mapping[str, str] | None = None):
        # optional: restrict to known symbols {"BTC-USDT": "BTC-USDT"}; unknown -> UnknownSymbol
        self._symbols: dict[str, str] | None = None
        if symbol_map:
            self.update_symbols(symbol_map)

    def update_symbols(self, symbol_map: Mapping[str, str] | None) -> None:
        if symbol_map is None:
            self._symbols = None
            return
        fresh = {}
        for raw, canonical in dict(symbol_map).items():
            try:
                fresh[str(raw)] = check_canonical(canonical)
            except InvalidSymbol as exc:
                raise ValueError(f"kucoin symbol map: {exc}") from None
        self._symbols = fresh

    # ------------------------------------------------------------------ protocol (pure)

    @staticmethod
    def bullet_url(rest_base: str) -> str:
        return rest_base.rstrip("/") + "/api/v1/bullet-public"

    @staticmethod
    def parse_bullet(body: bytes | str) -> Bullet:
        """The bullet-public response -> Bullet; ValueError if it is an error or malformed."""
        try:
            obj = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"bullet-public: malformed JSON ({str(exc)[:80]})") from None
        if not isinstance(obj, dict) or str(obj.get("code")) != "200000":
            code = obj.get("code") if isinstance(obj, dict) else None
            msg = obj.get("msg") if isinstance(obj, dict) else None
            raise ValueError(f"bullet-public: error code={code!r:.20} msg={msg!r:.80}")
        data = obj.get("data") or {}
        token = data.get("token")
        servers = data.get("instanceServers") or []
        if not isinstance(token, str) or not token or not servers or not isinstance(servers[0], dict):
            raise ValueError("bullet-public: no token or no instanceServers")
        server = servers[0]
        endpoint = server.get("endpoint")
        if not isinstance(endpoint, str) or not endpoint.startswith(("ws://", "wss://")):
            raise ValueError(f"bullet-public: bad endpoint {endpoint!r:.80}")
        try:
            interval = float(server.get("pingInterval", 18000)) / 1000
            timeout = float(server.get("pingTimeout", 10000)) / 1000
        except (TypeError, ValueError):
            raise ValueError("bullet-public: bad pingInterval/pingTimeout") from None
        if not (0.05 <= interval <= 600 and 0.05 <= timeout <= 600):
            raise ValueError(f"bullet-public: ping interval/timeout out of range ({interval}, {timeout})")
        return Bullet(token=token, endpoint=endpoint, ping_interval_s=interval, ping_timeout_s=timeout)

    @staticmethod
    def ws_url(endpoint: str, token: str, connect_id: str) -> str:
        """`<endpoint>?token=..&connectId=..` (keeps any query the endpoint already has)."""
        parts = urlsplit(endpoint)
        query = parts.query + ("&" if parts.query else "") + urlencode({"token": token, "connectId": connect_id})
        return urlunsplit((parts.scheme, parts.netloc, parts.path or "/", query, ""))

    @classmethod
    def ticker_topics(cls, symbols: Iterable[str] | None = None) -> list[str]:
        """Subscribe topics: `/market/ticker:all` with no symbols, else `/market/ticker:A,B,..`
        with at most 100 symbols each (each symbol counts as one topic)."""
        if not symbols:
            return list(cls.DEFAULT_TOPICS)
        unique = list(dict.fromkeys(check_canonical(s) for s in symbols))
        n = cls.MAX_TOPICS_PER_SUBSCRIBE
        return [f"/market/ticker:{','.join(unique[i:i + n])}" for i in range(0, len(unique), n)]

    @classmethod
    def ticker_topic_symbols(cls, topic: str) -> list[str] | None:
        """The symbols whose ticker a subscribe topic carries: `/market/ticker:A,B` -> [A, B];
        None for `/market/ticker:all` (the whole market); [] for any other topic."""
        if topic in cls.DEFAULT_TOPICS:
            return None
        head, _, tail = topic.partition(":")
        return [t for t in tail.split(",") if t] if head == "/market/ticker" else []

    @staticmethod
    def topic_count(topic: str) -> int:
        """How many topics a subscribe string counts for (`/market/ticker:A,B` is 2)."""
        _, _, tail = topic.partition(":")
        return max(1, len([t for t in tail.split(",") if t]))

    @staticmethod
    def subscribe_message(topic: str, request_id: str) -> str:
        return json.dumps({"id": str(request_id), "type": "subscribe", "topic": topic,
                           "privateChannel": False, "response": True}, separators=(",", ":"))

    @staticmethod
    def ping_message(request_id: str) -> str:
        return json.dumps({"id": str(request_id), "type": "ping"}, separators=(",", ":"))

    @staticmethod
    def classify(raw: bytes | str) -> Control:
        """Triage for the transport: message frames are recognised without a full decode."""
        head = raw[:120] if isinstance(raw, (bytes, bytearray)) else raw[:120].encode()
        if b'"type":"message"' in head:
            return Control("message")
        try:
            obj = json.loads(raw, parse_float=Decimal)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return Control("malformed")
        if not isinstance(obj, dict):
            return Control("malformed")
        kind = obj.get("type")
        ident = obj.get("id")
        code = obj.get("code")
        try:
            code = int(code) if code is not None else None
        except (TypeError, ValueError):
            code = None
        if kind in _CONTROL_TYPES or kind == "message":
            return Control(kind, None if ident is None else str(ident), code, obj.get("data"))
        return Control("malformed")

    # ------------------------------------------------------------------ parsing (pure)

    def parse_ticks(self, raw: bytes, received_ns: int, rejects: list[Reject] | None = None) -> list[Tick]:
        # `rejects` is accepted for interface parity: a KuCoin frame carries one tick, so a bad
        # one always raises.
        obj = require_dict(self.decode(raw), "frame")
        kind = obj.get("type")
        if kind in _CONTROL_TYPES:
            return []
        if kind != "message":
            raise BadFrame("unknown_type", f"{str(kind)[:40]}")
        topic = require(obj, "topic")
        if not isinstance(topic, str):
            raise BadFrame("mistyped_field:topic")
        data = require_dict(require(obj, "data"), "data")
        prefix, _, suffix = topic.partition(":")
        if prefix == "/market/ticker":
            symbol = obj.get("subject") if suffix == "all" else suffix
            return [self._ticker(data, self._symbol(symbol), received_ns)]
        if prefix == "/market/match":
            symbol = self._symbol(suffix)
            if data.get("symbol") not in (None, suffix):
                raise BadFrame("symbol_mismatch", f"topic {suffix!r:.40} data {data.get('symbol')!r:.40}")
            return [self._match(data, symbol, received_ns)]
        raise BadFrame(f"unsupported_topic:{prefix[:40]}")

    def lost_symbols(self, raw: bytes, rejects: list[Reject]) -> set[str]:
        # one tick per frame: its symbol is in `subject` (ticker:all) or after the topic's colon
        try:
            obj = self.decode(raw)
            topic = obj.get("topic") if isinstance(obj, dict) else None
            prefix, _, suffix = topic.partition(":") if isinstance(topic, str) else ("", "", "")
            name = obj.get("subject") if suffix == "all" else suffix
            return {self._symbol(name)} if prefix in ("/market/ticker", "/market/match") else set()
        except (BadFrame, AttributeError):
            return set()

    def _symbol(self, raw: Any) -> str:
        if not isinstance(raw, str) or not raw or len(raw) > _MAX_RAW_SYMBOL:
            raise BadFrame("bad_symbol", f"{raw!r:.60}")
        if self._symbols is not None:
            canonical = self._symbols.get(raw)
            if canonical is None:
                raise UnknownSymbol(raw)
            return canonical
        try:
            return check_canonical(raw)
        except InvalidSymbol:
            raise BadFrame("non_canonical_symbol", f"{raw!r:.60}") from None

    def _ticker(self, data: dict, symbol: str, received_ns: int) -> Tick:
        if "time" in data:
            event = event_ms(data["time"], "time", received_ns)
        elif "Time" in data:
            event = event_ms(data["Time"], "Time", received_ns)
        else:
            event = received_ns // 1_000_000      # the legacy docs' frame has no time at all
        seq = data.get("sequence")
        return Tick(exchange=self.name, symbol=symbol, event_time_ms=event, price=price_field(data, "price"),
                    received_ns=received_ns, sequence=sequence_field(seq, "sequence") if seq is not None else 0,
                    bid=optional_price(data, "bestBid"), bid_size=optional_amount(data, "bestBidSize"),
                    ask=optional_price(data, "bestAsk"), ask_size=optional_amount(data, "bestAskSize"),
                    last_size=optional_amount(data, "size"))

    def _match(self, data: dict, symbol: str, received_ns: int) -> Tick:
        raw_time = require(data, "time")
        ns = sequence_field(raw_time, "time")      # digits-only int64, as a string or an int
        event = check_event_ms(ns // 1_000_000, received_ns, "time")
        return Tick(exchange=self.name, symbol=symbol, event_time_ms=event, price=price_field(data, "price"),
                    received_ns=received_ns, sequence=sequence_field(require(data, "sequence"), "sequence"),
                    last_size=optional_amount(data, "size"))
