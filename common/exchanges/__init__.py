"""The exchange registry: name -> plug. Everything exchange-specific lives in the plugs (one module
per exchange, shaped by `base.Exchange`); the wings ask the registry instead of naming exchanges.

    binance = plug("binance")                        # the class: protocol pieces, markets, REST rules
    parser = get_adapter("binance", {"BTCUSDT": "BTC-USDT"})
    ticks = parser.parse_ticks(frame_bytes, received_ns)           # [] for control frames

Adding an exchange: its plug module here, its part of the simulator (sim/), one line below
(docs/architecture.md, "Adding an exchange").
"""
from __future__ import annotations

from typing import Mapping

from .base import Control, Exchange, RateHeaders, RestLimits, Session, SessionEnded
from .binance import Binance
from .fields import BadFrame, Reject, UnknownSymbol
from .kucoin import Bullet, KuCoin

PLUGS: dict[str, type[Exchange]] = {
    "binance": Binance,
    "kucoin": KuCoin,
}

EXCHANGES: tuple[str, ...] = tuple(PLUGS)

__all__ = ["EXCHANGES", "PLUGS", "BadFrame", "Binance", "Bullet", "Control", "Exchange", "KuCoin", "RateHeaders",
           "Reject", "RestLimits", "Session", "SessionEnded", "UnknownSymbol", "get_adapter", "plug"]


def plug(name: str) -> type[Exchange]:
    """The plug of `name`; ValueError for a name no plug has."""
    try:
        return PLUGS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown exchange {name!r:.40}; expected one of {sorted(PLUGS)}") from None


def get_adapter(name: str, symbol_map: Mapping[str, str] | None = None) -> Exchange:
    """A fresh parser for `name`. A plug with NEEDS_SYMBOL_MAP (Binance) needs `symbol_map`
    {"BTCUSDT": "BTC-USDT", ...} (its `symbol_map` over ccxt load_markets); without one every
    symbol raises UnknownSymbol. Otherwise (KuCoin spells symbols BASE-QUOTE already) any
    canonical symbol passes without a map; with one, others raise UnknownSymbol."""
    return plug(name)(symbol_map)
