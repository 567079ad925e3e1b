"""KuCoin, the plug: the spot public feed (bullet-public, URL, subscribe/ping, frame classes,
pure parsing), the connection's protocol steps, the market list and the REST rules.

Frames handled (see tests/fixtures/exchange-samples/, SOURCES.md):
- `/market/ticker:all` -> symbol in `subject`; `/market/ticker:SYM` (subject `trade.ticker`) ->
  symbol after the colon of the topic. Price `price`, bid/ask `bestBid`/`bestAsk` (+ sizes), last
  size `size`, sequence `sequence` (a digit string), time `time` in ms (the docs' example spells
  `Time`; the 2023 legacy example has none, in which case the receive time stands in).
- `/market/match:SYM` (subject `trade.l3match`) -> price, size, sequence; `time` is nanoseconds
  as a string (or an int).
- control: `welcome`, `ack`, `pong`, `notice`, `error` -> no ticks (the connection's session acts
  on them through `classify`).
- other topics (`/market/level2`, `/market/candles`, `/market/snapshot`, ...) ->
  BadFrame("unsupported_topic:...").

Connection: bullet-public -> token; connect with a fresh connectId; wait for `welcome`; subscribe
(<= 100 topics per message, each ack awaited); ping every pingInterval, a missing pong within
pingTimeout ends the connection; `error` 401 = token expired -> reconnect at once with a new token.

REST (`/api/v1/market/candles` through ccxt): `{"code":"200000","data":[["time s", "o", "c", "h",
"l", "v", "turnover"], ...]}` newest first, at most 1500 rows per request; 2000 weight per 30 s,
announced and counted down in `gw-ratelimit-*` headers; body code 429000 = rate limited.
"""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Iterable
from urllib.parse import urlencode, urlsplit, urlunsplit

from common.models import Tick
from common.symbols import InvalidSymbol, check_canonical

from .base import DATA, MALFORMED, Control, Exchange, RateHeaders, RestLimits, Session, SessionEnded, log
from .fields import (BadFrame, Reject, UnknownSymbol, check_event_ms, event_ms, optional_amount, optional_price,
                     price_field, require, require_dict, sequence_field)

_CONTROL_TYPES = frozenset({"welcome", "ack", "pong", "notice", "error"})
_MAX_RAW_SYMBOL = 41


@dataclass(frozen=True, slots=True)
class Bullet:
    """What `POST /api/v1/bullet-public` returns: a token and the websocket server to use."""
    token: str
    endpoint: str
    ping_interval_s: float
    ping_timeout_s: float


