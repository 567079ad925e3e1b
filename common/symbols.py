"""The one symbol normalizer: every exchange's symbol becomes canonical `BASE-QUOTE` (each
exchange's own spelling is its plug's: `common.exchanges`, `market_id` and `symbol_map`).

Canonical symbols are upper-case ASCII letters and digits joined by one dash. Anything else
(quotes, semicolons, slashes, `..`, unicode) is rejected here, so no hostile exchange text can
reach SQL, an S3 key or a log line as a symbol.
"""
from __future__ import annotations

import re

_PART = r"[A-Z0-9]{1,20}"
CANONICAL_RE = re.compile(rf"^{_PART}-{_PART}$")


class InvalidSymbol(ValueError):
    pass


def canonical(base: str, quote: str) -> str:
    symbol = f"{base.upper()}-{quote.upper()}"
    return check_canonical(symbol)


def check_canonical(symbol: str) -> str:
    """Return `symbol` if it is a valid canonical symbol, else raise InvalidSymbol."""
    if not isinstance(symbol, str) or not CANONICAL_RE.fullmatch(symbol):
        raise InvalidSymbol(f"not a canonical BASE-QUOTE symbol: {symbol!r:.80}")
    return symbol


def from_ccxt(symbol: str) -> str:
    """ccxt spells spot symbols BASE/QUOTE."""
    base, sep, quote = symbol.partition("/")
    if not sep:
        raise InvalidSymbol(f"not a ccxt spot symbol: {symbol!r:.80}")
    return canonical(base, quote)


def to_ccxt(symbol: str) -> str:
    base, quote = check_canonical(symbol).split("-")
    return f"{base}/{quote}"
