"""The one place ccxt clients are built: spot markets only, base URLs from settings.

Used by the transformer (symbol metadata) and by backfill (candles). Unmodified ccxt; only its
base URLs are replaced, so the same code talks to the live exchanges or to `cryptopipe sim`.
"""
from __future__ import annotations

from common.settings import get_settings
from common.symbols import InvalidSymbol, canonical

_LIVE_BASES = {
    "binance": "https://api.binance.com",
    "kucoin": "https://api.kucoin.com",
}


def _rest_base(exchange: str) -> str:
    s = get_settings()
    return {"binance": s.binance_rest_url, "kucoin": s.kucoin_rest_url}[exchange].rstrip("/")


def _rebase_urls(api_urls: dict, live: str, base: str) -> dict:
    out = {}
    for key, url in api_urls.items():
        if isinstance(url, str) and url.startswith(live):
            out[key] = base + url[len(live):]
        else:
            out[key] = url
    return out


def ccxt_config(exchange: str) -> dict:
    if exchange not in _LIVE_BASES:
        raise ValueError(f"unknown exchange {exchange!r:.40}; expected one of {sorted(_LIVE_BASES)}")
    return {
        "enableRateLimit": True,
        "timeout": 30_000,
        "options": {"fetchMarkets": {"types": ["spot"]}, "fetchCurrencies": False},
    }


def make_ccxt(exchange: str, *, async_: bool = False, **extra):
    """A ccxt client for `exchange` ('binance' | 'kucoin'), spot only, pointed at settings' REST URL."""
    if async_:
        import ccxt.async_support as ccxt_mod
    else:
        import ccxt as ccxt_mod
    config = ccxt_config(exchange)
    config.update(extra)
    client = getattr(ccxt_mod, exchange)(config)
    base = _rest_base(exchange)
    live = _LIVE_BASES[exchange]
    if base != live:
        client.urls["api"] = _rebase_urls(client.urls["api"], live, base)
    return client


def spot_symbol_map(markets: dict) -> dict[str, str]:
    """ccxt markets -> {exchange market id: canonical BASE-QUOTE}, active spot markets only."""
    out = {}
    for market in markets.values():
        if not market.get("spot") or market.get("active") is False:
            continue
        try:
            out[market["id"]] = canonical(market["base"], market["quote"])
        except (InvalidSymbol, KeyError, TypeError):
            continue
    return out
