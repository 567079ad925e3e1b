"""The one place ccxt clients are built: spot markets only, base URLs from settings.

Used by the transformer (symbol metadata) and by backfill (candles). Unmodified ccxt; only its
base URLs are replaced, so the same code talks to the live exchanges or to `cryptopipe sim`.
What differs per exchange (ccxt id and options, the settings field of the REST URL and its live
default) is the exchange's plug's (`common.exchanges`).
"""
from __future__ import annotations

import copy

from common.exchanges import plug
from common.settings import get_settings


def _rest_base(exchange: str) -> str:
    return str(getattr(get_settings(), plug(exchange).REST_URL_SETTING)).rstrip("/")


def _rebase_urls(api_urls: dict, live: str, base: str) -> dict:
    out = {}
    for key, url in api_urls.items():
        if isinstance(url, str) and url.startswith(live):
            out[key] = base + url[len(live):]
        else:
            out[key] = url
    return out


def ccxt_config(exchange: str) -> dict:
    return {
        "enableRateLimit": True,
        "timeout": 30_000,
        "options": copy.deepcopy(plug(exchange).CCXT_OPTIONS),   # ccxt may write into it
    }


def make_ccxt(exchange: str, *, async_: bool = False, **extra):
    """A ccxt client for a registered exchange, spot only, pointed at settings' REST URL."""
    if async_:
        import ccxt.async_support as ccxt_mod
    else:
        import ccxt as ccxt_mod
    config = ccxt_config(exchange)
    config.update(extra)
    the_plug = plug(exchange)
    client = getattr(ccxt_mod, the_plug.CCXT_ID)(config)
    base = _rest_base(exchange)
    live = the_plug.LIVE_REST_URL
    if base != live:
        client.urls["api"] = _rebase_urls(client.urls["api"], live, base)
    return client
