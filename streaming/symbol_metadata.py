"""The symbol maps the transformer parses with, for every exchange whose plug NEEDS_SYMBOL_MAP
(Binance spells BTCUSDT: only the market list splits it): loaded at start, refreshed on a schedule
in the background and at once on an unknown symbol (rate-limited), published to the router by a
version number it checks between frames.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from common.exchanges import plug
from streaming.consumer_loop import StopFlag, backoff_delays, safe_reason

log = logging.getLogger("streaming.transformer")


def load_symbol_map(exchange: str) -> dict[str, str]:
    """{exchange symbol: canonical} of the exchange's active spot markets, through ccxt."""
    from common.exchange_clients import make_ccxt

    client = make_ccxt(exchange, timeout=10_000)
    return plug(exchange).symbol_map(client.load_markets(reload=True))


def symbol_map_from_file(path: str | Path, exchange: str) -> dict[str, str]:
    """The exchange's saved market listing (e.g. a Binance exchangeInfo response, bare or as a
    recorded `{"response": ...}`) or a plain {raw: canonical} JSON object (offline runs, tests)."""
    obj = json.loads(Path(path).read_text())
    if isinstance(obj, dict) and isinstance(obj.get("response"), dict):
        obj = obj["response"]
    if isinstance(obj, dict) and all(isinstance(v, str) for v in obj.values()):
        return dict(obj)
    the_plug = plug(exchange)
    try:
        return the_plug.symbol_map(the_plug.markets_from_listing(obj))
    except ValueError as exc:
        raise ValueError(f"{path}: neither a {exchange} market listing nor a symbol map ({exc})") from None


class SymbolMetadata:
    """The symbol map of an exchange whose plug NEEDS_SYMBOL_MAP (Binance): loaded at start,
    refreshed on a schedule and on an unknown symbol (at most once per `min_interval_s`, so a flood
    of unknown symbols is not a flood of REST calls)."""

    def __init__(self, loader, refresh_s: float = 3600.0, min_interval_s: float = 60.0,
                 clock=time.monotonic, name: str = "symbol"):
        self.loader = loader
        self.name = name              # for the logs: the exchange
        self.refresh_s = refresh_s
        self.min_interval_s = min_interval_s
        self.clock = clock
        self.symbols: dict[str, str] = {}
        self.loaded_at: float | None = None
        self.attempted_at: float | None = None
        self.version = 0

    def load(self) -> bool:
        self.attempted_at = self.clock()
        try:
            fresh = self.loader()
        except Exception as exc:  # ccxt raises many types; keep the old map
            log.warning("%s symbol metadata refresh failed: %s", self.name, safe_reason(exc, 200))
            return False
        if not fresh:
            log.warning("%s symbol metadata came back empty; keeping %d symbols", self.name, len(self.symbols))
            return False
        self.symbols = dict(fresh)          # publish the map before the version that announces it
        self.loaded_at = self.attempted_at
        self.version += 1
        log.info("%s symbol metadata: %d active spot symbols", self.name, len(self.symbols))
        return True

    def load_initial(self, stop: StopFlag) -> bool:
        for delay in backoff_delays(1.0, 30.0):
            if self.load():
                return True
            if stop.wait(delay):
                return False
        return False

    def refresh_due(self) -> bool:
        return self.loaded_at is None or self.clock() - self.loaded_at >= self.refresh_s

    def start_scheduled_refresh(self, stop: StopFlag) -> threading.Thread:
        """Refresh every `refresh_s` in a background thread, so a slow REST call never stalls the
        stream. The new map is published by swapping `symbols` then bumping `version`; the router
        picks it up between frames."""
        def loop():
            while not stop.wait(min(self.refresh_s, 60.0)):
                if self.refresh_due():
                    self.load()

        thread = threading.Thread(target=loop, name=f"{self.name}-symbol-refresh", daemon=True)
        thread.start()
        return thread

    def refresh_on_unknown(self) -> bool:
        """Refresh now unless one was tried within `min_interval_s`; True if the map changed."""
        if self.attempted_at is not None and self.clock() - self.attempted_at < self.min_interval_s:
            return False
        return self.load()


def symbol_metadata(exchange: str, path: str | None, refresh_s: float) -> SymbolMetadata:
    """From the saved file when given, else from the exchange through ccxt."""
    loader = (lambda: symbol_map_from_file(path, exchange)) if path else (lambda: load_symbol_map(exchange))
    return SymbolMetadata(loader, refresh_s=refresh_s, name=exchange)
