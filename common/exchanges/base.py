"""The shape of an exchange plug: what the streaming and backfill wings may ask of an exchange.

A plug is one class per exchange (`Binance`, `KuCoin`), listed in the registry
(`common.exchanges`). Its class attributes and class methods are the exchange's facts and pure
protocol pieces; an instance is a parser holding the exchange's symbol map. Nothing here does I/O
by itself:

- websocket: URL building, the handshake and subscription steps (a `Session` per connection,
  driving the transport through the small `Link` interface the transport passes in, so common/
  never imports streaming/), shard planning and scopes, frame classification (`classify` ->
  `Control`), pure tick parsing (bytes -> `Tick`, in `parse_ticks`);
- markets: the market list from ccxt markets (`symbol_map`, one builder for every exchange), the
  exchange's own listing document (`markets_from_listing`);
- REST: the settings field of its base URL and its live default, ccxt id and options, candles per
  request and the candle rows, the rate-limit rules (budget, weights, headers, 429/418 bodies).

Frame classification has one contract for every exchange: `Control(kind, id, code, data)` with
`kind` one of

    data             a frame that carries market data (forwarded, counted as data)
    malformed        not JSON or not a frame this protocol knows (forwarded, logged)
    welcome, ack, pong, result, notice, error, server_shutdown
                     protocol frames, handed to the connection's `Session.on_control`
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Mapping, Protocol

from common.models import Tick
from common.symbols import InvalidSymbol, canonical, check_canonical

from .fields import Reject, decode_frame

log = logging.getLogger("cryptopipe.extractor")


@dataclass(frozen=True, slots=True)
class Control:
    """A classified websocket frame (see the module docstring for the kinds)."""
    kind: str
    id: str | None = None
    code: int | None = None
    data: Any = None


DATA = Control("data")
MALFORMED = Control("malformed")


class SessionEnded(Exception):
    """Ends a connection with a machine-readable reason (stall, pong_timeout, token_expired, ...)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Link(Protocol):
    """What the transport offers a `Session` (streaming.extractor.transport.Connection)."""
    conn_id: str
    options: Any            # open_timeout_s, ack_timeout_s, welcome_timeout_s, urls {settings field: URL}

    async def connect(self, url: str) -> None: ...
    async def recv_handshake(self, timeout_s: float) -> bytes: ...   # one frame, also handed to the sink
    async def send(self, text: str) -> None: ...                    # paced by the plug's UPLINK_LIMIT
    async def http_post(self, url: str, timeout_s: float) -> tuple[int, bytes]: ...
    def emit(self, kind: str, **detail) -> None: ...                 # a lifecycle event of this connection
    def rotate(self) -> None: ...                                    # ask for a replacement connection


class Session:
    """One websocket connection's protocol steps. The transport calls `open` (connect and
    handshake; returns the `connected` event's detail), then runs `run` (subscriptions, keepalive)
    beside its read loop, hands every protocol frame to `on_control` and calls `on_first_data`
    once, on the first data frame. Any of them ends the connection by raising SessionEnded."""

    def __init__(self, plug: type["Exchange"], spec: list[str], link: Link):
        self.plug = plug
        self.spec = spec
        self.link = link

    async def open(self) -> dict:
        raise NotImplementedError

    async def run(self) -> None:
        """Subscribe and keep the connection alive; return when nothing is left to do."""

    def on_control(self, ctl: Control) -> None:
        """React to a protocol frame (ack, pong, error, server_shutdown, ...)."""

    def on_first_data(self) -> None:
        """The connection now covers the stream."""


@dataclass(frozen=True)
class RestLimits:
    """An exchange's REST budget: `server_limit` weight per `window_s` (each purpose spends its
    share of it: backfill.ratelimit.SHARES), and the weight of each request backfill makes
    (`ohlcv`, `markets`)."""
    server_limit: int
    window_s: float
    weights: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class RateHeaders:
    """What a response's headers say about the budget (None: the exchange did not say).
    `used` is the weight spent in the current wall-clock window of `used_window_s`; `remaining`
    is what is left until `reset_s` from now."""
    limit: float | None = None
    used: float | None = None
    used_window_s: float = 60.0
    remaining: float | None = None
    reset_s: float | None = None