class KuCoin(Exchange):
    name = "kucoin"
    max_frame_bytes = 1 << 20       # one tick per frame; level2 frames are a few kB

    # exchange limits (legacy docs "limits_text")
    MAX_TOPICS_PER_SUBSCRIBE = 100
    MAX_TOPICS_PER_CONNECTION = 300
    MAX_PER_CONNECTION = MAX_TOPICS_PER_CONNECTION
    MAX_UPLINK_PER_10S = 100
    UPLINK_LIMIT = (MAX_UPLINK_PER_10S - 10, 10.0)         # under 100 per 10 s
    TOKEN_LIFETIME_S = 24 * 3600
    # `/market/ticker:all` pushes a symbol's latest trade at most every 100 ms
    PUSH_INTERVAL_MS = 100
    BATCHED_FRAMES = True           # one frame per tick
    RECONNECT_AT_ONCE = frozenset({"token_expired"})
    EXTRACTOR_METRICS_PORT = 9102

    DEFAULT_TOPICS = ("/market/ticker:all",)

    # REST (legacy docs: candles, rate limit headers)
    REST_URL_SETTING = "kucoin_rest_url"     # the websocket endpoint comes from bullet-public
    LIVE_REST_URL = "https://api.kucoin.com"
    CCXT_ID = "kucoin"
    CANDLES_PER_REQUEST = 1500
    CANDLE_COLUMNS = (1, 3, 4, 2, 5)         # [time, open, close, high, low, volume, turnover]
    CANDLE_TIME_UNIT_MS = 1000
    REST_LIMITS = RestLimits(server_limit=2000, window_s=30.0, weights={"ohlcv": 3, "markets": 15})
    RATE_HEADERS = ("gw-ratelimit-limit", "gw-ratelimit-remaining", "gw-ratelimit-reset")

    # ------------------------------------------------------------------ symbols

    @classmethod
    def from_market_id(cls, symbol: str) -> str:
        """KuCoin spells symbols BASE-QUOTE already."""
        return check_canonical(symbol.upper() if isinstance(symbol, str) else symbol)

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

    @classmethod
    def plan_shards(cls, symbols: list[str], extra: list[str], per_connection: int) -> list[list[str]]:
        """Subscribe strings grouped so that no connection exceeds `per_connection` topics."""
        per_connection = max(1, min(per_connection, cls.MAX_TOPICS_PER_CONNECTION))
        chunk = min(cls.MAX_TOPICS_PER_SUBSCRIBE, per_connection)
        symbols = list(dict.fromkeys(symbols))
        topics = [t for i in range(0, len(symbols), chunk) for t in cls.ticker_topics(symbols[i:i + chunk])] \
            if symbols else cls.ticker_topics()
        topics += list(extra)
        shards: list[list[str]] = [[]]
        count = 0
        for topic in topics:
            n = cls.topic_count(topic)
            if shards[-1] and count + n > per_connection:
                shards.append([])
                count = 0
            shards[-1].append(topic)
            count += n
        return shards

    @classmethod
    def carried_symbols(cls, symbols: list[str]):
        return cls.ticker_topic_symbols

    @staticmethod
    def subscribe_message(topic: str, request_id: str) -> str:
        return json.dumps({"id": str(request_id), "type": "subscribe", "topic": topic,
                           "privateChannel": False, "response": True}, separators=(",", ":"))

    @staticmethod
    def ping_message(request_id: str) -> str:
        return json.dumps({"id": str(request_id), "type": "ping"}, separators=(",", ":"))

    @staticmethod
    def classify(raw: bytes | str) -> Control:
        """Triage for the transport: message frames are recognised without a full decode. Kinds
        `data` (a `message`), `welcome`, `ack`, `pong`, `notice`, `error`, `malformed`."""
        head = raw[:120] if isinstance(raw, (bytes, bytearray)) else raw[:120].encode()
        if b'"type":"message"' in head:
            return DATA
        try:
            obj = json.loads(raw, parse_float=Decimal)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return MALFORMED
        if not isinstance(obj, dict):
            return MALFORMED
        kind = obj.get("type")
        ident = obj.get("id")
        code = obj.get("code")
        try:
            code = int(code) if code is not None else None
        except (TypeError, ValueError):
            code = None
        if kind == "message":
            return DATA
        if kind in _CONTROL_TYPES:
            return Control(kind, None if ident is None else str(ident), code, obj.get("data"))
        return MALFORMED

    @staticmethod
    def token_expired(ctl: Control) -> bool:
        return ctl.kind == "error" and ctl.code == 401

    @classmethod
    def session(cls, spec: list[str], link) -> Session:
        return KuCoinSession(cls, spec, link)

    # ------------------------------------------------------------------ REST

    @classmethod
    def candle_rows(cls, doc: Any) -> list:
        if not isinstance(doc, dict) or str(doc.get("code")) != "200000":
            raise ValueError("kucoin candles response has no data")
        rows = doc.get("data") or []
        if not isinstance(rows, list):
            raise ValueError("kucoin candles response is not a list of rows")
        return rows

    @classmethod
    def rate_limited(cls, body: str | None) -> bool:
        return bool(body) and '"429000"' in body[:200]

    @classmethod
    def read_rate_headers(cls, number) -> RateHeaders:
        reset_ms = number("gw-ratelimit-reset")
        return RateHeaders(limit=number("gw-ratelimit-limit"), remaining=number("gw-ratelimit-remaining"),
                           reset_s=reset_ms / 1000.0 if reset_ms is not None else None)

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


