import threading

import pytest

from backfill.ratelimit import ExchangeBudget, budget_for
from tests.unit.backfill.fakes import FakeClock


def budget(exchange="binance", **kw):
    c = FakeClock()
    b = ExchangeBudget(exchange, clock=c.monotonic, wall=c.wall, sleep=c.sleep, **kw)
    return b, c


def test_budget_blocks_when_window_spent_and_frees_after_window():
    b, c = budget(limit=10, window_s=60, share=1.0)
    for _ in range(5):
        assert b.acquire(2) == 0
    waited = b.acquire(2)
    assert waited == pytest.approx(60, abs=1.0)
    assert b.stats.requests == 6 and b.stats.waits == 1


def test_429_retry_after_pauses_every_worker():
    b, c = budget()
    pause = b.observe(429, {"Retry-After": "7"}, '{"code":-1003,"msg":"Too many requests"}')
    assert 7 <= pause < 7.3
    start = c.t
    b.acquire(1)
    assert c.t - start >= 7
    assert b.stats.rate_limited == 1


def test_429_without_hint_backs_off_exponentially_once_per_storm():
    b, c = budget()
    first = b.observe(429, {}, "")
    assert 5 <= first < 5.3
    # answers to requests already in flight when the pause began do not stack up
    assert b.observe(429, {}, "") == pytest.approx(first) and b.observe(429, {}, "") == pytest.approx(first)
    c.t += first
    second = b.observe(429, {}, "")     # still limited after the pause: back off harder
    assert 10 <= second < 10.3


def test_kucoin_429000_body_is_a_rate_limit():
    b, _ = budget("kucoin")
    assert b.observe(200, {}, '{"code":"429000","msg":"Too Many Requests"}') >= 5


def test_418_ban_time_from_body_and_header():
    b, c = budget()
    until_ms = int((c.wall() + 95) * 1000)
    pause = b.observe(418, {}, f'{{"code":-1003,"msg":"Way too many requests; IP banned until {until_ms}."}}')
    assert 95 <= pause <= 97
    b2, _ = budget()
    assert b2.observe(418, {"retry-after": "30"}, "") == 31
    assert b2.stats.banned == 1


def test_binance_used_weight_header_pauses_until_next_minute():
    b, c = budget()
    assert b.observe(200, {"x-mbx-used-weight-1m": "100"}) == 0
    pause = b.observe(200, {"x-mbx-used-weight-1m": "5500"})
    assert 0.5 <= pause <= 60.5
    assert ((c.wall() + pause) % 60) < 1.0          # resumes just after the minute boundary
    assert b.stats.header_pauses == 1


def test_kucoin_remaining_header_pauses_until_reset():
    b, _ = budget("kucoin")
    assert b.observe(200, {"gw-ratelimit-remaining": "1500", "gw-ratelimit-reset": "20000"}) == 0
    assert b.observe(200, {"gw-ratelimit-remaining": "20", "gw-ratelimit-reset": "12000"}) == pytest.approx(12.25)


def test_garbage_headers_are_ignored():
    b, _ = budget()
    assert b.observe(200, {"x-mbx-used-weight-1m": "NaN"}) == 0
    assert b.observe(200, {"x-mbx-used-weight-1m": "-5"}) == 0
    assert b.observe(429, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) >= 5


def test_pause_is_capped():
    b, _ = budget(max_pause_s=300)
    assert b.observe(418, {"retry-after": "999999"}) == 300


def test_backoff_grows_with_jitter_and_cap():
    b, _ = budget()
    for attempt, ceiling in ((1, 0.5), (2, 1.0), (3, 2.0), (10, 30.0)):
        d = b.backoff(attempt)
        assert ceiling / 2 <= d <= ceiling


def test_shared_budget_across_threads_never_exceeds_capacity():
    import time

    c = FakeClock()
    b = ExchangeBudget("binance", limit=20, window_s=60, share=1.0, clock=c.monotonic, wall=c.wall,
                       sleep=lambda s: time.sleep(0.002))   # real waiting, but the fake window never advances
    got = []
    lock = threading.Lock()

    def worker():
        for _ in range(10):
            b.acquire(1)
            with lock:
                got.append(c.t)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while len(got) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    assert len(got) == 20            # 40 wanted, 20 fit: the rest wait for the window
    c.t += 61                        # the window passes: the waiting 20 go through
    for t in threads:
        t.join(5)
    assert len(got) == 40 and all(t >= 1061 for t in got[20:])


def test_budget_for_is_one_per_exchange():
    assert budget_for("binance") is budget_for("binance")
    assert budget_for("binance") is not budget_for("kucoin")


def test_announced_limits_replace_the_default():
    b, _ = budget()
    b.set_server_limit("100")
    assert b.server_limit == 100 and b.capacity == 80
    b.set_server_limit("garbage")
    assert b.server_limit == 100
    k, _ = budget("kucoin")
    k.observe(200, {"gw-ratelimit-limit": "500", "gw-ratelimit-remaining": "400", "gw-ratelimit-reset": "1000"})
    assert k.server_limit == 500 and k.capacity == 400


def test_reconciliation_spends_at_most_a_quarter_of_the_exchange_weight_beside_the_backfills():
    from backfill.ratelimit import SHARES, reset_budgets

    reset_budgets()
    try:
        rec, back = budget_for("binance", "reconcile"), budget_for("binance")
        assert rec is budget_for("binance", "reconcile") and rec is not back
        assert (rec.capacity, back.capacity) == (1500, 4800)                    # of 6,000 weight per minute
        assert budget_for("kucoin", "reconcile").capacity == 500                # of 2,000 per 30 s
        assert SHARES["reconcile"] <= 0.25
        rec.set_server_limit(1200)                                              # the exchange announced less
        assert rec.capacity == 300
        with pytest.raises(ValueError, match="unknown budget purpose"):
            budget_for("binance", "bulk")
    finally:
        reset_budgets()


def test_a_quarter_share_makes_klines_requests_wait_for_the_next_window():
    b, c = budget("binance", share=0.25)       # 1,500 weight per minute; a klines request weighs 2
    for _ in range(750):
        assert b.acquire(2) == 0
    assert b.acquire(2) == pytest.approx(60, abs=1.0)
    assert b.stats.weight == 1502 and b.stats.waits == 1
