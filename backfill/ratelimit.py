"""One REST request budget per exchange, shared by every worker thread of the process.

`budget_for(exchange, purpose="backfill") -> ExchangeBudget` returns the process-wide budget of
that purpose: each purpose may spend its own share of the exchange's limit (SHARES: gap
backfills 80 %, reconciliation 25 %), so that reconciling never takes more than a quarter of
the exchange's weight whatever the backfills do. Workers call
`acquire(weight)` before each request (blocks while the local sliding-window budget is spent or
while the exchange told us to stop) and `observe(status, headers, body)` after each response, so
that what the server says reaches every worker at once:

What the exchange's answers mean is its plug's (`common.exchanges`: REST_LIMITS,
`read_rate_headers`, `rate_limited`, `banned_until_ms`); what the budget does about it is here:

- weight used this window (Binance `x-mbx-used-weight-1m`, the IP's weight this minute, counted by
  the server across all our processes): at or above 90 % of the limit, everyone waits for the
  next window.
- The server's own limit replaces the default when it is announced (Binance exchangeInfo
  `rateLimits` REQUEST_WEIGHT per minute, via `set_server_limit`; KuCoin `gw-ratelimit-limit`).
- weight remaining until a reset (KuCoin `gw-ratelimit-remaining` / `gw-ratelimit-reset`): with
  fewer than 5 % left, everyone waits until the reset.
- 429, or a body the plug calls rate-limited (KuCoin code 429000): everyone waits `Retry-After`
  seconds (default 5 s, doubled on repeats).
- 418 (IP ban): everyone waits until the ban ends (`Retry-After`, or the end the plug reads in the
  body, Binance's 'banned until <ms>'; default 120 s).

`backoff(attempt)` is exponential backoff with jitter for transient failures (timeouts, 5xx).
Clock, sleep and randomness are injectable for tests.
"""
from __future__ import annotations

import random
import threading
import time
from collections import deque
from dataclasses import dataclass

from common.exchanges import plug

# The share of an exchange's limit (its plug's REST_LIMITS) each purpose may spend: headroom for
# the streaming side (KuCoin's bullet-public) and other processes on the same IP; reconciliation,
# which runs all the time, takes at most a quarter.
SHARES = {"backfill": 0.8, "reconcile": 0.25}


def _header(headers, name: str):
    if not headers:
        return None
    try:
        value = headers.get(name)
        if value is None:
            value = next((v for k, v in headers.items() if k.lower() == name), None)
    except AttributeError:
        return None
    return value


def _number(value) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if f >= 0 and f == f and f != float("inf") else None


@dataclass
class BudgetStats:
    requests: int = 0
    weight: int = 0
    waits: int = 0
    waited_s: float = 0.0
    rate_limited: int = 0      # 429 responses seen
    banned: int = 0            # 418 responses seen
    header_pauses: int = 0     # pauses because server headers said the budget was nearly spent


