"""Limits on the fields of every hop, in one place (the adapters, the loader and the codecs used
to disagree: 2009-01-01 vs 2009-01-03, say).

Times: nothing in this product can be older than the first block of Bitcoin (2009-01-03 UTC):
no crypto market traded before it. Receive times (set by our own extractors) must also be before
2100-01-01: a header beyond it is forged or corrupt, and would overflow `datetime` later.
"""
from __future__ import annotations

EPOCH_FLOOR_MS = 1_230_940_800_000          # 2009-01-03T00:00:00Z
EPOCH_CEILING_MS = 4_102_444_800_000        # 2100-01-01T00:00:00Z
EPOCH_FLOOR_NS = EPOCH_FLOOR_MS * 1_000_000
EPOCH_CEILING_NS = EPOCH_CEILING_MS * 1_000_000

# an exchange time may run ahead of our receive clock by at most this much (clock skew)
MAX_EVENT_AHEAD_MS = 86_400_000
# a pipeline event (written by our own extractors, on this machine's clock) may be at most this far
# ahead of the loader's clock: further, it claims coverage of time that has not happened yet
MAX_PIPELINE_EVENT_AHEAD_NS = 5 * 60 * 1_000_000_000

MAX_HEADER_VALUE_BYTES = 256               # any header we read (ids, times, reasons are capped)
MAX_DIGITS = 19                            # an int64 in decimal
INT64_MAX = 2 ** 63 - 1


def in_epoch_range_ns(ns: int) -> bool:
    return EPOCH_FLOOR_NS <= ns < EPOCH_CEILING_NS

# a decimal field (price, size, volume) on every hop: a JSON string of plain notation, no sign, no
# exponent (`Decimal("1e999999999")` makes later arithmetic explode), at most 40 digits each side
PLAIN_DECIMAL = r"[0-9]{1,40}(?:\.[0-9]{1,40})?"
# a strictly positive one (a price): at least one non-zero digit
POSITIVE_DECIMAL = r"(?=[0-9.]*[1-9])" + PLAIN_DECIMAL
MAX_NUMBER_CHARS = 64                      # longer: `oversized_number`, before any parsing
