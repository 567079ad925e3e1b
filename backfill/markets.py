"""What each exchange lists, read once before any gap work and passed in.

- `listed_markets(exchanges=None, purpose="backfill") -> {exchange: set of symbols}`: every active
  spot market of each exchange (backfill.rest.known_symbols, cached 10 min); an exchange that
  cannot be reached now is left out with a warning. This is the one network read of gap
  detection and gap settling: detection queries, the gap store and the settling of a fill take
  the result as an argument and never fetch it themselves (least of all under a lock).
- `gap_symbols(listed) -> list[str]`: the symbols an exchange-wide gap is about.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable

from backfill.metrics import count_handled
from common.topics import EXCHANGES

log = logging.getLogger("backfill.markets")


def listed_markets(exchanges: Iterable[str] | None = None, purpose: str = "backfill") -> dict[str, set[str]]:
    """Every active spot market of each exchange; an exchange that cannot be reached now is left
    out with a warning (detection then tracks its symbols by their candles alone)."""
    from backfill.rest import known_symbols

    out: dict[str, set[str]] = {}
    for exchange in exchanges or EXCHANGES:
        try:
            out[exchange] = known_symbols(exchange, purpose)
        except Exception as e:  # noqa: BLE001 - reported and counted; detection goes on without it
            count_handled("markets.listed_markets", e)
            log.warning("%s markets unavailable (%s: %s); tracking its symbols by their candles only",
                        exchange, type(e).__name__, str(e)[:200])
    return out


def gap_symbols(listed: Iterable[str]) -> list[str]:
    """The symbols an exchange-wide gap is about: every active spot market the exchange lists,
    restricted to the SYMBOLS setting when it is set. Not only the symbols seen around the gap:
    an illiquid market that did not trade in the hour before an outage still needs its minutes
    (a REST candle, or a confirmed-empty minute)."""
    from common.settings import get_settings

    configured = set(get_settings().symbols)
    return sorted(set(listed) & configured if configured else set(listed))
