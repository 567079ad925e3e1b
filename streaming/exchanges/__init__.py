"""Exchange adapters: one module and one class per exchange, pure parsing kept apart from transport.

    adapter = get_adapter("binance", {"BTCUSDT": "BTC-USDT"})
    ticks = adapter.parse_ticks(frame_bytes, received_ns)          # [] for control frames
"""
from __future__ import annotations

from typing import Mapping

from .base import BadFrame, ExchangeAdapter, Reject, UnknownSymbol
from .binance import Binance
from .kucoin import Bullet, Control, KuCoin

ADAPTERS: dict[str, type[ExchangeAdapter]] = {"binance": Binance, "kucoin": KuCoin}

__all__ = ["ADAPTERS", "BadFrame", "Binance", "Bullet", "Control", "ExchangeAdapter", "KuCoin", "Reject",
           "UnknownSymbol", "get_adapter"]


def get_adapter(name: str, symbol_map: Mapping[str, str] | None = None) -> ExchangeAdapter:
    """A fresh adapter for `name` ('binance' | 'kucoin').

    Binance needs `symbol_map` {"BTCUSDT": "BTC-USDT", ...} (common.exchange_clients.spot_symbol_map
    over ccxt load_markets); without one every symbol raises UnknownSymbol. KuCoin spells symbols
    BASE-QUOTE already: without a map any canonical symbol passes; with one, others raise UnknownSymbol.
    """
    try:
        cls = ADAPTERS[name]
    except KeyError:
        raise ValueError(f"unknown exchange {name!r:.40}; expected one of {sorted(ADAPTERS)}") from None
    return cls(symbol_map)