class Exchange:
    """One exchange's plug. Subclasses set the class attributes and implement the protocol."""

    name: ClassVar[str] = ""

    # -- websocket --------------------------------------------------------------------------
    max_frame_bytes: ClassVar[int] = 1 << 20
    # a tick's exchange time may precede the push that carries it by this much
    PUSH_INTERVAL_MS: ClassVar[int] = 1000
    # one frame per tick: the extractor hands frames to Kafka in batches (common.codec.raw)
    BATCHED_FRAMES: ClassVar[bool] = False
    # subscriptions (streams, topics) one connection may carry
    MAX_PER_CONNECTION: ClassVar[int] = 1
    # at most this many messages sent per this many seconds on one connection
    UPLINK_LIMIT: ClassVar[tuple[int, float]] = (1, 1.0)
    # end reasons after which a new connection needs no backoff (e.g. an expired token)
    RECONNECT_AT_ONCE: ClassVar[frozenset[str]] = frozenset()
    # settings field holding the websocket base URL and its live default (None: the handshake finds it)
    WS_URL_SETTING: ClassVar[str | None] = None
    LIVE_WS_URL: ClassVar[str | None] = None
    # its extractor's /metrics port on the default stack (moved by CRYPTOPIPE_PORT_OFFSET)
    EXTRACTOR_METRICS_PORT: ClassVar[int] = 0
    # its raw symbols cannot be read without the market list (the transformer loads it)
    NEEDS_SYMBOL_MAP: ClassVar[bool] = False

    # -- REST -------------------------------------------------------------------------------
    REST_URL_SETTING: ClassVar[str] = ""
    LIVE_REST_URL: ClassVar[str] = ""
    CCXT_ID: ClassVar[str] = ""
    CCXT_OPTIONS: ClassVar[dict] = {"fetchMarkets": {"types": ["spot"]}, "fetchCurrencies": False}
    CANDLES_PER_REQUEST: ClassVar[int] = 0
    CANDLE_COLUMNS: ClassVar[tuple[int, int, int, int, int]] = (1, 2, 3, 4, 5)   # open, high, low, close, volume
    CANDLE_TIME_UNIT_MS: ClassVar[int] = 1           # a row's time is in ms (1) or seconds (1000)
    REST_LIMITS: ClassVar[RestLimits] = RestLimits(1, 1.0)
    RATE_HEADERS: ClassVar[tuple[str, ...]] = ()     # response headers kept with the archived REST answers

    def __init__(self, symbol_map: Mapping[str, str] | None = None):
        self._symbols: dict[str, str] | None = None
        if symbol_map or self.NEEDS_SYMBOL_MAP:
            self.update_symbols(symbol_map or {})

    # -- symbols ----------------------------------------------------------------------------

    def update_symbols(self, symbol_map: Mapping[str, str] | None) -> None:
        """Replace the {exchange symbol: canonical} map (e.g. after UnknownSymbol, from a fresh
        market list). None, for a plug that can read symbols without it, lifts the restriction."""
        if symbol_map is None and not self.NEEDS_SYMBOL_MAP:
            self._symbols = None
            return
        fresh = {}
        for raw, value in dict(symbol_map or {}).items():
            try:
                fresh[str(raw)] = check_canonical(value)
            except InvalidSymbol as exc:
                raise ValueError(f"{self.name} symbol map: {exc}") from None
        self._symbols = fresh

    @property
    def symbols(self) -> dict[str, str]:
        return dict(self._symbols or {})

    @classmethod
    def market_id(cls, symbol: str) -> str:
        """Canonical BASE-QUOTE -> the exchange's spelling."""
        return check_canonical(symbol)

    @classmethod
    def symbol_map(cls, markets: Mapping[str, dict] | Iterable[dict]) -> dict[str, str]:
        """ccxt markets -> {exchange market id: canonical BASE-QUOTE}, active spot markets only."""
        out = {}
        for market in (markets.values() if isinstance(markets, Mapping) else markets):
            if not market.get("spot") or market.get("active") is False:
                continue
            try:
                out[market["id"]] = canonical(market["base"], market["quote"])
            except (InvalidSymbol, KeyError, TypeError, AttributeError):
                continue
        return out

    @classmethod
    def markets_from_listing(cls, doc: Any) -> list[dict]:
        """The exchange's own market-list response (saved to a file) -> ccxt-shaped markets."""
        raise ValueError(f"{cls.name}: no reader for a saved market listing")

    # -- websocket --------------------------------------------------------------------------

    @classmethod
    def url_settings(cls) -> tuple[str, ...]:
        """The settings fields this plug reads its endpoints from."""
        return tuple(f for f in (cls.WS_URL_SETTING, cls.REST_URL_SETTING) if f)

    @classmethod
    def endpoint(cls, urls: Mapping[str, str], setting: str, live: str) -> str:
        return (urls.get(setting) or live).rstrip("/")

    @classmethod
    def plan_shards(cls, symbols: list[str], extra: list[str], per_connection: int) -> list[list[str]]:
        """The subscriptions of each connection: `symbols` (empty: the all-market stream) and
        `extra` channel names, no connection above `per_connection` (capped by the exchange)."""
        raise NotImplementedError

    @classmethod
    def carried_symbols(cls, symbols: list[str]) -> Callable[[str], list[str] | None]:
        """item of a shard -> the canonical symbols whose tickers it carries; None = the whole market."""
        raise NotImplementedError

    @classmethod
    def shard_scopes(cls, symbols: list[str], shards: list[list[str]]) -> list[list[str] | None]:
        """The canonical symbols whose tickers each shard's connection carries. Recorded with its
        sessions (the `connected` event), so gap detection can tell which symbols a shard that is
        down left uncovered while the other shards stream. None = the whole of what this extractor
        streams: the only shard (the exchange's coverage is that shard's) or an all-market stream."""
        if len(shards) <= 1:
            return [None] * len(shards)
        carried = cls.carried_symbols(symbols)
        scopes: list[list[str] | None] = []
        for shard in shards:
            parts = [carried(item) for item in shard]
            scopes.append(None if any(p is None for p in parts) else sorted({s for p in parts for s in p}))
        return scopes

    @classmethod
    def session(cls, spec: list[str], link: Link) -> Session:
        raise NotImplementedError

    @staticmethod
    def classify(raw: bytes | str) -> Control:
        """Cheap triage for the transport; data frames are not decoded fully."""
        raise NotImplementedError

    @staticmethod
    def tick_count(raw: bytes) -> int:
        """About how many ticks a data frame holds (metrics only)."""
        return 1

    # -- parsing (pure) ---------------------------------------------------------------------

    def parse_ticks(self, raw: bytes, received_ns: int, rejects: list[Reject] | None = None) -> list[Tick]:
        """Pure: frame bytes -> ticks. [] for control frames; BadFrame for bad input.

        Multi-ticker frames: with `rejects=None` (the default) one bad element makes the whole
        frame raise (the first element's BadFrame / UnknownSymbol) - all or nothing, never a silent
        drop. Pass a list to get the good ticks returned and every bad element appended to it as
        a `Reject` instead (frame-level faults - bad JSON, oversized - still raise).
        """
        raise NotImplementedError

    def lost_symbols(self, raw: bytes, rejects: list[Reject]) -> set[str]:
        """Best effort, never raises: the canonical symbols whose data a bad frame (or its
        rejected elements) held, so a dead letter can name them; empty = unknown (the loss is
        then taken as exchange-wide)."""
        return set()

    def decode(self, raw: bytes | str) -> Any:
        """Size, depth and JSON checks (common.exchanges.fields); returns the decoded value."""
        return decode_frame(raw, self.max_frame_bytes)

    # -- REST -------------------------------------------------------------------------------

    @classmethod
    def ohlcv_params(cls, since_ms: int, minutes: int) -> dict:
        """Extra ccxt fetch_ohlcv params for one request of `minutes` from `since_ms`."""
        return {}

    @classmethod
    def candle_rows(cls, doc: Any) -> list:
        """A decoded candles response -> its rows (ValueError when it holds none)."""
        if not isinstance(doc, list):
            raise ValueError(f"{cls.name} candles response is not a list of rows")
        return doc

    @classmethod
    def rate_limited(cls, body: str | None) -> bool:
        """A response body that says "rate limited" whatever its HTTP status."""
        return False

    @classmethod
    def read_rate_headers(cls, number: Callable[[str], float | None]) -> RateHeaders:
        """`number(header name)` -> what the headers say about the budget."""
        return RateHeaders()

    @classmethod
    def server_limit_from_markets(cls, body: str | None) -> float | None:
        """The weight limit the market-list response announces, if it does."""
        return None

    @classmethod
    def banned_until_ms(cls, body: str | None) -> int | None:
        """When a 418 (IP ban) body says the ban ends, if it does."""
        return None