class KuCoinSession(Session):
    """One connection: a new bullet token, `welcome`, subscriptions one ack at a time, then a ping
    every pingInterval (a pong must come within pingTimeout)."""

    def __init__(self, plug, spec, link):
        super().__init__(plug, spec, link)
        self.bullet: Bullet | None = None
        self._ids = iter(range(1, 1 << 62))
        self._acks: dict[str, asyncio.Future] = {}
        self._pong: asyncio.Future | None = None

    async def _fetch_bullet(self) -> Bullet:
        link = self.link
        base = KuCoin.endpoint(link.options.urls, KuCoin.REST_URL_SETTING, KuCoin.LIVE_REST_URL)
        status, body = await link.http_post(KuCoin.bullet_url(base), link.options.open_timeout_s)
        if status != 200:
            raise SessionEnded(f"bullet_http_{status}")
        try:
            return KuCoin.parse_bullet(body)
        except ValueError as exc:
            log.warning("%s: %s", link.conn_id, exc)
            raise SessionEnded("bullet_error") from None

    async def open(self) -> dict:
        link = self.link
        self.bullet = await self._fetch_bullet()                  # a new token on every connection
        connect_id = link.conn_id            # KuCoin echoes it in `welcome`; also ties logs together
        await link.connect(KuCoin.ws_url(self.bullet.endpoint, self.bullet.token, connect_id))
        ctl = KuCoin.classify(await link.recv_handshake(link.options.welcome_timeout_s))
        if ctl.kind == "error":
            raise SessionEnded("token_expired" if KuCoin.token_expired(ctl) else f"error_{ctl.code}")
        if ctl.kind != "welcome":
            raise SessionEnded(f"no_welcome:{ctl.kind}")
        if ctl.id != connect_id:
            log.warning("%s: welcome id %r is not our connectId", link.conn_id, ctl.id)
        return {"topics": len(self.spec), "ping_interval_s": self.bullet.ping_interval_s,
                "ping_timeout_s": self.bullet.ping_timeout_s}

    async def run(self) -> None:
        link, loop = self.link, asyncio.get_running_loop()
        for topic in self.spec:
            req_id = str(next(self._ids))
            fut = loop.create_future()
            self._acks[req_id] = fut
            await link.send(KuCoin.subscribe_message(topic, req_id))
            try:
                await asyncio.wait_for(fut, link.options.ack_timeout_s)
            except asyncio.TimeoutError:
                raise SessionEnded("ack_timeout") from None
            finally:
                self._acks.pop(req_id, None)
        link.emit("subscribed", topics=sum(KuCoin.topic_count(t) for t in self.spec))
        interval, timeout = self.bullet.ping_interval_s, self.bullet.ping_timeout_s
        while True:
            await asyncio.sleep(interval)
            self._pong = loop.create_future()
            await link.send(KuCoin.ping_message(str(next(self._ids))))
            try:
                await asyncio.wait_for(self._pong, timeout)
            except asyncio.TimeoutError:
                raise SessionEnded("pong_timeout") from None

    def on_control(self, ctl: Control) -> None:
        if ctl.kind == "pong":
            if self._pong is not None and not self._pong.done():
                self._pong.set_result(True)
        elif ctl.kind == "ack":
            fut = self._acks.get(ctl.id or "")
            if fut is not None and not fut.done():
                fut.set_result(True)
        elif ctl.kind == "error":
            if KuCoin.token_expired(ctl):
                raise SessionEnded("token_expired")
            fut = self._acks.get(ctl.id or "")
            log.error("%s: error frame code=%s data=%.120s", self.link.conn_id, ctl.code, str(ctl.data))
            if fut is not None and not fut.done():
                raise SessionEnded(f"subscribe_error_{ctl.code}")
