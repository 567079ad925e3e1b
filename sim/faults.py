"""Fault state, switched by the control API (and CLI flags at start). All times are monotonic."""
from __future__ import annotations

import random
import time

EXCHANGES = ("binance", "kucoin")


def _exchanges(exchange: str | None) -> tuple[str, ...]:
    if exchange in (None, "", "all", "both"):
        return EXCHANGES
    if exchange not in EXCHANGES:
        raise ValueError(f"unknown exchange {exchange!r:.40}; expected binance, kucoin or all")
    return (exchange,)


class FrameFault:
    """Corrupt/duplicate the next `count` frames, or each frame with probability `ratio`."""

    def __init__(self):
        self.count = 0
        self.ratio = 0.0
        self.until = 0.0
        self.kind = "malformed"

    def set(self, count=None, ratio=None, seconds=None, kind=None):
        self.count = int(count or 0)
        self.ratio = float(ratio or 0.0)
        self.until = time.monotonic() + float(seconds) if seconds else float("inf") if ratio else 0.0
        if kind:
            self.kind = kind

    def hit(self, rng: random.Random) -> bool:
        if self.count > 0:
            self.count -= 1
            return True
        if self.ratio > 0:
            if time.monotonic() > self.until:
                self.ratio = 0.0
                return False
            return rng.random() < self.ratio
        return False

    def active(self) -> bool:
        return self.count > 0 or self.ratio > 0


class Faults:
    def __init__(self, seed: int = 0):
        self.rng = random.Random(f"faults/{seed}")
        self.outage_until = {ex: 0.0 for ex in EXCHANGES}
        self.outage_rest = {ex: False for ex in EXCHANGES}
        self.stall_until = {ex: 0.0 for ex in EXCHANGES}
        self.corrupt = {ex: FrameFault() for ex in EXCHANGES}
        self.duplicate = {ex: FrameFault() for ex in EXCHANGES}
        self.oversized_pending = {ex: 0 for ex in EXCHANGES}   # bytes of the next oversized frame
        self.rest_status = {ex: 0 for ex in EXCHANGES}
        self.rest_until = {ex: 0.0 for ex in EXCHANGES}
        self.rest_count = {ex: 0 for ex in EXCHANGES}
        self.slow_delay = {ex: 0.0 for ex in EXCHANGES}
        self.slow_until = {ex: 0.0 for ex in EXCHANGES}
        self.log: list[dict] = []

    def note(self, fault: str, /, **info) -> None:
        self.log.append({"ms": int(time.time() * 1000), "fault": fault, **info})
        del self.log[:-10_000]

    # --- queries used on hot paths
    def in_outage(self, ex: str) -> bool:
        return time.monotonic() < self.outage_until[ex]

    def stalled(self, ex: str) -> bool:
        return time.monotonic() < self.stall_until[ex]

    def rest_fault(self, ex: str) -> int:
        """HTTP status to answer a REST call with instead of serving it (0 = serve)."""
        if self.outage_rest[ex] and self.in_outage(ex):
            return 503
        st = self.rest_status[ex]
        if not st:
            return 0
        if self.rest_count[ex] > 0:
            self.rest_count[ex] -= 1
            if self.rest_count[ex] == 0 and time.monotonic() >= self.rest_until[ex]:
                self.rest_status[ex] = 0
            return st
        if time.monotonic() < self.rest_until[ex]:
            return st
        self.rest_status[ex] = 0
        return 0

    def rest_retry_after(self, ex: str) -> int:
        return max(1, int(self.rest_until[ex] - time.monotonic() + 0.999))

    def rest_delay(self, ex: str) -> float:
        return self.slow_delay[ex] if time.monotonic() < self.slow_until[ex] else 0.0

    # --- setters (control API)
    def set_outage(self, seconds: float, exchange=None, rest=False):
        for ex in _exchanges(exchange):
            self.outage_until[ex] = time.monotonic() + float(seconds)
            self.outage_rest[ex] = bool(rest)
        self.note("outage", seconds=seconds, exchange=exchange or "all", rest=bool(rest))

    def set_stall(self, seconds: float, exchange=None):
        for ex in _exchanges(exchange):
            self.stall_until[ex] = time.monotonic() + float(seconds)
        self.note("stall", seconds=seconds, exchange=exchange or "all")

    def set_corrupt(self, count=None, ratio=None, seconds=None, kind="malformed", exchange=None):
        if kind not in ("malformed", "truncated"):
            raise ValueError("kind must be 'malformed' or 'truncated'")
        if not count and not ratio:
            raise ValueError("give count or ratio")
        for ex in _exchanges(exchange):
            self.corrupt[ex].set(count, ratio, seconds, kind)
        self.note("corrupt", kind=kind, count=count, ratio=ratio, exchange=exchange or "all")

    def set_duplicate(self, count=None, ratio=None, seconds=None, exchange=None):
        if not count and not ratio:
            raise ValueError("give count or ratio")
        for ex in _exchanges(exchange):
            self.duplicate[ex].set(count, ratio, seconds)
        self.note("duplicate", count=count, ratio=ratio, exchange=exchange or "all")

    def set_oversized(self, nbytes: int, exchange=None):
        for ex in _exchanges(exchange):
            self.oversized_pending[ex] = int(nbytes)
        self.note("oversized", bytes=nbytes, exchange=exchange or "all")

    def set_rest(self, status: int, seconds=None, count=None, exchange=None):
        if status not in (429, 418, 503):
            raise ValueError("status must be 429, 418 or 503")
        for ex in _exchanges(exchange):
            self.rest_status[ex] = int(status)
            self.rest_until[ex] = time.monotonic() + float(seconds or 0)
            self.rest_count[ex] = int(count or 0)
        self.note("rest", status=status, seconds=seconds, count=count, exchange=exchange or "all")

    def set_slow_rest(self, delay_s: float, seconds: float, exchange=None):
        for ex in _exchanges(exchange):
            self.slow_delay[ex] = float(delay_s)
            self.slow_until[ex] = time.monotonic() + float(seconds)
        self.note("slow_rest", delay_s=delay_s, seconds=seconds, exchange=exchange or "all")

    def clear(self):
        log = self.log
        self.__init__()
        self.log = log
        self.note("clear")

    def status(self) -> dict:
        m = time.monotonic()
        return {ex: {"outage_s": max(0.0, self.outage_until[ex] - m), "stall_s": max(0.0, self.stall_until[ex] - m),
                     "corrupt": self.corrupt[ex].active(), "duplicate": self.duplicate[ex].active(),
                     "oversized_pending": self.oversized_pending[ex],
                     "rest_status": self.rest_status[ex], "rest_s": max(0.0, self.rest_until[ex] - m),
                     "rest_count": self.rest_count[ex], "slow_rest_s": max(0.0, self.slow_until[ex] - m)}
                for ex in EXCHANGES}