class ExchangeBudget:
    def __init__(self, exchange: str, *, limit: int | None = None, window_s: float | None = None,
                 share: float | None = None, clock=time.monotonic, wall=time.time, sleep=time.sleep,
                 rng: random.Random | None = None, max_pause_s: float = 900.0):
        self.plug = plug(exchange)
        limits = self.plug.REST_LIMITS        # the exchange's weight limit per window
        self.exchange = exchange
        self.server_limit = limit or limits.server_limit
        self.window_s = window_s or limits.window_s
        self.capacity = max(1, int(self.server_limit * (share or SHARES["backfill"])))
        self.max_pause_s = max_pause_s
        self._clock, self._wall, self._sleep = clock, wall, sleep
        self._rng = rng or random.Random()
        self._cond = threading.Lock()
        self._spent: deque[tuple[float, int]] = deque()
        self._spent_total = 0
        self._paused_until = 0.0
        self._last_429_pause = 0.0
        self.stats = BudgetStats()

    # -- local budget -------------------------------------------------------------------------

    def acquire(self, weight: int = 1) -> float:
        """Block until `weight` fits the budget and no pause is in force; returns seconds waited."""
        weight = min(max(1, int(weight)), self.capacity)
        waited = 0.0
        while True:
            with self._cond:
                now = self._clock()
                while self._spent and self._spent[0][0] <= now - self.window_s:
                    self._spent_total -= self._spent.popleft()[1]
                if self._paused_until > now:
                    wait = self._paused_until - now
                elif self._spent_total + weight <= self.capacity:
                    self._spent.append((now, weight))
                    self._spent_total += weight
                    self.stats.requests += 1
                    self.stats.weight += weight
                    if waited:
                        self.stats.waits += 1
                        self.stats.waited_s += waited
                    return waited
                else:
                    wait = self._spent[0][0] + self.window_s - now
            wait = max(0.01, min(wait, 1.0))    # re-check often: a pause may be lifted or extended
            self._sleep(wait)
            waited += wait

    def set_server_limit(self, limit) -> None:
        """The exchange announced its limit (the markets response, or a header)."""
        value = _number(limit)
        if value is None or value < 1:
            return
        with self._cond:
            share = self.capacity / self.server_limit
            self.server_limit = int(value)
            self.capacity = max(1, int(self.server_limit * share))

    def pause(self, seconds: float) -> float:
        """Stop every worker of this exchange for `seconds` (capped); returns the pause applied."""
        seconds = max(0.0, min(float(seconds), self.max_pause_s))
        with self._cond:
            self._paused_until = max(self._paused_until, self._clock() + seconds)
        return seconds

    def paused_for(self) -> float:
        with self._cond:
            return max(0.0, self._paused_until - self._clock())

    # -- server signals -----------------------------------------------------------------------

    def observe(self, status: int | None, headers=None, body: str | None = None) -> float:
        """Apply what a response says about our budget; returns the pause it caused (0 if none)."""
        if status == 418:
            self.stats.banned += 1
            return self.pause(self._ban_seconds(headers, body))
        if status == 429 or self.plug.rate_limited(body):
            self.stats.rate_limited += 1
            retry_after = _number(_header(headers, "retry-after"))
            if retry_after is None:
                remaining = self.paused_for()
                if remaining > 0:
                    # a request that was in flight when the pause began: same storm, no escalation
                    return remaining
                # no hint: double the previous pause (5 s, 10 s, ... up to 5 min)
                retry_after = min(300.0, max(5.0, self._last_429_pause * 2))
            self._last_429_pause = retry_after
            return self.pause(retry_after + self._rng.uniform(0, 0.25))
        self._last_429_pause = 0.0
        said = self.plug.read_rate_headers(lambda name: _number(_header(headers, name)))
        if said.limit is not None and int(said.limit) != self.server_limit:
            self.set_server_limit(said.limit)
        if said.used is not None and said.used >= 0.9 * self.server_limit:
            self.stats.header_pauses += 1
            window = said.used_window_s
            return self.pause(window - (self._wall() % window) + 0.5)
        if said.remaining is not None and said.remaining < 0.05 * self.server_limit:
            self.stats.header_pauses += 1
            return self.pause((said.reset_s if said.reset_s is not None else self.window_s) + 0.25)
        return 0.0

    def _ban_seconds(self, headers, body: str | None) -> float:
        retry_after = _number(_header(headers, "retry-after"))
        if retry_after is not None:
            return retry_after + 1.0
        until_ms = self.plug.banned_until_ms(body)
        if until_ms is not None:
            return max(1.0, until_ms / 1000.0 - self._wall() + 1.0)
        return 120.0

    # -- transient failures -------------------------------------------------------------------

    def backoff(self, attempt: int, base: float = 0.5, cap: float = 30.0) -> float:
        """Seconds to wait before retry number `attempt` (1, 2, ...): exponential, half jittered."""
        ceiling = min(cap, base * (2 ** max(0, attempt - 1)))
        return ceiling / 2 + self._rng.uniform(0, ceiling / 2)


_BUDGETS: dict[tuple[str, str], ExchangeBudget] = {}
_BUDGETS_LOCK = threading.Lock()


def budget_for(exchange: str, purpose: str = "backfill") -> ExchangeBudget:
    """The process-wide budget of `exchange` for `purpose` (a key of SHARES; created on first use)."""
    if purpose not in SHARES:
        raise ValueError(f"unknown budget purpose {purpose!r:.40}; choose one of {', '.join(SHARES)}")
    with _BUDGETS_LOCK:
        budget = _BUDGETS.get((exchange, purpose))
        if budget is None:
            budget = _BUDGETS[(exchange, purpose)] = ExchangeBudget(exchange, share=SHARES[purpose])
        return budget


def reset_budgets() -> None:
    """Forget every budget (tests; a new simulator is a new server)."""
    with _BUDGETS_LOCK:
        _BUDGETS.clear()
